"""harness.gap on hand-made embeddings whose measures are known, and against naive loops."""

import math

import numpy as np
import pytest
import torch

from harness import gap

E = torch.eye(4, dtype=torch.float64)


def test_images_on_their_own_prompts_have_no_gap():
    text = E[:2]
    labels = torch.tensor([0, 0, 1, 1])
    found = gap.measures(text[labels], labels, text)
    assert found["centroid_distance"] == pytest.approx(0.0, abs=1e-12)
    assert found["pair_cosine"] == pytest.approx(1.0)
    assert found["align_image"] == pytest.approx(0.0, abs=1e-12)
    # ordered image pairs: 4 same-class (distance 0) and 8 across classes (squared distance 2)
    assert found["uniform_image"] == pytest.approx(math.log((4 + 8 * math.exp(-4)) / 12))
    assert found["uniform_text"] == pytest.approx(-4.0)
    # image-prompt pairs: 4 at distance 0, 4 at squared distance 2
    assert found["uniform_cross"] == pytest.approx(math.log((4 + 4 * math.exp(-4)) / 8))


def test_images_orthogonal_to_every_prompt():
    text = E[:2]  # prompts on e0, e1; class-0 images on e2, class-1 images on e3
    labels = torch.tensor([0, 0, 1, 1])
    found = gap.measures(E[[2, 2, 3, 3]], labels, text)
    assert found["centroid_distance"] == pytest.approx(1.0)  # |(e2 + e3)/2 - (e0 + e1)/2| = 1
    assert found["pair_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert found["uniform_cross"] == pytest.approx(-4.0)  # every pair at squared distance 2


def test_a_shift_towards_the_prompts_closes_the_gap():
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(40) % 5
    offset = torch.nn.functional.normalize(torch.randn(16, generator=g, dtype=torch.float64), dim=0)
    noise = 0.1 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    far = gap.measures(torch.nn.functional.normalize(text[labels] + noise + 1.5 * offset, dim=1), labels, text)
    near = gap.measures(torch.nn.functional.normalize(text[labels] + noise + 0.2 * offset, dim=1), labels, text)
    assert near["centroid_distance"] < far["centroid_distance"]
    assert near["pair_cosine"] > far["pair_cosine"]
    assert near["uniform_cross"] > far["uniform_cross"]


def naive(image, labels, text):
    img, txt, y = image.tolist(), text.tolist(), labels.tolist()
    sq = lambda a, b: sum((p - q) ** 2 for p, q in zip(a, b))  # noqa: E731
    n = len(img)
    same = [sq(img[i], img[j]) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    within = [math.exp(-2 * sq(img[i], img[j])) for i in range(n) for j in range(n) if i != j]
    texts = [math.exp(-2 * sq(a, b)) for i, a in enumerate(txt) for j, b in enumerate(txt) if i != j]
    cross = [math.exp(-2 * sq(a, b)) for a in img for b in txt]
    return {"centroid_distance": float(image.mean(0).sub(text.mean(0)).norm()),
            "pair_cosine": sum(sum(p * q for p, q in zip(img[i], txt[y[i]])) for i in range(n)) / n,
            "align_image": sum(same) / len(same), "uniform_image": math.log(sum(within) / len(within)),
            "uniform_text": math.log(sum(texts) / len(texts)), "uniform_cross": math.log(sum(cross) / len(cross))}


def test_matches_naive_loops_on_random_embeddings():
    g = torch.Generator().manual_seed(1)
    image = torch.nn.functional.normalize(torch.randn(23, 6, generator=g, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (23,), generator=g)
    found, expected = gap.measures(image, labels, text), naive(image, labels, text)
    assert set(found) == set(gap.MEASURES) == set(gap.DEFINITIONS)
    for name in gap.MEASURES:
        assert found[name] == pytest.approx(expected[name], rel=1e-10, abs=1e-12), name


def test_pairwise_measures_subsample_deterministically():
    g = torch.Generator().manual_seed(2)
    image = torch.nn.functional.normalize(torch.randn(50, 6, generator=g, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(50) % 3
    a = gap.measures(image, labels, text, max_images=20, seed=0)
    assert a == gap.measures(image, labels, text, max_images=20, seed=0)
    full = gap.measures(image, labels, text)
    assert a["pair_cosine"] == full["pair_cosine"]  # uses every image
    assert a["uniform_image"] != full["uniform_image"]


def test_rejects_ood_labels_and_shape_mismatch():
    with pytest.raises(ValueError, match="labels"):
        gap.measures(E[:2], torch.tensor([0, -1]), E[:2])
    with pytest.raises(ValueError, match="prompts"):
        gap.measures(E[:2], torch.tensor([0, 1]), E[:2, :3])


def test_projections_show_a_gap_as_two_clouds():
    rng = np.random.default_rng(0)
    text = rng.normal(0, 0.05, (6, 10)) + np.eye(10)[0]
    image = rng.normal(0, 0.05, (60, 10)) - np.eye(10)[0]
    img, txt, explained = gap.pca_2d(image, text)
    assert img.shape == (60, 2) and txt.shape == (6, 2) and explained[0] > 0.8
    assert np.sign(img[:, 0]).min() == np.sign(img[:, 0]).max() != np.sign(txt[:, 0]).max()
    along_img, along_txt = gap.gap_axis_2d(image, text)
    distance = np.linalg.norm(image.mean(0) - text.mean(0))
    assert along_img[:, 0].mean() - along_txt[:, 0].mean() == pytest.approx(distance)
    assert along_img[:, 1].mean() == pytest.approx(along_txt[:, 1].mean(), abs=1e-12)
