"""Bad input data: what counts as a bad sample, how it is counted, and the errors that name it.

A sample is bad when its image does not decode (``image``), its class label or caption
is missing, unparsable or outside the class list (``label``), or its shard cannot be
read whole: missing, not a tar file, truncated, or holding fewer samples than its
manifest says (``shard``; the missing samples are counted, or 1 when the count is
unknown).

Training skips bad samples and counts them; the counts travel *in* the sample stream
(a :class:`BadSamples` item between batches), because the pipeline may run in DataLoader
worker processes whose own counters the training process never sees. Evaluation
refuses them (:class:`BadDataError` naming the shard and key) unless told to skip them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

REASONS = ("image", "label", "shard")
MAX_EXAMPLES = 3  # enough to find the culprit; a flood of messages helps nobody


class BadDataError(ValueError):
    """Input data that a run cannot use; the message names the dataset, shard or key.

    ``collective``: every rank of a data-parallel run raises it at the same point (the
    decision was taken on gathered counts), so the run can stop cleanly on all of them.
    """

    def __init__(self, message: str, collective: bool = False):
        super().__init__(message)
        self.collective = collective


@dataclass
class BadSamples:
    """Counts of skipped samples per reason, with the first few descriptions.

    Picklable plain data: it crosses DataLoader worker processes and all_gather_object."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @classmethod
    def one(cls, reason: str, example: str, count: int = 1) -> "BadSamples":
        if reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r} (allowed: {', '.join(REASONS)})")
        return cls({reason: count}, [example])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, other: "BadSamples") -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
        for example in other.examples:  # a bad sample read again in a later epoch is the same culprit
            if len(self.examples) < MAX_EXAMPLES and example not in self.examples:
                self.examples.append(example)

    @classmethod
    def merged(cls, parts: Iterable["BadSamples"]) -> "BadSamples":
        out = cls()
        for part in parts:
            out.add(part)
        return out

    def by_reason(self) -> dict[str, int]:
        """Every reason, zeros included (fixed keys for tables and metrics)."""
        return {reason: self.counts.get(reason, 0) for reason in REASONS}

    def describe(self) -> str:
        """``"image 2, shard 10; e.g. <first example>; <second>"``."""
        counts = ", ".join(f"{reason} {n}" for reason, n in self.by_reason().items() if n)
        return f"{counts}; e.g. " + "; ".join(self.examples) if self.examples else counts or "none"
