"""The batched VED (``decoding/ved.py``) equals the single-query reference (``decoding/ved_reference.py``):
same tree, same visit counts, same candidates, same cost, on small random worlds and random settings.

Both run on a ``TablePolicy``, whose next-token distributions are a random table over the trie: a batch
of rows and a single row read the same numbers bit for bit, so any difference is the algorithm's. Then
the test is shown able to fail: with UCB's exploration term or Eq. 14's gate changed in the batched
decoder only, some drawn case differs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from test_decoders import Case, cases  # noqa: I001  (pytest puts this folder on sys.path)

from vstar_toy.config import DecodeConfig
from vstar_toy.decoding import ved as ved_module
from vstar_toy.decoding.ved import ved_decode
from vstar_toy.decoding.ved_reference import ved_reference
from vstar_toy.policy.base import Context, SIDPolicy, State
from vstar_toy.values import OracleValue
from vstar_toy.world import Queries

SETTINGS = settings(max_examples=25, deadline=None)


class TablePolicy(SIDPolicy):
    """pi(code | x, y_<=l) = a fixed random distribution per (history, trie node): exactly the same
    numbers whether a state is stepped alone or in a batch. Its ``kv`` holds each state's table row."""

    def __init__(self, catalog, histories: np.ndarray, seed: int, sharpen: float = 2.0):
        super().__init__(catalog)
        self.hidden_size = 1
        self.rows = {tuple(h): i for i, h in enumerate(np.asarray(histories).tolist())}
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(len(histories), catalog.n_nodes, self.k_max, generator=gen) * sharpen
        valid = torch.as_tensor(catalog.child >= 0)
        lp = logits.masked_fill(~valid, float("-inf")).log_softmax(-1)
        self.table = lp.nan_to_num(nan=float("-inf"), neginf=float("-inf"))  # leaves: no valid code at all

    def start(self, histories) -> State:
        items = torch.as_tensor(np.asarray(histories), dtype=torch.long)
        b = len(items)
        rows = torch.as_tensor([self.rows[tuple(h)] for h in items.tolist()])
        zero = torch.zeros(b, dtype=torch.long)
        ctx = Context(kv=None, mask=torch.ones(b, 1, dtype=torch.bool), next_slot=zero, hidden=torch.zeros(b, 1, 1),
                      items=items)
        return State(query=torch.arange(b), node=zero, depth=zero.clone(), tokens=torch.full((b, self.levels), -1),
                     logp=self.table[rows, 0], hidden=torch.zeros(b, self.levels + 1, 1), kv=rows[:, None],
                     context=ctx)

    def step(self, states: State, codes: torch.Tensor, strict: bool = True, at: int | None = None) -> State:
        node = self.child[states.node, codes]
        tokens = states.tokens.clone()
        tokens[torch.arange(len(codes)), states.depth] = codes
        return State(query=states.query, node=node, depth=states.depth + 1, tokens=tokens,
                     logp=self.table[states.kv[:, 0], node], hidden=states.hidden, kv=states.kv,
                     context=states.context)


def settings_for(case: Case, data, **fixed) -> tuple[DecodeConfig, int]:
    """A random legal VED configuration (``fixed`` fields excepted) and a seed for the policy's table."""
    c = data.draw(st.integers(2, min(10, case.catalog.n_items)))
    cfg = DecodeConfig(
        decoder="ved", n_candidates=c, warm_beam=data.draw(st.integers(1, c - 1)),
        budget_x=data.draw(st.sampled_from([1.0, 1.5, 2.0, 4.0])), lam=data.draw(st.sampled_from([0.0, 0.1, 1.0])),
        beta=data.draw(st.sampled_from([0.0, 0.1, 1.0])), priority=data.draw(st.sampled_from(["G", "V", "H"])),
        root_gate=data.draw(st.sampled_from(["open", "closed"])), seed=data.draw(st.integers(0, 3)),
        shapes=data.draw(st.sampled_from(["exact", "fixed"])),
    )
    return dataclasses.replace(cfg, **fixed), data.draw(st.integers(0, 3))


