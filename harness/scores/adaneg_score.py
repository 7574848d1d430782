"""AdaNeg (Zhang & Zhang, NeurIPS 2024): NegLabel over proxies adapted to a stream of test images.

A test-time score: an image's score depends on the images seen before it, so it scores one
(ID test, OoD test) pair at a time, mixed into one stream. This is the computation of the authors'
code (YBZh/OpenOOD-VLM, ``TTAPromptPostprocessor_noadagap``, used by scripts/ood/adaneg; the
sample-level attention variant is left out), written from its facts:

1. The stream (``order``): "shuffled" (default) is the authors' evaluator: cat([OoD, ID]) in one
   seeded permutation (``torch.randperm`` on a CPU generator seeded with ``seed``; theirs is a
   DataLoader's unseeded shuffle); "ood-first" / "id-first" keep the sets in turn. Cut into
   batches of ``batch_size`` (256).
2. v: the vanilla grouped NegLabel score of each image (``groups`` groups, 5; the negatives that do
   not fill a group are dropped from the end of the list, then the rest is permuted with seed 0, as
   the authors' code does whatever the stream: harness.scores.neglabel's "tail" rule), at NegLabel's
   temperature (theirs: CLIP's logit scale, 100).
3. Memory: one slot per ID class and per negative label (C + M). A slot holds ``memory + 1``
   entries: entry 0 is its text feature, the others start as zeros and are filled from entry 1 on;
   filling never reaches the last entry (a slot fills up at ``memory - 1`` images). For each batch,
   first every image with v > threshold + gap (1 - threshold) (0.75) goes to the slot of its top ID
   class, then every image with v < threshold (1 - gap) (0.25) to the slot of its top negative, in
   stream order. An image's entropy is that of its softmax over the ID (resp. negative) logits. In a
   full slot it replaces the entry of the highest entropy (the highest index among ties) when any
   entry's entropy is higher than its own; else it is not kept. The text feature and the empty last
   entry rank with entropy 0, so they are replaced only when every image entry ranks below 0 (the
   1e-8 inside the log makes a near one-hot softmax's entropy slightly negative).
4. Proxies: the L2-normalised mean of every slot's entries (zeros included: they do not change the
   direction). p: grouped NegLabel of the batch's images against the C ID-class proxies and the M
   negative proxies (same groups). score = p + lam x v, after the batch was cached.

Defaults (config eval.adaneg_*, recorded with every result's config): order shuffled, seed 0,
batch 256, groups 5, memory 10, lam 0.1, threshold 0.5, gap 0.5 (the authors' ImageNet script).
"""

from __future__ import annotations

import math

from harness.lazy import torch
from harness.scores import naive
from harness.scores.neglabel_score import neglabel
from harness.scores.registry import register

ORDERS = ("shuffled", "ood-first", "id-first")


def stream_order(n_id: int, n_ood: int, order: str, seed: int) -> torch.Tensor:
    """Indices into cat([ID, OoD]) in stream order (module docstring, step 1)."""
    if order not in ORDERS:
        raise ValueError(f"eval.adaneg_order must be one of {ORDERS}, got {order!r}")
    ood_then_id = torch.cat([torch.arange(n_id, n_id + n_ood), torch.arange(n_id)])
    if order == "shuffled":
        return ood_then_id[torch.randperm(n_id + n_ood, generator=torch.Generator().manual_seed(seed))]
    return ood_then_id if order == "ood-first" else torch.arange(n_id + n_ood)


def protocol(cfg) -> str:
    """The stream protocol in words, for the report's conventions."""
    mix = {"shuffled": "OoD then ID, one seeded permutation of both", "ood-first": "all OoD, then all ID",
           "id-first": "all ID, then all OoD"}[cfg.adaneg_order]
    return (f"stream: {mix} (torch.randperm, CPU generator seed {cfg.adaneg_seed}), batches of "
            f"{cfg.adaneg_batch_size}, memory reset per (ID, OoD) pair; {cfg.adaneg_groups} NegLabel groups "
            f"(tail-drop, seed 0), memory {cfg.adaneg_memory}, lambda {cfg.adaneg_lambda:g}, "
            f"threshold {cfg.adaneg_threshold:g}, gap {cfg.adaneg_gap:g}")


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    return -(p * torch.log(p + 1e-8)).sum(dim=1)  # the authors' 1e-8, kept: it decides replacements


