"""Bad input to the decoders and the policy gives one clear ValueError that names the field, the value
and what would be valid (STYLE convention 9); and the prefix trees the decoders return show as tables."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from vstar_toy import checkpoint
from vstar_toy.config import DecodeConfig, PolicyConfig, ValueConfig, presets
from vstar_toy.decoding import beam_search, budget_tokens, decode, ved_decode
from vstar_toy.decoding.ved import warm_start_cost
from vstar_toy.policy.base import CountingPolicy
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.policy.value import ValueHead
from vstar_toy.values import likelihood_value
from vstar_toy.world import World

TREE_COLUMNS = {"node", "query", "parent", "depth", "token", "sid", "logp", "value", "entropy", "priority",
                "visits", "evaluated", "pruned", "fully_expanded"}


@pytest.fixture(scope="module")
def world() -> World:
    """The `tiny` preset's world: 200 items, 8 codes per level, L = 3."""
    return World.build(presets.tiny().world)


@pytest.fixture
def policy(world) -> TinyPolicy:
    return TinyPolicy(world.catalog, PolicyConfig(d_model=16, n_layers=1, n_heads=2)).eval()


@pytest.fixture
def head(world) -> ValueHead:
    return ValueHead(world.catalog, 16, ValueConfig(hidden=8)).eval()


@pytest.fixture(scope="module")
def histories(world) -> np.ndarray:
    return world.queries("test", n=3).histories


# -- VED's budget ----------------------------------------------------------------------------------


def test_the_1x_budget_always_pays_for_the_warm_start():
    """b0 < |C| (DecodeConfig refuses more), so the warm start 1 + (L - 1) b0 is below every budget
    1 + round(k (L - 1) |C|), k >= 1: VED run through ``decode`` always has tokens to search with."""
    for levels in (2, 3, 4):
        for c in range(2, 40):
            for b0 in range(1, c):
                assert warm_start_cost(levels, b0) < budget_tokens(levels, c, 1.0)


@pytest.mark.parametrize("budget", [0, 1, 16, 17])
def test_ved_explicit_budget_below_the_minimum(policy, histories, budget):
    """b0 = 8, L = 3: the warm start costs 1 + 2 * 8 = 17 tokens, so any budget <= 17 leaves nothing to
    search with (0 included: an explicit budget is never replaced by the default)."""
    cfg = DecodeConfig(n_candidates=16, warm_beam=8)
    counted = CountingPolicy(policy)
    with pytest.raises(ValueError, match=rf"budget = {budget}\b.*\b17\b"):
        ved_decode(counted, histories, likelihood_value, cfg, budget=budget)
    assert counted.tokens == 0, "nothing may be spent before the budget is checked"


def test_ved_budget_just_above_the_minimum_runs(world, policy, histories):
    cfg = DecodeConfig(n_candidates=16, warm_beam=8)
    cands = ved_decode(policy, histories, likelihood_value, cfg, budget=18)
    assert (cands.cost_tokens <= 18).all()


# -- the candidate count ---------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["beam", "topk", "temperature", "ved"])
def test_more_candidates_than_the_catalog_holds(world, policy, head, histories, decoder):
    n = world.catalog.n_items + 1
    cfg = DecodeConfig(decoder=decoder, n_candidates=n, warm_beam=4)
    with pytest.raises(ValueError, match=rf"n_candidates = {n}\b.*\b{world.catalog.n_items}\b"):
        decode(policy, histories, cfg, head)


def test_as_many_candidates_as_the_catalog_holds_returns_every_item(world, policy, histories):
    n = world.catalog.n_items
    cands = decode(policy, histories[:1], DecodeConfig(decoder="beam", n_candidates=n, warm_beam=4))
    assert bool(cands.valid.all())
    assert sorted(cands.items[0].tolist()) == list(range(n))


def test_ved_without_a_value_head(policy, histories):
    with pytest.raises(ValueError, match="needs a value"):
        decode(policy, histories, DecodeConfig(decoder="ved"))


# -- checkpoints from another world ----------------------------------------------------------------


def test_policy_checkpoint_from_another_world(tmp_path, world, policy, head, histories):
    other = World.build(presets.tiny().replace(world={"seed": 1}).world)
    checkpoint.save(tmp_path, world, policy, head)
    with pytest.raises(ValueError) as err:
        checkpoint.load_policy(tmp_path, other)
    msg = str(err.value)
    assert world.name != other.name
    assert world.name in msg and other.name in msg, msg
    with pytest.raises(ValueError, match=re.escape(other.name)):
        checkpoint.load_value(tmp_path, other, policy)
    # the same world loads, and the loaded policy is the saved one
    loaded = checkpoint.load_policy(tmp_path, world)
    sids = torch.as_tensor(world.catalog.sids[:5])[None].expand(len(histories), -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logprobs(histories, sids), policy.logprobs(histories, sids))


def test_loading_from_a_directory_that_is_no_checkpoint(tmp_path, world):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        checkpoint.load_policy(tmp_path, world)


# -- stepping a state with an invalid code ---------------------------------------------------------


def invalid_codes(world) -> dict[str, int]:
    """Codes that do not continue the empty prefix: one inside [0, K_1) if the root lacks one, one
    below 0, one at K_max and beyond."""
    k_max = world.catalog.child.shape[1]
    missing = np.flatnonzero(world.catalog.child[0] < 0)
    out = {"negative": -1, "at K_max": k_max, "far out": 10 * k_max}
    if len(missing):
        out["not a child"] = int(missing[0])
    return out


