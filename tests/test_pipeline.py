import itertools

import pytest
import torch

from harness import models
from harness.data.pipeline import class_prompt, eval_pipeline, train_pipeline
from harness.data.shards import read_manifest


@pytest.fixture(scope="module")
def bundle():
    return models.build("tiny-vit-32", None)


def test_train_batches_have_the_promised_shapes(world, bundle):
    manifest = read_manifest(world / "id_train")
    caption = class_prompt(manifest.classnames, "a photo of a {}")
    batches = iter(train_pipeline(manifest.shards, bundle.train_transform, caption, bundle.tokenizer, 16))
    images, tokens, labels = next(batches)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert tokens.shape == (16, 16) and tokens.dtype == torch.long
    assert labels.min() >= 0 and labels.max() < len(manifest.classnames)
    # the stream is endless: more batches than one epoch holds
    steps = manifest.num_samples // 16 + 3
    assert sum(1 for _ in itertools.islice(batches, steps)) == steps


def test_each_rank_reads_its_own_shards(world, bundle):
    manifest = read_manifest(world / "id_train")
    keys = []
    for rank in range(2):
        pipe = train_pipeline(manifest.shards, bundle.train_transform, lambda s: "x", bundle.tokenizer, 1,
                              rank=rank, world_size=2, shuffle_buffer=0)
        rank_shards = manifest.shards[rank::2]
        n = sum(c for s, c in zip(manifest.shards, manifest.shard_samples) if s in rank_shards)
        keys.append(n)
        assert sum(1 for _ in itertools.islice(pipe, n)) == n
    assert sum(keys) == manifest.num_samples


@pytest.mark.parametrize("dataset", ["id_train", "near_ood"])  # many shards; one shard (rank 1 gets none)
def test_eval_reads_every_sample_exactly_once_across_ranks(world, bundle, dataset):
    manifest = read_manifest(world / dataset)
    seen = []
    for rank in range(2):
        for images, labels, keys in eval_pipeline(manifest.shards, bundle.eval_transform, 7, rank, 2):
            assert len(images) == len(labels) == len(keys)
            seen.extend(keys)
    assert len(seen) == len(set(seen)) == manifest.num_samples


def test_too_few_shards_for_the_workers_is_an_error(world, bundle):
    manifest = read_manifest(world / "id_val")
    pipe = train_pipeline(manifest.shards[:1], bundle.train_transform, lambda s: "x", bundle.tokenizer, 4,
                          rank=0, world_size=2)
    with pytest.raises(ValueError, match="1 training shards cannot feed 2 workers"):
        next(iter(pipe))


def test_a_label_outside_the_class_list_is_named():
    caption = class_prompt(["a", "b"], "{}")
    assert caption({"cls": 1}) == "b"
    with pytest.raises(ValueError, match="sample k has class 5, outside 0..1"):
        caption({"cls": 5, "__key__": "k"})


def test_cached_tokenizer_matches_the_tokenizer(bundle):
    from harness.data.pipeline import CachedTokenizer

    texts = ["a red star", "a blue ring", "a red star", "x"]
    cached = CachedTokenizer(bundle.tokenizer, max_entries=2)
    assert torch.equal(cached(texts), bundle.tokenizer(texts))
    assert torch.equal(cached(texts[:2]), bundle.tokenizer(texts[:2]))
