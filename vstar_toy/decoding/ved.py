"""Value-Guided Efficient Decoding (VED, Sec. 4.2), batched over queries in lock-step.

For every query, under a budget of B backbone forward tokens (Cost of Eq. 10):

1. *Initialisation*: a likelihood beam of width b0 < |C| builds a shallow tree; every node in it is
   forwarded once, leaves included, so each has pi, V, H and G (Eq. 11-12). Cost 1 + L * b0.
2. *Selection*: from the root, follow the child with the largest UCB score (Eq. 13) to a node
   without children in the tree.
3. *Gated expansion*: every node on that path that is not fully expanded and whose priority G is at
   least the mean priority of its depth (Eq. 14) adds one child, sampled from its yet-unexpanded
   valid children in proportion to pi. When the budget left is smaller than the number of such
   nodes, the deepest go first (they complete candidates; shallower ones open branches). Two rules
   the paper leaves open: selection skips exhausted subtrees (every valid node below them already
   evaluated), and when the gate closes every open node of the path the deepest open node expands
   anyway, so the search never stalls with budget left.
4. *Backpropagation*: the new children are evaluated (V, H, G: one forward token each), visit
   counts along the path go up by one, and the depth means follow.

Steps 2-4 repeat until the next evaluation would exceed B. All queries advance together: one
``policy.step`` call per iteration carries every new child of every query. Then *extraction*: the
depth-L leaves with the highest V; if fewer than |C|, the rest are completed from the cached pi of
depth-(L-1) nodes (no forward): parents in order of V, each one's children in order of pi, taken
round-robin so that one parent does not fill the set alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..config import DecodeConfig
from ..policy.base import SIDPolicy, State
from .beam import NEG_INF, run_beam
from .tree import CandidateSets, PrefixTree, budget_tokens

ValueFn = Callable[[State, torch.Tensor], torch.Tensor]


def likelihood_value(states: State, prefix_logp: torch.Tensor) -> torch.Tensor:
    """A value that is the prefix log-probability: with lambda = beta = 0, VED becomes a likelihood
    search (the sanity oracle of the tests)."""
    return prefix_logp


def priority(value: torch.Tensor, entropy: torch.Tensor, depth: torch.Tensor, levels: int,
             rule: str, lam: float) -> torch.Tensor:
    """Eq. 11: G = V + lambda * H below depth L, V at depth L. ``rule`` "V" or "H" (Table 3) keeps one term."""
    if rule == "G":
        g = value + lam * entropy
    elif rule == "V":
        g = value
    elif rule == "H":
        g = entropy
    else:
        raise ValueError(f"priority rule = {rule!r} is invalid: expected G, V or H")
    return torch.where(depth == levels, value, g)


def warm_start_cost(levels: int, b0: int) -> int:
    """Forward tokens of the warm start at full width: the start token and b0 nodes per level."""
    return 1 + levels * b0


def ved_decode(
    policy: SIDPolicy,
    histories,
    value_fn: ValueFn,
    cfg: DecodeConfig,
    budget: int | None = None,
) -> CandidateSets:
    """VED for a batch of queries; see the module docstring. ``budget`` defaults to cfg.budget_x."""
    t0 = time.perf_counter()
    L, K = policy.levels, policy.k_max
    C, b0 = cfg.n_candidates, cfg.warm_beam
    budget = budget if budget is not None else budget_tokens(L, C, cfg.budget_x)
    if warm_start_cost(L, b0) >= budget:
        raise ValueError(
            f"budget = {budget} forward tokens is below VED's minimum: the warm start alone costs "
            f"{warm_start_cost(L, b0)} (1 + L * b0 with b0 = {b0}); raise budget_x or lower warm_beam"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    child_tab = policy.child

    # 1. initialisation: a likelihood beam of width b0, every node forwarded once (leaves included)
    trace = run_beam(policy, histories, b0, forward_leaves=True, record_pruned=False)
    q = len(trace.root)
    dev = trace.root.logp.device
    cap = budget + 1
    count = torch.zeros(q, dtype=torch.long)
    glob2loc = np.full(trace.tree.n, -1)
    parent = torch.full((q, cap), -1, dtype=torch.long)
    depth = torch.zeros(q, cap, dtype=torch.long)
    sid = torch.full((q, cap, L), -1, dtype=torch.long)
    tok_lp = torch.zeros(q, cap, L)
    cum = torch.zeros(q, cap)
    row = torch.full((q, cap), -1, dtype=torch.long)  # row of the node's State in `pool`
    child_of = torch.full((q, cap, K), -1, dtype=torch.long)
    visits = torch.zeros(q, cap)
    V, H, G = torch.zeros(q, cap), torch.zeros(q, cap), torch.zeros(q, cap)
    n_valid = torch.zeros(q, cap, dtype=torch.long)  # valid children per node (0 at depth L)
    pool: State | None = None  # every evaluated node's State, preallocated on the first insert
    n_pool = 0

    def insert(qs: torch.Tensor, par_loc: torch.Tensor, states: State, s_sid, s_tok, s_cum) -> torch.Tensor:
        """Append evaluated nodes (one per row of ``states``) to their queries' trees."""
        nonlocal n_pool, pool
        if pool is None:
            pool = State.empty_like(states, q * cap)
        # local index: next free slot of each query, several per query allowed
        order = torch.argsort(qs, stable=True)
        qs_sorted = qs[order]
        first = torch.ones_like(qs_sorted, dtype=torch.bool)
        first[1:] = qs_sorted[1:] != qs_sorted[:-1]
        run_start = torch.cummax(torch.where(first, torch.arange(len(qs)), torch.zeros_like(qs)), 0).values
        offset = torch.empty_like(qs)
        offset[order] = torch.arange(len(qs)) - run_start
        loc = count[qs] + offset
        count.index_add_(0, qs, torch.ones_like(qs))
        d = states.depth.cpu()
        parent[qs, loc] = par_loc
        depth[qs, loc] = d
        sid[qs, loc] = s_sid
        tok_lp[qs, loc] = s_tok
        cum[qs, loc] = s_cum
        row[qs, loc] = n_pool + torch.arange(len(qs))
        has_parent = par_loc >= 0
        tok = s_sid[torch.arange(len(qs)), (d - 1).clamp_min(0)]
        child_of[qs[has_parent], par_loc[has_parent], tok[has_parent]] = loc[has_parent]
        with torch.no_grad():
            v = value_fn(states, s_cum.to(dev)).float().cpu()
        h = states.entropy().float().cpu()
        V[qs, loc], H[qs, loc] = v, h
        G[qs, loc] = priority(v, h, d, L, cfg.priority, cfg.lam)
        visits[qs, loc] = 1.0
        n_valid[qs, loc] = torch.where(d < L, (child_tab[states.node] >= 0).sum(-1).cpu(), 0)
        pool.put(n_pool, states)
        n_pool += len(qs)
        return loc

    roots = torch.arange(q)
    glob2loc[trace.root_node] = insert(roots, torch.full((q,), -1), trace.root,
                                       torch.full((q, L), -1), torch.zeros(q, L), torch.zeros(q)).numpy()
    for lvl in trace.levels:
        qs = lvl.query.cpu()
        par = torch.as_tensor(glob2loc[lvl.parent])
        tok = torch.zeros(len(qs), L)
        tok[:, : lvl.token_logp.shape[1]] = lvl.token_logp.cpu()
        glob2loc[lvl.node] = insert(qs, par, lvl.state, lvl.sid.cpu(), tok, lvl.cum_logp.cpu()).numpy()
    cost = torch.as_tensor(trace.cost, dtype=torch.long).clone()
    warmup = cost.clone()

    # 2-4. select, gated expand, backpropagate, in lock-step over queries
    active = cost < budget
    stall = torch.zeros(q, dtype=torch.long)
    qidx = torch.arange(q)
    for _ in range(4 * budget + 8):
        if not active.any():
            break
        exists = torch.arange(cap)[None, :] < count[:, None]
        # depth means of G (Eq. 14)
        gsum = torch.zeros(q, L + 1).scatter_add_(1, depth, torch.where(exists, G, 0.0))
        gcnt = torch.zeros(q, L + 1).scatter_add_(1, depth, exists.float())
        gbar = gsum / gcnt.clamp_min(1.0)
        # exhausted subtrees (nothing left to expand below them) are skipped by selection
        n_child_all = (child_of >= 0).sum(-1)
        exhausted = exists & (depth == L)
        for dpt in range(L - 1, -1, -1):
            ch_exh = torch.where(child_of >= 0, exhausted.gather(1, child_of.clamp_min(0).reshape(q, -1))
                                 .reshape(q, cap, K), True).all(-1)
            exhausted |= exists & (depth == dpt) & (n_child_all >= n_valid) & ch_exh
        active &= ~exhausted[:, 0]
        if not active.any():
            break
        # 2. selection: UCB (Eq. 13) from the root to a node without (non-exhausted) children
        n_root = visits[:, 0]
        path = torch.full((q, L + 1), -1, dtype=torch.long)
        path[:, 0] = 0
        cur = torch.zeros(q, dtype=torch.long)
        going = active.clone()
        for dpt in range(L):
            ch = child_of[qidx, cur]  # (Q, K)
            chs = ch.clamp_min(0)
            ok = (ch >= 0) & ~exhausted.gather(1, chs)
            has = ok.any(1) & going
            # Eq. 13: U(s) = G(s) + beta * sqrt(ln(N_root + 1) / (N(s) + 1))
            u = G.gather(1, chs) + cfg.beta * torch.sqrt(torch.log(n_root + 1)[:, None] / (visits.gather(1, chs) + 1))
            u = torch.where(ok, u, torch.full_like(u, NEG_INF))
            nxt = chs.gather(1, u.argmax(1, keepdim=True)).squeeze(1)
            cur = torch.where(has, nxt, cur)
            path[:, dpt + 1] = torch.where(has, nxt, -1)
            going = has
        # 3. gated expansion (Eq. 14): not fully expanded and G >= its depth's mean, deepest first
        on = path >= 0
        pn = path.clamp_min(0)
        n_child = (child_of.gather(1, pn[..., None].expand(-1, -1, K)) >= 0).sum(-1)
        open_ = on & (n_child < n_valid.gather(1, pn)) & active[:, None]
        gate = G.gather(1, pn) >= gbar.gather(1, depth.gather(1, pn)) - 1e-9
        # when the gate closes every open node of the path, the deepest open one expands anyway:
        # the search would otherwise stall with budget left (and, at beta = 0, forever)
        deepest = open_ & (open_.long().flip(1).cumsum(1).flip(1) == 1)
        gate = gate | (deepest & ~(open_ & gate).any(1, keepdim=True))
        trig = (open_ & gate).flip(1)  # deepest first
        room = (budget - cost).clamp_min(0)
        trig = trig & (trig.long().cumsum(1) <= room[:, None])
        trig = trig.flip(1)
        eq, ep = trig.nonzero(as_tuple=True)
        # backpropagation of visits along the traversed path (every active query traversed once)
        visits.scatter_add_(1, pn, (on & active[:, None]).float())
        if len(eq) == 0:
            stall += active.long()
            active &= stall <= 2 * (L + 1)
            continue
        stall[eq] = 0
        stall += (active & (torch.bincount(eq, minlength=q) == 0)).long()
        par_loc = path[eq, ep]
        par_rows = row[eq, par_loc]
        # sample one unexpanded valid child per triggered node, in proportion to pi
        lp = pool.logp[par_rows.to(dev)].float().cpu()
        lp = lp.masked_fill(child_of[eq, par_loc] >= 0, NEG_INF)
        probs = torch.softmax(lp, -1)
        codes = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        with torch.no_grad():
            new = policy.step(pool.index(par_rows.to(dev)), codes.to(dev))
        lvl_new = depth[eq, par_loc]
        new_sid = sid[eq, par_loc].clone()
        new_sid[torch.arange(len(eq)), lvl_new] = codes
        new_tok = tok_lp[eq, par_loc].clone()
        step_lp = lp.gather(1, codes[:, None]).squeeze(1)
        new_tok[torch.arange(len(eq)), lvl_new] = step_lp
        insert(eq, par_loc, new, new_sid, new_tok, cum[eq, par_loc] + step_lp)
        # 4. cost: one forward token per new child
        cost.index_add_(0, eq, torch.ones_like(eq))
        active &= (cost < budget) & (stall <= 2 * (L + 1))

    out_sid, out_tok, out_lp = _extract(pool, C, count, depth, sid, tok_lp, cum, row, child_of, V, L, K)
    items = torch.as_tensor(policy.catalog.item_of(out_sid.reshape(-1, L).numpy()).reshape(q, C))
    return CandidateSets(
        sids=out_sid, items=items, valid=items >= 0, logp=out_lp, token_logp=out_tok,
        tree=_tree(q, cap, count, parent, depth, sid, cum, V, H, G, visits, child_of, n_valid, L),
        cost_tokens=cost.numpy(), budget_tokens=budget, decoder="ved", warmup_tokens=warmup.numpy(),
        expansion_tokens=(cost - warmup).numpy(), seconds=time.perf_counter() - t0,
    )


