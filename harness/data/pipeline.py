"""Streaming WebDataset pipelines for training and evaluation.

Distributed facts (rank, world size) are parameters, never read from the
environment, so the same code runs alone, under torchrun or under Ray Train.

- Training streams an endless, deterministic sequence of per-epoch shard
  permutations; this rank takes every ``world_size``-th shard of each
  permutation. The loop takes a fixed number of batches per epoch on every rank,
  so no rank runs dry before the others (which would deadlock DDP).
- Evaluation reads each of this rank's shards exactly once, in order, keeping the
  sample keys so results can be checked and joined.

Bad input (harness.data.badsamples): training skips bad samples and passes a
:class:`BadSamples` item down the stream in their place, which :class:`CountedBatches`
counts in the training process; evaluation raises :class:`BadDataError` naming the shard
and key, or with ``allow_bad`` skips them (the caller compares what it got with the
manifest). Given the manifest's per-shard counts, a shard that ends early is bad too.
"""

from __future__ import annotations

import json
import random
import tarfile
from typing import Callable, Iterable, Iterator, Sequence

import torch
import webdataset as wds

from harness.data.badsamples import BadDataError, BadSamples
from harness.data.tario import tar_samples
from harness.data.transforms import SplitTransform, split

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def _sources(urls: Sequence[str], shard_samples: Sequence[int] | None) -> list[dict]:
    """{"url", "expected"} per shard; expected (the manifest's sample count) may be None."""
    if shard_samples is not None and len(shard_samples) != len(urls):
        raise ValueError(f"{len(urls)} shards but {len(shard_samples)} shard sample counts")
    counts = list(shard_samples) if shard_samples is not None else [None] * len(urls)
    return [{"url": url, "expected": n} for url, n in zip(urls, counts)]


def _shards_forever(sources: Sequence[dict], seed: int, rank: int, world_size: int,
                    start_epoch: int = 0) -> Iterator[dict]:
    """Yield this rank's share of a fresh permutation of ``sources`` (see :func:`_sources`) each
    epoch, beginning with epoch ``start_epoch`` (0-based; a resumed run continues the sequence)."""
    if len(sources) < world_size:
        raise ValueError(f"{len(sources)} training shards cannot feed {world_size} workers: "
                         "write more (smaller) shards or use fewer workers")
    epoch = start_epoch
    while True:
        order = [dict(source) for source in sources]
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        yield from order[rank::world_size]
        epoch += 1


# What reading a damaged or missing shard raises: tario's TarFormatError is a ValueError,
# webdataset's remote reader raises tarfile/OS errors, a missing file FileNotFoundError.
_SHARD_ERRORS = (OSError, ValueError, EOFError, tarfile.TarError)


def _read_shards(sources: Iterable[dict], strict: bool, hint: str = "") -> Iterator[dict | BadSamples]:
    """Pipeline stage: {"url", "expected"} in, samples out. A shard that cannot be read whole
    (missing, unreadable, truncated, fewer samples than expected) ends in a BadSamples item
    counting its lost samples (1 when the count is unknown); ``strict`` raises BadDataError
    (naming the shard and the last sample read, plus ``hint``)."""
    for source in sources:
        url, expected = source["url"], source.get("expected")
        read, last, problem = 0, None, None
        try:
            for sample in tar_samples([{"url": url}]):
                read, last = read + 1, sample["__key__"]
                yield sample
        except _SHARD_ERRORS as err:
            where = f"after sample {last}" if last is not None else "before its first sample"
            problem = f"{url}: unreadable shard, {where} ({type(err).__name__}: {err})"
        if problem is None and expected is not None and read < expected:
            problem = (f"{url}: holds {read} samples but its manifest says {expected} "
                       "(empty, truncated or rewritten shard)")
        if problem is None and expected is None and read == 0:
            problem = f"{url}: empty shard"
        if problem is None:
            continue
        if strict:
            raise BadDataError(problem + hint)
        yield BadSamples.one("shard", problem, max(1, expected - read) if expected is not None else 1)


