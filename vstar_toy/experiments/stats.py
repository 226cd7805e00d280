"""Verdicts from seeds: paired differences and their confidence intervals.

A claim "A beats B" is judged on the per-seed differences A_s - B_s (the same seed gives both arms
the same world, SFT policy and batches, so pairing removes what they share). With the Student-t
interval of the mean difference (``metrics.mean_ci``):

- ``holds``           the interval lies above 0;
- ``does not hold``   the interval lies below 0 (B beats A);
- ``inconclusive``    the interval contains 0, or there is a single seed (no interval).

A chain A > B > C holds when every link holds, does not hold when any link is reversed, and is
inconclusive otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..metrics import mean_ci

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """One paired comparison "a > b" on ``metric`` over seeds, as a claim's verdict reads it."""

    a: str
    """The arm claimed to be better (its name in the claim's table)."""
    b: str
    """The arm it is compared with."""
    metric: str
    """The metric compared (with a note where the comparison was chosen, e.g. "(chosen on validation)")."""
    diff: float
    """Mean over seeds of a - b."""
    low: float
    """Lower end of the 95% interval of ``diff``."""
    high: float
    """Upper end of the 95% interval of ``diff``."""
    detectable: float
    """The interval's half-width: the smallest mean difference these seeds could tell from 0."""
    verdict: str
    """HOLDS, FAILS or UNSURE (``compare``; ``not_worse`` for "a matches or beats b")."""
    reported: bool = False
    """Shown beside the claim's verdict, not part of it (``combine`` leaves it out)."""

    @staticmethod
    def of(a: str, b: str, metric: str, a_values, b_values, test=None) -> Comparison:
        """"a > b" on ``metric`` from the paired per-seed values, judged by ``test`` (``compare`` by default)."""
        return Comparison(a, b, metric, **(test or compare)(a_values, b_values))

    def labelled(self, metric: str) -> Comparison:
        """This comparison under another ``metric`` label, e.g. "ndcg@10 (chosen on validation)"."""
        return dataclasses.replace(self, metric=metric)

    def aside(self) -> Comparison:
        """This comparison, reported beside the verdict and taking no part in it."""
        return dataclasses.replace(self, reported=True)


def verdict_of(comparisons: list[Comparison]) -> str:
    """A claim's verdict: ``combine`` of its comparisons that are not only reported."""
    return combine([c.verdict for c in comparisons if not c.reported])


def compare(a, b, confidence: float = 0.95) -> dict:
    """Paired comparison "a > b" over seeds: mean difference, its interval, the verdict, and
    ``detectable``: the interval's half-width, the smallest mean difference these seeds could have
    told from 0 (a smaller true effect is called inconclusive, however real)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need the same, non-zero number of seeds: got {a.size} and {b.size}")
    mean, low, high = mean_ci(a - b, confidence)
    if math.isnan(low) or math.isnan(high):
        verdict = UNSURE
    elif low > 0:
        verdict = HOLDS
    elif high < 0:
        verdict = FAILS
    else:
        verdict = UNSURE
    return {"diff": mean, "low": low, "high": high, "detectable": (high - low) / 2, "verdict": verdict}


def combine(verdicts: list[str]) -> str:
    """All links hold -> holds; any link fails -> does not hold; else inconclusive."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return UNSURE


def not_worse(a, b, confidence: float = 0.95) -> dict:
    """"a matches or beats b": holds unless b is significantly better (the interval of a - b lies
    below 0); with one seed, inconclusive."""
    c = compare(a, b, confidence)
    if math.isnan(c["low"]):
        c["verdict"] = UNSURE
    else:
        c["verdict"] = FAILS if c["high"] < 0 else HOLDS
    return c
