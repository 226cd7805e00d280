"""Group advantages (Eq. 2), their bounds (Eq. 3-4), and Sibling-GRPO node advantages (Eq. 15-18): the
paper's estimators. The update options of claim 9, which change what a candidate is measured against or
which advantages count, are their own module beside this one (``updates.py``).

Everything here is a pure function over tensors with a query dimension: no model, no randomness,
no global state.

Shapes:
    rewards: (B, C) float, R(x, y) for the C candidates of each of the B queries.
    sids:    (B, C, L) int64, the candidates' Semantic IDs.
    valid:   optional (B, C) bool; False marks a padding candidate. Padding joins no group, gets
             advantage 0, and is ignored by every statistic (its reward may even be NaN).

Conventions:
    * The standard deviation (the sigma of Eq. 2, of Eq. 18 and of every bound) divides by n - ddof:
      ``ddof = 1`` (the default, ``DDOF``) is the sample standard deviation with Bessel's correction,
      and eps = 1e-4 (``EPS``): the choice of TRL's GRPOTrainer and of the paper's public code
      (``torch.std`` and 1e-4), so that numbers ported from either agree. ``ddof = 0`` is the population
      standard deviation. Either way sigma_A = sigma_R / (sigma_R + eps) for sigma_A measured with the
      same ddof, and Samuelson's inequality bounds |R - mu| by sigma * sqrt(n - 1) (ddof = 0) or by
      s * (n - 1) / sqrt(n) (ddof = 1). A group of one has sigma = 0 under both.
    * Why eps = 1e-4 and not 1e-6: rewards here are continuous (cosines), so two candidates can differ
      by 1e-5 by chance. With eps = 1e-6 such a near-tie gets advantages of about +-0.83 (a full-strength
      signal about nothing); with 1e-4, about +-0.05.
    * Depths: the paper counts depth l = 1..L; tensors index it as l - 1 = 0..L-1, so entry
      [b, i, l] of an (B, C, L) output belongs to the depth-(l + 1) node y_<=l+1.

Edge cases:
    * A group of one, or a group with zero spread: R - mu = 0, so the advantage is exactly 0. Means
      are accumulated around the group minimum, so identical rewards give R - mu == 0 exactly.
    * A parent prefix with a single child node: A_node = 0 (no sibling to compare against).
    * An empty set (a query with no valid candidate): advantages 0; its statistics (range, bounds,
      sigma_A, max |A|, contrasts) are NaN, because a mean or range of nothing is undefined, and 0
      would read as "no spread". Counts (``n_parents``) are 0.
    * NaN or infinite rewards among valid candidates raise ValueError naming how many and where.
    * eps must be > 0 (Eq. 2 and the loose bound Delta / eps need it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vstar_toy.prefix import same_prefix

DDOF = 1
"""Default delta degrees of freedom of every standard deviation here: 1, the sample std (see Conventions)."""
EPS = 1e-4
"""Default epsilon of Eq. 2 and Eq. 18: 1e-4, as in TRL and the paper's public code (see Conventions)."""

# ---------------------------------------------------------------------------------------------
# Plumbing: input checks and masked statistics.
# ---------------------------------------------------------------------------------------------


