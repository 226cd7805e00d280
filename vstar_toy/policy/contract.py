"""What a policy implementation must satisfy, as checks a test (or a new backbone's author) can run.

The decoders rely on ``step`` treating rows independently: VED advances prefixes of many queries and
depths in one call, beam search one level of every query. ``step_rows`` builds such a mixed batch and
``check_step_batch_equals_rows`` checks that stepping it at once equals stepping each row alone, at
one forward token per row. The tiny transformer and the Qwen backbone are both held to it
(``tests/properties/test_decoders.py``, ``tests/test_qwen.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import CountingPolicy, SIDPolicy, State


def step_rows(policy: SIDPolicy, histories, picks: list[tuple[int, int, int]]) -> tuple[State, torch.Tensor]:
    """(a batch of states, the code each row takes next). ``picks``: (query, item, depth) per row: the state
    of query ``query`` after the first ``depth`` codes of item ``item``'s SID, reached one row at a time
    from the query's root; its next code is the item's code at level ``depth + 1``."""
    sids = policy.catalog.sids
    with torch.no_grad():
        root = policy.start(histories)
        rows, codes = [], []
        for q, item, depth in picks:
            state = root.index(torch.tensor([q]))
            for lvl in range(depth):
                state = policy.step(state, torch.tensor([int(sids[item, lvl])]))
            rows.append(state)
            codes.append(int(sids[item, depth]))
    return State.cat(rows), torch.tensor(codes)


def assert_states_close(policy: SIDPolicy, a: State, b: State, atol: float) -> None:
    """The same rows: equal prefixes, -inf at the same codes, log-probs, hidden states and caches
    (``policy.prefix_cache``) within ``atol``."""
    for name in ("query", "node", "depth", "tokens"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    assert torch.equal(torch.isinf(a.logp), torch.isinf(b.logp))
    finite = torch.isfinite(a.logp)
    torch.testing.assert_close(a.logp[finite], b.logp[finite], rtol=0, atol=atol)
    torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=atol)
    torch.testing.assert_close(policy.prefix_cache(a), policy.prefix_cache(b), rtol=0, atol=atol)


def check_step_batch_equals_rows(policy: SIDPolicy, batch: State, codes: torch.Tensor, atol: float,
                                 order: np.ndarray | None = None) -> None:
    """``policy.step(batch, codes)`` equals stepping each row alone, costs one forward token per row, and
    (given a permutation ``order``) does not depend on the order of the rows."""
    counted = CountingPolicy(policy)
    with torch.no_grad():
        together = counted.step(batch, codes)
        assert counted.tokens == len(codes), (counted.tokens, len(codes))
        alone = State.cat([policy.step(batch.index(torch.tensor([i])), codes[i : i + 1]) for i in range(len(codes))])
        assert_states_close(policy, together, alone, atol)
        if order is not None:
            perm = torch.as_tensor(order)
            assert_states_close(policy, policy.step(batch.index(perm), codes[perm]), together.index(perm), atol)
