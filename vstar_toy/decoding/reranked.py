"""The paper's public code's reading of VED: a value-reranked top-b tree, with no search loop.

Every node of the first L - 1 levels expands its ``b`` most likely children (``b`` per node, where beam
search keeps ``B`` per level), so depth l holds up to b^l prefixes, and every candidate token stays
within the policy's top b at its parent. The b^L leaves take their parent's value (V of the depth-(L-1)
prefix), ties broken by their own log pi, and the best |C| are kept. The value only reranks what the
policy's top-b tree already holds: it cannot reach an item whose code is outside the top b anywhere on
its path, which VED's expansions can.

Cost under Eq. 10's rule (one forward token per node whose own next-token distribution is needed; the
leaves are scored from their parents for free, as in every decoder here): 1 + b + ... + b^(L-1) tokens,
at most. With L = 3: 73 at b = 8 (2.25x the 1x budget of |C| = 16, 33 tokens), 31 at b = 5 (inside 1x).
``DecodeConfig.rerank_width`` None takes the widest b that fits the budget.
"""

from __future__ import annotations

import time

import torch

from ..policy.base import SIDPolicy
from .beam import NEG_INF, candidates_from_trace, run_beam
from .tree import CandidateSets, budget_tokens


def tree_cost(width: int, levels: int) -> int:
    """Forward tokens of a full top-``width`` tree: 1 + b + ... + b^(L-1) (the root and every node above
    the leaves). ``tree_cost(8, 3)`` = 73."""
    return sum(width**lvl for lvl in range(levels))


def widest(levels: int, budget: int) -> int:
    """The largest b >= 1 whose tree fits ``budget`` forward tokens (1 when even b = 1 does not)."""
    b = 1
    while tree_cost(b + 1, levels) <= budget:
        b += 1
    return b


class TopPerParentRanker:
    """Keeps each parent's ``width`` most likely children and nothing else (scores -inf elsewhere), so that
    ``run_beam`` with a width of ``width ** L`` grows the full top-b tree."""

    def __init__(self, width: int):
        self.width = width

    def start(self, q: int) -> torch.Tensor:
        return torch.zeros(q, 1)

    def children(self, level: int, parent_score: torch.Tensor, child_logp: torch.Tensor) -> torch.Tensor:
        k = min(self.width, child_logp.shape[-1])
        kth = child_logp.topk(k, dim=-1).values[..., -1:]  # (Q, W, 1) each parent's b-th best child
        return torch.where((child_logp >= kth) & (child_logp > NEG_INF), child_logp, NEG_INF)

    def select(self, idx: torch.Tensor) -> None:
        pass


def reranked_decode(policy: SIDPolicy, histories, value_fn, n_candidates: int, budget_x: float = 1.0,
                    width: int | None = None) -> CandidateSets:
    """The top-``width`` tree of the policy, its leaves ranked by their parent's value ``value_fn`` (a
    ``values.ValueFn``), the best ``n_candidates`` returned. ``width`` None: the widest tree within the
    budget of ``budget_x``; a given width whose tree exceeds the budget is refused."""
    t0 = time.perf_counter()
    L = policy.levels
    budget = budget_tokens(L, n_candidates, budget_x)
    if width is None:
        width = widest(L, budget)
    elif tree_cost(width, L) > budget:
        need = (tree_cost(width, L) - 1) / ((L - 1) * n_candidates)
        raise ValueError(f"rerank_width = {width} is invalid at budget_x = {budget_x:g}: its tree costs "
                         f"{tree_cost(width, L)} forward tokens, the budget is {budget}; pass budget_x >= {need:.4g} "
                         "or a smaller width")
    trace = run_beam(policy, histories, width**L, ranker=TopPerParentRanker(width))
    leaf_value = _parent_values(trace, value_fn) if L >= 2 else torch.zeros(len(trace.levels[-1].query))
    # rank each query's leaves by (parent's value, own log pi), both descending
    filled = trace.table >= 0
    v = torch.full(trace.table.shape, NEG_INF)
    lp = torch.full(trace.table.shape, NEG_INF)
    v[filled] = leaf_value[trace.table[filled]].float().cpu()
    lp[filled] = trace.levels[-1].cum_logp[trace.table[filled]].float().cpu()
    by_logp = torch.sort(lp, dim=1, descending=True, stable=True).indices
    order = by_logp.gather(1, torch.sort(v.gather(1, by_logp), dim=1, descending=True, stable=True).indices)
    rank = torch.empty_like(v).scatter_(1, order, -torch.arange(v.shape[1], dtype=v.dtype).expand_as(v))
    trace.score = torch.where(filled, rank, NEG_INF).to(trace.score.device)
    return candidates_from_trace(trace, policy, n_candidates, "reranked", budget, t0)


def _parent_values(trace, value_fn) -> torch.Tensor:
    """(leaves,) V of each leaf's parent, the depth-(L-1) prefix, read from the state that predicted it
    (no forward of its own, as every value here); also written into the trees' ``value`` column."""
    mid, leaf = trace.levels[-2], trace.levels[-1]
    above_state = trace.levels[-3].state if len(trace.levels) >= 3 else trace.root
    above_nodes = trace.levels[-3].node if len(trace.levels) >= 3 else trace.root_node
    rows = torch.searchsorted(torch.as_tensor(above_nodes, device=mid.parent.device), mid.parent)
    depth = len(trace.levels) - 2  # 0-based index of the depth-(L-1) code
    v_mid = value_fn(above_state.index(rows, cache=False), mid.sid[:, depth], mid.cum_logp)
    mid_rows = torch.searchsorted(torch.as_tensor(mid.node, device=leaf.parent.device), leaf.parent)
    v_leaf = v_mid[mid_rows.to(v_mid.device)]
    trace.tree.set(mid.node, value=v_mid)
    trace.tree.set(leaf.node, value=v_leaf)
    return v_leaf
