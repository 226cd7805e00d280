"""Properties of the group and sibling advantages (Eq. 2-4, 15-18), then pinned examples.

Every property holds under both standard-deviation conventions of ``vstar_toy.rl.advantages``: the
population std (ddof = 0) and the sample std (ddof = 1, Bessel's correction; the default). Tests that
depend on it take ``ddof`` as a parameter and check both.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings, target
from hypothesis import strategies as st

from vstar_toy.rl.advantages import (
    advantage_bounds,
    grpo_advantages,
    reward_range,
    sibling_contrast,
    sibling_groups,
    sibling_node_advantages,
    sibling_node_scores,
    sibling_node_sets,
)

EPS = 1e-6
DDOFS = pytest.mark.parametrize("ddof", [0, 1])
SETTINGS = settings(max_examples=60, deadline=None)
PAD_REWARDS = [math.nan, math.inf, -math.inf, 1e6, 0.0]


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def reward_batches(draw, max_b: int = 3, max_c: int = 8, grid: bool = False, masked: bool = True):
    """(rewards (B, C) float64, valid (B, C) bool) for B <= max_b queries of C <= max_c candidates.

    ``grid`` draws rewards from multiples of 0.5 in [-3, 3] (ties and zero spread are common, and
    shifts are exact); otherwise any float in [-1e3, 1e3], mixed with 0 and 1 to create ties.
    ``masked`` marks some candidates as padding, whose rewards are junk (NaN, inf, huge).
    """
    b = draw(st.integers(1, max_b))
    c = draw(st.integers(1, max_c))
    if grid:
        value = st.integers(-6, 6).map(lambda k: k / 2)
    else:
        value = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([0.0, 1.0]))
    rewards = draw(st.lists(st.lists(value, min_size=c, max_size=c), min_size=b, max_size=b))
    if masked:
        valid = draw(st.lists(st.lists(st.booleans(), min_size=c, max_size=c), min_size=b, max_size=b))
        pad = st.sampled_from(PAD_REWARDS)
        rewards = [[r if v else draw(pad) for r, v in zip(rr, vv)] for rr, vv in zip(rewards, valid)]
    else:
        valid = [[True] * c for _ in range(b)]
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(valid)


@st.composite
def sid_trees(draw, max_b: int = 3, max_c: int = 8, max_l: int = 4, masked: bool = True):
    """(sids (B, C, L) int64, rewards (B, C) float64, valid (B, C) bool): random small prefix trees.

    Tokens come from range(3), so candidates share prefixes often, duplicate SIDs occur, and
    single-child parents are common. Rewards are on the 0.5 grid of :func:`reward_batches`.
    """
    rewards, valid = draw(reward_batches(max_b, max_c, grid=True, masked=masked))
    b, c = rewards.shape
    length = draw(st.integers(1, max_l))
    token = st.integers(0, 2)
    sids = draw(
        st.lists(
            st.lists(st.lists(token, min_size=length, max_size=length), min_size=c, max_size=c),
            min_size=b,
            max_size=b,
        )
    )
    return torch.tensor(sids, dtype=torch.int64), rewards, valid


# The hand-computed tree of the docstrings: root children 0 (rewards 1, 3) and 1 (rewards 0, 2).
TREE_SIDS = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
TREE_REWARDS = torch.tensor([[1.0, 3.0, 0.0, 2.0]], dtype=torch.float64)
TREE_VALID = torch.ones(1, 4, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# Oracle: Eq. 15-18 as a plain Python loop over queries, depths, parents and nodes.
# ---------------------------------------------------------------------------------------------


def _std(xs: list[float], ddof: int) -> float:
    """The std dividing by n - ddof (0 for n <= ddof), in plain Python."""
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - ddof)) if len(xs) > ddof else 0.0


def samuelson(n: int, ddof: int) -> float:
    """Samuelson's bound on max |R - mu| / sigma for n values: sqrt(n - 1), or (n - 1) / sqrt(n) for ddof = 1."""
    return math.sqrt(n - 1) if ddof == 0 else (n - 1) / math.sqrt(n)