@pytest.mark.parametrize("kind", ["not a child", "negative", "at K_max", "far out"])
def test_step_with_an_invalid_code(world, policy, histories, kind):
    codes = invalid_codes(world)
    if kind not in codes:
        # the root of this catalog has every code: use a depth-1 prefix that lacks one
        cat = world.catalog
        node = next(n for n in cat.nodes_at(1) if (cat.child[n] < 0).any())
        state = policy.step(policy.start(histories[:1]), torch.tensor([int(cat.token[node])]))
        bad = int(np.flatnonzero(cat.child[node] < 0)[0])
    else:
        state, bad = policy.start(histories[:1]), codes[kind]
    with pytest.raises(ValueError, match=rf"code {bad}\b"):
        policy.step(state, torch.tensor([bad]))
    with pytest.raises(RuntimeError, match="not a valid child"):  # the decoders' check: on the device, unnamed
        policy.step(state, torch.tensor([bad]), strict=False)


def test_step_beyond_depth_l(world, policy, histories):
    state = policy.start(histories[:1])
    for code in world.catalog.sids[0]:
        state = policy.step(state, torch.tensor([int(code)]))
    with pytest.raises(ValueError, match="depth L"):
        policy.step(state, torch.tensor([0]))


def test_two_decodes_may_interleave(world, policy):
    """The encoded prompts travel with the states, not on the policy: stepping two batches in turn gives
    what stepping each alone gives (a shared prompt cache on the policy would mix them up silently)."""
    a_hist, b_hist = world.histories[:2], world.histories[5:8]
    code = int(world.catalog.sids[0, 0])
    with torch.no_grad():
        alone = policy.step(policy.start(a_hist), torch.full((2,), code)).logp
        a = policy.start(a_hist)
        b = policy.start(b_hist)  # a second decode starts before the first one steps
        a_next = policy.step(a, torch.full((2,), code))
        policy.step(b, torch.full((3,), code))
    torch.testing.assert_close(a_next.logp, alone)


# -- DecodeConfig ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("decoder", "greedy"),
        ("n_candidates", 0),
        ("n_candidates", 2.5),
        ("n_candidates", True),
        ("budget_x", 0.5),
        ("budget_x", 17),
        ("budget_x", math.nan),
        ("warm_beam", 0),
        ("warm_beam", 16),  # b0 must be below |C| = 16
        ("lam", -0.1),
        ("lam", math.inf),
        ("beta", -1.0),
        ("priority", "VH"),
        ("top_k", 0),
        ("temperature", 0.0),
        ("temperature", 101.0),
        ("seed", -1),
    ],
)
def test_decode_config_invalid_field(field, value):
    with pytest.raises(ValueError, match=re.escape(f"DecodeConfig.{field} = {value!r} is invalid: expected")):
        DecodeConfig(**{field: value})


# -- the prefix trees as tables ----------------------------------------------------------------------


def check_forest(df, n_queries: int, levels: int) -> None:
    """Columns present, one root per query, every parent in the same query one level up."""
    assert TREE_COLUMNS <= set(df.columns)
    roots = df[df["depth"] == 0]
    assert sorted(roots["query"].tolist()) == list(range(n_queries))
    kids = df[df["depth"] > 0]
    par = df.set_index("node").loc[kids["parent"].to_numpy()]
    np.testing.assert_array_equal(par["query"].to_numpy(), kids["query"].to_numpy())
    np.testing.assert_array_equal(par["depth"].to_numpy() + 1, kids["depth"].to_numpy())
    assert df["depth"].between(0, levels).all()
    # sid is the prefix written out: as many codes as the depth
    assert (df["sid"].map(lambda s: len(s.split("-")) if s else 0) == df["depth"]).all()


def test_beam_tree_to_frame(world, policy, histories):
    cands = beam_search(policy, histories, 4)
    df = cands.tree.to_frame()
    check_forest(df, len(histories), world.catalog.levels)
    assert df["pruned"].any(), "a width-4 beam on 8 codes per level prunes children"
    assert not (df["pruned"] & df["evaluated"]).any()
    # each candidate is a kept depth-L node of its query's tree
    leaves = df[(df["depth"] == world.catalog.levels) & ~df["pruned"]]
    for b in range(len(histories)):
        want = {"-".join(map(str, s)) for s in cands.sids[b].tolist()}
        assert want == set(leaves.loc[leaves["query"] == b, "sid"])
    one = cands.tree.to_frame(query=1)
    assert set(one["query"]) == {1} and len(one) == int((df["query"] == 1).sum())


def test_ved_tree_to_frame(world, policy, head, histories):
    cands = decode(policy, histories, DecodeConfig(decoder="ved", n_candidates=16, warm_beam=8), head)
    df = cands.tree.to_frame()
    L = world.catalog.levels
    check_forest(df, len(histories), L)
    assert not df["pruned"].any()
    # forwarded ("evaluated") are exactly the nodes above depth L: one forward token each, the whole cost
    assert (df["evaluated"] == (df["depth"] < L)).all()
    np.testing.assert_array_equal(df[df["evaluated"]].groupby("query").size().to_numpy(), cands.cost_tokens)
    # every node but the root has a value (Eq. 5 starts at depth 1) and a priority
    assert df["value"].isna().equals(df["depth"] == 0) and df.loc[df["depth"] > 0, "priority"].notna().all()
    assert (df["visits"] >= 1).all()