def _check_rewards(rewards: torch.Tensor, valid: torch.Tensor | None, eps: float | None = None):
    """Validate (B, C) rewards and the optional mask; return (float rewards, bool valid)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (B, C), got {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if valid is None:
        valid = torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    elif valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(rewards.shape)} like rewards, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0 (Eq. 2), got {eps}")
    bad = valid & ~torch.isfinite(rewards)
    n_bad = int(bad.sum())
    if n_bad:
        b, c = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"rewards has {n_bad} non-finite value(s) among valid candidates; first at "
            f"[query {b}, candidate {c}] = {rewards[b, c].item()}. Fix the reward, or mark the "
            f"candidate as padding with valid=False."
        )
    return rewards, valid


def _check_ddof(ddof: int) -> None:
    if ddof not in (0, 1):
        raise ValueError(f"ddof = {ddof!r} is invalid: expected 0 (population std) or 1 (sample std, Bessel)")


def _check_sids(sids: torch.Tensor, rewards: torch.Tensor) -> None:
    if sids.dim() != 3 or sids.shape[:2] != rewards.shape or sids.shape[2] == 0:
        raise ValueError(
            f"sids must have shape (B, C, L) with L >= 1 and (B, C) = {tuple(rewards.shape)} from rewards, "
            f"got {tuple(sids.shape)}"
        )


def _masked_amax(x: torch.Tensor, mask: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """sign * max of sign * x over ``mask`` along the last dimension; -sign * inf where empty.

    Unlike ``amax`` it accepts a zero-size last dimension (C = 0 candidates).
    """
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], -sign * math.inf, dtype=x.dtype, device=x.device)
    return sign * torch.where(mask, sign * x, -math.inf).amax(-1)


def _masked_stats(x: torch.Tensor, mask: torch.Tensor, ddof: int = 0):
    """Mean, std (dividing by n - ddof; 0 for a set of n <= ddof values) and count of ``x`` over
    ``mask`` along the last dimension.

    Values are shifted by the masked minimum before summing, so a set of identical values has a
    mean equal to each of them and a std of exactly 0. Empty sets give NaN mean and std.
    """
    n = mask.sum(-1)
    ref = _masked_amax(x, mask, sign=-1.0)  # the masked minimum
    ref = torch.where(n > 0, ref, 0.0)
    d = torch.where(mask, x - ref[..., None], 0.0)
    n_safe = n.clamp_min(1).to(x.dtype)
    mean_d = d.sum(-1) / n_safe
    var = torch.where(mask, d - mean_d[..., None], 0.0).square().sum(-1) / (n - ddof).clamp_min(1).to(x.dtype)
    empty = n == 0
    mean = torch.where(empty, math.nan, ref + mean_d)
    std = torch.where(empty, math.nan, var.sqrt())
    return mean, std, n


def _first_of_group(member: torch.Tensor) -> torch.Tensor:
    """(B, C) bool from a (B, C, C) group-membership matrix: i is the lowest-index member of its group.

    ``member[b, i, j]`` must already be False for invalid i or j.
    """
    c = member.shape[-1]
    earlier = torch.ones(c, c, dtype=torch.bool, device=member.device).tril(-1)  # j < i
    return member.diagonal(dim1=-2, dim2=-1) & ~(member & earlier).any(-1)


def _group_rep(member: torch.Tensor) -> torch.Tensor:
    """(B, C) int64: index of the lowest-index member of each candidate's group (itself if none)."""
    c = member.shape[-1]
    idx = torch.arange(c, device=member.device).expand(member.shape[:-1])
    if c == 0:
        return idx
    return torch.where(member.any(-1), member.int().argmax(-1), idx)