class _Bad(Exception):
    """Inside the per-sample stage: why a sample is bad (``reason`` one of badsamples.REASONS)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _decoded(sample: dict, fast: SplitTransform) -> torch.Tensor:
    try:
        return fast.encoded(_first_present(sample, IMAGE_KEYS, "image"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        text = str(err).replace(" <_io.BytesIO object", "").split(" at 0x")[0]  # the buffer's address says nothing
        raise _Bad("image", f"unreadable image ({type(err).__name__}: {text})") from err


def sample_label(sample: dict) -> int:
    """A sample's class: its ``cls`` field, else ``label`` or ``cls`` in its ``json`` (the public
    ImageNet WebDataset layouts), else -1 (OoD sets carry none). ValueError when unparsable.

    ``json`` is parsed only when ``cls`` is absent: our own shards carry both, and parsing
    JSON for every sample would cost throughput for nothing."""
    if "cls" in sample:
        return int(sample["cls"])  # ASCII digits, bytes or str; int() ignores surrounding whitespace
    if "json" not in sample:
        return -1
    meta = sample["json"]
    meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
    value = next((meta[k] for k in ("label", "cls") if isinstance(meta, dict) and k in meta), -1)
    if isinstance(value, bool) or not isinstance(value, (int, str)):  # 3.0, [3], null: not a class index
        raise ValueError(f"json label {value!r} is not an integer")
    return int(value)


def _label(sample: dict, num_classes: int | None) -> int:
    """The sample's class (:func:`sample_label`), within 0..num_classes-1 if given."""
    try:
        label = sample_label(sample)
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Bad("label", f"unparsable label ({err})") from err
    if num_classes is not None and not 0 <= label < num_classes:
        raise _Bad("label", f"class {label} outside 0..{num_classes - 1}")
    return label


def _guarded(convert: Callable[[dict], tuple], strict: bool, hint: str = "") -> Callable:
    """``convert`` for good samples; a bad one becomes a BadSamples item (``strict``: BadDataError
    naming shard and key, plus ``hint``). BadSamples items from earlier stages pass through."""
    def apply(sample):
        if isinstance(sample, BadSamples):
            return sample
        try:
            return convert(sample)
        except _Bad as bad:
            message = f"{sample.get('__url__')}: sample {sample.get('__key__')}: {bad}"
            if strict:
                raise BadDataError(message + hint) from None
            return BadSamples.one(bad.reason, message)
    return apply


def _batches(rows: Iterable, batch_size: int, collate: Callable, partial: bool,
             keep_bad: bool) -> Iterator:
    """Batches of ``batch_size`` good rows (the last one shorter if ``partial``); BadSamples
    items are passed on at once (``keep_bad``) or dropped."""
    batch = []
    for row in rows:
        if isinstance(row, BadSamples):
            if keep_bad:
                yield row
            continue
        batch.append(row)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)


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
    shard_samples: Sequence[int] | None = None,
    keys: frozenset[str] | None = None,
) -> wds.DataPipeline:
    """Endless batches of (images float[B,3,H,W], tokens long[B,L], labels long[B]), with a
    :class:`BadSamples` item in the stream wherever bad samples were skipped (count them with
    :class:`CountedBatches`).

    ``caption(sample)`` gives the text paired with a sample (its class prompt for the
    ID task, its ``txt`` for the pretraining corpus); sample fields other than the image
    arrive as raw bytes; an exception from it marks the sample's label bad. ``transform``
    maps an RGB PIL image to a (3, H, W) tensor; the batches equal stacking its outputs
    (open_clip's transforms take the batched fast path of harness.data.transforms).
    ``shard_samples``: the manifest's count per shard, so that a shard ending early counts
    its lost samples. ``keys``: train on these samples only (by ``__key__``; e.g. a few-shot subset).
    """
    fast = split(transform)

    def to_pair(sample: dict):
        image = _decoded(sample, fast)
        try:
            text = caption(sample)
        except Exception as err:  # a missing, unparsable or out-of-range class, or no caption
            raise _Bad("label", f"no usable label or caption ({type(err).__name__}: {err})") from err
        return image, text, _label(sample, None)

    tokenize = CachedTokenizer(tokenizer)

    def collate(rows):
        images, texts, labels = zip(*rows)
        return fast.batch(torch.stack(images)), tokenize(texts), torch.tensor(labels)

    sources = _sources(urls, shard_samples)
    return wds.DataPipeline(
        lambda: _shards_forever(sources, seed, rank, world_size, start_epoch),
        wds.split_by_worker,
        lambda shards: _read_shards(shards, strict=False),  # tario: faster than tarfile_to_samples on local files
        wds.select(lambda s: keys is None or isinstance(s, BadSamples) or s.get("__key__") in keys),
        wds.shuffle(shuffle_buffer, rng=random.Random(seed + rank)),
        wds.map(_guarded(to_pair, strict=False)),  # decodes only the image: no JSON parsing, no copies
        lambda rows: _batches(rows, batch_size, collate, partial=False, keep_bad=True),
    )


