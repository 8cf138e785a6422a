"""Paired comparisons of two arms run on the same seeds: the evidence a demo or benchmark reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    """Mean of `treated - control` over seeds with a two-sided Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "above_zero": self.above_zero}


def paired_difference(treated: Sequence[float], control: Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
    """Seed-paired differences: the same seed drew the same labelled subset and augmentation stream."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95, not {confidence}")
    if len(treated) != len(control):
        raise ValueError(f"paired arms need the same seeds, got {len(treated)} and {len(control)} runs")
    diffs = [a - b for a, b in zip(treated, control)]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return PairedDifference(mean, -math.inf, math.inf, len(diffs), confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(mean, mean - half, mean + half, len(diffs), confidence)
