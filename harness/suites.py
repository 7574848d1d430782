"""The paper's benchmark suites as named, versioned definitions, and a check of a data root against them.

A suite names its ID test set and its OoD test sets, each with the sample count the
benchmark defines. The datasets live where every dataset lives: one directory per
dataset under ``data.root`` (shards + ``manifest.json``; the manifest's shards may be
object-store URLs, see ``harness shards index``), named as in :data:`SUITES`. The
near/far groups and their averages are the paper's (:data:`harness.paper.AVERAGES`),
not redefined here.

Counts: MOS and the ID set from ../shared/reference/method.md; OpenOOD v1.5's from its
image lists (SSB-hard 49,000, NINCO 5,879, iNaturalist 10,000, Textures 5,160,
OpenImage-O 15,869). MOS's Textures (5,640) and OpenOOD's (5,160) differ, so they are
two directories; iNaturalist is the same 10,000 images in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import paper


class SuiteError(ValueError):
    """An unknown suite, or a data root whose datasets do not match a suite."""


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    id_test: tuple[str, int]
    """(directory under data.root, expected samples)."""
    ood_test: tuple[tuple[str, int], ...]
    """(directory under data.root, expected samples), in the paper's column order."""

    def overrides(self) -> dict[str, object]:
        """``--set`` values that point a config at this suite (see :func:`harness.config.load`)."""
        return {"data.id_test": self.id_test[0], "data.ood_test": [name for name, _ in self.ood_test]}

    def averages(self) -> dict[str, tuple[str, ...]]:
        """The paper's averages for this suite: label -> the paper's OoD set names."""
        return paper.AVERAGES[self.name]


IMAGENET_VAL = ("imagenet-val", 50_000)
SUITES: dict[str, Suite] = {
    "mos": Suite("mos", "1", IMAGENET_VAL,
                 (("iNaturalist", 10_000), ("SUN", 10_000), ("Places", 10_000), ("Textures", 5_640))),
    "openood-v1.5": Suite("openood-v1.5", "1.5", IMAGENET_VAL,
                          (("SSB-hard", 49_000), ("NINCO", 5_879), ("iNaturalist", 10_000),
                           ("Textures-openood", 5_160), ("OpenImage-O", 15_869))),
}


def get(name: str) -> Suite:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return SUITES[name]


def check_counts(name: str, root: str | Path, allow_mismatch: bool = False) -> list[str]:
    """Compare every dataset of suite ``name`` under ``root`` with the expected sample count.

    Raises SuiteError listing every missing dataset and every count that differs
    (dataset, expected, found). With ``allow_mismatch`` a differing count is returned
    as a warning line instead (a missing dataset is always an error). Returns the warnings.
    """
    from harness.data.shards import read_manifest

    suite, root = get(name), Path(root).expanduser()
    problems, warnings = [], []
    for dataset, expected in (suite.id_test, *suite.ood_test):
        try:
            found = read_manifest(root / dataset).num_samples
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"{dataset}: {err}")
            continue
        if found != expected:
            line = f"{dataset}: expected {expected} samples for suite {name}, found {found} in {root / dataset}"
            (warnings if allow_mismatch else problems).append(line)
    if problems:
        raise SuiteError(f"data root {root} does not hold suite {name}:\n  " + "\n  ".join(problems))
    return warnings
