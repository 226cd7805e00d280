"""Hand-computed cases for the metrics of vstar_toy/metrics.py."""

import math

import numpy as np
import pytest
import torch

from vstar_toy import metrics as M

# three queries: target at rank 0, at rank 2, absent (padding -1 never matches)
RANKED = np.array([[4, 1, 2, 3], [4, 1, 2, 3], [4, 1, -1, -1]])
TARGETS = np.array([4, 2, 9])


@pytest.mark.parametrize(
    "k, hr, nd",
    [
        (1, [1, 0, 0], [1, 0, 0]),
        (2, [1, 0, 0], [1, 0, 0]),
        (3, [1, 1, 0], [1, 0.5, 0]),  # rank 2: 1 / log2(4) = 0.5
        (10, [1, 1, 0], [1, 0.5, 0]),  # k beyond C: the whole list
    ],
)
def test_hit_rate_and_ndcg_by_hand(k, hr, nd):
    np.testing.assert_allclose(M.hit_rate(RANKED, TARGETS, k), hr)
    np.testing.assert_allclose(M.ndcg(RANKED, TARGETS, k), nd)


def test_ndcg_rank_one_is_one_over_log2_3():
    assert M.ndcg([[7, 3]], [3], k=2)[0] == pytest.approx(1 / math.log2(3))


def test_padding_never_matches_a_padding_target():
    assert M.hit_rate([[-1, -1]], [-1], k=2)[0] == 0.0
    assert M.reachability([[-1, -1]], [-1])[0] == 0.0


def test_first_occurrence_counts_when_an_item_repeats():
    assert M.ndcg([[1, 5, 5]], [5], k=3)[0] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k = "):
        M.hit_rate(RANKED, TARGETS, k)


def test_torch_inputs_give_the_same_numbers():
    a = M.ndcg(torch.tensor(RANKED), torch.tensor(TARGETS), 3)
    np.testing.assert_allclose(a, M.ndcg(RANKED, TARGETS, 3))


def test_reachability_ignores_order():
    np.testing.assert_array_equal(M.reachability(RANKED, TARGETS), [1, 1, 0])
    np.testing.assert_array_equal(M.reachability(RANKED[:, ::-1], TARGETS), [1, 1, 0])


# -- Div(C) ------------------------------------------------------------------------------------


def test_diversity_identical_sids_is_zero():
    assert M.diversity([[[1, 2, 3]] * 4])[0] == 0.0


def test_diversity_all_differ_at_level_one_is_one():
    assert M.diversity([[[0, 5, 5], [1, 5, 5], [2, 5, 5]]])[0] == 1.0


def test_diversity_mixed_three_candidates():
    # LCPs: (a, b) = 2, (a, c) = 1, (b, c) = 1  ->  mean of 1/3, 2/3, 2/3 = 5/9
    sids = [[[0, 1, 2], [0, 1, 3], [0, 2, 0]]]
    assert M.diversity(sids)[0] == pytest.approx(5 / 9)


def test_diversity_valid_mask_and_padding():
    sids = np.array([[[0, 1, 2], [0, 1, 3], [0, 2, 0]]])
    # dropping candidate c leaves the single pair (a, b): 1 - 2/3
    assert M.diversity(sids, valid=[[True, True, False]])[0] == pytest.approx(1 / 3)
    padded = sids.copy()
    padded[0, 2] = -1
    assert M.diversity(padded)[0] == pytest.approx(1 / 3)
    # fewer than two valid candidates: undefined
    assert np.isnan(M.diversity(sids, valid=[[True, False, False]])[0])


# -- MaxReward -----------------------------------------------------------------------------------


def test_max_reward_masks_and_empty():
    r = np.array([[0.1, 0.9, 0.4], [0.3, 0.2, 0.5]])
    np.testing.assert_allclose(M.max_reward(r), [0.9, 0.5])
    out = M.max_reward(r, valid=[[True, False, True], [False, False, False]])
    assert out[0] == pytest.approx(0.4) and np.isnan(out[1])


def test_max_reward_nan_propagates():
    assert np.isnan(M.max_reward([[0.1, float("nan")]])[0])


# -- Spearman per level --------------------------------------------------------------------------


def test_prefix_spearman_by_hand():
    # level 1: prefixes 0, 1, 2 with rewards 0.5, 0.2, 0.9 and scores -0.5, -2, -1:
    #   ranks (2, 1, 3) vs (3, 1, 2), d^2 = 2, rho = 1 - 6 * 2 / (3 * 8) = 0.5
    # level 2: four leaves, rewards ranked (4, 1, 2, 3), scores ranked (4, 3, 2, 1):
    #   d^2 = 8, rho = 1 - 6 * 8 / (4 * 15) = 0.2
    sids = np.array([[[0, 0], [0, 1], [1, 0], [2, 0]]])
    scores = np.array([[[-0.5, -1.0], [-0.5, -2.0], [-2.0, -3.0], [-1.0, -4.0]]])
    rewards = np.array([[1.0, 0.0, 0.2, 0.9]])
    np.testing.assert_allclose(M.prefix_spearman(sids, scores, rewards), [[0.5, 0.2]])


