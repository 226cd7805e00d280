"""Value-Guided Efficient Decoding (VED, Sec. 4.2), batched over queries in lock-step.

For every query, under a budget of B backbone forward tokens (Cost of Eq. 10):

1. *Initialisation* (``warm_start``): a likelihood beam of width b0 < |C| builds a shallow tree
   down to depth L - 1; every node in it gets pi, V, H and G (Eq. 11-12), and the children of its
   depth-(L-1) nodes join as scored leaves (``add_leaves``).
2. *Selection* (``select``): from the root, follow the child with the largest UCB score (Eq. 13) to
   a node without children in the tree.
3. *Gated expansion* (``triggered``, ``expand``): every node on that path that is not fully expanded
   and whose priority G is at least the mean priority of its depth (Eq. 14, ``expansion_gate``) adds
   one child, sampled from its yet-unexpanded valid children in proportion to pi; a child at depth
   L - 1 brings its leaves.
4. *Backpropagation* (``backpropagate``): visit counts along the path go up by one; the new
   children's V, H and G were evaluated when they were added, and the depth means follow.

Steps 2-4 repeat until the budget is spent, then ``extract`` returns the depth-L leaves with the
highest V.

**Where it runs.** The search tree lives on the policy's device (``SearchTree``), and the search asks the
host for a value only where a shape depends on one: once per iteration in exact shapes (``plan``: whether a
query is still searching, and how many children and leaves the expansion adds), or twice per search in fixed
shapes (``DecodeConfig.shapes``; ``expand_fixed``: every iteration forwards L rows per query, the rows whose
node does not fire masked out), which repeat the same shapes every iteration at L times the expansion's
forward rows. Both give the same candidate sets, costs and tree (issue 34; ``benchmarks/gpu.py`` counts).

**How the budget is counted.** One forward token for the start state and one for every node whose
own next-token distribution is needed -- to expand it, or for its entropy H in G. A depth-L leaf
needs neither (Eq. 11: G = V at depth L), and every value here reads only its parent's state and
the prefix (``policy/value.py``), so a leaf is scored from its parent's cached distribution for
free, exactly as beam search scores its leaves. Beam search and VED are charged by that one rule:
the warm start costs 1 + (L - 1) * b0 tokens, like a beam of width b0, and the rest of the budget
goes to value-guided expansions (``warmup_tokens`` and ``expansion_tokens`` of the result).

**What the paper leaves open, and the choices here:**

- *The root's gate.* The root is alone at depth 0, so Eq. 14 always lets it expand: each walk that
  passes the root adds a new level-1 branch while the root has unexpanded codes (``root_gate =
  "open"``, the literal reading). ``"closed"`` keeps the warm start's level-1 branches and spends the
  whole expansion budget below them. ``DecodeConfig.root_gate`` chooses (README, "The value, the
  oracle and the budget": within 0.01 MaxReward of each other).
- *Leaves.* A forwarded depth-(L-1) node brings all its children as scored leaves at once, where the
  paper adds children one per walk: a free leaf added later would only reorder free work.
- *Stalls.* When the gate closes every open node of the path, the deepest open node expands anyway,
  and selection skips exhausted subtrees (every valid node below them already in the tree): the
  search never stops with budget left while something can still be expanded.
- *Budget shortfalls.* When the budget left is smaller than the number of triggered nodes that
  need a forward, the deepest go first (they complete candidates; shallower ones open branches).
- *Which child.* "Sampling in proportion to pi among the unexpanded children" is done by Gumbel-top-k:
  every (query, prefix, code) gets a fixed Gumbel key from a hash of the seed, and the n-th
  expansion of a node takes the n-th best of log pi + key. That is an exact sample without
  replacement, and it does not depend on the order in which the batch is processed (the reference
  implementation in ``ved_reference.py`` draws the same children).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DecodeConfig
from ..policy.base import SIDPolicy, State
from .beam import NEG_INF, run_beam
from .tree import FIELDS, CandidateSets, PrefixTree, budget_tokens, host_arrays

GATE_TOL = 1e-9
"""Slack of Eq. 14's comparison G(s) >= G_bar: a node whose G equals its depth's mean (e.g. the only
node of its depth) passes, whatever the rounding of the mean."""


# ----------------------------------------------------------------------------------------------
# the scores: Eq. 11, 13, 14


def priority(value: torch.Tensor, entropy: torch.Tensor, depth: torch.Tensor, levels: int,
             rule: str, lam: float) -> torch.Tensor:
    """Eq. 11: G = V + lambda * H below depth L, V at depth L. ``rule`` "V" or "H" (Table 3) keeps one term.

    >>> priority(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), torch.tensor([1, 2]), 2, "G", 0.5).tolist()
    [2.0, 1.0]
    """
    if rule == "G":
        g = value + lam * entropy
    elif rule == "V":
        g = value
    elif rule == "H":
        g = entropy
    else:
        raise ValueError(f"priority rule = {rule!r} is invalid: expected G, V or H")
    return torch.where(depth == levels, value, g)


def ucb(g: torch.Tensor, visits: torch.Tensor, n_root: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 13: U(s) = G(s) + beta * sqrt(ln(N_root + 1) / (N(s) + 1)); ``n_root`` broadcasts.

    >>> round(float(ucb(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(np.e - 1), 2.0)), 6)
    3.0
    """
    return g + beta * torch.sqrt(torch.log(n_root + 1) / (visits + 1))


