"""How long to train, and how much of what the search finds the training puts into the policy.

VED finds candidates far better than the policy's own beam search (a search's finds); the self-evolving
loop (Sec. 4.4) is meant to move the policy towards them. Two pure functions measure that loop:

- ``transfer``: the share of the search's lead over the SFT policy that training carried into the
  policy itself, on the same users: (beam-decoded quality now - the SFT policy's) / (the SFT policy's
  VED-decoded quality - its beam-decoded quality). 0: nothing carried; 1: the policy, decoded by beam
  search, is as good as the search was on the SFT policy; above 1: better.
- ``flat``: the horizon rule. A run stops when its validation curve has flattened: the best of its last
  ``evals`` evaluations is no more than ``gain`` above the best before them (``RLConfig.plateau_evals``,
  ``plateau_gain``), rather than at a step count guessed in advance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def transfer(now: float, sft: float, sft_search: float) -> float:
    """(now - sft) / (sft_search - sft): the share of the search's lead that the policy took in.

    ``now``: the trained policy's quality decoded by beam search; ``sft``: the SFT policy's, by beam search;
    ``sft_search``: the SFT policy's decoded by the search (VED); all on the same users. NaN when the search
    has no lead to carry (``sft_search <= sft``) or a number is missing.

    >>> transfer(0.279, 0.011, 0.449)  # V-STAR+ at step 300 of the issue-29 probe
    0.6118721461187215
    >>> math.isnan(transfer(0.2, 0.3, 0.3))
    True
    """
    gap = sft_search - sft
    if not all(math.isfinite(v) for v in (now, sft, sft_search)) or gap <= 0:
        return math.nan
    return (now - sft) / gap


def flat(history: Sequence[float], evals: int, gain: float = 0.0) -> bool:
    """True when the best of the last ``evals`` values is at most ``gain`` above the best before them.

    ``history``: a validation measure at each evaluation so far, in order (NaN entries are ignored);
    ``evals`` >= 1. Fewer than ``evals`` + 1 values: never flat (the curve has not had its chance).

    >>> flat([0.1, 0.2, 0.25, 0.24, 0.25], evals=2)  # 0.25 is not above the 0.25 before
    True
    >>> flat([0.1, 0.2, 0.25, 0.24, 0.27], evals=2, gain=0.01)
    False
    >>> flat([0.1, 0.2], evals=2)
    False
    """
    if evals < 1:
        raise ValueError(f"evals = {evals} is invalid: expected an integer >= 1")
    values = [v for v in history if math.isfinite(v)]
    if len(values) <= evals:
        return False
    return max(values[-evals:]) <= max(values[:-evals]) + gain


__all__ = ["transfer", "flat"]