def test_prefix_spearman_one_prefix_or_constant_is_nan():
    sids = np.array([[[0, 0], [0, 1], [0, 2]]])
    scores = np.array([[[-1.0, -1.0], [-1.0, -2.0], [-1.0, -3.0]]])
    out = M.prefix_spearman(sids, scores, [[0.1, 0.2, 0.3]])
    assert np.isnan(out[0, 0])  # one distinct level-1 prefix
    assert out[0, 1] == pytest.approx(-1.0)  # higher score, lower reward
    flat = M.prefix_spearman(sids, scores, [[0.5, 0.5, 0.5]])
    assert np.isnan(flat[0, 1])  # constant reward


def test_prefix_spearman_respects_valid_and_batches():
    sids = np.array([[[0, 0], [1, 0], [2, 0]], [[0, 0], [1, 0], [2, 0]]])
    scores = np.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]] * 2)
    rewards = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = M.prefix_spearman(sids, scores, rewards, valid=[[True, True, True], [True, True, False]])
    np.testing.assert_allclose(out, [[1.0, 1.0], [-1.0, -1.0]])


# -- summaries -----------------------------------------------------------------------------------


def test_summarize_keys_and_values():
    sids = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]] * 3)
    rewards = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    out = M.summarize(RANKED, TARGETS, sids, rewards, valid=RANKED >= 0)
    assert list(out) == [
        "hr@3",
        "hr@5",
        "hr@10",
        "ndcg@3",
        "ndcg@5",
        "ndcg@10",
        "div",
        "max_reward",
        "mean_reward",
        "top1_reward",
        "reachability",
    ]
    assert all(isinstance(v, float) for v in out.values())
    assert out["mean_reward"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert out["hr@3"] == pytest.approx(2 / 3)
    assert out["ndcg@3"] == pytest.approx(1.5 / 3)
    assert out["div"] == 1.0
    assert out["max_reward"] == pytest.approx((0.4 + 1.0 + 0.5) / 3)
    assert out["reachability"] == pytest.approx(2 / 3)


def test_summarize_all_undefined_div_is_nan():
    out = M.summarize([[3]], [3], [[[0, 0]]], [[1.0]], ks=(1,))
    assert np.isnan(out["div"]) and out["hr@1"] == 1.0


# -- mean and confidence interval over seeds ----------------------------------------------------


def test_mean_ci_known_values():
    # n = 3, s = 1, t_{0.975, 2} = 4.302652729911275
    mean, lo, hi = M.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    # n = 2, s = sqrt(2), 90%: t_{0.95, 1} = 6.313751514675043, half = t * sqrt(2) / sqrt(2)
    assert M.mean_ci([0.0, 2.0], confidence=0.9) == pytest.approx(
        (1.0, 1 - 6.313751514675043, 1 + 6.313751514675043)
    )


def test_mean_ci_edge_cases():
    mean, lo, hi = M.mean_ci([0.25])
    assert mean == 0.25 and math.isnan(lo) and math.isnan(hi)
    assert M.mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        M.mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        M.mean_ci([1.0, 2.0], confidence=1.5)


def test_cluster_ci_matches_the_t_interval_for_independent_rows_and_widens_for_a_persons_copies():
    rng = np.random.default_rng(0)
    x = rng.binomial(1, 0.3, size=400).astype(float)
    mean, lo, hi = M.cluster_ci(x, np.arange(400))
    t_mean, t_lo, t_hi = M.mean_ci(x)
    assert mean == t_mean and abs(lo - t_lo) < 0.01 and abs(hi - t_hi) < 0.01
    people = np.repeat(np.arange(80), 5)  # 80 people, 5 identical rows each: 80 observations, not 400
    y = np.repeat(x[:80], 5)
    _, lo_c, hi_c = M.cluster_ci(y, people)
    _, lo_t, hi_t = M.mean_ci(y)  # as if the 400 rows were independent
    assert 1.8 < (hi_c - lo_c) / (hi_t - lo_t) < 2.7  # about sqrt(5)
    assert M.cluster_ci(x, np.arange(400)) == M.cluster_ci(x, np.arange(400))  # seeded


def test_cluster_ci_refuses_bad_input():
    with pytest.raises(ValueError, match="one per value"):
        M.cluster_ci([1.0, 2.0], [0])
    with pytest.raises(ValueError, match="n_boot"):
        M.cluster_ci([1.0, 2.0], [0, 1], n_boot=0)
    with pytest.raises(ValueError, match="at least one"):
        M.cluster_ci([], [])
    assert np.isnan(M.cluster_ci([1.0, 2.0], [3, 3])[1])