def _extract(pool, C, count, depth, sid, tok_lp, cum, row, child_of, V, L, K):
    """Value-aware extraction: the top-V depth-L leaves, then round-robin completions from cached pi.
    Returns sids (Q, C, L), token log-probs (Q, C, L) and log pi(y|x) (Q, C), -1 / -inf padded."""
    q, cap = depth.shape
    exists = torch.arange(cap)[None, :] < count[:, None]
    leaf = exists & (depth == L)
    key = torch.where(leaf, V, torch.full_like(V, NEG_INF))
    n_leaf = leaf.sum(1)
    top_v, top_i = key.topk(min(C, cap), dim=1)
    out_sid = torch.full((q, C, L), -1, dtype=torch.long)
    out_tok = torch.zeros(q, C, L)
    out_lp = torch.full((q, C), NEG_INF)
    m = top_v > NEG_INF
    qq, cc = m.nonzero(as_tuple=True)
    out_sid[qq, cc] = sid[qq, top_i[qq, cc]]
    out_tok[qq, cc] = tok_lp[qq, top_i[qq, cc]]
    out_lp[qq, cc] = cum[qq, top_i[qq, cc]]
    need = (C - n_leaf).clamp_min(0)
    if need.any():
        # completions: unexpanded valid children of evaluated depth-(L-1) nodes, from cached pi
        par_ok = exists & (depth == L - 1)
        prow = row.clamp_min(0)
        lp = pool.logp[prow.reshape(-1).to(pool.logp.device)].float().cpu().reshape(q, cap, K)
        lp = lp.masked_fill(~par_ok[..., None] | (child_of >= 0), NEG_INF)
        par_v = torch.where(par_ok, V, torch.full_like(V, NEG_INF))
        par_rank = torch.argsort(torch.argsort(par_v, 1, descending=True), 1)
        child_rank = torch.argsort(torch.argsort(lp, -1, descending=True), -1)
        rr = (child_rank * cap + par_rank[..., None]).float().masked_fill(lp == NEG_INF, math.inf)
        pick = rr.reshape(q, -1).argsort(1)[:, :C]  # (Q, C) round-robin order of completions
        take = (torch.arange(C)[None, :] < need[:, None]) & (rr.reshape(q, -1).gather(1, pick) < math.inf)
        b, j = take.nonzero(as_tuple=True)
        p_loc, code = pick[b, j] // K, pick[b, j] % K
        slot = n_leaf[b].clamp_max(C) + j
        s = sid[b, p_loc].clone()
        s[:, L - 1] = code
        t = tok_lp[b, p_loc].clone()
        t[:, L - 1] = lp[b, p_loc, code]
        out_sid[b, slot], out_tok[b, slot], out_lp[b, slot] = s, t, cum[b, p_loc] + lp[b, p_loc, code]
    return out_sid, out_tok, out_lp