def reference_sibling(sids, rewards, valid, eps=EPS, ddof=0):
    """Slow, obvious Sibling-GRPO: returns (scores, adv, first, contrast) as nested lists / dicts."""
    b_n, c_n, l_n = sids.shape
    s, r, v = sids.tolist(), rewards.tolist(), valid.tolist()
    scores = [[[math.nan] * l_n for _ in range(c_n)] for _ in range(b_n)]
    adv = [[[0.0] * l_n for _ in range(c_n)] for _ in range(b_n)]
    first = [[[False] * l_n for _ in range(c_n)] for _ in range(b_n)]
    contrast = {"global": [], "sibling": [], "n_parents": []}
    for b in range(b_n):
        members = [i for i in range(c_n) if v[b][i]]
        sigma_global = _std([r[b][i] for i in members], ddof) if members else math.nan
        stds_global, stds_sibling = [], []
        for lv in range(l_n):
            nodes: dict[tuple, list[int]] = {}  # G(h, v), keyed by the node prefix h + (v,)
            for i in members:
                nodes.setdefault(tuple(s[b][i][: lv + 1]), []).append(i)
            node_score = {node: sum(r[b][i] for i in idx) / len(idx) for node, idx in nodes.items()}
            parents: dict[tuple, list[tuple]] = {}  # S(h), keyed by h
            for node in nodes:
                parents.setdefault(node[:-1], []).append(node)
            for children in parents.values():
                vals = [node_score[node] for node in children]
                mu, sigma = sum(vals) / len(vals), _std(vals, ddof)
                a_children = [(node_score[node] - mu) / (sigma + eps) for node in children]
                for node, a in zip(children, a_children):
                    for i in nodes[node]:
                        scores[b][i][lv] = node_score[node]
                        adv[b][i][lv] = a
                    first[b][min(nodes[node])][lv] = True
                if len(children) >= 2:
                    stds_global.append(_std([x / (sigma_global + eps) for x in vals], ddof))
                    stds_sibling.append(_std(a_children, ddof))
        n = len(stds_global)
        contrast["global"].append(sum(stds_global) / n if n else math.nan)
        contrast["sibling"].append(sum(stds_sibling) / n if n else math.nan)
        contrast["n_parents"].append(n)
    return scores, adv, first, contrast


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-9, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Eq. 2-4: group advantages and their bounds
# ---------------------------------------------------------------------------------------------


@DDOFS
@SETTINGS
@given(batch=reward_batches())
def test_grpo_zero_mean_over_valid(batch, ddof):
    rewards, valid = batch
    adv = grpo_advantages(rewards, EPS, valid, ddof=ddof)
    assert torch.all(adv[~valid] == 0)
    close(torch.where(valid, adv, 0.0).sum(-1), torch.zeros(rewards.shape[0]))


@DDOFS
@SETTINGS
@given(batch=reward_batches())
def test_eq4_chain_abs_adv_le_tight_le_loose(batch, ddof):
    rewards, valid = batch
    adv = grpo_advantages(rewards, EPS, valid, ddof=ddof)
    bounds = advantage_bounds(rewards, EPS, valid, ddof=ddof)
    has = valid.any(-1)
    tight, loose = bounds["eq4_tight"][has], bounds["eq4_loose"][has]
    max_abs = bounds["max_abs_A"][has]
    close(max_abs, adv.abs().amax(-1)[has])
    assert torch.all(max_abs <= tight * (1 + 1e-9) + 1e-12)
    assert torch.all(tight <= loose * (1 + 1e-12))
    close(bounds["eq4_loose"], reward_range(rewards, valid) / EPS)


@DDOFS
@SETTINGS
@given(batch=reward_batches(max_b=1))
@example(batch=(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64), torch.ones(1, 6).bool()))
def test_samuelson_bound(batch, ddof):
    rewards, valid = batch
    bounds = advantage_bounds(rewards, EPS, valid, ddof=ddof)
    n = int(valid.sum())
    if n == 0:
        assert math.isnan(bounds["samuelson"].item())
        return
    bound, max_abs = bounds["samuelson"].item(), bounds["max_abs_A"].item()
    assert bound == pytest.approx(samuelson(n, ddof))
    if n >= 2:
        target(max_abs / bound, label=f"max |A| / Samuelson's bound, ddof {ddof}")
    assert max_abs <= bound * (1 + 1e-9) + 1e-12


