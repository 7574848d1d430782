"""Streaming WebDataset pipelines for training and evaluation.

Distributed facts (rank, world size) are parameters, never read from the
environment, so the same code runs alone, under torchrun or under Ray Train.

- Training streams an endless, deterministic sequence of per-epoch shard
  permutations; this rank takes every ``world_size``-th shard of each
  permutation. The loop takes a fixed number of batches per epoch on every rank,
  so no rank runs dry before the others (which would deadlock DDP).
- Evaluation reads each of this rank's shards exactly once, in order, keeping the
  sample keys so results can be checked and joined.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

import torch
import webdataset as wds

from harness.data.tario import tar_samples
from harness.data.transforms import decode_image, split

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def _shards_forever(urls: Sequence[str], seed: int, rank: int, world_size: int,
                    start_epoch: int = 0) -> Iterator[dict]:
    """Yield {"url": ...} for this rank's share of a fresh shard permutation each epoch,
    beginning with epoch ``start_epoch`` (0-based; a resumed run continues the sequence)."""
    if len(urls) < world_size:
        raise ValueError(f"{len(urls)} training shards cannot feed {world_size} workers: "
                         "write more (smaller) shards or use fewer workers")
    epoch = start_epoch
    while True:
        order = list(urls)
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        yield from ({"url": url} for url in order[rank::world_size])
        epoch += 1


def _first_present(sample: dict, keys: Sequence[str], what: str):
    for key in keys:
        if key in sample:
            return sample[key]
    raise KeyError(f"sample {sample.get('__key__')} from {sample.get('__url__')} has no {what} "
                   f"(looked for {', '.join(keys)}; has {', '.join(k for k in sample if not k.startswith('__'))})")


def train_pipeline(
    urls: Sequence[str],
    transform: Callable,
    caption: Callable[[dict], str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    start_epoch: int = 0,
) -> wds.DataPipeline:
    """Endless batches of (images float[B,3,H,W], tokens long[B,L], labels long[B]).

    ``caption(sample)`` gives the text paired with a sample (its class prompt for the
    ID task, its ``txt`` for the pretraining corpus); sample fields other than the image
    arrive as raw bytes. ``transform`` maps an RGB PIL image to a (3, H, W) tensor; the
    batches equal stacking its outputs (open_clip's transforms take the batched fast
    path of harness.data.transforms).
    """
    fast = split(transform)

    def to_pair(sample: dict):
        image = decode_image(_first_present(sample, IMAGE_KEYS, "image"))
        return fast.sample(image), caption(sample), int(sample.get("cls", -1))

    tokenize = CachedTokenizer(tokenizer)

    def collate(rows):
        images, texts, labels = zip(*rows)
        return fast.batch(torch.stack(images)), tokenize(texts), torch.tensor(labels)

    return wds.DataPipeline(
        lambda: _shards_forever(urls, seed, rank, world_size, start_epoch),
        wds.split_by_worker,
        tar_samples,  # webdataset's tarfile_to_samples, faster on local files (harness.data.tario)
        wds.shuffle(shuffle_buffer, rng=random.Random(seed + rank)),
        wds.map(to_pair),  # decodes only the image: no JSON parsing, no copies
        wds.batched(batch_size, collation_fn=collate, partial=False),
    )


class CachedTokenizer:
    """Tokenise each distinct text once: class prompts and web-style captions repeat a lot,
    and BPE tokenisation is a large share of the input pipeline's time."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], max_entries: int = 100_000):
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            if len(self.cache) + len(missing) > self.max_entries:
                self.cache.clear()
            self.cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self.cache[t] for t in texts])


def eval_pipeline(
    urls: Sequence[str],
    transform: Callable,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> wds.DataPipeline:
    """Batches of (images, labels long[B], keys list[str]), each of this rank's samples once
    (``transform`` as in :func:`train_pipeline`)."""
    fast = split(transform)

    def to_row(sample: dict):
        image = decode_image(_first_present(sample, IMAGE_KEYS, "image"))
        return fast.sample(image), int(sample.get("cls", -1)), sample["__key__"]

    def collate(rows):
        images, labels, keys = zip(*rows)
        return fast.batch(torch.stack(images)), torch.tensor(labels), list(keys)

    mine = list(urls)[rank::world_size]  # may be empty: that rank then yields nothing
    return wds.DataPipeline(
        lambda: ({"url": url} for url in mine),
        wds.split_by_worker,
        tar_samples,  # webdataset's tarfile_to_samples, faster on local files (harness.data.tario)
        wds.map(to_row),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )


def decoded_captions(sample: dict) -> str:
    """The pretraining corpus pairs each image with its own caption."""
    text = sample["txt"]
    return text.decode() if isinstance(text, bytes) else text


def class_prompt(classnames: Sequence[str], template: str) -> Callable[[dict], str]:
    """The ID task pairs each image with the prompt of its class."""
    def caption(sample: dict) -> str:
        label = int(sample["cls"])
        if not 0 <= label < len(classnames):
            raise ValueError(f"sample {sample.get('__key__')} has class {label}, outside 0..{len(classnames) - 1}")
        return template.format(classnames[label])
    return caption


def loader(pipeline: wds.DataPipeline, num_workers: int) -> Iterator:
    """Wrap a pipeline in a DataLoader when decoding should run in separate processes."""
    if num_workers == 0:
        return pipeline
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                       persistent_workers=True)
