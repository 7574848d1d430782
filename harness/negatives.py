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


# CSP (NeurIPS 2024): superclass words an adjective is conjugated with ("wooden structure", ...).
CSP_SUPERCLASSES = ("environment", "space", "object", "scene", "place", "item", "area", "view", "thing",
                    "pattern", "structure", "landscape")


def conjugate(candidates: list[Candidate], superclasses: tuple[str, ...] = CSP_SUPERCLASSES) -> list[Candidate]:
    """CSP's conjugated phrases: every adjective of ``candidates`` with every superclass word, as noun
    candidates ("<adjective> <superclass>", prompted with the noun prompt), in adjective order."""
    return [Candidate("noun", f"{c.word} {sup}") for c in candidates if c.kind == "adj" for sup in superclasses]


def prompts(candidates: list[Candidate], noun_prompt: str, adjective_prompt: str) -> list[str]:
    return [(noun_prompt if c.kind == "noun" else adjective_prompt).format(c.word) for c in candidates]


def mine(id_text: torch.Tensor, candidate_text: torch.Tensor, kinds: list[str],
         percentile: float = 95.0, ratio: float = 0.15) -> list[int]:
    """NegMining: indices of the candidates least similar to the ID prompts.

    For each candidate, the ``percentile``-th percentile of its cosine similarity to
    the ID prompts measures how ID-like it is; within each kind, the ``ratio`` share
    of least ID-like candidates is kept (at least one per kind present).
    Inputs are L2-normalised: id_text (C, D), candidate_text (M, D). Sorted output.
    """
    similarity = candidate_text.float() @ id_text.float().T  # (M, C)
    closeness = torch.quantile(similarity, percentile / 100.0, dim=1)
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
                 device: str = "cpu") -> dict:
    """Encode ID prompts and candidate prompts with ``arch``/``pretrained``, keep NegMining's choice,
    write ``out`` (marker, provenance, ``kind<TAB>word`` lines). Returns the provenance written."""
    import json
    from datetime import datetime, timezone

    from harness import models
    from harness.evaluate import encode_texts

    weights = models.resolve_weights(arch, pretrained)
    bundle = models.build(arch, weights, quick_gelu=models.needs_quick_gelu(arch, pretrained))
    model = bundle.model.to(device)
    with torch.no_grad():
        id_text = encode_texts(model, bundle.tokenizer, [eval_prompt.format(c) for c in classnames],
                               batch_size, device)
        cand_text = encode_texts(model, bundle.tokenizer, prompts(candidates, noun_prompt, adjective_prompt),
                                 batch_size, device)
    keep = mine(id_text, cand_text, [c.kind for c in candidates], percentile, ratio)
    mined = [candidates[i] for i in keep]
    record = dict(provenance)
    record.update({
        "model_arch": arch, "model_pretrained": pretrained, "weights_file": weights,
        "percentile": percentile, "ratio": ratio, "eval_prompt": eval_prompt, "noun_prompt": noun_prompt,
        "adjective_prompt": adjective_prompt, "id_classes": len(classnames),
        "candidates": {k: sum(c.kind == k for c in candidates) for k in KINDS},
        "mined": {k: sum(c.kind == k for c in mined) for k in KINDS},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    lines = [MINED_MARKER, "# provenance: " + json.dumps(record, sort_keys=True)]
    lines += [f"{c.kind}\t{c.word}" for c in mined]
    write_text_atomic(out, "\n".join(lines) + "\n")
    return record
