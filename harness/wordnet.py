"""NegLabel's candidate vocabulary from a WordNet 3.0 database directory (no nltk, no internet).

Reads the ``data.noun`` / ``data.adj`` files of Debian's ``wordnet-base`` layout
(/usr/share/wordnet). The selection follows NegLabel (ICLR 2024, method.md): nouns
from every noun.* lexicographer file except noun.animal and noun.food, adjectives
from adj.all, adj.pert and adj.ppl. Each synset contributes its head word (the first
lemma), so a synonym set is one candidate; that gives ~72,500 candidates, the
paper's "about 70,000", and 15% of them ~10,900 negatives ("about 10,000").

Synset line format (WordNet's wndb(5)):
``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ... | gloss``
with w_cnt in hex; words use ``_`` for spaces and adjectives may carry a syntactic
marker such as ``(a)``, ``(p)`` or ``(ip)``. The package ships no ``lexnames`` file;
the numbers are fixed by WordNet's lexnames(5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from harness.negatives import Candidate
from harness.paths import write_text_atomic

DEFAULT_DIR = Path("/usr/share/wordnet")

# lexnames(5): the files NegLabel keeps.
NOUN_EXCLUDED = {5: "noun.animal", 13: "noun.food"}
NOUN_FILES = range(3, 29)  # 03 noun.Tops ... 28 noun.time
ADJ_FILES = {0: "adj.all", 1: "adj.pert", 44: "adj.ppl"}
# CSP's selection (NeurIPS 2024) also drops noun.group, noun.person, noun.quantity and adj.pert.
CSP_NOUN_EXCLUDED = {**NOUN_EXCLUDED, 14: "noun.group", 18: "noun.person", 24: "noun.quantity"}
CSP_ADJ_FILES = {0: "adj.all", 44: "adj.ppl"}

_MARKER = re.compile(r"\((a|p|ip)\)$")


class WordNetError(ValueError):
    """A missing or malformed WordNet database; the message names the file and line."""


@dataclass
class Selection:
    candidates: list[Candidate]
    counts: dict[str, int] = field(default_factory=dict)
    """synsets read / kept per kind, candidates per kind, duplicates and ID names dropped."""


def synsets(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(lex_filenum, words) for every synset line of one data.* file."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  "):  # the licence header
                continue
            parts = line.split(" ")
            try:
                lex, count = int(parts[1]), int(parts[3], 16)
                words = [parts[4 + 2 * i] for i in range(count)]
            except (IndexError, ValueError):
                raise WordNetError(f"{path}:{lineno}: not a WordNet synset line: {line[:80]!r}") from None
            if count < 1:
                raise WordNetError(f"{path}:{lineno}: synset with no words")
            yield lex, words


def normalise(word: str) -> str:
    """WordNet spelling -> label text: drop the adjective marker, underscores become spaces."""
    return _MARKER.sub("", word).replace("_", " ").strip()


def select(wordnet_dir: str | Path = DEFAULT_DIR, exclude: Iterable[str] = (), mode: str = "neglabel") -> Selection:
    """NegLabel's candidates: nouns first, then adjectives, each de-duplicated case-insensitively
    within its kind (the first spelling wins), minus any word equal to an ``exclude`` name
    (the ID class names: an ID label is never a negative). ``mode="csp"``: CSP's lexicographer
    files instead (the phrases replace the adjectives in harness.negatives.csp_pool)."""
    if mode not in ("neglabel", "csp"):
        raise WordNetError(f"mode must be neglabel or csp, got {mode!r}")
    noun_out = CSP_NOUN_EXCLUDED if mode == "csp" else NOUN_EXCLUDED
    adj_in = CSP_ADJ_FILES if mode == "csp" else ADJ_FILES
    root = Path(wordnet_dir)
    excluded = {e.strip().lower() for e in exclude}
    out: list[Candidate] = []
    counts: dict[str, int] = {}
    for kind, filename, keep in (("noun", "data.noun", lambda lex: lex in NOUN_FILES and lex not in noun_out),
                                 ("adj", "data.adj", lambda lex: lex in adj_in)):
        path = root / filename
        if not path.is_file():
            raise WordNetError(f"WordNet database file missing: {path} (install Debian's wordnet-base, or pass "
                               "--wordnet DIR holding WordNet 3.0's data.noun and data.adj)")
        seen: set[str] = set()
        read = kept = dupes = dropped = 0
        for lex, words in synsets(path):
            read += 1
            if not keep(lex):
                continue
            kept += 1
            word = normalise(words[0])
            key = word.lower()
            if key in excluded:
                dropped += 1
            elif key in seen:
                dupes += 1
            else:
                seen.add(key)
                out.append(Candidate(kind, word))
        counts.update({f"{kind}_synsets": read, f"{kind}_synsets_selected": kept, f"{kind}_duplicates": dupes,
                       f"{kind}_id_names_dropped": dropped, f"{kind}_candidates": len(seen)})
    return Selection(out, counts)


def write_candidates(candidates: Sequence[Candidate], path: str | Path, header: Sequence[str] = ()) -> Path:
    """The format negatives.read_candidates reads: ``kind<TAB>word`` lines, ``#`` comments first."""
    lines = [f"# {h}" for h in header] + [f"{c.kind}\t{c.word}" for c in candidates]
    return write_text_atomic(path, "\n".join(lines) + "\n")
