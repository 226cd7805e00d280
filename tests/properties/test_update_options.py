"""Properties of the update's options (``RLConfig.baseline``, ``negatives``, ``group``; issue 20):
each advantage form is zero-mean only where it should be, dropped negatives are never negative, TOPR's
taper never flips a sign nor grows an advantage, and the beam baseline is Eq. 2 when the group is the
beam set; AsymRE's shifted baseline pushes a group up by exactly delta, distillation's weights are a
distribution over the valid candidates that favours the better ones, and the value as a critic is Eq. 2
wherever the value says nothing, zero-mean per level, and silent where the value says everything (issue 29).
Then pinned examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from test_advantages import DDOFS, EPS, SETTINGS, reward_batches, sid_trees  # noqa: I001

from vstar_toy.rl.advantages import grpo_advantages
from vstar_toy.rl.updates import (
    baseline_advantages,
    critic_advantages,
    distill_weights,
    group_advantages,
    negative_weights,
    own_prefixes,
    shifted_baseline,
    sibling_topr_weights,
    taper_negatives,
    topr_weights,
)


def _mean(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, rewards, 0.0).sum(1) / valid.sum(1).clamp_min(1)


@SETTINGS
@DDOFS
@given(reward_batches())
def test_the_beam_baseline_is_eq2_when_the_group_is_the_beam_set(ddof, batch):
    """b(x) = the mean reward of the group itself: exactly the group advantage of Eq. 2."""
    rewards, valid = batch
    b = _mean(torch.where(valid, rewards, 0.0), valid)
    torch.testing.assert_close(baseline_advantages(rewards, b, EPS, valid, ddof), grpo_advantages(rewards, EPS, valid,
                                                                                                   ddof))


@SETTINGS
@DDOFS
@given(reward_batches(grid=True, masked=False), st.floats(-3, 3))
@example((torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, True, True]])), 0.5)
def test_an_outside_baseline_is_zero_mean_only_at_the_group_mean(ddof, batch, shift):
    """A = (R - b) / (sigma + eps) sums to n (mu - b) / (sigma + eps): zero exactly when b = mu, and of
    the sign of mu - b otherwise (a group better than what the policy decodes is pushed up as a whole)."""
    rewards, valid = batch
    mu = _mean(rewards, valid)
    adv = baseline_advantages(rewards, mu + shift, EPS, valid, ddof)
    n = rewards.shape[1]
    sigma = rewards.std(1, correction=ddof) if n > ddof else torch.zeros(len(rewards), dtype=rewards.dtype)
    expected = -shift * n / (sigma + EPS)
    torch.testing.assert_close(adv.sum(1), expected, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(reward_batches(masked=False), st.data())
def test_tapered_negatives_keep_their_sign_never_grow_and_leave_positives(batch, data):
    rewards, valid = batch
    adv = grpo_advantages(rewards, EPS, valid)
    w = torch.tensor(data.draw(st.lists(st.lists(st.floats(0, 1), min_size=adv.shape[1], max_size=adv.shape[1]),
                                        min_size=adv.shape[0], max_size=adv.shape[0])), dtype=adv.dtype)
    out = taper_negatives(adv, w)
    assert torch.equal(out[adv >= 0], adv[adv >= 0])
    assert (out[adv < 0] <= 0).all() and (out.abs() <= adv.abs()).all()


@SETTINGS
@given(sid_trees(), st.data())
def test_dropped_negatives_are_never_negative_off_the_policy_s_own_set(tree, data):
    """``negatives = "drop"``: a candidate (a node) outside the policy's own set has no negative advantage
    left, one inside keeps its Eq. 2 (Eq. 18) advantage whatever its sign."""
    sids, rewards, valid = tree
    own_rows = data.draw(st.lists(st.booleans(), min_size=sids.shape[1], max_size=sids.shape[1]))
    own = torch.where(torch.tensor(own_rows)[None, :, None], sids, -1)  # some of the group's own SIDs
    mask = own_prefixes(sids, own, valid)
    grpo_w, node_w = negative_weights("drop", sids, torch.zeros(sids.shape, dtype=torch.float64), valid, mask)
    adv = group_advantages(rewards, EPS, valid, negatives=grpo_w)
    assert (adv[valid & ~mask[..., -1]] >= 0).all()
    plain = grpo_advantages(rewards, EPS, valid)
    assert torch.equal(adv[mask[..., -1]], plain[mask[..., -1]])
    assert torch.equal(node_w, mask.to(node_w.dtype))


@SETTINGS
@given(sid_trees(masked=False))
def test_own_prefixes_marks_exactly_the_prefixes_of_the_own_set(tree):
    sids, _, valid = tree
    own = sids[:, :1]  # the first candidate is the whole own set
    mask = own_prefixes(sids, own, valid)
    for b in range(sids.shape[0]):
        for i in range(sids.shape[1]):
            for lv in range(sids.shape[2]):
                assert bool(mask[b, i, lv]) == (sids[b, i, : lv + 1] == sids[b, 0, : lv + 1]).all().item()


@SETTINGS
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=12))
def test_topr_weights_are_one_above_the_group_average_and_proportional_below(logps):
    lp = torch.tensor([logps], dtype=torch.float64)
    w = topr_weights(lp)
    share = torch.softmax(lp, -1)
    n = lp.shape[1]
    assert ((w > 0) & (w <= 1)).all()
    torch.testing.assert_close(w, (n * share).clamp(max=1.0))
    assert (w[share >= 1 / n] == 1).all()


def test_topr_weights_are_all_one_for_a_uniform_group():
    assert torch.equal(topr_weights(torch.full((2, 5), -3.0)), torch.ones(2, 5))


@SETTINGS
@given(sid_trees(masked=False), st.data())
def test_sibling_topr_weights_compare_a_node_with_its_siblings_only(tree, data):
    """w(v | h) = min(1, |S(h)| pi(v|h) / sum over S(h)): a brute-force loop over parents agrees, and a
    parent's only child has weight 1."""
    sids, _, _ = tree
    b, c, length = sids.shape
    lp = torch.tensor(data.draw(st.lists(st.floats(-5, 0), min_size=b * c * length, max_size=b * c * length)),
                      dtype=torch.float64).reshape(b, c, length)
    # one log-prob per node (the same token of the same parent has one probability)
    for q in range(b):
        for i in range(c):
            for lv in range(length):
                first = next(j for j in range(c) if (sids[q, j, : lv + 1] == sids[q, i, : lv + 1]).all())
                lp[q, i, lv] = lp[q, first, lv]
    w = sibling_topr_weights(sids, lp)
    for q in range(b):
        for i in range(c):
            for lv in range(length):
                kids = {}
                for j in range(c):
                    if (sids[q, j, :lv] == sids[q, i, :lv]).all():
                        kids[int(sids[q, j, lv])] = math.exp(float(lp[q, j, lv]))
                want = min(1.0, len(kids) * math.exp(float(lp[q, i, lv])) / sum(kids.values()))
                assert float(w[q, i, lv]) == pytest.approx(want, rel=1e-9)


