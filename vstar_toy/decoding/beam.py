"""Constrained beam search over the SID trie, batched over queries, with the KV cache.

Cost: the start token (1) plus one forward per kept beam at levels 1 .. L-1, so exactly
``1 + (L - 1) * B`` forward tokens per query when every level has at least B valid prefixes (the
paper's 1x budget, Sec. 5.5); level-L leaves are scored from their parents' cached log-probs and
never forwarded.

The same loop serves the sampling decoders (sampling.py) through a ``ranker``: beam search ranks
children by their cumulative log-probability; stochastic beam search ranks them by Gumbel-perturbed
scores, which samples without replacement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..policy.base import SIDPolicy, State
from .tree import CandidateSets, TreeBuilder, budget_tokens

NEG_INF = float("-inf")


class LikelihoodRanker:
    """Beam search's rule: a child's score is log pi(y_<=l | x)."""

    def start(self, q: int) -> torch.Tensor:
        return torch.zeros(q, 1)

    def children(self, level: int, parent_score: torch.Tensor, child_logp: torch.Tensor) -> torch.Tensor:
        """(Q, W, K) ranking scores of the children; ``child_logp`` is the cumulative log-prob."""
        return child_logp

    def select(self, idx: torch.Tensor) -> None:
        """Told which flat (Q, W*K) children were kept, for rankers that carry state."""


@dataclass
class BeamLevel:
    """The beams kept at one level: node ids in the tree, their queries and prefixes, and (levels
    below the last, or all levels with ``forward_leaves``) the policy states after forwarding them."""

    query: torch.Tensor
    node: np.ndarray
    parent: torch.Tensor
    sid: torch.Tensor
    cum_logp: torch.Tensor
    token_logp: torch.Tensor
    state: State | None


@dataclass
class BeamTrace:
    root: State
    root_node: np.ndarray
    levels: list[BeamLevel]
    table: torch.Tensor  # (Q, W) row of each final beam in levels[-1], -1 where empty
    score: torch.Tensor  # (Q, W) the ranker's score of each final beam
    cost: torch.Tensor  # (Q,) forward tokens per query, on the device
    tree: TreeBuilder


def run_beam(
    policy: SIDPolicy,
    histories,
    width: int,
    ranker=None,
    forward_leaves: bool = False,
    record_pruned: bool = True,
) -> BeamTrace:
    """The level-by-level loop shared by beam search, the sampling decoders and VED's warm start."""
    if width < 1:
        raise ValueError(f"beam width = {width} is invalid: expected an integer >= 1")
    ranker = ranker or LikelihoodRanker()
    L, K = policy.levels, policy.k_max
    with torch.no_grad():
        root = policy.start(histories)
    q = len(root)
    dev = root.logp.device
    tree = TreeBuilder(L)
    root_node = tree.add(
        query=torch.arange(q), parent=-1, depth=0, token=-1, sid=np.full((q, L), -1), logp=0.0,
        entropy=root.entropy(), evaluated=True, pruned=False,
    )
    cost = torch.ones(q, dtype=torch.long, device=dev)  # read back with the candidates, after the loop
    table = torch.arange(q, device=dev)[:, None]  # (Q, W) rows into `state`; -1 = empty beam
    state = root
    score = ranker.start(q).to(dev)
    cum = torch.zeros(q, 1, device=dev)
    tok_lp = torch.zeros(q, 1, 0, device=dev)
    sid = torch.full((q, 1, L), -1, dtype=torch.long, device=dev)
    node_tab = torch.as_tensor(root_node, device=dev)[:, None]
    levels: list[BeamLevel] = []
    for lvl in range(L):
        w = table.shape[1]
        filled = table >= 0
        # each beam's next-token log-probs, -inf for empty beams (a where, not a masked copy: no shape to learn)
        lp = torch.where(filled[..., None], state.logp[table.clamp_min(0)], NEG_INF)
        child_cum = cum[..., None] + lp  # (Q, W, K) log pi(y_<=l | x)
        child_score = ranker.children(lvl, score, child_cum)
        k = min(width, w * K)
        top_s, top_i = child_score.reshape(q, w * K).topk(k, dim=1)
        ranker.select(top_i)
        keep = top_s > NEG_INF
        par, code = top_i // K, top_i % K
        new_cum = child_cum.reshape(q, -1).gather(1, top_i)
        new_tok = torch.cat([tok_lp.gather(1, par[..., None].expand(-1, -1, lvl)),
                             lp.reshape(q, -1).gather(1, top_i)[..., None]], -1)
        new_sid = sid.gather(1, par[..., None].expand(-1, -1, L)).clone()
        new_sid[..., lvl] = code
        # the tree: kept children, and (for display) the valid children the beam dropped
        kq, kb = keep.nonzero(as_tuple=True)
        every_query_full = len(kq) == q * k  # known from the shape: rows grouped by query, k each (State.block)
        k_par, k_code, k_sid, k_cum = par[kq, kb], code[kq, kb], new_sid[kq, kb], new_cum[kq, kb]
        kept_parent = node_tab[kq, k_par]
        first = tree.n
        kept_nodes = tree.add(
            query=kq, parent=kept_parent, depth=lvl + 1, token=k_code,
            sid=k_sid, logp=k_cum, evaluated=forward_leaves or lvl < L - 1, pruned=False,
        )
        if record_pruned:
            _add_pruned(tree, lvl, child_cum, top_i, keep, sid, node_tab)
        # forward the kept beams (not the leaves, unless asked): one backbone call for all queries
        new_table = torch.full((q, k), -1, dtype=torch.long, device=dev)
        new_table[kq, kb] = torch.arange(len(kq), device=dev)
        level_state = None
        if lvl < L - 1 or forward_leaves:
            parents = state.index(table[kq, k_par])
            parents.block = k if every_query_full else None
            with torch.no_grad():
                level_state = policy.step(parents, k_code, strict=False, at=lvl)
            tree.set(kept_nodes, entropy=level_state.entropy())  # H (Eq. 12) of the forwarded beams
            cost.index_add_(0, kq, torch.ones_like(kq))  # a count of fixed size: bincount would sync a GPU
        levels.append(BeamLevel(kq, kept_nodes, kept_parent, k_sid, k_cum, new_tok[kq, kb], level_state))
        node_tab = torch.full((q, k), -1, dtype=torch.long, device=dev)
        node_tab[kq, kb] = torch.arange(first, first + len(kq), device=dev)  # kept_nodes, made on the device
        table, state, score, cum, tok_lp, sid = new_table, level_state, top_s, new_cum, new_tok, new_sid
    return BeamTrace(root, root_node, levels, table, score, cost, tree)