class CountedBatches:
    """The batches of a training stream, counting the BadSamples items between them.

    Counting happens here, in the training process, so that the counts include what
    DataLoader worker processes skipped. ``give_up_after``: more bad samples than this
    (e.g. the number of samples the whole run trains on) means the data is mostly
    unreadable, and waiting for enough good batches could take forever: BadDataError.
    """

    def __init__(self, stream: Iterable, give_up_after: int | None = None, where: str = "training data"):
        self.stream = iter(stream)
        self.give_up_after = give_up_after
        self.where = where
        self.bad = BadSamples()  # since the last take_bad()
        self.bad_total = 0
        self.good = 0

    def __iter__(self) -> "CountedBatches":
        return self

    def __next__(self):
        while True:
            item = next(self.stream)
            if not isinstance(item, BadSamples):
                self.good += len(item[0])
                return item
            self.bad.add(item)
            self.bad_total += item.total
            if self.give_up_after is not None and self.bad_total > self.give_up_after:
                raise BadDataError(f"{self.where}: {self.bad_total} bad samples against {self.good} good ones, "
                                   f"more than the {self.give_up_after} the run trains on: {self.bad.describe()}")

    def take_bad(self) -> BadSamples:
        """The bad samples counted since the last call."""
        taken, self.bad = self.bad, BadSamples()
        return taken


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
    shard_samples: Sequence[int] | None = None,
    num_classes: int | None = None,
    allow_bad: bool = False,
) -> wds.DataPipeline:
    """Batches of (images, labels long[B], keys list[str]), each of this rank's samples once
    (``transform`` as in :func:`train_pipeline`).

    Metrics over an unknown subset are not comparable, so a bad sample (unreadable image,
    label outside 0..num_classes-1 when ``num_classes`` is given, a shard that is missing,
    unreadable or, given the manifest's ``shard_samples``, short) raises BadDataError naming
    the shard and key. ``allow_bad`` skips them instead; the caller counts what is missing.
    """
    fast = split(transform)

    def to_row(sample: dict):
        return _decoded(sample, fast), _label(sample, num_classes), sample["__key__"]

    def collate(rows):
        images, labels, keys = zip(*rows)
        return fast.batch(torch.stack(images)), torch.tensor(labels), list(keys)

    mine = _sources(urls, shard_samples)[rank::world_size]  # may be empty: that rank then yields nothing
    hint = " (eval.allow_bad_samples: true skips such samples and counts them)"
    return wds.DataPipeline(
        lambda: iter(mine),
        wds.split_by_worker,
        lambda shards: _read_shards(shards, strict=not allow_bad, hint=hint),
        wds.map(_guarded(to_row, strict=not allow_bad, hint=hint)),
        lambda rows: _batches(rows, batch_size, collate, partial=True, keep_bad=False),
    )


def decoded_captions(sample: dict) -> str:
    """The pretraining corpus pairs each image with its own caption."""
    text = sample["txt"]
    return text.decode() if isinstance(text, bytes) else text


def class_prompt(classnames: Sequence[str], template: str) -> Callable[[dict], str]:
    """The ID task pairs each image with the prompt of its class."""
    def caption(sample: dict) -> str:
        label = sample_label(sample)
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