def _pair_mask(same: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Restrict a (B, C, C) relation to valid i and valid j."""
    return same & valid[:, :, None] & valid[:, None, :]


# ---------------------------------------------------------------------------------------------
# Eq. 2-4: group-normalised advantages and the bounds of Sec. 3.2.
# ---------------------------------------------------------------------------------------------


def grpo_advantages(rewards: torch.Tensor, eps: float = EPS, valid: torch.Tensor | None = None, ddof: int = DDOF):
    """(B, C) group-normalised advantages of Eq. 2, one group per query.

    Args:
        rewards: (B, C) float, R(x, y).
        eps: epsilon of Eq. 2, > 0.
        valid: optional (B, C) bool; padding gets advantage 0 and is left out of mu and sigma.
        ddof: 1 (sample std, the default) or 0 (population std) for sigma_R.

    Returns:
        (B, C) A(x, y) = (R - mu_R) / (sigma_R + eps) over the valid candidates.

    >>> grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]), eps=1e-6, ddof=0)
    tensor([[-1.3416, -0.4472,  0.4472,  1.3416],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    >>> grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # sample std sqrt(5/3), eps 1e-4
    tensor([[-1.1618, -0.3873,  0.3873,  1.1618]])
    >>> grpo_advantages(torch.tensor([[1.0, 3.0, float("nan")]]), valid=torch.tensor([[True, True, False]]), ddof=0)
    tensor([[-0.9999,  0.9999,  0.0000]])
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_ddof(ddof)
    mu, sigma, _ = _masked_stats(rewards, valid, ddof)  # (B,), (B,)
    # Eq. 2: A(x, y) = (R(x, y) - mu_R(x)) / (sigma_R(x) + eps)
    adv = (rewards - mu[:, None]) / (sigma[:, None] + eps)
    return torch.where(valid, adv, 0.0)


def reward_range(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) within-group reward range Delta_R(x) of Eq. 3 over the valid candidates (NaN if none).

    >>> r = torch.tensor([[1.0, 4.0, 2.0], [3.0, 3.0, 9.0]])
    >>> reward_range(r, valid=torch.tensor([[True, True, True], [True, True, False]]))
    tensor([3., 0.])
    """
    rewards, valid = _check_rewards(rewards, valid)
    hi = _masked_amax(rewards, valid)
    lo = _masked_amax(rewards, valid, sign=-1.0)
    # Eq. 3: Delta_R(x) = max_y R(x, y) - min_y R(x, y)
    return torch.where(valid.any(-1), hi - lo, math.nan)


def advantage_bounds(
    rewards: torch.Tensor, eps: float = EPS, valid: torch.Tensor | None = None, ddof: int = DDOF
) -> dict[str, torch.Tensor]:
    """The paper's bounds on |A| (Eq. 4), Samuelson's bound, and the realised spread of A.

    Returns a dict of (B,) tensors (NaN for a query with no valid candidate):
        ``eq4_tight``: Delta_R / (sigma_R + eps), the middle term of Eq. 4.
        ``eq4_loose``: Delta_R / eps, the right-hand term of Eq. 4.
        ``samuelson``: Samuelson's bound on |A| with n the valid count: |R - mu| <= sigma * sqrt(n - 1)
            for the population sigma (ddof = 0), <= s * (n - 1) / sqrt(n) for the sample s (ddof = 1).
        ``sigma_A``: realised std of the advantages (same ddof); equals sigma_R / (sigma_R + eps).
        ``max_abs_A``: realised max |A|.

    With rewards (0, 0, 0, 1) and the population sigma: Delta = 1, sigma = sqrt(3) / 4, max |A| =
    0.75 / sigma = sqrt(3), at Samuelson's bound; sigma_A is 1 while Delta / eps is a million.

    >>> b = advantage_bounds(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), eps=1e-6, ddof=0)
    >>> {k: round(v.item(), 3) for k, v in b.items()}
    {'eq4_tight': 2.309, 'eq4_loose': 1000000.0, 'samuelson': 1.732, 'sigma_A': 1.0, 'max_abs_A': 1.732}
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_ddof(ddof)
    _, sigma, n = _masked_stats(rewards, valid, ddof)
    delta = reward_range(rewards, valid)
    adv = grpo_advantages(rewards, eps, valid, ddof)
    _, sigma_a, _ = _masked_stats(adv, valid, ddof)
    max_abs = torch.where(valid.any(-1), _masked_amax(adv.abs(), valid), math.nan)
    n_f = n.to(rewards.dtype)
    # Samuelson: |R - mu| <= sigma sqrt(n - 1) (ddof 0) = s (n - 1) / sqrt(n) (ddof 1), so |A| is below it
    samuelson = (n_f - 1).clamp_min(0).sqrt() if ddof == 0 else (n_f - 1).clamp_min(0) / n_f.clamp_min(1).sqrt()
    return {
        # Eq. 4: |A| <= Delta_R / (sigma_R + eps) <= Delta_R / eps
        "eq4_tight": delta / (sigma + eps),
        "eq4_loose": delta / eps,
        "samuelson": torch.where(n > 0, samuelson, math.nan),
        "sigma_A": sigma_a,
        "max_abs_A": max_abs,
    }


# ---------------------------------------------------------------------------------------------
# Eq. 15-18: sibling groups, sibling node sets, node scores and node advantages.
# ---------------------------------------------------------------------------------------------


def sibling_groups(sids: torch.Tensor, level: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) int64 id of each candidate's sibling group G(h) at depth ``level`` (Eq. 15).

    Candidates of one query that share their first ``level - 1`` tokens (the parent prefix h) get
    the same id. Ids are 0, 1, ... in order of first appearance within each query; padding gets -1.

    Args:
        sids: (B, C, L) candidate SIDs.
        level: depth l of the child nodes, in 1..L (l = 1 groups every candidate under the root).
        valid: optional (B, C) bool.

    >>> s = torch.tensor([[[1, 0], [0, 1], [1, 1], [0, 0]]])
    >>> sibling_groups(s, 2), sibling_groups(s, 1)
    (tensor([[0, 1, 0, 1]]), tensor([[0, 0, 0, 0]]))
    """
    b, c, length = sids.shape
    if not 1 <= level <= length:
        raise ValueError(f"level must be in 1..L = 1..{length} (depth of the child nodes), got {level}")
    if valid is None:
        valid = torch.ones(b, c, dtype=torch.bool, device=sids.device)
    same_parent = _pair_mask(same_prefix(sids, level - 1), valid)  # (B, C, C)
    # Number the groups by their first member: id = (number of group heads up to the head) - 1.
    head = _first_of_group(same_parent)  # (B, C)
    rank = head.long().cumsum(-1) - 1
    ids = rank.gather(-1, _group_rep(same_parent))
    return torch.where(valid, ids, -1)


def sibling_node_sets(sids: torch.Tensor, level: int, valid: torch.Tensor | None = None) -> list[list[dict]]:
    """For display and tests: each query's parent prefixes h at depth ``level - 1`` with G(h) and S(h).

    Returns one list per query, one dict per parent in order of first appearance, with keys
    ``parent`` (tuple h), ``children`` (sorted list, the sibling node set S(h) of Eq. 16) and
    ``candidates`` (indices of the sibling group G(h) of Eq. 15).

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
    >>> for parent in sibling_node_sets(s, 2)[0]:
    ...     print(parent)
    {'parent': (0,), 'children': [0, 1], 'candidates': [0, 1]}
    {'parent': (1,), 'children': [0], 'candidates': [2, 3]}
    """
    groups = sibling_groups(sids, level, valid).tolist()
    rows = sids.tolist()
    out = []
    for query_groups, query_sids in zip(groups, rows):
        parents: list[dict] = []
        for i, g in enumerate(query_groups):
            if g < 0:
                continue
            if g == len(parents):
                h = tuple(query_sids[i][: level - 1])
                parents.append({"parent": h, "children": [], "candidates": []})
            # Eq. 15: G(h) collects the candidates; Eq. 16: S(h) the distinct next tokens.
            parents[g]["candidates"].append(i)
            if query_sids[i][level - 1] not in parents[g]["children"]:
                parents[g]["children"].append(query_sids[i][level - 1])
        for p in parents:
            p["children"].sort()
        out.append(parents)
    return out


@dataclass(frozen=True)
class SiblingLevel:
    """Node scores and sibling statistics at one depth, all per candidate i (B, C) unless said."""

    score: torch.Tensor
    """R-bar of i's node (Eq. 17), NaN for padding."""
    first_node: torch.Tensor
    """i is the lowest-index valid candidate through its node (the node's representative)."""
    first_parent: torch.Tensor
    """i is the lowest-index valid candidate through its parent (the sibling group's representative)."""
    child: torch.Tensor
    """(B, C, C) bool: j represents a child node of i's parent (Eq. 16's S(h), one candidate each)."""
    mu_h: torch.Tensor
    """Mean of the scores of i's parent's child nodes (Eq. 18)."""
    sigma_h: torch.Tensor
    """Their standard deviation (Eq. 18, with the caller's ddof)."""
    n_children: torch.Tensor
    """How many child nodes i's parent has in the set."""


def level_groups(sids: torch.Tensor, valid: torch.Tensor, level: int) -> tuple[torch.Tensor, ...]:
    """The groups of depth ``level`` in 1..L, each (B, C, C) over valid candidates: j in G(h, v) of i (the same
    node), j in G(h) of i (the same parent h), j the first candidate of its node; and Eq. 16's children of i's
    parent, the distinct nodes of G(h), one candidate each."""
    same_node = _pair_mask(same_prefix(sids, level), valid)
    same_parent = _pair_mask(same_prefix(sids, level - 1), valid)
    first_node = _first_of_group(same_node)
    return same_node, same_parent, first_node, same_parent & first_node[:, None, :]


def _sibling_level(sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor, level: int,
                   ddof: int = DDOF) -> SiblingLevel:
    """``SiblingLevel`` of depth ``level`` in 1..L."""
    same_node, same_parent, first_node, child = level_groups(sids, valid, level)  # Eq. 16
    # Eq. 17: R-bar(x; h, v) = mean of R over G(h, v), read from the node's first candidate so that
    # every candidate through a node carries bit-identical scores.
    expand = rewards[:, None, :].expand_as(same_node)
    score, _, _ = _masked_stats(expand, same_node)
    score = score.gather(-1, _group_rep(same_node))
    mu_h, sigma_h, n_children = _masked_stats(score[:, None, :].expand_as(child), child, ddof)
    return SiblingLevel(score=score, first_node=first_node, first_parent=_first_of_group(same_parent), child=child,
                        mu_h=mu_h, sigma_h=sigma_h, n_children=n_children)


def sibling_node_scores(
    sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, C, L) node scores of Eq. 17 along each candidate's path.

    Entry [b, i, l] is R-bar(x; h, v) for the depth-(l + 1) node candidate i passes through
    (h = its first l tokens, v = its token l): the mean reward of the valid candidates of query b
    that share i's first l + 1 tokens. Padding candidates pass through no node: NaN.

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
    >>> sibling_node_scores(s, torch.tensor([[1.0, 3.0, 0.0, 2.0]]))
    tensor([[[2., 1.],
             [2., 3.],
             [1., 1.],
             [1., 1.]]])
    """
    rewards, valid = _check_rewards(rewards, valid)
    _check_sids(sids, rewards)
    scores = [_sibling_level(sids, rewards, valid, lv).score for lv in range(1, sids.shape[-1] + 1)]
    return torch.stack(scores, dim=-1)


def sibling_node_advantages(
    sids: torch.Tensor, rewards: torch.Tensor, eps: float = EPS, valid: torch.Tensor | None = None,
    ddof: int = DDOF,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sibling-relative node advantages of Eq. 18 along each candidate's path, and a node mask.

    For each depth l + 1 and each parent prefix h, the child nodes v in S(h) (Eq. 16) are compared
    with each other: mu_h and sigma_h are the mean and std (``ddof``) of their scores R-bar(x; h, v)
    (Eq. 17), each distinct child node counted once however many candidates pass through it.

    Args:
        sids: (B, C, L) candidate SIDs.
        rewards: (B, C) float.
        eps: epsilon of Eq. 18, > 0.
        valid: optional (B, C) bool.
        ddof: 1 (sample std, the default) or 0 (population std) for sigma_h.

    Returns:
        adv: (B, C, L), adv[b, i, l] = A_node(x; h, v) of the depth-(l + 1) node i passes through;
            0 for padding and for a parent with a single child node (no sibling to contrast).
        first: (B, C, L) bool, True iff i is the lowest-index valid candidate through that node, so
            ``(adv * first).sum(1)`` sums over nodes as Eq. 19 does, not over candidates.

    Root children 0 (scores 1, 3 -> 2) and 1 (0, 2 -> 1) get +1 and -1; under parent (0,) the
    leaves score 1 and 3 (-1, +1); parent (1,) has one child, so 0.

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
    >>> adv, first = sibling_node_advantages(s, torch.tensor([[1.0, 3.0, 0.0, 2.0]]), eps=1e-6, ddof=0)
    >>> adv
    tensor([[[ 1.0000, -1.0000],
             [ 1.0000,  1.0000],
             [-1.0000,  0.0000],
             [-1.0000,  0.0000]]])
    >>> first.int()
    tensor([[[1, 1],
             [0, 1],
             [1, 1],
             [0, 0]]], dtype=torch.int32)
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_sids(sids, rewards)
    _check_ddof(ddof)
    advs, firsts = [], []
    for lv in range(1, sids.shape[-1] + 1):
        s = _sibling_level(sids, rewards, valid, lv, ddof)
        # Eq. 18: A_node(x; h, v) = (R-bar(x; h, v) - mu_h(x)) / (sigma_h(x) + eps)
        adv = (s.score - s.mu_h) / (s.sigma_h + eps)
        advs.append(torch.where(valid, adv, 0.0))
        firsts.append(s.first_node)
    return torch.stack(advs, dim=-1), torch.stack(firsts, dim=-1)


def sibling_contrast(
    sids: torch.Tensor, rewards: torch.Tensor, eps: float = EPS, valid: torch.Tensor | None = None,
    ddof: int = DDOF,
) -> dict[str, torch.Tensor]:
    """Within-parent spread of node advantages, GRPO-normalised vs sibling-normalised (docs/design.md, section 4).

    For every parent h (at any depth) with at least two child nodes, take the std (``ddof``, as for
    every sigma here) over its child nodes v in S(h) of
        ``global``: R-bar(x; h, v) / (sigma_R(x) + eps), node scores on the scale of Eq. 2, which
            is small when sigma_R is dominated by the spread between unrelated prefixes;
        ``sibling``: A_node(x; h, v) of Eq. 18, which is sigma_h / (sigma_h + eps), close to 1.
    Returns (B,) means over those parents, NaN for a query without one, and ``n_parents`` (B,)
    int64, the number of such parents.

    Root: node scores 2 and 1 (std 0.5); parent (0,): 1 and 3 (std 1); sigma_R = sqrt(1.25), so
    global = 0.75 / 1.118.

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
    >>> c = sibling_contrast(s, torch.tensor([[1.0, 3.0, 0.0, 2.0]]), eps=1e-6, ddof=0)
    >>> {k: round(v.item(), 4) for k, v in c.items()}
    {'global': 0.6708, 'sibling': 1.0, 'n_parents': 2}
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_sids(sids, rewards)
    _check_ddof(ddof)
    _, sigma_global, _ = _masked_stats(rewards, valid, ddof)  # (B,)
    b = rewards.shape[0]
    sum_global = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    sum_sibling = torch.zeros_like(sum_global)
    count = torch.zeros(b, dtype=torch.long, device=rewards.device)
    for lv in range(1, sids.shape[-1] + 1):
        s = _sibling_level(sids, rewards, valid, lv, ddof)
        # One row per parent (its first candidate) that has >= 2 child nodes.
        counted = s.first_parent & (s.n_children >= 2)  # (B, C)
        # Eq. 18 per node, then its std over the parent's children; likewise for R-bar / sigma_R.
        a_node = (s.score - s.mu_h) / (s.sigma_h + eps)
        _, std_sibling, _ = _masked_stats(a_node[:, None, :].expand_as(s.child), s.child, ddof)
        std_global = s.sigma_h / (sigma_global[:, None] + eps)
        sum_global += torch.where(counted, std_global, 0.0).sum(-1)
        sum_sibling += torch.where(counted, std_sibling, 0.0).sum(-1)
        count += counted.sum(-1)
    denom = count.to(rewards.dtype)
    return {
        "global": torch.where(count > 0, sum_global / denom, math.nan),
        "sibling": torch.where(count > 0, sum_sibling / denom, math.nan),
        "n_parents": count,
    }


def sibling_signal_share(sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) share of sibling groups G(h) -- every parent prefix h of every depth among a query's valid
    candidates -- whose child nodes differ in node score (Eq. 17): the groups that give Sibling-GRPO a
    non-zero term (Eq. 18-19). A parent with one child node gives none. NaN for a query with no valid
    candidate. The training log's ``sibling_signal_share``; its GRPO counterpart is the share of
    queries whose rewards are not all equal.

    Root: child nodes 0 and 1 score 2 and 1 (a signal); parent (0,): leaves 1 and 3 (a signal);
    parent (1,): a single child node (none): 2 of 3.

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 0]]])
    >>> sibling_signal_share(s, torch.tensor([[1.0, 3.0, 0.0, 2.0]]))
    tensor([0.6667])
    """
    rewards, valid = _check_rewards(rewards, valid)
    _check_sids(sids, rewards)
    groups = torch.zeros(rewards.shape[0], device=rewards.device)
    signal = torch.zeros_like(groups)
    for lv in range(1, sids.shape[-1] + 1):
        st = _sibling_level(sids, rewards, valid, lv, ddof=0)
        parents = st.first_parent  # one row per sibling group
        groups += parents.sum(-1)
        signal += (parents & (st.sigma_h > 0)).sum(-1)
    return torch.where(groups > 0, signal / groups.clamp_min(1), math.nan)
