"""AdaNeg (Zhang & Zhang, NeurIPS 2024): NegLabel plus adaptive proxies from a memory of test images.

A test-time score: an image's score depends on the images seen before it, so it scores one
(ID test, OoD test) pair at a time, mixed into one stream. Our reading of the method
(task-level proxies; the sample-level attention of the paper is left out):

1. The stream: the pair's features in ``order`` ("shuffled": one seeded permutation of both sets
   together, the OpenOOD-VLM code's mixing; "id-first" / "ood-first": one set, then the other),
   cut into batches of ``batch_size``.
2. For each batch, in stream order: every image's NegLabel score s decides whether it is cached;
   s >= threshold + gap / 2 puts it in the memory slot of its nearest ID class prompt,
   s <= threshold - gap / 2 in the slot of its nearest negative label. A slot keeps its last
   ``memory`` images (first in, first out).
3. Proxies: the L2-normalised mean of each non-empty slot. The proxy score is the softmax mass,
   at NegLabel's temperature, on the ID-class proxies among all proxies (0.5 while there are none;
   1 or 0 while one side has none).
4. score = s + lam x proxy score, for the batch's images after the batch was cached.

Defaults (config eval.adaneg_*, recorded with every result): order shuffled, seed 0, batch 256,
memory 10 per slot, lam 0.1, threshold 0.5, gap 0.5 (the OpenOOD-VLM scripts' lambda, memory,
threshold and gap).
"""

from __future__ import annotations

from collections import deque

import torch

from harness.scores import naive
from harness.scores.neglabel_score import neglabel
from harness.scores.registry import register

ORDERS = ("shuffled", "id-first", "ood-first")


def stream_order(n_id: int, n_ood: int, order: str, seed: int) -> torch.Tensor:
    """Indices into cat([ID, OoD]) in stream order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "shuffled":
        return torch.randperm(n_id + n_ood, generator=torch.Generator().manual_seed(seed))
    ids, oods = torch.arange(n_id), torch.arange(n_id, n_id + n_ood)
    return torch.cat([ids, oods] if order == "id-first" else [oods, ids])


def adaneg(id_features: torch.Tensor, ood_features: torch.Tensor, class_text_features: torch.Tensor,
           negative_text_features: torch.Tensor, temperature: float = 0.01, groups: int = 1, seed: int = 0, *,
           order: str = "shuffled", batch_size: int = 256, memory: int = 10, lam: float = 0.1,
           threshold: float = 0.5, gap: float = 0.5, remainder: str = "shuffled"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaNeg scores of one ID/OoD pair (module docstring); returns (ID scores, OoD scores), each
    in its set's own order, float64, higher = more ID."""
    if batch_size < 1 or memory < 1:
        raise ValueError(f"batch_size and memory must be >= 1, got {batch_size}, {memory}")
    feats = torch.cat([id_features, ood_features]).double()
    text, negs = class_text_features.double(), negative_text_features.double()
    base = neglabel(feats, text, negs, temperature, groups, seed, remainder=remainder)
    slots = [deque(maxlen=memory) for _ in range(text.shape[0] + negs.shape[0])]
    n_id, hi, lo = text.shape[0], threshold + gap / 2, threshold - gap / 2
    out = torch.empty_like(base)
    for batch in stream_order(len(id_features), len(ood_features), order, seed).split(batch_size):
        for i in batch.tolist():
            if base[i] >= hi:
                slots[int((text @ feats[i]).argmax())].append(feats[i])
            elif base[i] <= lo:
                slots[n_id + int((negs @ feats[i]).argmax())].append(feats[i])
        out[batch] = base[batch] + lam * _proxy_mass(feats[batch], slots, n_id, temperature)
    return out[: len(id_features)], out[len(id_features):]


def _proxy_mass(x: torch.Tensor, slots, n_id: int, temperature: float) -> torch.Tensor:
    full = [(k < n_id, torch.stack(list(s)).mean(0)) for k, s in enumerate(slots) if s]
    if not full:
        return torch.full((x.shape[0],), 0.5, dtype=x.dtype)
    is_id = torch.tensor([flag for flag, _ in full])
    proxies = torch.stack([p / p.norm() for _, p in full])
    return torch.softmax(x @ proxies.T / temperature, dim=1)[:, is_id].sum(dim=1)


def _kwargs(cfg) -> dict:
    return dict(order=cfg.adaneg_order, batch_size=cfg.adaneg_batch_size, memory=cfg.adaneg_memory,
                lam=cfg.adaneg_lambda, threshold=cfg.adaneg_threshold, gap=cfg.adaneg_gap)


def _compute(inputs, cfg, seed):
    return adaneg(inputs.id_features, inputs.features, inputs.class_text, inputs.negatives, cfg.neg_temperature,
                  cfg.neg_groups, cfg.adaneg_seed, remainder=cfg.neg_remainder, **_kwargs(cfg))


def _reference(inputs, cfg, seed):
    """Sample by sample on lists: NegLabel score, cache, proxies rebuilt after each batch."""
    feats = naive.rows(inputs.id_features) + naive.rows(inputs.features)
    text, negs = naive.rows(inputs.class_text), naive.rows(inputs.negatives)
    base = naive.neglabel(torch.tensor(feats), inputs.class_text, inputs.negatives, cfg.neg_temperature,
                          cfg.neg_groups, cfg.adaneg_seed, cfg.neg_remainder).tolist()
    order = stream_order(len(inputs.id_features), len(inputs.features), cfg.adaneg_order, cfg.adaneg_seed).tolist()
    memory: dict[tuple[bool, int], list[list[float]]] = {}
    hi, lo = cfg.adaneg_threshold + cfg.adaneg_gap / 2, cfg.adaneg_threshold - cfg.adaneg_gap / 2
    out = [0.0] * len(feats)
    for start in range(0, len(order), cfg.adaneg_batch_size):
        batch = order[start:start + cfg.adaneg_batch_size]
        for i in batch:
            if base[i] >= hi or base[i] <= lo:
                side = text if base[i] >= hi else negs
                best = max(range(len(side)), key=lambda k: (naive.dot(side[k], feats[i]), -k))
                slot = memory.setdefault((base[i] >= hi, best), [])
                slot[:] = (slot + [feats[i]])[-cfg.adaneg_memory:]
        keys = sorted(memory, key=lambda key: (not key[0], key[1]))  # ID slots first, as the fast path
        proxies = []
        for key in keys:
            mean = [sum(col) / len(memory[key]) for col in zip(*memory[key])]
            norm = sum(v * v for v in mean) ** 0.5
            proxies.append([v / norm for v in mean])
        for i in batch:
            if not keys:
                mass = 0.5
            else:
                probs = naive.softmax([naive.dot(feats[i], p) / cfg.neg_temperature for p in proxies])
                mass = sum(p for p, key in zip(probs, keys) if key[0])
            out[i] = base[i] + cfg.adaneg_lambda * mass
    n_id = len(inputs.id_features)
    return torch.tensor(out[:n_id], dtype=torch.float64), torch.tensor(out[n_id:], dtype=torch.float64)


register("adaneg", needs=("features", "class_text", "negatives", "stream"), compute=_compute,
         reference=_reference)(adaneg)