def _add_pruned(tree: TreeBuilder, lvl: int, child_cum: torch.Tensor, top_i: torch.Tensor, keep: torch.Tensor,
                sid: torch.Tensor, node_tab: torch.Tensor) -> None:
    """Add to ``tree`` the valid children (log pi > -inf) of level ``lvl`` that the beam scored and did not
    keep, marked pruned (for display: the grey crosses of the tree pictures). ``child_cum`` (Q, W, K);
    ``top_i`` / ``keep`` (Q, k): the kept flat children; ``sid`` / ``node_tab``: the parents' SIDs and ids."""
    q, w, K = child_cum.shape
    kept_mask = torch.zeros(q, w * K, dtype=torch.bool, device=child_cum.device)
    kept_mask.scatter_(1, top_i, keep)
    dropped = (child_cum > NEG_INF).reshape(q, -1) & ~kept_mask
    dq, di = dropped.nonzero(as_tuple=True)
    dsid = sid[dq, di // K].clone()
    dsid[:, lvl] = di % K
    tree.add(query=dq, parent=node_tab[dq, di // K], depth=lvl + 1, token=di % K, sid=dsid,
             logp=child_cum.reshape(q, -1)[dq, di], evaluated=False, pruned=True)


def candidates_from_trace(trace: BeamTrace, policy: SIDPolicy, n_candidates: int, decoder: str,
                          budget: int, started: float, order_by_logp: bool = False) -> CandidateSets:
    """The final beams as CandidateSets (padded to ``n_candidates``); ``started``: the decoder's
    ``time.perf_counter()`` at its start (``CandidateSets.seconds``)."""
    last = trace.levels[-1]
    q, w = trace.table.shape
    L = policy.levels
    c = n_candidates
    filled = trace.table >= 0
    rank_key = torch.where(filled, trace.score, torch.full_like(trace.score, NEG_INF))
    if order_by_logp:
        rank_key = torch.where(filled, last.cum_logp[trace.table.clamp_min(0)], NEG_INF)
    order = rank_key.argsort(1, descending=True)[:, :c]
    rows = trace.table.gather(1, order)
    if rows.shape[1] < c:  # fewer final beams than candidates (a narrow tree): the rest is padding
        rows = torch.cat([rows, rows.new_full((q, c - rows.shape[1]), -1)], 1)
    r = rows.clamp_min(0)
    # the tree, the chosen beams' SIDs and log-probs and the cost, read back to the host in one copy
    tree, (ok, sid, tok, cum, cost) = trace.tree.build_with(
        [rows >= 0, last.sid[r], last.token_logp[r], last.cum_logp[r], trace.cost])
    ok = ok.astype(bool)
    sid = np.where(ok[..., None], sid, -1).astype(np.int64)
    sids = torch.as_tensor(sid)
    tok = torch.as_tensor(np.where(ok[..., None], tok, 0.0).astype(np.float32))
    logp = torch.as_tensor(np.where(ok, cum, NEG_INF).astype(np.float32))
    items_np = policy.catalog.item_of(sid.reshape(-1, L)).reshape(q, c)
    items = torch.as_tensor(items_np)
    valid = torch.as_tensor(ok & (items_np >= 0))
    return CandidateSets(sids=sids, items=items, valid=valid, logp=logp, token_logp=tok,
                         tree=tree, cost_tokens=cost.astype(np.int64), budget_tokens=budget, decoder=decoder,
                         seconds=time.perf_counter() - started, prefill_tokens=trace.root.context.prefill_tokens)


def beam_search(policy: SIDPolicy, histories, n_candidates: int, budget_x: float = 1.0) -> CandidateSets:
    """Constrained beam search returning the top ``n_candidates`` SIDs by log pi(y | x).

    At ``budget_x`` > 1 the beam widens to spend the same budget VED gets (Fig. 4): width
    ``B' = floor((budget - 1) / (L - 1))``, and the best ``n_candidates`` of its beams are returned.
    """
    t0 = time.perf_counter()
    L = policy.levels
    budget = budget_tokens(L, n_candidates, budget_x)
    width = n_candidates if L == 1 else max(n_candidates, (budget - 1) // (L - 1))
    trace = run_beam(policy, histories, width)
    return candidates_from_trace(trace, policy, n_candidates, "beam", budget, t0)