def test_keep_gives_no_weights_and_an_unknown_kind_is_refused():
    sids = torch.zeros(1, 2, 3, dtype=torch.long)
    assert negative_weights("keep", sids, torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match="keep, drop or topr"):
        negative_weights("clip", sids, torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))


def test_a_bad_baseline_is_one_clear_error():
    with pytest.raises(ValueError, match="finite"):
        baseline_advantages(torch.ones(2, 3), torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match=r"\(B,\) = \(2,\)"):
        baseline_advantages(torch.ones(2, 3), torch.zeros(3))


@SETTINGS
@DDOFS
@given(reward_batches(grid=True), st.sampled_from([0.0, 0.25, 1.0]))
@example((torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, True, True]])), 0.0)
def test_the_shifted_baseline_adds_delta_over_sigma_to_every_advantage(ddof, batch, delta):
    """AsymRE: A = (R - mu + delta) / (sigma + eps), i.e. Eq. 2's advantage plus delta / (sigma + eps) on
    every valid candidate (and 0 on padding); delta = 0 is Eq. 2 exactly."""
    rewards, valid = batch
    adv = baseline_advantages(rewards, shifted_baseline(rewards, valid, delta), EPS, valid, ddof)
    plain = grpo_advantages(rewards, EPS, valid, ddof)
    sigma = torch.stack([rewards[b][valid[b]].std(correction=ddof) if valid[b].sum() > ddof
                         else torch.tensor(0.0, dtype=rewards.dtype) for b in range(len(rewards))])
    lift = torch.where(valid, delta / (sigma[:, None] + EPS), 0.0)
    torch.testing.assert_close(adv, plain + lift, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(reward_batches(), st.sampled_from(["best", "awr"]), st.floats(0.05, 20))
def test_distillation_weights_are_a_distribution_that_prefers_the_better_candidates(batch, kind, tau):
    rewards, valid = batch
    w = distill_weights(rewards, valid, kind, tau)
    assert (w >= 0).all() and (w[~valid] == 0).all()
    has = valid.any(1)
    torch.testing.assert_close(w.sum(1)[has], torch.ones(int(has.sum()), dtype=w.dtype))
    for b in range(len(rewards)):  # a better candidate never gets less weight than a worse one
        ok = valid[b].nonzero().squeeze(1)
        for i in ok:
            for j in ok:
                if rewards[b, i] > rewards[b, j]:
                    assert w[b, i] >= w[b, j] - 1e-12
    if kind == "best":  # all of it on one candidate of the highest reward
        for b in has.nonzero().squeeze(1):
            top = w[b].argmax()
            assert w[b, top] == 1 and rewards[b, top] == rewards[b][valid[b]].max()


def test_bad_shift_and_distillation_are_one_clear_error():
    with pytest.raises(ValueError, match="shift"):
        shifted_baseline(torch.ones(1, 2), shift=-0.1)
    with pytest.raises(ValueError, match="best or awr"):
        distill_weights(torch.ones(1, 2), kind="clone")
    with pytest.raises(ValueError, match="tau"):
        distill_weights(torch.ones(1, 2), kind="awr", tau=0.0)


@st.composite
def valued_batches(draw):
    """(rewards (B, C), valid (B, C), values (B, C, L)): values on a small grid, so that ties are common,
    with junk (NaN, inf) on the padding."""
    rewards, valid = draw(reward_batches(grid=True))
    b, c = rewards.shape
    levels = draw(st.integers(1, 4))
    grid = st.integers(-4, 4).map(lambda k: k / 2)
    values = torch.tensor(draw(st.lists(grid, min_size=b * c * levels, max_size=b * c * levels)),
                          dtype=torch.float64).reshape(b, c, levels)
    values = torch.where(valid[..., None], values, draw(st.sampled_from([math.nan, math.inf, 1e9])))
    return rewards, valid, values


@SETTINGS
@DDOFS
@given(valued_batches())
def test_the_critic_is_eq2_at_level_1_and_zero_mean_at_every_level(ddof, batch):
    """Level 1 shares the root: Eq. 2. Every level's advantages sum to 0 over the group's valid candidates
    (least squares keeps the group mean), padding gets 0, and nothing is NaN whatever the padding holds."""
    rewards, valid, values = batch
    adv = critic_advantages(rewards, values, EPS, valid, ddof)
    assert adv.shape == values.shape and bool(torch.isfinite(adv).all())
    torch.testing.assert_close(adv[..., 0], grpo_advantages(rewards, EPS, valid, ddof))
    assert (adv[~valid] == 0).all()
    scale = 1 + torch.where(valid, rewards, 0.0).abs().amax(1) / EPS
    assert (adv.sum(1).abs() <= 1e-9 * scale[:, None]).all()


@SETTINGS
@DDOFS
@given(valued_batches())
def test_a_value_that_says_nothing_leaves_eq2_and_one_that_says_everything_leaves_nothing(ddof, batch):
    """V equal on the whole group: every level is Eq. 2. V(y_<l) = 2 R + 1 (R affine in V with a positive
    slope): levels 2..L are 0, since each prefix already predicted its candidate's reward."""
    rewards, valid, values = batch
    flat = torch.where(valid[..., None], torch.full_like(values, 0.5), values)
    plain = grpo_advantages(rewards, EPS, valid, ddof)
    torch.testing.assert_close(critic_advantages(rewards, flat, EPS, valid, ddof), plain[..., None].expand_as(values))
    told = torch.where(valid[..., None], 2 * rewards[..., None] + 1, values).expand_as(values).clone()
    adv = critic_advantages(rewards, told, EPS, valid, ddof)
    torch.testing.assert_close(adv[..., 1:], torch.zeros_like(adv[..., 1:]), rtol=0, atol=1e-6)


def test_a_critic_with_the_wrong_shape_is_one_clear_error():
    with pytest.raises(ValueError, match=r"values must be \(B, C, L\)"):
        critic_advantages(torch.ones(2, 3), torch.ones(2, 4, 3))