def differences(case: Case, cfg: DecodeConfig, table_seed: int) -> list[str]:
    """What differs between the batched VED and the reference, query by query (empty: nothing)."""
    policy = TablePolicy(case.catalog, case.histories, table_seed)
    value = OracleValue(case.world)
    batch = ved_decode(policy, case.histories, value.bind(case.queries), cfg)
    df = batch.tree.to_frame()
    out = []
    for b in range(len(case.histories)):
        one = Queries(case.users[b : b + 1], case.histories[b : b + 1], case.world.targets[case.users[b : b + 1]])
        ref = ved_reference(policy, case.histories[b], value.bind(one), cfg, row=b)
        mine = df[df["query"] == b]
        got_nodes = {(s, int(v), bool(e)) for s, v, e in zip(mine["sid"], mine["visits"], mine["evaluated"])}
        want_nodes = {("-".join(map(str, n.sid)), int(n.visits), n.state is not None) for n in ref.nodes}
        got_cands = {tuple(s) for s, ok in zip(batch.sids[b].tolist(), batch.valid[b].tolist()) if ok}
        if (int(batch.cost_tokens[b]), int(batch.warmup_tokens[b])) != (ref.cost, ref.warmup):
            out.append(f"query {b}: cost {batch.cost_tokens[b]}/{batch.warmup_tokens[b]} vs {ref.cost}/{ref.warmup}")
        if got_nodes != want_nodes:
            out.append(f"query {b}: tree differs: {sorted(got_nodes ^ want_nodes)[:6]}")
        if got_cands != set(ref.candidates):
            out.append(f"query {b}: candidates differ: {sorted(got_cands ^ set(ref.candidates))}")
    return out


@SETTINGS
@given(cases(max_items=40, max_queries=3), st.data())
def test_batched_ved_equals_the_single_query_reference(case, data):
    cfg, table_seed = settings_for(case, data)
    assert differences(case, cfg, table_seed) == []


# ---------------------------------------------------------------------------------------------
# the test above can fail: change one piece of the batched decoder and some case differs
# ---------------------------------------------------------------------------------------------


def no_exploration(g, visits, n_root, beta):
    return g  # Eq. 13 without its exploration term


def always_open(g, g_bar):
    return torch.ones_like(g, dtype=torch.bool)  # Eq. 14's gate removed


@pytest.mark.parametrize("piece, mutant, fixed", [
    ("ucb", no_exploration, {"beta": 1.0, "budget_x": 1.0}),
    ("expansion_gate", always_open, {"beta": 1.0, "budget_x": 2.0, "root_gate": "open"}),
])
def test_the_comparison_catches_a_changed_piece(piece, mutant, fixed, monkeypatch):
    """Searched with settings where the piece matters, hypothesis finds a case where the changed batched
    decoder and the reference differ. UCB's exploration term matters when beta > 0 and the budget cannot
    open the whole trie (every order of expansion ends in the same full tree). With L <= 3 the gate only
    decides whether the walk's level-1 node grows when the root also adds a branch (``root_gate`` open):
    with the root closed, the stall rule makes the one open node of the path fire anyway."""
    monkeypatch.setattr(ved_module, piece, mutant)
    found = []

    @settings(max_examples=100, deadline=None, database=None, derandomize=True, phases=[Phase.generate])
    @given(cases(max_items=40, max_queries=3), st.data())
    def search(case, data):
        cfg, table_seed = settings_for(case, data, **fixed)
        diff = differences(case, cfg, table_seed)
        if diff:
            found.append(diff)
            raise AssertionError("found")  # without a shrink phase, hypothesis stops at the first one

    with pytest.raises(AssertionError):
        search()
    assert found, f"changing {piece} went unnoticed"