def _tree(q, cap, count, parent, depth, sid, cum, V, H, G, visits, child_of, n_valid, L) -> PrefixTree:
    """VED's search tree as a PrefixTree (evaluated nodes only; parents renumbered globally)."""
    exists = torch.arange(cap)[None, :] < count[:, None]
    qs, loc = exists.nonzero(as_tuple=True)
    offset = torch.cumsum(count, 0) - count
    glob_parent = torch.where(parent[qs, loc] >= 0, offset[qs] + parent[qs, loc], -1)
    n_child = (child_of[qs, loc] >= 0).sum(-1)
    d = depth[qs, loc]
    return PrefixTree(
        query=qs.numpy(), parent=glob_parent.numpy(), depth=d.numpy(),
        token=torch.where(d > 0, sid[qs, loc].gather(1, (d - 1).clamp_min(0)[:, None]).squeeze(1), -1).numpy(),
        sid=sid[qs, loc].numpy(), logp=cum[qs, loc].numpy(), value=V[qs, loc].double().numpy(),
        entropy=torch.where(d < L, H[qs, loc], torch.nan).double().numpy(), priority=G[qs, loc].double().numpy(),
        visits=visits[qs, loc].long().numpy(), evaluated=np.ones(len(qs), dtype=bool),
        pruned=np.zeros(len(qs), dtype=bool), fully_expanded=(n_child >= n_valid[qs, loc]).numpy() & (d < L).numpy(),
    )
