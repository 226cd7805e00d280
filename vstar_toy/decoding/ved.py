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

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DecodeConfig
from ..policy.base import SIDPolicy, State
from .beam import NEG_INF, run_beam
from .tree import CandidateSets, PrefixTree, budget_tokens

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
    """The search trees of Q queries as padded node arrays; node 0 of each query is its root.

    Per node (Q, cap): ``parent`` (-1 at the root), ``depth`` l, ``visits`` N(s) (Eq. 13), ``value`` V
    (NaN at the root, which has no value: Eq. 5 starts at l = 1), ``entropy`` H (Eq. 12; 0 at depth L),
    ``g`` the priority G (Eq. 11), ``cum`` log pi(y_<=l | x), ``n_valid`` the node's valid children in
    the catalog, ``n_children`` those in the tree, ``row`` its State in ``pool`` (-1: not forwarded, as
    every leaf), ``trie`` its trie node; (Q, cap, L) ``sid`` and ``token_logp``; (Q, cap, K) ``child``:
    the local index of each child code in the tree, -1 if absent. Per query (Q,): ``count`` nodes,
    ``cost`` forward tokens spent, ``warmup`` of which by the warm start. ``pool``: the States of the
    forwarded nodes; ``child_trie``: the catalog's trie (``Catalog.child``); ``lam`` and ``rule``: how
    every node's priority G is computed (``DecodeConfig.lam`` and ``priority``, fixed for the search).
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

    NODE_FIELDS = ("parent", "depth", "visits", "value", "entropy", "g", "cum", "n_valid", "n_children", "row",
                   "trie", "sid", "token_logp", "child")

    @classmethod
    def empty(cls, levels: int, k: int, root: State, pool_rows: int, child_trie: torch.Tensor, warmup: np.ndarray,
              lam: float, rule: str, cap: int = 64) -> SearchTree:
        """No nodes yet, for the queries of ``root``, which the warm start reached at ``warmup`` (Q,)
        forward tokens each (the cost so far)."""
        q = len(root)
        long = dict(dtype=torch.long)
        cost = torch.as_tensor(warmup, dtype=torch.long).clone()
        return cls(
            parent=torch.full((q, cap), -1, **long), depth=torch.zeros(q, cap, **long), visits=torch.zeros(q, cap),
            value=torch.zeros(q, cap), entropy=torch.zeros(q, cap), g=torch.zeros(q, cap), cum=torch.zeros(q, cap),
            n_valid=torch.zeros(q, cap, **long), n_children=torch.zeros(q, cap, **long),
            row=torch.full((q, cap), -1, **long),
            trie=torch.zeros(q, cap, **long), sid=torch.full((q, cap, levels), -1, **long),
            token_logp=torch.zeros(q, cap, levels), child=torch.full((q, cap, k), -1, **long),
            count=torch.zeros(q, **long), cost=cost, warmup=cost.clone(),
            pool=State.empty_like(root, pool_rows), child_trie=child_trie, lam=lam, rule=rule,
        )

    @property
    def levels(self) -> int:
        return self.sid.shape[-1]

    @property
    def exists(self) -> torch.Tensor:
        """(Q, cap) bool: the slot holds a node."""
        return torch.arange(self.parent.shape[1])[None, :] < self.count[:, None]

    def grow(self, need: int) -> None:
        """Make room for ``need`` more nodes per query (doubling the capacity)."""
        cap = self.parent.shape[1]
        if int(self.count.max()) + need <= cap:
            return
        new_cap = max(2 * cap, int(self.count.max()) + need)
        fill = {"parent": -1, "row": -1, "sid": -1, "child": -1}
        for f in self.NODE_FIELDS:
            old = getattr(self, f)
            pad = old.new_full((old.shape[0], new_cap - cap, *old.shape[2:]), fill.get(f, 0))
            setattr(self, f, torch.cat([old, pad], 1))

    def add(self, qs: torch.Tensor, *, parent: torch.Tensor, trie: torch.Tensor, sid: torch.Tensor,
            token_logp: torch.Tensor, cum: torch.Tensor, value: torch.Tensor, states: State | None) -> torch.Tensor:
        """Append one node per row of queries ``qs`` (several per query allowed): its parent's local index,
        trie node, SID and per-token log pi, cumulative log pi and V; ``states`` are the nodes' own
        forwarded States (their H and next-token pi), or None for unforwarded leaves. Returns the nodes'
        local indices."""
        L = self.levels
        self.grow(int(torch.bincount(qs, minlength=len(self.count)).max()) if len(qs) else 0)
        loc = self.count[qs] + _rank_within(qs)
        self.count.index_add_(0, qs, torch.ones_like(qs))
        depth = (sid >= 0).sum(-1)
        self.parent[qs, loc], self.depth[qs, loc], self.trie[qs, loc] = parent, depth, trie
        self.sid[qs, loc], self.token_logp[qs, loc], self.cum[qs, loc] = sid, token_logp, cum
        self.visits[qs, loc] = 1.0
        has_parent = parent >= 0
        code = sid[torch.arange(len(qs)), (depth - 1).clamp_min(0)]
        self.child[qs[has_parent], parent[has_parent], code[has_parent]] = loc[has_parent]
        self.n_children.index_put_((qs[has_parent], parent[has_parent]), torch.ones_like(loc[has_parent]),
                                   accumulate=True)
        if states is None:
            entropy, n_valid = torch.zeros(len(qs)), torch.zeros(len(qs), dtype=torch.long)
        else:
            entropy = states.entropy().float().cpu()
            n_valid = torch.isfinite(states.logp).sum(-1).cpu()
            self.row[qs, loc] = self.n_pool + torch.arange(len(qs))
            self.pool.put(self.n_pool, states)
            self.n_pool += len(qs)
        self.value[qs, loc], self.entropy[qs, loc], self.n_valid[qs, loc] = value, entropy, n_valid
        self.g[qs, loc] = priority(value, entropy, depth, L, self.rule, self.lam)  # Eq. 11
        return loc

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
        total = torch.zeros(len(self.count), self.levels + 1, dtype=torch.float64)
        total.scatter_add_(1, self.depth, torch.where(on, self.g, 0.0).double())
        n = torch.zeros_like(total).scatter_add_(1, self.depth, on.double())
        return total / n.clamp_min(1.0)


def _rank_within(qs: torch.Tensor) -> torch.Tensor:
    """(N,) 0, 1, 2 ... among the rows of each query, in row order: the offsets of new nodes."""
    order = torch.argsort(qs, stable=True)
    sorted_q = qs[order]
    first = torch.ones_like(sorted_q, dtype=torch.bool)
    first[1:] = sorted_q[1:] != sorted_q[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(qs)), torch.zeros_like(qs)), 0).values
    out = torch.empty_like(qs)
    out[order] = torch.arange(len(qs)) - start
    return out


# ----------------------------------------------------------------------------------------------
# the four stages


def warm_start(policy: SIDPolicy, histories, value_fn, cfg: DecodeConfig, budget: int) -> SearchTree:
    """Stage 1: a likelihood beam of width b0 (``cfg.warm_beam``) down to depth L - 1, every node
    forwarded once (H, and the pi its children are drawn from) and given V from its parent's state;
    then every child of the depth-(L-1) nodes as a scored leaf (``add_leaves``). Cost 1 + (L-1) b0."""
    L, K, b0 = policy.levels, policy.k_max, cfg.warm_beam
    trace = run_beam(policy, histories, b0, record_pruned=False)  # its depth-L selection is not used
    q = len(trace.root)
    tree = SearchTree.empty(L, K, trace.root, pool_rows=q * budget, child_trie=policy.catalog.child_t,
                            warmup=trace.cost.cpu(), lam=cfg.lam, rule=cfg.priority)
    tree.add(torch.arange(q), parent=torch.full((q,), -1), trie=torch.zeros(q, dtype=torch.long),
             sid=torch.full((q, L), -1), token_logp=torch.zeros(q, L), cum=torch.zeros(q),
             value=torch.full((q,), float("nan")), states=trace.root)
    # the previous level: its states, the beam-tree id of its first row (ids are consecutive), its local indices
    parents, first_id, prev_loc = trace.root, int(trace.root_node[0]), torch.zeros(q, dtype=torch.long)
    for lvl in trace.levels[: L - 1]:
        prow = (lvl.parent - first_id).cpu()  # each node's parent row in the previous level
        codes = lvl.sid[:, lvl.token_logp.shape[1] - 1].cpu()  # this level's code
        with torch.no_grad():
            v = value_fn(parents.index(prow.to(parents.query.device), cache=False), codes.to(parents.query.device),
                         lvl.cum_logp).float().cpu()
        tok = torch.zeros(len(prow), L)
        tok[:, : lvl.token_logp.shape[1]] = lvl.token_logp.cpu()
        prev_loc = tree.add(lvl.query.cpu(), parent=prev_loc[prow], trie=lvl.state.node.cpu(), sid=lvl.sid.cpu(),
                            token_logp=tok, cum=lvl.cum_logp.cpu(), value=v, states=lvl.state)
        parents, first_id = lvl.state, int(lvl.node[0])
    if L > 1:
        add_leaves(tree, trace.levels[L - 2].query.cpu(), prev_loc, value_fn)
    return tree


def add_leaves(tree: SearchTree, qs: torch.Tensor, loc: torch.Tensor, value_fn) -> None:
    """Every valid child of the forwarded depth-(L-1) nodes ``loc`` of queries ``qs``, as a leaf: its
    pi from the parent's cached distribution, its V from the parent's state, no forward (G = V at
    depth L, Eq. 11). Adding a free leaf one walk at a time, as the paper adds children, would only
    reorder free work; beam search scores its leaves the same way."""
    if len(qs) == 0:
        return
    dev = tree.pool.logp.device
    parents = tree.pool.index(tree.row[qs, loc].to(dev), cache=False)
    logp = parents.logp.float().cpu()
    p_idx, codes = torch.isfinite(logp).nonzero(as_tuple=True)  # (parent, code) of every valid child
    pq, ploc = qs[p_idx], loc[p_idx]
    step_lp = logp[p_idx, codes]
    cum = tree.cum[pq, ploc] + step_lp
    with torch.no_grad():
        v = value_fn(parents.index(p_idx.to(dev), cache=False), codes.to(dev), cum.to(dev)).float().cpu()
    L, rows = tree.levels, torch.arange(len(p_idx))
    sid, tok = tree.sid[pq, ploc].clone(), tree.token_logp[pq, ploc].clone()
    sid[rows, L - 1], tok[rows, L - 1] = codes, step_lp
    trie = tree.child_trie[tree.trie[pq, ploc], codes]
    tree.add(pq, parent=ploc, trie=trie, sid=sid, token_logp=tok, cum=cum, value=v, states=None)


def select(tree: SearchTree, active: torch.Tensor, beta: float, exhausted: torch.Tensor) -> torch.Tensor:
    """Stage 2: (Q, L + 1) local indices of the path root -> ... -> the node where the walk stopped
    (-1 beyond it, and everywhere for inactive queries but the root). At each node the walk takes the
    non-exhausted child of largest U (Eq. 13); it stops where there is none."""
    q = len(tree.count)
    rows = torch.arange(q)
    path = torch.full((q, tree.levels + 1), -1, dtype=torch.long)
    path[:, 0] = 0
    n_root = tree.visits[:, 0]
    cur, going = torch.zeros(q, dtype=torch.long), active.clone()
    for d in range(tree.levels):
        kids = tree.child[rows, cur]  # (Q, K)
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


def expand(policy: SIDPolicy, tree: SearchTree, path: torch.Tensor, fire: torch.Tensor, value_fn,
           cfg: DecodeConfig, keys) -> None:
    """Stage 3's action: every firing node adds its next child in the Gumbel-top-k order of log pi
    (a sample without replacement in proportion to pi). The child costs one forward token (its own
    state: H, Eq. 12, and G, Eq. 11) and gets V from its parent's state; a child at depth L - 1
    brings all its leaves (``add_leaves``)."""
    qs, pos = fire.nonzero(as_tuple=True)
    if len(qs) == 0:
        return
    par = path[qs, pos]
    dev = tree.pool.logp.device
    parents = tree.pool.index(tree.row[qs, par].to(dev))
    logp = parents.logp.float().cpu()
    taken = tree.child[qs, par] >= 0
    score = (logp + keys(qs, tree.trie[qs, par])).masked_fill(taken | ~torch.isfinite(logp), NEG_INF)
    codes = score.argmax(1)
    step_lp = logp.gather(1, codes[:, None]).squeeze(1)
    cum = tree.cum[qs, par] + step_lp
    with torch.no_grad():
        v = value_fn(parents, codes.to(dev), cum.to(dev)).float().cpu()
        states = policy.step(parents, codes.to(dev), strict=False)
    tree.cost.index_add_(0, qs, torch.ones_like(qs))
    depth = tree.depth[qs, par] + 1
    rows = torch.arange(len(qs))
    sid, tok = tree.sid[qs, par].clone(), tree.token_logp[qs, par].clone()
    sid[rows, depth - 1], tok[rows, depth - 1] = codes, step_lp
    trie = tree.child_trie[tree.trie[qs, par], codes]
    loc = tree.add(qs, parent=par, trie=trie, sid=sid, token_logp=tok, cum=cum, value=v, states=states)
    last = depth == tree.levels - 1
    add_leaves(tree, qs[last], loc[last], value_fn)


def backpropagate(tree: SearchTree, path: torch.Tensor, active: torch.Tensor) -> None:
    """Stage 4: N(s) += 1 along each active query's walk (the new children start at N = 1; their V, H
    and G were set when they were added, and ``depth_means`` reads the tree as it now is)."""
    on = (path >= 0) & active[:, None]
    tree.visits.scatter_add_(1, path.clamp_min(0), on.float())


def extract(tree: SearchTree, n_candidates: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value-aware extraction: the |C| depth-L leaves of highest V. Returns sids (Q, C, L), token
    log-probs (Q, C, L) and log pi(y|x) (Q, C), padded with -1 / -inf if the tree holds fewer leaves.

    The paper's fallback -- completing high-value prefixes from cached pi when leaves run short -- has
    nothing to add here: every child of a forwarded depth-(L-1) node is already a scored leaf."""
    q = len(tree.count)
    L, C = tree.levels, n_candidates
    leaf = tree.exists & (tree.depth == L)
    # the C highest values; among equal values, the leaf added first (a stable sort: reproducible)
    top_v, top_i = [t[:, :C] for t in torch.sort(torch.where(leaf, tree.value, NEG_INF), dim=1, descending=True,
                                                  stable=True)]
    sids = torch.full((q, C, L), -1, dtype=torch.long)
    tok, logp = torch.zeros(q, C, L), torch.full((q, C), NEG_INF)
    b, c = (top_v > NEG_INF).nonzero(as_tuple=True)  # fewer leaves than C: the rest stays padding
    i = top_i[b, c]
    sids[b, c], tok[b, c], logp[b, c] = tree.sid[b, i], tree.token_logp[b, i], tree.cum[b, i]
    return sids, tok, logp