@DDOFS
@SETTINGS
@given(batch=reward_batches())
def test_sigma_a_is_sigma_over_sigma_plus_eps(batch, ddof):
    rewards, valid = batch
    bounds = advantage_bounds(rewards, EPS, valid, ddof=ddof)
    has = valid.any(-1)
    r = [rewards[b][valid[b]].tolist() for b in range(rewards.shape[0]) if has[b]]
    sigma = torch.tensor([_std(x, ddof) for x in r], dtype=torch.float64)
    close(bounds["sigma_A"][has], sigma / (sigma + EPS))
    assert torch.all(bounds["sigma_A"][~has].isnan())


@DDOFS
@SETTINGS
@given(batch=reward_batches(), data=st.data())
def test_grpo_permutation_equivariance(batch, data, ddof):
    rewards, valid = batch
    perm = torch.tensor(data.draw(st.permutations(range(rewards.shape[1]))))
    adv = grpo_advantages(rewards, EPS, valid, ddof=ddof)
    close(grpo_advantages(rewards[:, perm], EPS, valid[:, perm], ddof=ddof), adv[:, perm])
    b1 = advantage_bounds(rewards, EPS, valid, ddof=ddof)
    b2 = advantage_bounds(rewards[:, perm], EPS, valid[:, perm], ddof=ddof)
    for key in b1:
        close(b2[key], b1[key])


@DDOFS
@SETTINGS
@given(batch=reward_batches(grid=True), shift=st.integers(-8, 8).map(lambda k: k / 2))
def test_grpo_shift_invariance(batch, shift, ddof):
    rewards, valid = batch
    close(grpo_advantages(rewards + shift, EPS, valid, ddof=ddof), grpo_advantages(rewards, EPS, valid, ddof=ddof))


@DDOFS
@SETTINGS
@given(batch=reward_batches(grid=True), scale=st.sampled_from([0.125, 0.5, 2.0, 3.0, 10.0]))
def test_grpo_scale_invariance(batch, scale, ddof):
    rewards, valid = batch
    # Exactly: A(c R; eps) = A(R; eps / c). Up to eps effects: A(c R; eps) ~ A(R; eps).
    close(grpo_advantages(scale * rewards, EPS, valid, ddof=ddof),
          grpo_advantages(rewards, EPS / scale, valid, ddof=ddof))
    close(grpo_advantages(scale * rewards, 1e-12, valid, ddof=ddof),
          grpo_advantages(rewards, 1e-12, valid, ddof=ddof), atol=1e-8)


@DDOFS
@SETTINGS
@given(value=st.floats(-1e3, 1e3), c=st.integers(1, 8))
@example(value=0.1, c=3)
def test_zero_spread_and_group_of_one_give_exact_zero(value, c, ddof):
    rewards = torch.full((1, c), value, dtype=torch.float64)
    sids = torch.zeros(1, c, 2, dtype=torch.int64)
    sids[0, :, 1] = torch.arange(c) % 3
    assert torch.all(grpo_advantages(rewards, ddof=ddof) == 0)
    assert torch.all(sibling_node_advantages(sids, rewards, ddof=ddof)[0] == 0)
    bounds = advantage_bounds(rewards, ddof=ddof)
    for key in ("eq4_tight", "eq4_loose", "sigma_A", "max_abs_A"):
        assert bounds[key].item() == 0
    assert bounds["samuelson"].item() == pytest.approx(samuelson(c, ddof))


