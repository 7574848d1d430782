"""The benchmark table: one row per figure with what it is compared against and its goal.

Conventions:

- ``ratio`` is oriented by the goal: for speed it is harness / comparison (higher is
  better, e.g. images/s over the ceiling's images/s, or the comparison's seconds over
  ours); for memory it is the large problem's peak over the small one's (lower is better).
- ``goal`` is ``">= x"``, ``"<= x"`` or ``""`` (shown for information); ``met`` is
  True/False, or None when there is no goal or the figure was skipped.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = ("bench", "figure", "value", "unit", "baseline", "baseline_value", "ratio", "goal", "met", "note")


@dataclass(frozen=True)
class Row:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float = math.nan
    ratio: float = math.nan
    goal: str = ""
    note: str = ""
    met: bool | None = field(default=None)

    def __post_init__(self):
        if self.met is None and self.goal:
            object.__setattr__(self, "met", goal_met(self.ratio, self.goal))


def goal_met(ratio: float, goal: str) -> bool | None:
    """Whether ``ratio`` meets ``goal`` (``">= x"`` / ``"<= x"``); None when it is not a number."""
    if not math.isfinite(ratio):
        return None
    op, threshold = goal.split()
    if op not in (">=", "<="):
        raise ValueError(f"goal must be '>= x' or '<= x', got {goal!r}")
    return ratio >= float(threshold) if op == ">=" else ratio <= float(threshold)


@dataclass(frozen=True)
class Section:
    """One benchmark's rows and its notes (what bounds the stage, how it was measured)."""

    name: str
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def frame(sections: list[Section]) -> pd.DataFrame:
    """All rows as a DataFrame with :data:`COLUMNS` (``met`` is a nullable boolean)."""
    rows = [asdict(r) for s in sections for r in s.rows]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["met"] = df["met"].astype("boolean")
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Atomic write (temp + os.replace): a reader sees the old table or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def _number(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "—"
    if unit == "s":
        return f"{value:.3g} s"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def _verdict(row: Row) -> str:
    if not row.goal:
        return "info"
    return {True: "**met**", False: "**not met**", None: "skipped"}[row.met]


def markdown(sections: list[Section], header: str) -> str:
    """The table (one row per figure, ratio, goal, verdict) and each section's notes."""
    lines = [header, "", "| stage | figure | measured | compared with | ratio | goal | verdict |",
             "|---|---|---|---|---|---|---|"]
    for section in sections:
        for r in section.rows:
            baseline = f"{r.baseline}: {_number(r.baseline_value, r.unit)}" if r.baseline else ""
            ratio = f"{r.ratio:.2f}" if math.isfinite(r.ratio) else "—"
            lines.append(f"| {section.title} | {r.figure} | {_number(r.value, r.unit)} | {baseline} | {ratio} "
                         f"| {r.goal} | {_verdict(r)} |")
    for section in sections:
        if section.notes:
            lines += ["", f"### {section.title} ({section.seconds:.0f} s)", ""]
            lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines) + "\n"


def write_markdown(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