def adaneg(id_features: torch.Tensor, ood_features: torch.Tensor, class_text_features: torch.Tensor,
           negative_text_features: torch.Tensor, temperature: float = 0.01, groups: int = 5, seed: int = 0, *,
           order: str = "shuffled", batch_size: int = 256, memory: int = 10, lam: float = 0.1,
           threshold: float = 0.5, gap: float = 0.5, group_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaNeg scores of one ID/OoD pair (module docstring); returns (ID scores, OoD scores), each
    in its set's own order, float64, higher = more ID. ``seed``: the stream's permutation;
    ``group_seed``: the NegLabel groups' (the authors' code fixes it at 0)."""
    if batch_size < 1 or memory < 1:
        raise ValueError(f"eval.adaneg_batch_size and eval.adaneg_memory must be >= 1, got {batch_size}, {memory}")
    dtype = torch.promote_types(id_features.dtype, torch.float32)
    feats = torch.cat([id_features, ood_features]).to(dtype)
    text = torch.cat([class_text_features, negative_text_features]).to(dtype)
    n_cls = class_text_features.shape[0]
    vanilla = neglabel(feats, text[:n_cls], text[n_cls:], temperature, groups, group_seed, remainder="tail")
    slots = torch.zeros(text.shape[0], memory + 1, text.shape[1], dtype=dtype)
    slots[:, 0] = text
    filled = [1] * text.shape[0]
    entropy = torch.zeros(text.shape[0], memory + 1, dtype=torch.float64)
    proxies = text.clone()
    out = torch.empty(feats.shape[0], dtype=torch.float64)
    for batch in stream_order(len(id_features), len(ood_features), order, seed).split(batch_size):
        x, v = feats[batch], vanilla[batch]
        logits = x @ text.T / temperature
        touched = set()
        for mask, lo, hi in ((v > threshold + gap * (1 - threshold), 0, n_cls),
                             (v < threshold * (1 - gap), n_cls, text.shape[0])):
            top, ent = logits[:, lo:hi].argmax(dim=1) + lo, _entropy(logits[:, lo:hi]).double()
            for i in mask.nonzero().flatten().tolist():
                k = int(top[i])
                if filled[k] < memory:
                    j, filled[k] = filled[k], filled[k] + 1
                elif bool((ent[i] < entropy[k]).any()):
                    j = int(torch.argsort(entropy[k], stable=True)[-1])
                else:
                    continue
                slots[k, j], entropy[k, j] = x[i], ent[i]
                touched.add(k)
        if touched:
            rows = torch.tensor(sorted(touched))
            mean = slots[rows].mean(dim=1)
            proxies[rows] = mean / mean.norm(dim=1, keepdim=True)
        out[batch] = neglabel(x, proxies[:n_cls], proxies[n_cls:], temperature, groups, group_seed,
                              remainder="tail") + lam * v
    return out[: len(id_features)], out[len(id_features):]


def _kwargs(cfg) -> dict:
    return dict(order=cfg.adaneg_order, batch_size=cfg.adaneg_batch_size, memory=cfg.adaneg_memory,
                lam=cfg.adaneg_lambda, threshold=cfg.adaneg_threshold, gap=cfg.adaneg_gap)


def _compute(inputs, cfg, seed):
    return adaneg(inputs.id_features, inputs.features, inputs.class_text, inputs.negatives, cfg.neg_temperature,
                  cfg.adaneg_groups, cfg.adaneg_seed, **_kwargs(cfg))


def _reference(inputs, cfg, seed):
    """Sample by sample on lists: vanilla NegLabel, slots as lists of (entropy, feature), proxies
    rebuilt from scratch after each batch."""
    feats = naive.rows(inputs.id_features) + naive.rows(inputs.features)
    text = naive.rows(inputs.class_text) + naive.rows(inputs.negatives)
    n_cls, t, g, s = len(inputs.class_text), cfg.neg_temperature, cfg.adaneg_groups, cfg.adaneg_seed
    vanilla = naive.neglabel(torch.tensor(feats), inputs.class_text, inputs.negatives, t, g, 0, "tail").tolist()
    slots = [[(0.0, row)] + [(0.0, [0.0] * len(row))] * cfg.adaneg_memory for row in text]
    count = [1] * len(text)
    order = stream_order(len(inputs.id_features), len(inputs.features), cfg.adaneg_order, s).tolist()
    thres, gap = cfg.adaneg_threshold, cfg.adaneg_gap
    hi, lo = thres + gap * (1 - thres), thres * (1 - gap)
    out = [0.0] * len(feats)
    for start in range(0, len(order), cfg.adaneg_batch_size):
        batch = order[start:start + cfg.adaneg_batch_size]
        for side in ("id", "neg"):
            for i in batch:
                if not (vanilla[i] > hi if side == "id" else vanilla[i] < lo):
                    continue
                ks = range(n_cls) if side == "id" else range(n_cls, len(text))
                logit = {k: naive.dot(feats[i], text[k]) / t for k in ks}
                k = max(ks, key=lambda k: (logit[k], -k))
                probs = naive.softmax(list(logit.values()))
                ent = -sum(p * math.log(p + 1e-8) for p in probs)
                if count[k] < cfg.adaneg_memory:
                    slots[k][count[k]] = (ent, feats[i])
                    count[k] += 1
                elif any(ent < e for e, _ in slots[k]):
                    worst = max(range(len(slots[k])), key=lambda j: (slots[k][j][0], j))
                    slots[k][worst] = (ent, feats[i])
        proxies = []
        for slot in slots:
            mean = [sum(col) / len(slot) for col in zip(*(f for _, f in slot))]
            norm = sum(v * v for v in mean) ** 0.5
            proxies.append([v / norm for v in mean])
        prox = torch.tensor(proxies, dtype=torch.float64)
        p = naive.neglabel(torch.tensor([feats[i] for i in batch], dtype=torch.float64), prox[:n_cls], prox[n_cls:],
                           t, g, 0, "tail").tolist()
        for i, pi in zip(batch, p):
            out[i] = pi + cfg.adaneg_lambda * vanilla[i]
    n_id = len(inputs.id_features)
    return torch.tensor(out[:n_id], dtype=torch.float64), torch.tensor(out[n_id:], dtype=torch.float64)


register("adaneg", needs=("features", "class_text", "negatives", "stream"), compute=_compute,
         reference=_reference)(adaneg)