@SETTINGS
@given(batch=reward_batches(), data=st.data())
@example(batch=(torch.tensor([[1.0, math.nan]]), torch.tensor([[True, True]])), data=None)
def test_nonfinite_rewards_raise(batch, data):
    rewards, valid = batch
    if data is not None:
        b = data.draw(st.integers(0, rewards.shape[0] - 1))
        c = data.draw(st.integers(0, rewards.shape[1] - 1))
        rewards, valid = rewards.clone(), valid.clone()
        rewards[b, c] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        valid[b, c] = True
    bad = valid & ~rewards.isfinite()
    b0, c0 = bad.nonzero()[0].tolist()
    pattern = rf"{int(bad.sum())} non-finite .* \[query {b0}, candidate {c0}\]"
    sids = torch.zeros(*rewards.shape, 2, dtype=torch.int64)
    for call in (
        lambda: grpo_advantages(rewards, EPS, valid),
        lambda: reward_range(rewards, valid),
        lambda: advantage_bounds(rewards, EPS, valid),
        lambda: sibling_node_scores(sids, rewards, valid),
        lambda: sibling_node_advantages(sids, rewards, EPS, valid),
        lambda: sibling_contrast(sids, rewards, EPS, valid),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


# ---------------------------------------------------------------------------------------------
# Eq. 15-18: sibling groups and node advantages
# ---------------------------------------------------------------------------------------------


@DDOFS
@SETTINGS
@given(tree=sid_trees())
@example(tree=(TREE_SIDS, TREE_REWARDS, TREE_VALID))
def test_sibling_matches_loop_reference(tree, ddof):
    sids, rewards, valid = tree
    scores, adv, first, contrast = reference_sibling(sids, rewards, valid, ddof=ddof)
    got_adv, got_first = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    close(sibling_node_scores(sids, rewards, valid), scores)
    close(got_adv, adv)
    assert got_first.tolist() == first
    got = sibling_contrast(sids, rewards, EPS, valid, ddof=ddof)
    close(got["global"], contrast["global"])
    close(got["sibling"], contrast["sibling"])
    assert got["n_parents"].tolist() == contrast["n_parents"]


@DDOFS
@SETTINGS
@given(tree=sid_trees())
def test_sibling_zero_mean_over_child_nodes(tree, ddof):
    sids, rewards, valid = tree
    adv, first = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    for lv in range(1, sids.shape[-1] + 1):
        groups = sibling_groups(sids, lv, valid)  # (B, C) parent ids, -1 for padding
        node_adv = adv[..., lv - 1] * first[..., lv - 1]
        for b in range(sids.shape[0]):
            for g in groups[b].unique().tolist():
                in_parent = groups[b] == g
                if g >= 0 and first[b, in_parent, lv - 1].sum() >= 2:
                    assert abs(node_adv[b, in_parent].sum().item()) < 1e-9


@DDOFS
@SETTINGS
@given(tree=sid_trees())
def test_single_child_parents_give_zero(tree, ddof):
    sids, rewards, valid = tree
    adv, _ = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    for lv in range(1, sids.shape[-1] + 1):
        for b, parents in enumerate(sibling_node_sets(sids, lv, valid)):
            for p in parents:
                if len(p["children"]) == 1:
                    assert torch.all(adv[b, p["candidates"], lv - 1] == 0)


@DDOFS
@SETTINGS
@given(tree=sid_trees(), data=st.data())
def test_sibling_permutation_equivariance(tree, data, ddof):
    sids, rewards, valid = tree
    perm = torch.tensor(data.draw(st.permutations(range(rewards.shape[1]))))
    adv, first = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    adv_p, first_p = sibling_node_advantages(sids[:, perm], rewards[:, perm], EPS, valid[:, perm], ddof=ddof)
    close(adv_p, adv[:, perm])
    # The representative candidate of a node may change, but the set of nodes and their sums do not.
    assert torch.equal(first_p.sum(1), first.sum(1))
    close((adv_p * first_p).sum(1), (adv * first).sum(1))
    c1 = sibling_contrast(sids, rewards, EPS, valid, ddof=ddof)
    c2 = sibling_contrast(sids[:, perm], rewards[:, perm], EPS, valid[:, perm], ddof=ddof)
    for key in c1:
        close(c2[key], c1[key])


@DDOFS
@SETTINGS
@given(
    tree=sid_trees(),
    shift=st.integers(-4, 4).map(lambda k: k / 2),
    scale=st.sampled_from([0.5, 2.0, 4.0]),
)
def test_sibling_affine_invariance(tree, shift, scale, ddof):
    sids, rewards, valid = tree
    adv, _ = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    # Shifts are exact on the 0.5 grid; scaling by c is exact with eps / c (Eq. 18 like Eq. 2).
    close(sibling_node_advantages(sids, rewards + shift, EPS, valid, ddof=ddof)[0], adv)
    close(sibling_node_advantages(sids, scale * rewards, EPS * scale, valid, ddof=ddof)[0], adv)


@DDOFS
@SETTINGS
@given(tree=sid_trees())
def test_padding_does_not_change_valid_entries(tree, ddof):
    sids, rewards, valid = tree
    adv, first = sibling_node_advantages(sids, rewards, EPS, valid, ddof=ddof)
    grpo = grpo_advantages(rewards, EPS, valid, ddof=ddof)
    bounds = advantage_bounds(rewards, EPS, valid, ddof=ddof)
    contrast = sibling_contrast(sids, rewards, EPS, valid, ddof=ddof)
    assert torch.all(adv[~valid] == 0) and not first[~valid].any() and torch.all(grpo[~valid] == 0)
    for b in range(sids.shape[0]):
        keep = valid[b]
        s, r = sids[b, keep][None], rewards[b, keep][None]
        # The same query with its padding removed and no mask at all.
        adv_c, first_c = sibling_node_advantages(s, r, EPS, ddof=ddof)
        close(adv[b, keep], adv_c[0])
        assert torch.equal(first[b, keep], first_c[0])
        close(grpo[b, keep], grpo_advantages(r, EPS, ddof=ddof)[0])
        bounds_c = advantage_bounds(r, EPS, ddof=ddof)
        for key in bounds:
            close(bounds[key][b], bounds_c[key][0])
        contrast_c = sibling_contrast(s, r, EPS, ddof=ddof)
        for key in contrast:
            close(contrast[key][b], contrast_c[key][0])


@SETTINGS
@given(tree=sid_trees(), data=st.data())
def test_sibling_groups_are_parent_prefixes(tree, data):
    sids, _, valid = tree
    lv = data.draw(st.integers(1, sids.shape[-1]))
    groups = sibling_groups(sids, lv, valid)
    sets = sibling_node_sets(sids, lv, valid)
    for b in range(sids.shape[0]):
        ids = groups[b].tolist()
        assert all((g == -1) == (not v) for g, v in zip(ids, valid[b].tolist()))
        seen = [g for g in ids if g >= 0]
        assert sorted(set(seen)) == list(range(len(set(seen))))  # small ids 0..G-1
        assert [g for i, g in enumerate(seen) if g not in seen[:i]] == sorted(set(seen))  # first-seen order
        for i in range(sids.shape[1]):
            for j in range(sids.shape[1]):
                if valid[b, i] and valid[b, j]:
                    same = sids[b, i, : lv - 1].tolist() == sids[b, j, : lv - 1].tolist()
                    assert (ids[i] == ids[j]) == same
        assert len(sets[b]) == len(set(seen))
        for g, p in enumerate(sets[b]):
            assert p["candidates"] == [i for i, x in enumerate(ids) if x == g]
            assert p["children"] == sorted({sids[b, i, lv - 1].item() for i in p["candidates"]})
            assert all(tuple(sids[b, i, : lv - 1].tolist()) == p["parent"] for i in p["candidates"])


# ---------------------------------------------------------------------------------------------
# Pinned, hand-computed examples
# ---------------------------------------------------------------------------------------------


def test_grpo_hand_computed():
    # Population std: mu = 2.5, sigma = sqrt(1.25); the padded NaN is ignored.
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0, math.nan]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True, False]])
    sigma = math.sqrt(1.25)
    expected = [[(r - 2.5) / (sigma + EPS) for r in (1.0, 2.0, 3.0, 4.0)] + [0.0]]
    close(grpo_advantages(rewards, EPS, valid, ddof=0), expected)
    bounds = advantage_bounds(rewards, EPS, valid, ddof=0)
    close(bounds["eq4_tight"], [3.0 / (sigma + EPS)])
    close(bounds["samuelson"], [math.sqrt(3.0)])
    close(bounds["sigma_A"], [sigma / (sigma + EPS)])
    close(reward_range(rewards, valid), [3.0])


