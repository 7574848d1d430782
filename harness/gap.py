"""The modality gap, measured: how far ID image embeddings sit from ID text embeddings.

Inputs everywhere: ``image`` (N, D) L2-normalised image features, ``labels`` (N,)
their class indices, ``text`` (C, D) L2-normalised class-prompt features (row k is
the prompt of class k). Everything is computed in float64.

Measures returned by :func:`measures` are the keys of ``DEFINITIONS``, whose values
define them exactly (the report prints them). In short: ``centroid_distance`` and
``pair_cosine`` measure the gap itself; ``align_image`` and ``uniform_*`` are Wang &
Isola's (ICML 2020) alignment (α = 2) and uniformity (t = 2) within and across
modalities.

The pairwise measures (``align_image``, ``uniform_*``) use at most ``max_images``
images, drawn without replacement by a seeded generator, so they cost O(max_images²)
whatever N is; the other measures use every image.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DEFINITIONS = {
    "centroid_distance": "‖mean_i f_i − mean_k t_k‖: distance between the centroid of the ID images and the "
                         "centroid of the C class prompts (each class once); 0 = the modalities share a centre.",
    "pair_cosine": "mean_i ⟨f_i, t_{y_i}⟩: mean cosine of each ID image with its own class prompt. "
                   "Wang & Isola's cross-modal alignment for these pairs, mean_i ‖f_i − t_{y_i}‖², "
                   "is 2 − 2 · pair_cosine.",
    "align_image": "mean ‖f_i − f_j‖² over ordered pairs of different images of the same class "
                   "(Wang & Isola alignment, α = 2, same-class images as positives); lower = tighter classes.",
    "uniform_image": "log mean_{i≠j} exp(−2 ‖f_i − f_j‖²) over pairs of different images (Wang & Isola "
                     "uniformity, t = 2); ≤ 0, lower = images spread more evenly over the sphere.",
    "uniform_text": "the same uniformity over the C class prompts.",
    "uniform_cross": "log mean_{i,k} exp(−2 ‖f_i − t_k‖²) over every (image, class prompt) pair: the "
                     "cross-modal uniformity; ≤ 0, closer to 0 = images and prompts closer (smaller gap).",
}
MEASURES = tuple(DEFINITIONS)
UNIFORMITY_T = 2.0


def _check(image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> None:
    if image.ndim != 2 or text.ndim != 2 or image.shape[1] != text.shape[1]:
        raise ValueError(f"expected (N, D) images and (C, D) prompts, got {tuple(image.shape)} and {tuple(text.shape)}")
    if labels.shape != (image.shape[0],):
        raise ValueError(f"expected ({image.shape[0]},) labels, got {tuple(labels.shape)}")
    if image.shape[0] == 0:
        raise ValueError("no images")
    if labels.min() < 0 or labels.max() >= text.shape[0]:
        raise ValueError(f"labels must lie in [0, {text.shape[0]}) (ID images only)")


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(a), len(b)); clamped because rounding can go below 0."""
    return (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def _log_mean_exp(values: torch.Tensor) -> float:
    return (torch.logsumexp(values, dim=0) - math.log(values.numel())).item()


def _uniformity_within(x: torch.Tensor) -> float:
    """log mean over ordered pairs i != j of exp(-t ||x_i - x_j||^2); NaN with fewer than 2 rows."""
    n = x.shape[0]
    if n < 2:
        return float("nan")
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    return _log_mean_exp(-UNIFORMITY_T * _sq_dist(x, x)[off_diagonal])


def _subsample(n: int, max_images: int, seed: int) -> torch.Tensor:
    if n <= max_images:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def measures(image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
             max_images: int = 2000, seed: int = 0) -> dict[str, float]:
    """Every measure in ``MEASURES`` (defined in ``DEFINITIONS``), as python floats.

    ``align_image`` is NaN when no class has two images in the (sub)sample.
    """
    _check(image, labels, text)
    img, txt, labels = image.double(), text.double(), labels.long()
    pick = _subsample(img.shape[0], max_images, seed)
    sub, sub_labels = img[pick], labels[pick]
    same = (sub_labels[:, None] == sub_labels[None, :]) & ~torch.eye(len(pick), dtype=torch.bool)
    sq = _sq_dist(sub, sub)
    return {
        "centroid_distance": (img.mean(0) - txt.mean(0)).norm().item(),
        "pair_cosine": (img * txt[labels]).sum(1).mean().item(),
        "align_image": sq[same].mean().item() if same.any() else float("nan"),
        "uniform_image": _uniformity_within(sub),
        "uniform_text": _uniformity_within(txt),
        "uniform_cross": _log_mean_exp((-UNIFORMITY_T * _sq_dist(sub, txt)).flatten()),
    }


def pca_2d(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project images (N, D) and prompts (C, D) on the top two principal axes of their union.

    The axes are fitted on the stacked rows (centred on their joint mean), as in the
    CMA paper's figure, so a gap between the modalities shows as two clouds. Returns
    (image (N, 2), text (C, 2), explained variance ratio (2,)). Signs are fixed (the
    largest-magnitude loading of each axis is positive), so the picture is stable.
    """
    both = np.concatenate([image, text]).astype(np.float64)
    centre = both.mean(0)
    _, singular, axes = np.linalg.svd(both - centre, full_matrices=False)
    axes = axes[:2]
    axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])[:, None]
    explained = singular[:2] ** 2 / max(float((singular ** 2).sum()), 1e-300)
    return (image - centre) @ axes.T, (text - centre) @ axes.T, explained


def gap_axis_2d(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project images (N, D) and prompts (C, D) on (the gap direction, the top principal axis of the rest).

    The first axis is the unit vector from the prompt centroid to the image centroid, so the
    two centroids lie ``centroid_distance`` apart along it and level on the second; the
    second is the first principal axis of the stacked rows once the gap direction is
    removed. With no gap (equal centroids) this is :func:`pca_2d`'s projection.
    """
    both = np.concatenate([image, text]).astype(np.float64)
    gap = image.mean(0) - text.mean(0)
    norm = float(np.linalg.norm(gap))
    if norm < 1e-12:
        img, txt, _ = pca_2d(image, text)
        return img, txt
    u = gap / norm
    centre = both.mean(0)
    rest = (both - centre) - np.outer((both - centre) @ u, u)
    v = np.linalg.svd(rest, full_matrices=False)[2][0]
    v *= np.sign(v[np.abs(v).argmax()])
    axes = np.stack([u, v])
    return (image - centre) @ axes.T, (text - centre) @ axes.T
