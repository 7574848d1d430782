"""NegLabel's negative labels: candidate vocabulary files and NegMining.

A candidate file has one label per line, ``noun<TAB>word`` or ``adj<TAB>word``
(the WordNet stand-in the synthetic world writes; the WordNet builder writes the
same format). Nouns and adjectives get different prompts and are mined
separately, as in NegLabel (ICLR 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.paths import write_text_atomic

KINDS = ("noun", "adj")


@dataclass(frozen=True)
class Candidate:
    kind: str
    word: str


def read_candidates(path: str | Path) -> list[Candidate]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"negative-label file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, sep, word = line.partition("\t")
        if not sep or kind not in KINDS or not word.strip():
            raise ValueError(f"{path}:{lineno}: expected 'noun<TAB>word' or 'adj<TAB>word', got {line!r}")
        out.append(Candidate(kind, word.strip()))
    if not out:
        raise ValueError(f"{path}: no candidate labels")
    return out


# CSP (NeurIPS 2024; MengyuanChen21/NeurIPS2024-CSP): the superclass words an adjective is conjugated
# with ("wooden structure", ...), and the prompt templates its pool is encoded with (each candidate's
# text feature is the mean of its templates' unnormalised encodings, then L2-normalised).
CSP_SUPERCLASSES = ("environment", "space", "object", "scene", "place", "item", "area", "view", "thing",
                    "pattern", "structure", "landscape", "vista", "creature")
CSP_NOUN_TEMPLATES = ("a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
                      "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}")
CSP_PHRASE_TEMPLATES = ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}")
CSP_POOL_RULE = "csp-authors-3a7bdab"
"""Names how CSP's pool is built, in the text-side cache key: a pool cached under another rule is not reused."""
CSP_NEAR_DUPLICATE = 0.95
"""A CSP candidate whose cosine to some ID class exceeds this is ranked last (never a negative)."""


def csp_pool(candidates: list[Candidate], seed: int = 0) -> list[Candidate]:
    """CSP's pool: the nouns as they are; each adjective replaced by one phrase "<adjective> <superclass>"
    (kind adj), the superclass drawn by ``random.Random(seed).choice`` once per adjective in the list's
    order (the reference: ``random.seed(seed)`` then one ``random.choice`` per adjective read)."""
    import random

    rng = random.Random(seed)
    return [c if c.kind == "noun" else Candidate("adj", f"{c.word} {rng.choice(CSP_SUPERCLASSES)}")
            for c in candidates]


def csp_templates(kind: str) -> tuple[str, ...]:
    return CSP_NOUN_TEMPLATES if kind == "noun" else CSP_PHRASE_TEMPLATES


def encode_ensembles(model, tokenizer, words: list[str], templates: tuple[str, ...], device="cpu",
                     batch_size: int = 512) -> torch.Tensor:
    """(len(words), D): each word's mean unnormalised text encoding over ``templates``, L2-normalised
    (CSP's prompt ensembling)."""
    from harness.models import encode_texts

    raw = encode_texts(model, tokenizer, [t.format(w) for w in words for t in templates], batch_size, device,
                       normalize=False)
    mean = raw.reshape(len(words), len(templates), -1).mean(dim=1)
    return mean / mean.norm(dim=1, keepdim=True)


def csp_negatives(model, tokenizer, classnames, pool: list[Candidate], mined: bool, percentile: float,
                  ratio: float, device="cpu", batch_size: int = 512) -> tuple[torch.Tensor, list[Candidate]]:
    """(features, candidates) of CSP's negatives from ``pool`` (:func:`csp_pool`'s nouns and phrases):
    nouns and phrases encoded with their template ensembles; unless ``mined``, NegMining against the
    ID class names' noun-template ensembles, nouns and phrases ranked separately, near-duplicates of
    an ID class (cosine > CSP_NEAR_DUPLICATE) ranked last. ID class names are never negatives."""
    id_words = {c.lower() for c in classnames}
    pool = [c for c in pool if c.word.lower() not in id_words]
    if not pool:
        raise ValueError("CSP's pool is empty after dropping the ID class names")
    parts = {kind: [i for i, c in enumerate(pool) if c.kind == kind] for kind in KINDS}
    encoded = {kind: encode_ensembles(model, tokenizer, [pool[i].word for i in idx], csp_templates(kind), device,
                                      batch_size) for kind, idx in parts.items() if idx}
    dim = next(iter(encoded.values())).shape[1]
    features = torch.empty(len(pool), dim)
    for kind, idx in parts.items():
        if idx:
            features[idx] = encoded[kind]
    if mined:
        return features, pool
    id_text = encode_ensembles(model, tokenizer, list(classnames), CSP_NOUN_TEMPLATES, device, batch_size)
    keep = mine(id_text, features, [c.kind for c in pool], percentile, ratio, near_duplicate=CSP_NEAR_DUPLICATE)
    return features[keep], [pool[i] for i in keep]


def prompts(candidates: list[Candidate], noun_prompt: str, adjective_prompt: str) -> list[str]:
    return [(noun_prompt if c.kind == "noun" else adjective_prompt).format(c.word) for c in candidates]