def test_sibling_hand_computed_tree():
    # Depth 1: root children 0 (scores 2) and 1 (score 1): A = +-0.5 / 0.5.
    # Depth 2: parent (0,) leaves score 1 and 3: A = -+1; parent (1,) has one child: 0.
    close(sibling_node_scores(TREE_SIDS, TREE_REWARDS), [[[2.0, 1.0], [2.0, 3.0], [1.0, 1.0], [1.0, 1.0]]])
    adv, first = sibling_node_advantages(TREE_SIDS, TREE_REWARDS, EPS, ddof=0)
    a1, a2 = 0.5 / (0.5 + EPS), 1.0 / (1.0 + EPS)
    close(adv, [[[a1, -a2], [a1, a2], [-a1, 0.0], [-a1, 0.0]]])
    assert first.tolist() == [[[True, True], [False, True], [True, True], [False, False]]]
    contrast = sibling_contrast(TREE_SIDS, TREE_REWARDS, EPS, ddof=0)
    close(contrast["global"], [(0.5 + 1.0) / 2 / (math.sqrt(1.25) + EPS)])
    close(contrast["sibling"], [(a1 + a2) / 2])
    assert contrast["n_parents"].tolist() == [2]
    assert sibling_groups(TREE_SIDS, 2).tolist() == [[0, 0, 1, 1]]


