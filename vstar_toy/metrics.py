"""Metrics of candidate sets, batched over queries (paper Sec. 5.2 and 5.5).

Every function is pure: numpy arrays or torch tensors in, numpy arrays (one value per query) out.
Shapes: ``B`` queries, ``C`` candidates per query, ``L`` SID levels.

=================  =============================================================================
metric             definition
=================  =============================================================================
HR@K               1 if the ground-truth item y* is among the first K ranked candidates, else 0
NDCG@K             1 / log2(rank + 2) if y* sits at 0-based rank < K, else 0 (one relevant item,
                   so IDCG = 1)
Div(C)             mean over unordered candidate pairs of 1 - LCP(v_i, v_j) / L (Sec. 5.5)
MaxReward          max over the candidates of R(x, y) (Sec. 5.5, Table 6)
mean reward        mean over the candidates of R(x, y): what RL with group advantages raises
top-1 reward       R(x, y) of the first-ranked candidate: what a user shown one item gets
reachability       1 if y* is anywhere in the candidate set (what a reranker could still find)
Spearman per level rho between a prefix score (log pi(y<=l | x) or V(x, y<=l)) and the prefix reward
                   R(x, y<=l) = mean reward of the candidates sharing y<=l, over the distinct
                   prefixes of level l in C(x) (Sec. 5.5, Fig. 3)
=================  =============================================================================

Named edge cases:

- Padding: item id -1 in ``ranked_items`` never matches a target. Candidates outside ``valid``
  (default for SIDs: rows with a negative token) join no pair, prefix or maximum.
- A query with fewer than 2 valid candidates has Div = NaN; one with no valid candidate has
  MaxReward = NaN; a level with fewer than 2 distinct prefixes, or a constant score or reward
  over them, has Spearman rho = NaN. ``summarize`` averages with ``nanmean``.
- A NaN reward among valid candidates propagates (MaxReward and that prefix's reward are NaN):
  a NaN reward is an upstream error, not something to hide.
- ``mean_ci`` uses the sample standard deviation (Bessel, ddof = 1) and Student's t; ``cluster_ci`` resamples
  whole clusters (a person's rows on real data), because the rows of one person are not independent.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def _np(x) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (any device, with or without grad), or a list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_k(k: int) -> None:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k = {k!r} is invalid: expected an integer >= 1")


def _sid_valid(sids: np.ndarray, valid) -> np.ndarray:
    """(B, C) bool: the given mask, or by default the candidates whose SID has no negative token."""
    if valid is None:
        return (sids >= 0).all(-1)
    return _np(valid).astype(bool)


def _nanmean(x: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every entry is NaN or there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x)) if np.size(x) else float("nan")


# ----------------------------------------------------------------------------------------------
# accuracy: HR@K, NDCG@K, reachability


def _target_rank(ranked_items, targets) -> np.ndarray:
    """(B,) 0-based rank of the first occurrence of each target in its ranked list; int64 max if absent."""
    r = _np(ranked_items)
    t = _np(targets)
    hit = (r == t[:, None]) & (r >= 0)  # (B, C)
    return np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)


def hit_rate(ranked_items, targets, k: int) -> np.ndarray:
    """HR@K per query: 1.0 if the target is among the first ``k`` ranked items, else 0.0.

    Args:
        ranked_items: (B, C) int item ids, best first; -1 = padding (never a hit).
        targets: (B,) the ground-truth item y* of each query (one relevant item per query).
        k: cut-off K >= 1; K > C means the whole list.

    Returns:
        (B,) float64 in {0, 1}.

    >>> hit_rate([[5, 7, 9], [1, 2, 3], [4, -1, -1]], [5, 3, 9], k=2).tolist()
    [1.0, 0.0, 0.0]
    """
    _check_k(k)
    return (_target_rank(ranked_items, targets) < k).astype(np.float64)


def ndcg(ranked_items, targets, k: int) -> np.ndarray:
    """NDCG@K per query with one relevant item: 1 / log2(rank + 2) if rank < k, else 0.

    ``rank`` counts from 0, so a target ranked first scores 1.0 and the ideal DCG is 1.

    Args:
        ranked_items: (B, C) int item ids, best first; -1 = padding.
        targets: (B,) ground-truth item ids.
        k: cut-off K >= 1.

    Returns:
        (B,) float64 in [0, 1].

    >>> ndcg([[5, 7, 9], [1, 2, 3], [4, -1, -1]], [5, 3, 9], k=3).round(4).tolist()
    [1.0, 0.5, 0.0]
    """
    _check_k(k)
    rank = _target_rank(ranked_items, targets)
    return np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)


def reachability(cand_items, targets) -> np.ndarray:
    """1.0 where the ground truth is anywhere in the candidate set, else 0.0 (order is ignored).

    Equal to ``hit_rate(cand_items, targets, k=C)``: the best HR any reranking of C(x) could reach.

    Args:
        cand_items: (B, C) int item ids; -1 = padding.
        targets: (B,) ground-truth item ids.

    Returns:
        (B,) float64 in {0, 1}.

    >>> reachability([[3, 8, -1], [1, 2, 4]], [8, 5]).tolist()
    [1.0, 0.0]
    """
    c = _np(cand_items)
    t = _np(targets)
    return ((c == t[:, None]) & (c >= 0)).any(1).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# candidate-set quality: Div(C), MaxReward (Sec. 5.5, Table 6)


def lcp(sids) -> np.ndarray:
    """(B, C, C) int: length of the longest common prefix of every pair of candidates' SIDs.

    >>> lcp([[[0, 1, 2], [0, 1, 3], [1, 1, 2]]])[0].tolist()
    [[3, 2, 0], [2, 3, 0], [0, 0, 3]]
    """
    s = _np(sids)
    eq = s[:, :, None, :] == s[:, None, :, :]  # (B, C, C, L)
    return np.cumprod(eq, axis=-1).sum(-1)


def diversity(sids, valid=None) -> np.ndarray:
    """Div(C) per query (Sec. 5.5): mean over unordered pairs i < j of 1 - LCP(v_i, v_j) / L.

    0 when all SIDs are identical, 1 when all differ at level 1.

    Args:
        sids: (B, C, L) int candidate SIDs.
        valid: optional (B, C) bool; default: candidates whose SID has no negative token.

    Returns:
        (B,) float64 in [0, 1]; NaN for a query with fewer than 2 valid candidates.

    Worked example: pairs of ([0,1,2], [0,1,3], [0,2,0]) have LCP 2, 1, 1, so
    Div = (1/3 + 2/3 + 2/3) / 3 = 5/9.

    >>> diversity([[[0, 1, 2], [0, 1, 3], [0, 2, 0]]]).round(4).tolist()
    [0.5556]
    >>> diversity([[[0, 1], [1, 0], [-1, -1]], [[0, 1], [-1, -1], [-1, -1]]]).tolist()
    [1.0, nan]
    """
    s = _np(sids)
    b, c, L = s.shape
    ok = _sid_valid(s, valid)
    pair = np.triu(np.ones((c, c), dtype=bool), k=1)[None] & ok[:, :, None] & ok[:, None, :]  # (B, C, C)
    dissim = 1.0 - lcp(s) / L
    n_pairs = pair.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pairs > 0, (dissim * pair).sum((1, 2)) / n_pairs, np.nan)


def mean_reward(rewards, valid=None) -> np.ndarray:
    """Mean reward per query over the valid candidates; NaN for a query with none.

    >>> mean_reward([[0.1, 0.7, 0.3], [0.5, 0.9, 0.2]], valid=[[1, 1, 1], [1, 0, 0]]).round(4).tolist()
    [0.3667, 0.5]
    """
    r = _np(rewards).astype(np.float64)
    ok = np.ones(r.shape, dtype=bool) if valid is None else _np(valid).astype(bool)
    n = ok.sum(1)
    return np.where(n > 0, np.where(ok, r, 0.0).sum(1) / np.maximum(n, 1), np.nan)


def top1_reward(rewards, valid=None) -> np.ndarray:
    """The reward of each query's first-ranked candidate (column 0); NaN where it is padding.

    >>> top1_reward([[0.1, 0.7], [0.5, 0.9]], valid=[[1, 1], [0, 1]]).tolist()
    [0.1, nan]
    """
    r = _np(rewards).astype(np.float64)
    ok = np.ones(r.shape, dtype=bool) if valid is None else _np(valid).astype(bool)
    return np.where(ok[:, 0], r[:, 0], np.nan)


def max_reward(rewards, valid=None) -> np.ndarray:
    """MaxReward per query: the best-in-set reward max_{v in C} R(v) (Sec. 5.5).

    Args:
        rewards: (B, C) float rewards.
        valid: optional (B, C) bool; invalid candidates are ignored.

    Returns:
        (B,) float64; NaN for a query with no valid candidate, or with a NaN reward among them.

    >>> max_reward([[0.1, 0.7, 0.3], [0.5, 0.9, 0.2]], valid=[[1, 1, 1], [1, 0, 0]]).tolist()
    [0.7, 0.5]
    """
    r = _np(rewards).astype(np.float64)
    ok = np.ones(r.shape, dtype=bool) if valid is None else _np(valid).astype(bool)
    out = np.where(ok, r, -np.inf).max(1)
    return np.where(ok.any(1), out, np.nan)


# ----------------------------------------------------------------------------------------------
# alignment of a prefix score with the prefix reward (Sec. 5.5, Fig. 3)


def prefix_spearman(sids, scores, rewards, valid=None) -> np.ndarray:
    """Spearman rho per query and level between a prefix score and the prefix reward (Fig. 3).

    At level l, over the distinct prefixes y<=l among query b's valid candidates:
    x = the prefix's score (e.g. log pi(y<=l | x) or V(x, y<=l)), and
    y = R(x, y<=l), the mean reward of the candidates sharing that prefix. Ties get average ranks.

    Args:
        sids: (B, C, L) int candidate SIDs.
        scores: (B, C, L) float; ``scores[b, i, l]`` is the score of candidate i's prefix of length
            l + 1. Candidates sharing a prefix should carry the same score; their mean is used.
        rewards: (B, C) float rewards R(x, y) of the full candidates.
        valid: optional (B, C) bool; default: candidates whose SID has no negative token.

    Returns:
        (B, L) float64; NaN where a level has fewer than 2 distinct prefixes or a constant side.

    Worked example (one query, L = 2): level-1 prefixes 0, 1, 2 have rewards 0.5, 0.2, 0.9 and
    scores -0.5, -2, -1 (ranks 2,1,3 vs 3,1,2: rho = 0.5); the 4 leaves have rewards ranked 4,1,2,3
    and scores ranked 4,3,2,1 (rho = 0.2).

    >>> sids = [[[0, 0], [0, 1], [1, 0], [2, 0]]]
    >>> scores = [[[-0.5, -1.0], [-0.5, -2.0], [-2.0, -3.0], [-1.0, -4.0]]]
    >>> prefix_spearman(sids, scores, [[1.0, 0.0, 0.2, 0.9]]).round(4).tolist()
    [[0.5, 0.2]]
    """
    s = _np(sids)
    sc = _np(scores).astype(np.float64)
    r = _np(rewards).astype(np.float64)
    b, _, L = s.shape
    qi, ci = np.nonzero(_sid_valid(s, valid))  # the valid candidates, query by query
    out = np.full((b, L), np.nan)
    for lvl in range(L):
        # one group per (query, prefix of length lvl + 1); a query's groups are contiguous, in prefix order
        keys = np.concatenate([qi[:, None], s[qi, ci, : lvl + 1]], 1)
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1)
        n = int(group.max()) + 1 if len(group) else 0
        count = np.bincount(group, minlength=n)
        prefix_score = np.bincount(group, weights=sc[qi, ci, lvl], minlength=n) / count
        prefix_reward = np.bincount(group, weights=r[qi, ci], minlength=n) / count
        query = np.zeros(n, dtype=np.int64)
        query[group] = qi
        out[:, lvl] = segment_spearman(query, prefix_score, prefix_reward, b)
    return out


def segment_spearman(seg: np.ndarray, x: np.ndarray, y: np.ndarray, n_segments: int) -> np.ndarray:
    """(n_segments,) Spearman rho between x and y within each segment (``seg``: each entry's segment id),
    ties at average ranks; NaN for a segment of fewer than 2 entries, a constant side, or a NaN.

    >>> segment_spearman(np.array([0, 0, 0, 1, 1]), np.array([1., 2, 3, 5, 5]), np.array([3., 2, 1, 0, 1]), 3)
    array([-1., nan, nan])
    """
    rx, ry = _segment_ranks(seg, x), _segment_ranks(seg, y)
    n = np.bincount(seg, minlength=n_segments).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = rx - (np.bincount(seg, weights=rx, minlength=n_segments) / n)[seg]
        dy = ry - (np.bincount(seg, weights=ry, minlength=n_segments) / n)[seg]
        num = np.bincount(seg, weights=dx * dy, minlength=n_segments)
        den = np.sqrt(np.bincount(seg, weights=dx**2, minlength=n_segments)
                      * np.bincount(seg, weights=dy**2, minlength=n_segments))
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    has_nan = np.bincount(seg, weights=np.isnan(x) | np.isnan(y), minlength=n_segments) > 0
    return np.where(has_nan, np.nan, rho)


def _segment_ranks(seg: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x within each segment, ties at their average rank (``scipy.stats.rankdata``'s
    "average", segment by segment)."""
    order = np.lexsort((x, seg))  # by segment, then by value
    ss, xs = seg[order], x[order]
    pos = np.arange(len(x))
    new_seg = np.r_[True, ss[1:] != ss[:-1]]
    new_tie = new_seg | np.r_[True, xs[1:] != xs[:-1]]
    seg_start = np.maximum.accumulate(np.where(new_seg, pos, 0))
    tie = np.cumsum(new_tie) - 1
    first = pos[new_tie]
    average = first + (np.bincount(tie) - 1) / 2.0  # the mean position of each run of ties
    ranks = np.empty(len(x))
    ranks[order] = average[tie] - seg_start + 1
    return ranks


# ----------------------------------------------------------------------------------------------
# summaries


def summarize(ranked_items, targets, sids, rewards, valid=None, ks=(3, 5, 10)) -> dict[str, float]:
    """Means over queries of the accuracy and candidate-set metrics, one float per key.

    Keys: ``hr@k`` and ``ndcg@k`` for each k in ``ks``, then ``div``, ``max_reward``, ``mean_reward``,
    ``top1_reward`` and ``reachability``. The set metrics use ``nanmean`` (queries where they are
    undefined are skipped; NaN if none is defined).

    Args:
        ranked_items: (B, C) int item ids of the candidates, best first; -1 = padding.
        targets: (B,) ground-truth item ids.
        sids: (B, C, L) SIDs of the same candidates.
        rewards: (B, C) their rewards.
        valid: optional (B, C) bool mask for ``sids`` and ``rewards``; default: SIDs without a
            negative token.
        ks: the cut-offs K.

    >>> out = summarize([[5, 7], [1, 2]], [7, 3], [[[0, 1], [1, 0]], [[0, 0], [0, 1]]],
    ...                 [[0.2, 1.0], [0.4, 0.3]], ks=(1, 2))
    >>> {k: round(v, 4) for k, v in out.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'hr@1': 0.0, 'hr@2': 0.5, 'ndcg@1': 0.0, 'ndcg@2': 0.3155, 'div': 0.75, 'max_reward': 0.7,
     'mean_reward': 0.475, 'top1_reward': 0.3, 'reachability': 0.5}
    """
    s = _np(sids)
    ok = _sid_valid(s, valid)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hit_rate(ranked_items, targets, k).mean())
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg(ranked_items, targets, k).mean())
    out["div"] = _nanmean(diversity(s, ok))
    out["max_reward"] = _nanmean(max_reward(rewards, ok))
    out["mean_reward"] = _nanmean(mean_reward(rewards, ok))
    out["top1_reward"] = _nanmean(top1_reward(rewards, ok))
    out["reachability"] = float(reachability(ranked_items, targets).mean())
    return out