def mine(id_text: torch.Tensor, candidate_text: torch.Tensor, kinds: list[str],
         percentile: float = 95.0, ratio: float = 0.15, near_duplicate: float | None = None) -> list[int]:
    """NegMining: indices of the candidates least similar to the ID prompts.

    For each candidate, the ``percentile``-th percentile of its cosine similarity to
    the ID prompts measures how ID-like it is; within each kind, the ``ratio`` share
    of least ID-like candidates is kept (at least one per kind present).
    Inputs are L2-normalised: id_text (C, D), candidate_text (M, D). Sorted output.
    ``near_duplicate`` (CSP): a candidate whose largest similarity exceeds it gets closeness 1.0.
    """
    similarity = candidate_text.float() @ id_text.float().T  # (M, C)
    closeness = torch.quantile(similarity, percentile / 100.0, dim=1)
    if near_duplicate is not None:
        closeness[similarity.amax(dim=1) > near_duplicate] = 1.0
    keep: list[int] = []
    for kind in KINDS:
        members = torch.tensor([i for i, k in enumerate(kinds) if k == kind], dtype=torch.long)
        if len(members) == 0:
            continue
        count = max(1, int(len(members) * ratio))
        order = torch.argsort(closeness[members], stable=True)
        keep.extend(members[order[:count]].tolist())
    return sorted(keep)


# A mined list (written by `harness negatives`) starts with this line; evaluation uses such a file
# as the final negatives instead of mining it again (15% of 15% would be silently wrong).
MINED_MARKER = "# harness negatives: mined"


def is_mined(path: str | Path) -> bool:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\n") == MINED_MARKER


def check_csp_source(negatives_path: str | Path, csp_path: str | Path | None) -> None:
    """CSP's pool is mined from raw candidates plus their conjugated phrases. Without
    eval.csp_negatives it is built from eval.negatives, which must then be a raw candidate file:
    a mined list would be mined a second time (15% of 15%), against the rule above. Raises
    ValueError naming both fields."""
    if csp_path is None and is_mined(negatives_path):
        raise ValueError(
            f"eval.csp_negatives: unset, and eval.negatives ({negatives_path}) is an already mined list; CSP's "
            "pool is mined from raw candidates and their conjugated phrases, so mining this list again would keep "
            "15% of 15%. Write CSP's pool with `harness negatives --mode csp --out FILE` and set "
            "eval.csp_negatives=FILE, or point eval.negatives to a raw candidate file")


def read_provenance(path: str | Path) -> dict:
    """The JSON provenance line of a mined file (``# provenance: {...}``)."""
    import json

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            if line.startswith("# provenance: "):
                return json.loads(line[len("# provenance: "):])
    raise ValueError(f"{path}: no '# provenance: ' line (not written by `harness negatives`)")


def mine_to_file(candidates: list[Candidate], classnames: list[str], out: str | Path, arch: str,
                 pretrained: str | None, percentile: float, ratio: float, eval_prompt: str,
                 noun_prompt: str, adjective_prompt: str, provenance: dict, batch_size: int = 512,
                 device: str = "cpu", csp: bool = False) -> dict:
    """Encode ID prompts and candidate prompts with ``arch``/``pretrained``, keep NegMining's choice,
    write ``out`` (marker, provenance, ``kind<TAB>word`` lines). Returns the provenance written.
    ``csp``: ``candidates`` is CSP's pool (:func:`csp_pool`), mined as :func:`csp_negatives` does."""
    import json
    from datetime import datetime, timezone

    from harness import models
    from harness.models import encode_texts

    weights = models.resolve_weights(arch, pretrained)
    bundle = models.build(arch, weights, quick_gelu=models.needs_quick_gelu(arch, pretrained))
    model = bundle.model.to(device)
    with torch.no_grad():
        if csp:
            _, mined = csp_negatives(model, bundle.tokenizer, classnames, candidates, False, percentile, ratio,
                                     device, batch_size)
        else:
            id_text = encode_texts(model, bundle.tokenizer, [eval_prompt.format(c) for c in classnames],
                                   batch_size, device)
            cand_text = encode_texts(model, bundle.tokenizer, prompts(candidates, noun_prompt, adjective_prompt),
                                     batch_size, device)
            mined = [candidates[i] for i in mine(id_text, cand_text, [c.kind for c in candidates], percentile, ratio)]
    record = dict(provenance)
    record.update({
        "model_arch": arch, "model_pretrained": pretrained, "weights_file": weights,
        "percentile": percentile, "ratio": ratio, "id_classes": len(classnames),
        **({"noun_templates": list(CSP_NOUN_TEMPLATES), "phrase_templates": list(CSP_PHRASE_TEMPLATES),
            "near_duplicate": CSP_NEAR_DUPLICATE} if csp else
           {"eval_prompt": eval_prompt, "noun_prompt": noun_prompt, "adjective_prompt": adjective_prompt}),
        "candidates": {k: sum(c.kind == k for c in candidates) for k in KINDS},
        "mined": {k: sum(c.kind == k for c in mined) for k in KINDS},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    lines = [MINED_MARKER, "# provenance: " + json.dumps(record, sort_keys=True)]
    lines += [f"{c.kind}\t{c.word}" for c in mined]
    write_text_atomic(out, "\n".join(lines) + "\n")
    return record