# ----------------------------------------------------------------------------------------------
# the recipe


def warm_start_cost(levels: int, b0: int) -> int:
    """Forward tokens of the warm start at full width: the start token and b0 nodes per level below L."""
    return 1 + (levels - 1) * b0


def ved_decode(policy: SIDPolicy, histories, value_fn, cfg: DecodeConfig, budget: int | None = None) -> CandidateSets:
    """VED for a batch of queries (Sec. 4.2; the module docstring). ``value_fn`` scores children
    (``values.ValueFn``); ``budget`` defaults to ``cfg.budget_x`` times beam search's 1x."""
    t0 = time.perf_counter()
    L = policy.levels
    budget = budget if budget is not None else budget_tokens(L, cfg.n_candidates, cfg.budget_x)
    check_budget(budget, L, cfg.warm_beam)
    keys = GumbelKeys(cfg.seed, policy.k_max)
    tree = warm_start(policy, histories, value_fn, cfg, budget)  # 1. initialisation
    active = tree.cost < budget
    for _ in range(max_iterations(budget)):
        exhausted = tree.exhausted()
        active &= ~exhausted[:, 0]
        if not active.any():
            break
        path = select(tree, active, cfg.beta, exhausted)  # 2. selection (Eq. 13)
        fire = triggered(tree, path, active, budget, cfg.root_gate)  # 3. gated expansion (Eq. 14) ...
        expand(policy, tree, path, fire, value_fn, cfg, keys)
        backpropagate(tree, path, active)  # 4. backpropagation
        active &= tree.cost < budget
    sids, tok, logp = extract(tree, cfg.n_candidates)  # value-aware extraction
    items = torch.as_tensor(policy.catalog.item_of(sids.reshape(-1, L).numpy()).reshape(sids.shape[:2]))
    return CandidateSets(
        sids=sids, items=items, valid=items >= 0, logp=logp, token_logp=tok, tree=to_prefix_tree(tree),
        cost_tokens=tree.cost.numpy(), budget_tokens=budget, decoder="ved", warmup_tokens=tree.warmup.numpy(),
        expansion_tokens=(tree.cost - tree.warmup).numpy(), seconds=time.perf_counter() - t0,
        prefill_tokens=tree.pool.context.prefill_tokens,
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


class GumbelKeys:
    """Fixed Gumbel noise per (seed, query row, trie node, code) from an integer hash (SplitMix64):
    the n-th child a node adds is its n-th best code by log pi + key, a sample without replacement in
    proportion to pi that any processing order reproduces."""

    def __init__(self, seed: int, k_max: int):
        self.seed, self.k_max = seed, k_max

    def __call__(self, query: torch.Tensor, trie_node: torch.Tensor) -> torch.Tensor:
        """(N, K) keys for rows (query, trie node)."""
        code = np.arange(self.k_max, dtype=np.uint64)[None, :]
        with np.errstate(over="ignore"):
            h = _mix(np.uint64(self.seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1))
            h = _mix(h ^ query.numpy().astype(np.uint64)[:, None])
            h = _mix(h ^ (trie_node.numpy().astype(np.uint64)[:, None] * np.uint64(0x632BE59BD9B4E019)))
            h = _mix(h ^ code)
        u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
        return torch.as_tensor(-np.log(-np.log(u)), dtype=torch.float32)


def _mix(z):
    """SplitMix64's finaliser (uint64 arithmetic wraps around)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def to_prefix_tree(tree: SearchTree) -> PrefixTree:
    """VED's search tree as a PrefixTree (parents renumbered globally; ``evaluated``: forwarded)."""
    qs, loc = tree.exists.nonzero(as_tuple=True)
    offset = torch.cumsum(tree.count, 0) - tree.count
    parent = tree.parent[qs, loc]
    d = tree.depth[qs, loc]
    n_kids = tree.n_children[qs, loc]
    return PrefixTree(
        query=qs.numpy(), parent=torch.where(parent >= 0, offset[qs] + parent, -1).numpy(), depth=d.numpy(),
        token=torch.where(d > 0, tree.sid[qs, loc].gather(1, (d - 1).clamp_min(0)[:, None]).squeeze(1), -1).numpy(),
        sid=tree.sid[qs, loc].numpy(), logp=tree.cum[qs, loc].numpy(), value=tree.value[qs, loc].double().numpy(),
        entropy=torch.where(tree.row[qs, loc] >= 0, tree.entropy[qs, loc], torch.nan).double().numpy(),
        priority=tree.g[qs, loc].double().numpy(), visits=tree.visits[qs, loc].long().numpy(),
        evaluated=(tree.row[qs, loc] >= 0).numpy(), pruned=np.zeros(len(qs), dtype=bool),
        fully_expanded=((n_kids >= tree.n_valid[qs, loc]) & (d < tree.levels)).numpy(),
    )


__all__ = ["GATE_TOL", "SearchTree", "priority", "ucb", "expansion_gate", "warm_start", "select", "triggered",
           "expand", "backpropagate", "extract", "warm_start_cost", "ved_decode", "GumbelKeys"]