def sharpening(ranked_items, targets, rewards, valid=None, ks=(1, 10, 50)) -> dict[str, float]:
    """What RL's sharpening does to a ranked list (MiniOneRec's issue #35: RL lifts HR@1 and lowers HR@50):
    ``hr@k`` and ``top{k}_reward`` (the mean true reward of the first k candidates) for each k in ``ks``,
    ``distinct_top1`` (how many different items are ranked first over the queries) and ``top1_share``
    (the share of the queries whose first item is the most frequent first item).

    >>> out = sharpening([[3, 1], [3, 2], [4, 3]], [1, 3, 0], [[0.5, 0.1], [0.5, 0.0], [0.2, 0.5]], ks=(1, 2))
    >>> {k: round(v, 4) for k, v in out.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'hr@1': 0.3333, 'top1_reward': 0.4, 'hr@2': 0.6667, 'top2_reward': 0.3, 'distinct_top1': 2.0,
     'top1_share': 0.6667}
    """
    items = _np(ranked_items)
    r = _np(rewards).astype(np.float64)
    ok = (items >= 0) if valid is None else _np(valid).astype(bool)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hit_rate(items, targets, k).mean())
        n = ok[:, :k].sum(1)
        total = np.where(ok[:, :k], r[:, :k], 0.0).sum(1)
        out[f"top{k}_reward"] = _nanmean(np.where(n > 0, total / np.maximum(n, 1), np.nan))
    first = items[:, 0][ok[:, 0]]
    _, counts = np.unique(first, return_counts=True)
    out["distinct_top1"] = float(len(counts))
    out["top1_share"] = float(counts.max() / len(items)) if len(counts) else math.nan
    return out


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds and its Student-t confidence interval.

    half-width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n), with s the sample standard deviation
    (ddof = 1). One value gives (x, nan, nan); NaN values propagate; no value raises ``ValueError``.

    >>> [round(v, 4) for v in mean_ci([1.0, 2.0, 3.0])]
    [2.0, -0.4841, 4.4841]
    >>> mean_ci([0.5])
    (0.5, nan, nan)
    """
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence = {confidence!r} is invalid: expected a number in (0, 1)")
    x = _np(values).astype(np.float64).reshape(-1)
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci needs at least one value (got none)")
    mean = float(x.mean())
    if n == 1:
        return mean, float("nan"), float("nan")
    from scipy import stats  # here, not at the top: scipy.stats takes most of a second to import

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def cluster_ci(values, clusters, confidence: float = 0.95, n_boot: int = 2000,
               seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over rows and its percentile bootstrap interval over clusters.

    Each of ``n_boot`` resamples draws as many clusters as there are, with replacement, and takes the mean
    of all their rows (Field & Welsh 2007, the cluster bootstrap): rows of one cluster, such as the sliding
    windows of one person's history, move together. ``clusters``: one label per value. Deterministic for a
    ``seed``. One cluster gives (mean, nan, nan); NaN values propagate; no value raises ``ValueError``.

    >>> mean, low, high = cluster_ci([1.0, 1.0, 0.0, 0.0], clusters=[7, 7, 8, 8])
    >>> mean, low <= 0.5 <= high
    (0.5, True)
    """
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence = {confidence!r} is invalid: expected a number in (0, 1)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot = {n_boot!r} is invalid: expected an integer >= 1")
    x = _np(values).astype(np.float64).reshape(-1)
    labels = np.asarray(clusters).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"clusters has {len(labels)} labels for {len(x)} values: expected one per value")
    if len(x) == 0:
        raise ValueError("cluster_ci needs at least one value (got none)")
    mean = float(x.mean())
    _, which = np.unique(labels, return_inverse=True)
    sums, counts = np.bincount(which, weights=x), np.bincount(which).astype(np.float64)
    if len(sums) == 1:
        return mean, float("nan"), float("nan")
    draws = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1 / len(sums)), size=n_boot)
    means = (draws @ sums) / (draws @ counts)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return mean, float(low), float(high)
