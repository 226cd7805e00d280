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

import math

import numpy as np

from ..metrics import mean_ci

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


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
