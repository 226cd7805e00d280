"""VED for one query, in plain Python: the algorithm of ``ved.py`` written to be read, not to be fast.

``ved.py`` runs every query of a batch in lock-step over padded tensors; this file runs one query with
a tree of ``Node`` objects and ordinary loops, in the order of Sec. 4.2. The two make the same tree,
the same candidates and spend the same tokens (``tests/properties/test_ved_reference.py`` checks it
on random worlds), so a reader can learn the method here and trust the batched version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import DecodeConfig
from ..policy.base import SIDPolicy, State
from .tree import budget_tokens
from .ved import GATE_TOL, GumbelKeys, check_budget, priority, ucb


@dataclass(eq=False)
class Node:
    """A prefix y_<=l in the search tree."""

    sid: tuple[int, ...]  # y_<=l
    depth: int  # l
    cum: float  # log pi(y_<=l | x)
    value: float  # V (NaN at the root)
    entropy: float  # H of Eq. 12 (0 for a leaf, which is never forwarded)
    g: float  # G of Eq. 11
    trie: int  # the prefix's trie node
    state: State | None  # its forwarded 1-row State (None for a leaf)
    n_valid: int  # valid children in the catalog
    visits: float = 1.0  # N(s) of Eq. 13
    children: dict[int, Node] = field(default_factory=dict)  # code -> child

    def is_open(self) -> bool:
        return len(self.children) < self.n_valid


@dataclass
class ReferenceResult:
    candidates: list[tuple[int, ...]]  # the extracted SIDs, best first
    nodes: list[Node]  # every node of the tree, in the order they were added
    cost: int  # forward tokens spent
    warmup: int  # of which by the warm start


def ved_reference(policy: SIDPolicy, history, value_fn, cfg: DecodeConfig, budget: int | None = None,
                  row: int = 0) -> ReferenceResult:
    """VED for one query's ``history`` (H,). ``value_fn`` is bound to this one query (its State rows have
    query 0); ``row`` is the query's row in a batch, which the Gumbel keys of the child sampling
    depend on (the batched decoder draws the same children for row b).

    One function on purpose (the toolkit's one over 80 lines): its nested steps share the tree, the
    budget and the keys, and read top to bottom in the order Sec. 4.2 tells the method (warm start,
    then select, gate, expand and backpropagate per walk, then extraction); split into module
    functions, a reader would jump between them to follow one walk."""
    L, C, b0 = policy.levels, cfg.n_candidates, cfg.warm_beam
    budget = budget if budget is not None else budget_tokens(L, C, cfg.budget_x)
    check_budget(budget, L, b0)
    keys = GumbelKeys(cfg.seed, policy.k_max)
    nodes: list[Node] = []

    def new_node(parent: Node | None, code: int | None, forward: bool) -> Node:
        """Add parent + code (the root if parent is None) with its V from the parent's state."""
        if parent is None:
            state, sid, cum, trie, value = policy.start(history[None]), (), 0.0, 0, float("nan")
        else:
            step_lp = float(parent.state.logp[0, code])
            sid, cum = parent.sid + (code,), parent.cum + step_lp
            trie = int(policy.catalog.child[parent.trie, code])
            with torch.no_grad():
                value = float(value_fn(parent.state, torch.tensor([code]), torch.tensor([cum])).float()[0])
            state = policy.step(parent.state, torch.tensor([code])) if forward else None
        entropy = float(state.entropy()[0]) if state is not None else 0.0
        n_valid = int(torch.isfinite(state.logp).sum()) if state is not None else 0
        g = float(priority(torch.tensor([value]), torch.tensor([entropy]), torch.tensor([len(sid)]), L, cfg.priority,
                           cfg.lam)[0])  # Eq. 11
        node = Node(sid, len(sid), cum, value, entropy, g, trie, state, n_valid)
        if parent is not None:
            parent.children[code] = node
        nodes.append(node)
        return node

    def add_leaves(parent: Node) -> None:
        """Every valid child of a forwarded depth-(L-1) node, scored without a forward."""
        for code in torch.isfinite(parent.state.logp[0]).nonzero().flatten().tolist():
            new_node(parent, code, forward=False)

    # 1. initialisation: a likelihood beam of width b0 down to depth L-1, then the leaves below it
    with torch.no_grad():
        root = new_node(None, None, forward=True)
        frontier = [root]
        for _ in range(L - 1):
            scored = [(p.cum + float(p.state.logp[0, c]), p, c) for p in frontier
                      for c in torch.isfinite(p.state.logp[0]).nonzero().flatten().tolist()]
            scored.sort(key=lambda t: -t[0])
            frontier = [new_node(p, c, forward=True) for _, p, c in scored[:b0]]
        if L > 1:
            for p in frontier:
                add_leaves(p)
    cost = 1 + sum(1 for n in nodes if n.state is not None and n.depth > 0)
    warmup = cost

    def exhausted(n: Node) -> bool:
        return n.depth == L or (not n.is_open() and all(exhausted(c) for c in n.children.values()))

    while cost < budget and not exhausted(root):
        # 2. selection: from the root, the non-exhausted child of largest U (Eq. 13), to where there is none
        path = [root]
        while True:
            kids = [(code, c) for code, c in sorted(path[-1].children.items()) if not exhausted(c)]
            if not kids:
                break
            u = ucb(torch.tensor([c.g for _, c in kids]), torch.tensor([c.visits for _, c in kids]),
                    torch.tensor(root.visits), cfg.beta)
            path.append(kids[int(u.argmax())][1])
        # 3. gated expansion: open nodes with G >= their depth's mean G (Eq. 14)
        mean_g = {}
        for d in range(1, L + 1):
            at_d = [n.g for n in nodes if n.depth == d]
            mean_g[d] = sum(torch.tensor(at_d, dtype=torch.float32).double().tolist()) / max(len(at_d), 1)
        open_ = [n for n in path if n.is_open()]
        fire = [n for n in open_ if (cfg.root_gate == "open" if n.depth == 0 else n.g >= mean_g[n.depth] - GATE_TOL)]
        if not fire and open_:
            fire = [open_[-1]]  # the search never stalls: the deepest open node expands anyway
        fire = fire[::-1][: budget - cost][::-1]  # one token each; the deepest first when short
        with torch.no_grad():
            for parent in fire:
                lp = parent.state.logp[0].float()
                score = lp + keys(torch.tensor([row]), torch.tensor([parent.trie]))[0]
                for code in parent.children:
                    score[code] = float("-inf")
                child = new_node(parent, int(score.argmax()), forward=True)  # Gumbel-top-k: a draw in proportion to pi
                cost += 1
                if child.depth == L - 1:
                    add_leaves(child)
        # 4. backpropagation: N(s) += 1 along the walk
        for n in path:
            n.visits += 1

    # extraction: the |C| leaves of highest V
    leaves = sorted((n for n in nodes if n.depth == L), key=lambda n: -n.value)
    candidates = [n.sid for n in leaves[:C]]
    return ReferenceResult(candidates, nodes, cost, warmup)


__all__ = ["Node", "ReferenceResult", "ved_reference"]