def expansion_gate(g: torch.Tensor, g_bar: torch.Tensor) -> torch.Tensor:
    """Eq. 14: expand s iff G(s) >= G_bar at its depth (``GATE_TOL`` absorbs the mean's rounding).

    >>> expansion_gate(torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.3])).tolist()
    [False, True]
    """
    return g >= g_bar - GATE_TOL


# ----------------------------------------------------------------------------------------------
# the tree


@dataclass
class SearchTree:
    """The search trees of Q queries as padded node arrays on the policy's device; node 0 of each query is
    its root.

    Per node (Q, cap): ``parent`` (-1 at the root), ``depth`` l, ``visits`` N(s) (Eq. 13), ``value`` V
    (NaN at the root, which has no value: Eq. 5 starts at l = 1), ``entropy`` H (Eq. 12; 0 at depth L),
    ``g`` the priority G (Eq. 11), ``cum`` log pi(y_<=l | x), ``n_valid`` the node's valid children in
    the catalog, ``n_children`` those in the tree, ``row`` its State in ``pool`` (-1: not forwarded, as
    every leaf), ``trie`` its trie node; (Q, cap, L) ``sid`` and ``token_logp``. Per forwarded node, by its
    ``row`` (the only nodes with children), (pool rows + 2, K) ``child``: the local index of each child code in
    the tree, -1 if absent; the last row, all -1, stands for every leaf (``children``), the one before it takes
    the masked rows' writes (``add``'s ``keep``), as does each query's last node slot, never a node. Per query
    (Q,): ``count`` nodes,
    ``cost`` forward tokens spent, ``warmup`` of which by the warm start. ``pool``: the States of the
    forwarded nodes; ``child_trie``: the catalog's trie (``SIDPolicy.child``); ``lam`` and ``rule``: how
    every node's priority G is computed (``DecodeConfig.lam`` and ``priority``, fixed for the search).
    On the host: ``n_pool`` rows of ``pool`` used, and ``bound``, at least the largest ``count``, kept from
    the sizes the search reads back once per iteration (``plan``), so that making room reads nothing;
    ``iterations``, in fixed shapes (``DecodeConfig.shapes``), the iterations that spend every query's budget
    (None in exact shapes, where ``plan`` says when to stop).
    """

    parent: torch.Tensor
    depth: torch.Tensor
    visits: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    g: torch.Tensor
    cum: torch.Tensor
    n_valid: torch.Tensor
    n_children: torch.Tensor
    row: torch.Tensor
    trie: torch.Tensor
    sid: torch.Tensor
    token_logp: torch.Tensor
    child: torch.Tensor
    count: torch.Tensor
    cost: torch.Tensor
    warmup: torch.Tensor
    pool: State
    child_trie: torch.Tensor
    lam: float
    rule: str
    n_pool: int = 0
    bound: int = 0
    iterations: int | None = None

    NODE_FIELDS = ("parent", "depth", "visits", "value", "entropy", "g", "cum", "n_valid", "n_children", "row",
                   "trie", "sid", "token_logp")

    @classmethod
    def empty(cls, levels: int, k: int, root: State, pool_rows: int, child_trie: torch.Tensor, warmup: torch.Tensor,
              lam: float, rule: str, cap: int = 64) -> SearchTree:
        """No nodes yet, for the queries of ``root``, which the warm start reached at ``warmup`` (Q,)
        forward tokens each (the cost so far); every array on ``root``'s device."""
        q, dev = len(root), root.logp.device
        long = dict(dtype=torch.long, device=dev)
        cost = warmup.to(**long).clone()
        return cls(
            parent=torch.full((q, cap), -1, **long), depth=torch.zeros(q, cap, **long),
            visits=torch.zeros(q, cap, device=dev), value=torch.zeros(q, cap, device=dev),
            entropy=torch.zeros(q, cap, device=dev), g=torch.zeros(q, cap, device=dev),
            cum=torch.zeros(q, cap, device=dev), n_valid=torch.zeros(q, cap, **long),
            n_children=torch.zeros(q, cap, **long), row=torch.full((q, cap), -1, **long),
            trie=torch.zeros(q, cap, **long), sid=torch.full((q, cap, levels), -1, **long),
            token_logp=torch.zeros(q, cap, levels, device=dev), child=torch.full((pool_rows + 2, k), -1, **long),
            count=torch.zeros(q, **long), cost=cost, warmup=cost.clone(),
            pool=State.empty_like(root, pool_rows), child_trie=child_trie.to(dev), lam=lam, rule=rule,
        )

    @property
    def levels(self) -> int:
        return self.sid.shape[-1]

    @property
    def exists(self) -> torch.Tensor:
        """(Q, cap) bool: the slot holds a node."""
        return torch.arange(self.parent.shape[1], device=self.count.device)[None, :] < self.count[:, None]

    def grow(self, most: int) -> None:
        """Make room for ``most`` more nodes per query and the spare last slot (doubling the capacity), from the
        host's ``bound``."""
        cap = self.parent.shape[1]
        if self.bound + most + 1 > cap:
            new_cap = max(2 * cap, self.bound + most + 1)
            fill = {"parent": -1, "row": -1, "sid": -1}
            for f in self.NODE_FIELDS:
                old = getattr(self, f)
                pad = old.new_full((old.shape[0], new_cap - cap, *old.shape[2:]), fill.get(f, 0))
                setattr(self, f, torch.cat([old, pad], 1))
        self.bound += most

    def add(self, qs: torch.Tensor, *, parent: torch.Tensor | None, trie: torch.Tensor, sid: torch.Tensor,
            token_logp: torch.Tensor, cum: torch.Tensor, value: torch.Tensor, states: State | None,
            most: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Append one node per row of queries ``qs`` (several per query allowed, at most ``most``, as the
        caller knows on the host): its parent's local index (None: the nodes are the roots), trie node, SID
        and per-token log pi, cumulative log pi and V; ``states`` are the nodes' own forwarded States (their H
        and next-token pi), or None for unforwarded leaves. ``keep``: (N,) bool, only these rows become nodes,
        the others write into the spare slots (fixed shapes: no row is dropped, so no size is read back).
        Returns the nodes' local indices (meaningless where ``keep`` is false)."""
        L = self.levels
        self.grow(most)
        if keep is None:
            loc = at = self.count[qs] + _rank_within(qs)
            self.count.index_add_(0, qs, torch.ones_like(qs))
        else:  # ranks among the kept rows of each query; the masked rows rank in a group of their own
            loc = self.count[qs] + _rank_within(torch.where(keep, qs, len(self.count)))
            at = torch.where(keep, loc, self.parent.shape[1] - 1)  # the spare last slot
            self.count.index_add_(0, qs, keep.long())
        depth = (sid >= 0).sum(-1)
        self.parent[qs, at] = -1 if parent is None else parent
        self.depth[qs, at], self.trie[qs, at] = depth, trie
        self.sid[qs, at], self.token_logp[qs, at], self.cum[qs, at] = sid, token_logp, cum
        self.visits[qs, at] = 1.0
        if parent is not None:
            code = sid.gather(1, (depth - 1)[:, None]).squeeze(1)
            prow = self.row[qs, parent]  # a parent is always forwarded
            self.child[prow if keep is None else torch.where(keep, prow, -2), code] = loc
            self.n_children.index_put_((qs, parent), torch.ones_like(loc) if keep is None else keep.long(),
                                       accumulate=True)
        if states is None:
            entropy, n_valid = torch.zeros_like(value), torch.zeros_like(qs)
            self.row[qs, at] = -1  # a spare slot may have held a forwarded row's write
        else:
            entropy = states.entropy().float()
            n_valid = (self.child_trie[trie] >= 0).sum(-1)  # the codes where states.logp is finite
            self.row[qs, at] = self.n_pool + torch.arange(len(qs), device=qs.device)
            self.pool.put(self.n_pool, states)
            self.n_pool += len(qs)
        self.value[qs, at], self.entropy[qs, at], self.n_valid[qs, at] = value, entropy, n_valid
        self.g[qs, at] = priority(value, entropy, depth, L, self.rule, self.lam)  # Eq. 11
        return loc

    def children(self, qs: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        """(..., K) the local index of each child code of nodes ``node`` of queries ``qs`` (broadcast), -1 if
        absent; a leaf has none."""
        return self.child[self.row[qs, node]]  # a leaf's row, -1, indexes the last row of child: all -1

    def exhausted(self) -> torch.Tensor:
        """(Q, cap) bool: nothing can be added below the node (it is a leaf, or every valid child is
        in the tree and exhausted). Selection skips these. Bottom-up, one depth at a time: a node's
        count of exhausted children is a scatter over its children's parent indices."""
        exists = self.exists
        out = exists & (self.depth == self.levels)
        has_parent = exists & (self.parent >= 0)
        for d in range(self.levels - 1, -1, -1):
            done_kids = torch.zeros_like(self.n_children).scatter_add_(
                1, self.parent.clamp_min(0), (out & has_parent & (self.depth == d + 1)).long())
            out |= exists & (self.depth == d) & (self.n_children >= self.n_valid) & (done_kids == self.n_children)
        return out

    def depth_means(self) -> torch.Tensor:
        """(Q, L + 1) Eq. 14's G_bar_l: the mean priority of the tree's nodes at each depth (the root's
        depth 0 holds only the root, whose gate ``root_gate`` decides)."""
        on = self.exists & (self.depth > 0)
        total = torch.zeros(len(self.count), self.levels + 1, dtype=torch.float64, device=self.count.device)
        total.scatter_add_(1, self.depth, torch.where(on, self.g, 0.0).double())
        n = torch.zeros_like(total).scatter_add_(1, self.depth, on.double())
        return total / n.clamp_min(1.0)


def _rank_within(qs: torch.Tensor) -> torch.Tensor:
    """(N,) 0, 1, 2 ... among the rows of each query, in row order: the offsets of new nodes."""
    order = torch.argsort(qs, stable=True)
    sorted_q = qs[order]
    first = torch.ones_like(sorted_q, dtype=torch.bool)
    first[1:] = sorted_q[1:] != sorted_q[:-1]
    arange = torch.arange(len(qs), device=qs.device)
    start = torch.cummax(torch.where(first, arange, torch.zeros_like(qs)), 0).values
    out = torch.empty_like(qs)
    out[order] = arange - start
    return out


def _true_where(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The flat indices of ``mask``'s true entries in row-major order (what ``nonzero`` gives), whose number
    ``n`` the host already knows: a fixed-size sort, where ``nonzero`` would wait on a GPU to learn its size."""
    return torch.argsort((~mask).reshape(-1).to(torch.uint8), stable=True)[:n]


# ----------------------------------------------------------------------------------------------
# the four stages


def warm_start(policy: SIDPolicy, histories, value_fn, cfg: DecodeConfig, budget: int) -> SearchTree:
    """Stage 1: a likelihood beam of width b0 (``cfg.warm_beam``) down to depth L - 1, every node
    forwarded once (H, and the pi its children are drawn from) and given V from its parent's state;
    then every child of the depth-(L-1) nodes as a scored leaf (``add_leaves``). Cost 1 + (L-1) b0."""
    L, K, b0 = policy.levels, policy.k_max, cfg.warm_beam
    trace = run_beam(policy, histories, b0, record_pruned=False)  # its depth-L selection is not used
    q, dev = len(trace.root), trace.root.logp.device
    if cfg.shapes == "exact":
        tree = SearchTree.empty(L, K, trace.root, pool_rows=q * budget, child_trie=policy.child, warmup=trace.cost,
                                lam=cfg.lam, rule=cfg.priority)
    else:  # room for every iteration's L rows per query, and for the leaves they may bring, made once
        full = all(len(lvl.query) == q * b0 for lvl in trace.levels[: L - 1])  # known from the shapes
        warm = warm_start_cost(L, b0)
        iterations = budget - (warm if full else L)  # each iteration spends at least a token of an active query
        tree = SearchTree.empty(L, K, trace.root, pool_rows=q * (warm + iterations * L), child_trie=policy.child,
                                warmup=trace.cost, lam=cfg.lam, rule=cfg.priority,
                                cap=warm + b0 * K + iterations * (L + K) + 1)
        tree.iterations = iterations
    roots = torch.arange(q, device=dev)
    tree.add(roots, parent=None, trie=torch.zeros_like(roots), sid=torch.full((q, L), -1, device=dev),
             token_logp=torch.zeros(q, L, device=dev), cum=torch.zeros(q, device=dev),
             value=torch.full((q,), float("nan"), device=dev), states=trace.root, most=1)
    # the previous level: its states, the beam-tree id of its first row (ids are consecutive), its local indices
    parents, first_id, prev_loc = trace.root, int(trace.root_node[0]), torch.zeros_like(roots)
    for lvl in trace.levels[: L - 1]:
        prow = lvl.parent - first_id  # each node's parent row in the previous level
        codes = lvl.sid[:, lvl.token_logp.shape[1] - 1]  # this level's code
        with torch.no_grad():
            v = value_fn(parents.index(prow, cache=False), codes, lvl.cum_logp).float()
        tok = torch.zeros(len(prow), L, device=dev)
        tok[:, : lvl.token_logp.shape[1]] = lvl.token_logp
        prev_loc = tree.add(lvl.query, parent=prev_loc[prow], trie=lvl.state.node, sid=lvl.sid, token_logp=tok,
                            cum=lvl.cum_logp, value=v, states=lvl.state, most=b0)
        parents, first_id = lvl.state, int(lvl.node[0])
    if L > 1:
        add_leaves(tree, trace.levels[L - 2].query, prev_loc, value_fn,
                   per_query=None if tree.iterations is None else b0)
    return tree


def add_leaves(tree: SearchTree, qs: torch.Tensor, loc: torch.Tensor, value_fn,
               sizes: tuple[int, int] | None = None, among: torch.Tensor | None = None,
               per_query: int | None = None) -> None:
    """Every valid child of the forwarded depth-(L-1) nodes ``loc`` of queries ``qs``, as a leaf: its
    pi from the parent's cached distribution, its V from the parent's state, no forward (G = V at
    depth L, Eq. 11). Adding a free leaf one walk at a time, as the paper adds children, would only
    reorder free work; beam search scores its leaves the same way. ``among``: (P,) bool, only these of the
    nodes bring leaves (default: all). ``sizes``: the number of leaves and the most of one query, when the
    caller read them back already (else read here, once). ``per_query``: fixed shapes, with at most that many
    of the nodes per query: every (node, code) pair is a row, the invalid ones masked (``SearchTree.add``'s
    ``keep``; they read their node's first valid code, so that any value function can score them), and
    nothing is read back."""
    if len(qs) == 0:
        return
    if per_query is not None and among is not None:  # a node that brings none reads its query's root instead
        loc = torch.where(among, loc, 0)
    K = tree.child.shape[-1]
    codes_ok = tree.child_trie[tree.trie[qs, loc]] >= 0  # (P, K): the codes where the parents' logp is finite
    valid = codes_ok if among is None else codes_ok & among[:, None]
    keep = None
    if per_query is not None:
        keep, n, most = valid.reshape(-1), valid.numel(), per_query * K
        flat = torch.arange(n, device=qs.device)
    else:
        if sizes is None:
            counts = torch.zeros_like(tree.count).index_add_(0, qs, valid.sum(1))
            sizes = tuple(torch.stack([counts.sum(), counts.max()]).tolist())
        n, most = sizes
        flat = _true_where(valid, n)
    p_idx, codes = flat // K, flat % K  # (parent, code) of every valid child
    if keep is not None:
        codes = torch.where(keep, codes, codes_ok.long().argmax(1)[p_idx])
    parents = tree.pool.index(tree.row[qs, loc], cache=False)
    pq, ploc = qs[p_idx], loc[p_idx]
    step_lp = parents.logp.float()[p_idx, codes]
    cum = tree.cum[pq, ploc] + step_lp
    with torch.no_grad():
        v = value_fn(parents.index(p_idx, cache=False), codes, cum).float()
    L, rows = tree.levels, torch.arange(n, device=qs.device)
    sid, tok = tree.sid[pq, ploc].clone(), tree.token_logp[pq, ploc].clone()
    sid[rows, L - 1], tok[rows, L - 1] = codes, step_lp
    trie = tree.child_trie[tree.trie[pq, ploc], codes]
    tree.add(pq, parent=ploc, trie=trie, sid=sid, token_logp=tok, cum=cum, value=v, states=None, most=most, keep=keep)


def select(tree: SearchTree, active: torch.Tensor, beta: float, exhausted: torch.Tensor) -> torch.Tensor:
    """Stage 2: (Q, L + 1) local indices of the path root -> ... -> the node where the walk stopped
    (-1 beyond it, and everywhere for inactive queries but the root). At each node the walk takes the
    non-exhausted child of largest U (Eq. 13); it stops where there is none."""
    q = len(tree.count)
    rows = torch.arange(q, device=active.device)
    path = torch.full((q, tree.levels + 1), -1, dtype=torch.long, device=active.device)
    path[:, 0] = 0
    n_root = tree.visits[:, 0]
    cur, going = torch.zeros_like(rows), active.clone()
    for d in range(tree.levels):
        kids = tree.children(rows, cur)  # (Q, K)
        ok = (kids >= 0) & ~exhausted.gather(1, kids.clamp_min(0))
        u = ucb(tree.g.gather(1, kids.clamp_min(0)), tree.visits.gather(1, kids.clamp_min(0)), n_root[:, None], beta)
        best = kids.clamp_min(0).gather(1, torch.where(ok, u, NEG_INF).argmax(1, keepdim=True)).squeeze(1)
        going = going & ok.any(1)
        cur = torch.where(going, best, cur)
        path[:, d + 1] = torch.where(going, best, -1)
    return path


def triggered(tree: SearchTree, path: torch.Tensor, active: torch.Tensor, budget: int, root_gate: str) -> torch.Tensor:
    """Stage 3's decision: (Q, L + 1) bool, which nodes of the path add a child this iteration.

    A node triggers when it is open (not fully expanded) and passes Eq. 14's gate; the root passes
    when ``root_gate`` is "open". If no open node passes, the deepest open node triggers anyway (the
    search never stalls). Every new child costs a forward token: when the budget left cannot pay for
    all of them, the deepest go first.
    """
    on = path >= 0
    node = path.clamp_min(0)
    depth = tree.depth.gather(1, node)
    open_ = on & (tree.n_children.gather(1, node) < tree.n_valid.gather(1, node)) & active[:, None]
    gate = expansion_gate(tree.g.gather(1, node).double(), tree.depth_means().gather(1, depth))
    gate[:, 0] = root_gate == "open"
    deepest = open_ & (open_.long().flip(1).cumsum(1).flip(1) == 1)
    fire = open_ & (gate | (deepest & ~(open_ & gate).any(1, keepdim=True)))
    room = (budget - tree.cost).clamp_min(0)
    return fire & (fire.flip(1).long().cumsum(1).flip(1) <= room[:, None])  # deepest first


def choose(tree: SearchTree, path: torch.Tensor, keys) -> torch.Tensor:
    """Stage 3's draw: (Q, L + 1) the code each node of the path would add next, its next in the Gumbel-top-k
    order of log pi among the valid codes not yet in the tree (a sample without replacement in proportion to
    pi); meaningful where the node is forwarded and open."""
    q = len(tree.count)
    node = path.clamp_min(0)
    rows = torch.arange(q, device=path.device)[:, None]
    logp = tree.pool.logp[tree.row.gather(1, node).clamp_min(0)].float()  # (Q, L + 1, K)
    trie = tree.trie.gather(1, node)
    closed = (tree.children(rows, node) >= 0) | (tree.child_trie[trie] < 0)  # taken, or not a valid code
    query = rows.expand_as(node)
    score = (logp + keys(query.reshape(-1), trie.reshape(-1)).reshape(logp.shape)).masked_fill(closed, NEG_INF)
    return score.argmax(-1)


def decide(tree: SearchTree, active: torch.Tensor, budget: int, cfg: DecodeConfig, keys: GumbelKeys,
           graphs=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stages 2 and 3's decision for every query, from the tree as it stands: the queries still searching
    (``active``, less those whose root is exhausted), their walks (``select``, Eq. 13), which nodes of each
    walk fire (``triggered``, Eq. 14) and the code each would add (``choose``). A function of the tree's
    tensors alone: with ``graphs`` (``policy/graphs.py``, a policy's ``use_cuda_graphs``) it is captured once
    per shape and replayed on copies of them: one launch, and the copies, instead of some 260 operators."""
    if graphs is None:
        return _decide(tree, active, budget, cfg, keys)
    fields = ("parent", "depth", "visits", "g", "n_valid", "n_children", "row", "trie", "child", "count", "cost")
    inputs = (active, tree.pool.logp, *(getattr(tree, f) for f in fields))
    # what fn reads besides its inputs; nothing that holds the search's states or Context (a capture outlives them)
    frame = dataclasses.replace(tree, pool=None, sid=tree.sid[:0], token_logp=None, value=None, cum=None,
                                entropy=None, warmup=None)

    def fn(active, logp, *arrays):
        view = dataclasses.replace(frame, pool=SimpleNamespace(logp=logp), **dict(zip(fields, arrays)))
        return _decide(view, active, budget, cfg, keys)

    key = ("ved decide", *(tuple(x.shape) for x in inputs), tree.child_trie.data_ptr(), budget, cfg.beta,
           cfg.root_gate, cfg.seed)
    return graphs.run(key, fn, *inputs)


def _decide(tree: SearchTree, active: torch.Tensor, budget: int, cfg: DecodeConfig, keys: GumbelKeys):
    exhausted = tree.exhausted()
    active = active & ~exhausted[:, 0]
    path = select(tree, active, cfg.beta, exhausted)  # 2. selection (Eq. 13)
    fire = triggered(tree, path, active, budget, cfg.root_gate)  # 3. gated expansion (Eq. 14) ...
    return active, path, fire, choose(tree, path, keys)


@dataclass(frozen=True)
class Plan:
    """What one iteration reads back to the host, once: ``going``, whether any query is still searching; the
    sizes of the expansion, which fix the shapes of all it does without reading again: ``children`` (new
    children in all, the most of one query) and ``leaves`` (the leaves they bring, likewise); and ``nodes``,
    the tree's node count before the expansion."""

    going: bool
    children: tuple[int, int]
    leaves: tuple[int, int]
    nodes: int


def plan(tree: SearchTree, path: torch.Tensor, fire: torch.Tensor, codes: torch.Tensor,
         active: torch.Tensor) -> Plan:
    """The iteration's one host read (``Plan``); brings ``tree.bound`` to the largest count."""
    node = path.clamp_min(0)
    child_trie = tree.child_trie[tree.trie.gather(1, node), codes]  # each child's trie node
    brings = fire & (tree.depth.gather(1, node) == tree.levels - 2)  # a child at depth L - 1 brings its leaves
    n_leaves = torch.where(brings, (tree.child_trie[child_trie] >= 0).sum(-1), 0)
    fired, leaves = fire.sum(1), n_leaves.sum(1)
    going, n_fire, most_fire, n_leaf, most_leaf, bound, nodes = torch.stack([
        active.any().long(), fired.sum(), fired.max(), leaves.sum(), leaves.max(), tree.count.max(),
        tree.count.sum()]).tolist()
    tree.bound = bound
    return Plan(bool(going), (n_fire, most_fire), (n_leaf, most_leaf), nodes)


def expand(policy: SIDPolicy, tree: SearchTree, path: torch.Tensor, fire: torch.Tensor, codes: torch.Tensor,
           value_fn, sizes: Plan) -> None:
    """Stage 3's action: every firing node adds its drawn child (``choose``). The child costs one forward
    token (its own state: H, Eq. 12, and G, Eq. 11) and gets V from its parent's state; a child at depth
    L - 1 brings all its leaves (``add_leaves``). ``sizes``: how many of each, read back by ``plan``."""
    n, most = sizes.children
    if n == 0:
        return
    flat = _true_where(fire, n)  # the firing nodes, query by query, root first
    width = fire.shape[1]
    qs, pos = flat // width, flat % width
    par, code = path[qs, pos], codes[qs, pos]
    parents = tree.pool.index(tree.row[qs, par])
    # the rows come query by query, at most `most` each (grouped when every query fires as many): what the
    # backbone would otherwise read back to lay them out
    parents.most, parents.block = most, most if n == most * len(tree.count) else None
    loc, depth = _add_children(policy, tree, parents, qs, par, code, value_fn, most)
    if sizes.leaves[0]:
        add_leaves(tree, qs, loc, value_fn, sizes.leaves, among=depth == tree.levels - 1)


def _add_children(policy: SIDPolicy, tree: SearchTree, parents: State, qs: torch.Tensor, par: torch.Tensor,
                  code: torch.Tensor, value_fn, most: int, keep: torch.Tensor | None = None):
    """The children ``code`` of nodes ``par`` of queries ``qs`` (their States ``parents``), each forwarded (one
    token of its query's cost) and given V from its parent's state; ``keep`` masks rows out (``SearchTree.add``).
    Returns the children's local indices and depths."""
    step_lp = parents.logp.float().gather(1, code[:, None]).squeeze(1)
    cum = tree.cum[qs, par] + step_lp
    with torch.no_grad():
        v = value_fn(parents, code, cum).float()
        states = policy.step(parents, code, strict=False)
    tree.cost.index_add_(0, qs, torch.ones_like(qs) if keep is None else keep.long())
    depth = tree.depth[qs, par] + 1
    rows = torch.arange(len(qs), device=qs.device)
    sid, tok = tree.sid[qs, par].clone(), tree.token_logp[qs, par].clone()
    sid[rows, depth - 1], tok[rows, depth - 1] = code, step_lp
    trie = tree.child_trie[tree.trie[qs, par], code]
    loc = tree.add(qs, parent=par, trie=trie, sid=sid, token_logp=tok, cum=cum, value=v, states=states, most=most,
                   keep=keep)
    return loc, depth


def expand_fixed(policy: SIDPolicy, tree: SearchTree, path: torch.Tensor, fire: torch.Tensor, codes: torch.Tensor,
                 value_fn) -> None:
    """``expand`` in fixed shapes: every query forwards L rows, one per path position 0 .. L - 1 (the depth-L
    position never fires), query by query; a row whose node does not fire steps the query's root by its first
    valid code, and is masked out of the tree and the cost (``SearchTree.add``'s ``keep``). The same children
    in the same order as ``expand``, at L times its forward rows, and nothing read back: every iteration has
    the same shapes."""
    q, L = len(tree.count), tree.levels
    dev = path.device
    keep = fire[:, :L].reshape(-1)
    qs = torch.arange(q, device=dev).repeat_interleave(L)
    pos = torch.arange(L, device=dev).repeat(q)
    par = torch.where(keep, path[qs, pos], 0)
    first_code = (tree.child_trie[0] >= 0).long().argmax()  # the first valid code of the root (trie node 0)
    code = torch.where(keep, codes[qs, pos], first_code)
    parents = tree.pool.index(tree.row[qs, par])
    parents.most = parents.block = L  # L rows per query, query by query
    loc, _ = _add_children(policy, tree, parents, qs, par, code, value_fn, L, keep)
    if L > 1:  # only position L - 2's child is at depth L - 1 and brings leaves
        add_leaves(tree, qs.view(q, L)[:, L - 2], loc.view(q, L)[:, L - 2], value_fn,
                   among=keep.view(q, L)[:, L - 2], per_query=1)


def backpropagate(tree: SearchTree, path: torch.Tensor, active: torch.Tensor) -> None:
    """Stage 4: N(s) += 1 along each active query's walk (the new children start at N = 1; their V, H
    and G were set when they were added, and ``depth_means`` reads the tree as it now is)."""
    on = (path >= 0) & active[:, None]
    tree.visits.scatter_add_(1, path.clamp_min(0), on.float())


def extract(tree: SearchTree, n_candidates: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value-aware extraction: the |C| depth-L leaves of highest V. Returns sids (Q, C, L), token
    log-probs (Q, C, L) and log pi(y|x) (Q, C), padded with -1 / 0 / -inf if the tree holds fewer leaves.

    The paper's fallback -- completing high-value prefixes from cached pi when leaves run short -- has
    nothing to add here: every child of a forwarded depth-(L-1) node is already a scored leaf."""
    L, C = tree.levels, n_candidates
    leaf = tree.exists & (tree.depth == L)
    # the C highest values; among equal values, the leaf added first (a stable sort: reproducible)
    top_v, top_i = [t[:, :C] for t in torch.sort(torch.where(leaf, tree.value, NEG_INF), dim=1, descending=True,
                                                  stable=True)]
    if top_i.shape[1] < C:  # fewer slots than candidates: the rest is padding
        pad = C - top_i.shape[1]
        top_v, top_i = F.pad(top_v, (0, pad), value=NEG_INF), F.pad(top_i, (0, pad))
    ok = top_v > NEG_INF  # fewer leaves than C: the rest stays padding
    per_token = top_i[..., None].expand(-1, -1, L)
    sids = torch.where(ok[..., None], tree.sid.gather(1, per_token), -1)
    tok = torch.where(ok[..., None], tree.token_logp.gather(1, per_token), 0.0)
    logp = torch.where(ok, tree.cum.gather(1, top_i), NEG_INF)
    return sids, tok, logp


# ----------------------------------------------------------------------------------------------
# the recipe


def warm_start_cost(levels: int, b0: int) -> int:
    """Forward tokens of the warm start at full width: the start token and b0 nodes per level below L."""
    return 1 + (levels - 1) * b0


def ved_decode(policy: SIDPolicy, histories, value_fn, cfg: DecodeConfig, budget: int | None = None) -> CandidateSets:
    """VED for a batch of queries (Sec. 4.2; the module docstring). ``value_fn`` scores children
    (``values.ValueFn``); ``budget`` defaults to ``cfg.budget_x`` times beam search's 1x.

    The tree stays on the policy's device. In exact shapes (``DecodeConfig.shapes``) the search reads the host
    once per iteration (``plan``: whether to go on, and the sizes of the expansion), once for the warm start's
    leaves and once at the end (the candidates, the costs and the tree in one copy); nothing else waits for the
    device. In fixed shapes it runs the iterations that spend every query's budget, each forwarding L rows per
    query (``expand_fixed``), and reads the host twice, at the end: the same candidate sets, costs and tree."""
    t0 = time.perf_counter()
    L = policy.levels
    budget = budget if budget is not None else budget_tokens(L, cfg.n_candidates, cfg.budget_x)
    check_budget(budget, L, cfg.warm_beam)
    keys = GumbelKeys(cfg.seed, policy.k_max, policy.device)
    tree = warm_start(policy, histories, value_fn, cfg, budget)  # 1. initialisation
    active, sizes = tree.cost < budget, None
    fixed = tree.iterations is not None
    for _ in range(tree.iterations if fixed else max_iterations(budget)):
        active, path, fire, codes = decide(tree, active, budget, cfg, keys, policy.graphs)  # 2. selection, 3. gate
        if fixed:
            expand_fixed(policy, tree, path, fire, codes, value_fn)
        else:
            sizes = plan(tree, path, fire, codes, active)  # the iteration's one host read
            if not sizes.going:
                break
            expand(policy, tree, path, fire, codes, value_fn, sizes)
        backpropagate(tree, path, active)  # 4. backpropagation
        active &= tree.cost < budget
    sids, tok, logp = extract(tree, cfg.n_candidates)  # value-aware extraction
    n_nodes = sizes.nodes if sizes is not None and not sizes.going else int(tree.count.sum())
    (sids, tok, logp, cost, warmup), nodes = host_arrays_with_tree(tree, n_nodes, [sids, tok, logp, tree.cost,
                                                                                   tree.warmup])
    sids = sids.astype(np.int64)
    items = policy.catalog.item_of(sids.reshape(-1, L)).reshape(sids.shape[:2])
    return CandidateSets(
        sids=torch.as_tensor(sids), items=torch.as_tensor(items), valid=torch.as_tensor(items >= 0),
        logp=torch.as_tensor(logp, dtype=torch.float32), token_logp=torch.as_tensor(tok, dtype=torch.float32),
        tree=nodes, cost_tokens=cost.astype(np.int64), budget_tokens=budget, decoder="ved",
        warmup_tokens=warmup.astype(np.int64), expansion_tokens=(cost - warmup).astype(np.int64),
        seconds=time.perf_counter() - t0, prefill_tokens=tree.pool.context.prefill_tokens,
    )


def check_budget(budget: int, levels: int, warm_beam: int) -> None:
    """VED needs a budget above its warm start, or it cannot expand at all."""
    if warm_start_cost(levels, warm_beam) >= budget:
        raise ValueError(
            f"budget = {budget} forward tokens is below VED's minimum: the warm start alone costs "
            f"{warm_start_cost(levels, warm_beam)} (1 + (L - 1) * b0 with b0 = {warm_beam}); raise budget_x or "
            "lower warm_beam"
        )


def max_iterations(budget: int) -> int:
    """An upper bound on VED's iterations: each one forwards at least one node (the deepest open node
    of the path always fires, and the budget is not yet spent), and there are at most ``budget``
    forwarded nodes. The loop ends before it; it only guards against a bug."""
    return budget + 1


def _u64(c: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits (torch multiplies int64 modulo 2^64)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """The unsigned (logical) right shift of int64 bits: the arithmetic shift with the sign bits masked off."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 bits (products wrap modulo 2^64, as uint64 arithmetic does)."""
    z = (z ^ _shr(z, 30)) * _u64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _u64(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


class GumbelKeys:
    """Fixed Gumbel noise per (seed, query row, trie node, code) from an integer hash (SplitMix64):
    the n-th child a node adds is its n-th best code by log pi + key, a sample without replacement in
    proportion to pi that any processing order reproduces. Computed on the rows' device.

    >>> k = GumbelKeys(0, 3)(torch.tensor([0, 0, 1]), torch.tensor([5, 5, 5]))  # (query, trie node) rows
    >>> k.shape, torch.equal(k[0], k[1]), torch.equal(k[0], k[2])  # the same row, the same keys
    (torch.Size([3, 3]), True, False)
    """

    def __init__(self, seed: int, k_max: int, device: torch.device | None = None):
        """``device``: where the rows will be, to hash the seed's part there now (else at the first call: a
        captured step, ``decide``, must not hash it in one call and not the next)."""
        self.seed, self.k_max = seed, k_max
        self._seed_hash: torch.Tensor | None = None  # the seed's part, hashed once on the rows' device
        if device is not None:
            self._hash_seed(torch.device(device))

    def _hash_seed(self, dev: torch.device) -> torch.Tensor:
        if self._seed_hash is None or self._seed_hash.device != dev:
            seed = torch.full((), self.seed, dtype=torch.long, device=dev)
            self._seed_hash = _mix(seed * _u64(0x9E3779B97F4A7C15) + 1)
        return self._seed_hash

    def __call__(self, query: torch.Tensor, trie_node: torch.Tensor) -> torch.Tensor:
        """(N, K) keys for rows (query, trie node)."""
        dev = query.device
        code = torch.arange(self.k_max, device=dev)[None, :]
        h = _mix(self._hash_seed(dev) ^ query.long()[:, None])
        h = _mix(h ^ (trie_node.long()[:, None] * _u64(0x632BE59BD9B4E019)))
        h = _mix(h ^ code)
        u = (_shr(h, 11).double() + 0.5) / float(1 << 53)  # in (0, 1)
        return (-torch.log(-torch.log(u))).float()


def host_arrays_with_tree(tree: SearchTree, n_nodes: int, also: list[torch.Tensor]
                          ) -> tuple[list[np.ndarray], PrefixTree]:
    """The tensors ``also`` and VED's search tree as a PrefixTree (parents renumbered globally;
    ``evaluated``: forwarded), read back to the host in one copy; ``n_nodes``: the tree's node count."""
    cap = tree.parent.shape[1]
    flat = _true_where(tree.exists, n_nodes)
    qs, loc = flat // cap, flat % cap
    offset = torch.cumsum(tree.count, 0) - tree.count
    parent = tree.parent[qs, loc]
    d = tree.depth[qs, loc]
    forwarded = tree.row[qs, loc] >= 0
    cols = dict(
        query=qs, parent=torch.where(parent >= 0, offset[qs] + parent, -1), depth=d,
        token=torch.where(d > 0, tree.sid[qs, loc].gather(1, (d - 1).clamp_min(0)[:, None]).squeeze(1), -1),
        sid=tree.sid[qs, loc], logp=tree.cum[qs, loc], value=tree.value[qs, loc],
        entropy=torch.where(forwarded, tree.entropy[qs, loc], torch.nan), priority=tree.g[qs, loc],
        visits=tree.visits[qs, loc], evaluated=forwarded,
        fully_expanded=(tree.n_children[qs, loc] >= tree.n_valid[qs, loc]) & (d < tree.levels),
    )
    arrays = host_arrays(list(cols.values()) + list(also))
    nodes = PrefixTree(**{k: a.astype(FIELDS[k][0]) for k, a in zip(cols, arrays)},
                       pruned=np.zeros(n_nodes, dtype=bool))
    return arrays[len(cols):], nodes


__all__ = ["GATE_TOL", "SearchTree", "priority", "ucb", "expansion_gate", "warm_start", "select", "triggered",
           "expand", "expand_fixed", "backpropagate", "extract", "warm_start_cost", "ved_decode", "GumbelKeys",
           "choose", "decide", "plan", "Plan"]
