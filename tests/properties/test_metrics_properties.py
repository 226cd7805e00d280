"""Hypothesis tests of the metrics' bounds and identities (vstar_toy/metrics.py)."""

import itertools

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr  # at import, not inside a timed example

from vstar_toy import metrics as M


@st.composite
def ranked_lists(draw):
    """(ranked (B, C), targets (B,)): distinct item ids per row from a small catalog, right-padded
    with -1; targets drawn from the same catalog, so both hits and misses occur."""
    b = draw(st.integers(1, 4))
    c = draw(st.integers(1, 8))
    n_items = 12
    rows = []
    for _ in range(b):
        n_real = draw(st.integers(0, c))
        items = draw(st.permutations(range(n_items)))[:n_real]
        rows.append(list(items) + [-1] * (c - n_real))
    targets = draw(st.lists(st.integers(0, n_items - 1), min_size=b, max_size=b))
    return np.array(rows, dtype=np.int64).reshape(b, c), np.array(targets)


@st.composite
def sid_sets(draw):
    """(B, C, L) SIDs over a small codebook so that shared prefixes are common."""
    b = draw(st.integers(1, 3))
    c = draw(st.integers(1, 7))
    L = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    flat = draw(st.lists(st.integers(0, k - 1), min_size=b * c * L, max_size=b * c * L))
    return np.array(flat, dtype=np.int64).reshape(b, c, L)


def brute_force_div(sids: np.ndarray) -> float:
    """Div(C) of one query by a plain loop over pairs."""
    L = sids.shape[1]
    terms = []
    for a, b in itertools.combinations(sids.tolist(), 2):
        common = 0
        for x, y in zip(a, b):
            if x != y:
                break
            common += 1
        terms.append(1 - common / L)
    return sum(terms) / len(terms) if terms else float("nan")


@given(ranked_lists(), st.integers(1, 9))
def test_hit_rate_monotone_in_k(data, k):
    ranked, targets = data
    assert (M.hit_rate(ranked, targets, k) <= M.hit_rate(ranked, targets, k + 1)).all()


@given(ranked_lists(), st.integers(1, 9))
def test_ndcg_between_zero_and_hit_rate(data, k):
    ranked, targets = data
    nd, hr = M.ndcg(ranked, targets, k), M.hit_rate(ranked, targets, k)
    assert ((nd >= 0) & (nd <= hr)).all()
    # a cut-off at or beyond the whole list: HR equals reachability
    whole = max(k, ranked.shape[1])
    np.testing.assert_array_equal(M.hit_rate(ranked, targets, whole), M.reachability(ranked, targets))


@given(sid_sets(), st.randoms(use_true_random=False))
@example(np.zeros((1, 2, 3), dtype=np.int64), None)
def test_div_in_unit_interval_and_permutation_invariant(sids, rnd):
    div = M.diversity(sids)
    defined = ~np.isnan(div)
    assert defined.tolist() == [sids.shape[1] >= 2] * sids.shape[0]
    assert ((div[defined] >= 0) & (div[defined] <= 1)).all()
    perm = list(range(sids.shape[1]))
    if rnd is not None:
        rnd.shuffle(perm)
    np.testing.assert_allclose(M.diversity(sids[:, perm]), div)


@settings(max_examples=200)
@given(sid_sets())
def test_div_equals_brute_force(sids):
    expected = [brute_force_div(s) for s in sids]
    np.testing.assert_allclose(M.diversity(sids), expected)


def brute_force_prefix_spearman(sids: np.ndarray, scores: np.ndarray, rewards: np.ndarray) -> list[float]:
    """Spearman per level of one query: a dict of prefixes, then scipy's spearmanr."""
    out = []
    for lvl in range(sids.shape[1]):
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sids.tolist()):
            groups.setdefault(tuple(s[: lvl + 1]), []).append(i)
        x = [float(np.mean(scores[g, lvl])) for g in groups.values()]
        y = [float(np.mean(rewards[g])) for g in groups.values()]
        if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
            out.append(float("nan"))
        else:
            out.append(float(spearmanr(x, y).statistic))
    return out


@given(sid_sets(), st.data())
def test_prefix_spearman_equals_brute_force(sids, data):
    b, c, L = sids.shape
    # prefix scores that are equal for candidates sharing a prefix: a function of the prefix
    weights = data.draw(st.lists(st.integers(-3, 3), min_size=L, max_size=L))
    scores = np.stack([(sids[..., : lvl + 1] * np.array(weights[: lvl + 1])).sum(-1) for lvl in range(L)], -1)
    rewards = np.array(data.draw(st.lists(st.integers(0, 4), min_size=b * c, max_size=b * c)), float)
    rewards = rewards.reshape(b, c)
    got = M.prefix_spearman(sids, scores.astype(float), rewards)
    expected = [brute_force_prefix_spearman(sids[q], scores[q].astype(float), rewards[q]) for q in range(b)]
    np.testing.assert_allclose(got, expected, atol=1e-12)


# -- the cluster bootstrap (metrics.cluster_ci) ---------------------------------------------------------


@st.composite
def clustered(draw):
    """(values, clusters): 2-30 rows in 1-8 clusters, values in [0, 1] (hits, NDCG)."""
    n = draw(st.integers(2, 30))
    values = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    clusters = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    return np.array(values), np.array(clusters)


@settings(max_examples=60, deadline=None)
@given(clustered())
def test_cluster_ci_is_the_mean_inside_the_data_range(vc):
    values, clusters = vc
    mean, low, high = M.cluster_ci(values, clusters, n_boot=200)
    assert mean == values.mean()
    if len(np.unique(clusters)) > 1:
        assert values.min() - 1e-12 <= low <= high <= values.max() + 1e-12
    else:
        assert np.isnan(low) and np.isnan(high)


@settings(max_examples=60, deadline=None)
@given(clustered(), st.integers(2, 4))
def test_copies_of_a_persons_rows_add_no_information(vc, k):
    """Each row repeated k times inside its own cluster: the same interval, for the same seed."""
    values, _ = vc
    once = M.cluster_ci(values, np.arange(len(values)), n_boot=200)
    copies = M.cluster_ci(np.repeat(values, k), np.repeat(np.arange(len(values)), k), n_boot=200)
    assert np.allclose(once, copies, equal_nan=True)
