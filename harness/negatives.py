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