def test_grpo_and_sibling_hand_computed_with_the_sample_std():
    # Sample std (the default): s = sqrt(5 / 3) for 1, 2, 3, 4; Samuelson's bound (n - 1) / sqrt(n) = 1.5.
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    s = math.sqrt(5 / 3)
    close(grpo_advantages(rewards, EPS), [[(r - 2.5) / (s + EPS) for r in (1.0, 2.0, 3.0, 4.0)]])
    bounds = advantage_bounds(rewards, EPS)
    close(bounds["samuelson"], [1.5])
    close(bounds["sigma_A"], [s / (s + EPS)])
    # The tree: root children score 2 and 1 (s = sqrt(0.5)), leaves under (0,) score 1 and 3 (s = sqrt(2)).
    adv, _ = sibling_node_advantages(TREE_SIDS, TREE_REWARDS, EPS)
    a1, a2 = 0.5 / (math.sqrt(0.5) + EPS), 1.0 / (math.sqrt(2.0) + EPS)
    close(adv, [[[a1, -a2], [a1, a2], [-a1, 0.0], [-a1, 0.0]]])


def test_a_near_tie_is_a_weak_signal_by_default():
    """Two candidates 1e-5 apart (a chance difference under a continuous reward): +-0.83 with the
    population std and eps = 1e-6, about +-0.05 with the defaults (sample std, eps = 1e-4)."""
    rewards = torch.tensor([[0.5, 0.50001]], dtype=torch.float64)
    assert grpo_advantages(rewards, eps=1e-6, ddof=0)[0, 1].item() == pytest.approx(0.833, abs=1e-3)
    assert abs(grpo_advantages(rewards)[0, 1].item()) < 0.06


def test_empty_query_conventions():
    # Query 1 is all padding: advantages 0, statistics NaN, no parents.
    rewards = torch.tensor([[1.0, 2.0], [math.nan, 5.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True], [False, False]])
    sids = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    assert grpo_advantages(rewards, EPS, valid)[1].tolist() == [0.0, 0.0]
    assert math.isnan(reward_range(rewards, valid)[1].item())
    assert all(math.isnan(v[1].item()) for v in advantage_bounds(rewards, EPS, valid).values())
    adv, first = sibling_node_advantages(sids, rewards, EPS, valid)
    assert torch.all(adv[1] == 0) and not first[1].any()
    assert sibling_node_scores(sids, rewards, valid)[1].isnan().all()
    contrast = sibling_contrast(sids, rewards, EPS, valid)
    assert math.isnan(contrast["global"][1].item()) and contrast["n_parents"][1].item() == 0
    assert sibling_groups(sids, 2, valid)[1].tolist() == [-1, -1]
    assert sibling_node_sets(sids, 2, valid)[1] == []
    # No candidates at all (C = 0): the same conventions.
    none_r, none_s = torch.zeros(2, 0, dtype=torch.float64), torch.zeros(2, 0, 3, dtype=torch.int64)
    assert grpo_advantages(none_r).shape == (2, 0) and reward_range(none_r).isnan().all()
    assert sibling_node_advantages(none_s, none_r)[0].shape == (2, 0, 3)
    assert sibling_contrast(none_s, none_r)["n_parents"].tolist() == [0, 0]
    assert sibling_groups(none_s, 1).shape == (2, 0)


def test_bad_arguments_speak():
    with pytest.raises(ValueError, match="eps must be > 0"):
        grpo_advantages(torch.ones(1, 2), eps=0.0)
    with pytest.raises(ValueError, match="ddof = 2 is invalid"):
        grpo_advantages(torch.ones(1, 2), ddof=2)
    with pytest.raises(ValueError, match="level must be in 1..L"):
        sibling_groups(TREE_SIDS, 3)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        grpo_advantages(torch.ones(1, 2), valid=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sids must have shape"):
        sibling_node_advantages(TREE_SIDS[:, :3], TREE_REWARDS)
