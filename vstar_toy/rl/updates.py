"""The update options of claim 9 (``RLConfig.baseline``, ``negatives``, ``baseline_shift``, ``critic``,
``distill``): estimators beside the paper's Eq. 2 and Eq. 18 (``advantages.py``) that change what a candidate
is measured against, which of its advantages count, or what the policy imitates. Each reduces to Eq. 2 at
its default; claim 9 (README, "Why the learning half failed") measures what each does to a policy trained
on VED's candidates, and ``config.UPDATES`` names the chosen combinations.

Shapes and conventions (epsilon, ddof, padding) are those of ``advantages.py``, whose plumbing this module
shares.
"""

from __future__ import annotations

import math

import torch

from .advantages import DDOF, EPS, _check_ddof, _check_rewards, _masked_stats, grpo_advantages, level_groups


def baseline_advantages(rewards: torch.Tensor, baseline: torch.Tensor, eps: float = EPS,
                        valid: torch.Tensor | None = None, ddof: int = DDOF) -> torch.Tensor:
    """(B, C) advantages against an outside baseline: A(x, y) = (R(x, y) - b(x)) / (sigma_R(x) + eps).

    Eq. 2 with the group mean mu_R(x) replaced by ``baseline`` (B,) b(x), e.g. the policy's own expected
    reward for the query (``RLConfig.baseline = "beam"``: the mean reward of its beam-search set, a
    ReMax-style baseline). sigma_R stays the group's, so with b = mu_R this is Eq. 2 exactly. Unlike Eq. 2
    the advantages need not sum to 0: a group that is better than what the policy decodes itself is
    pushed up as a whole. Padding gets 0; a non-finite baseline raises.

    >>> baseline_advantages(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([1.0]), eps=1e-6, ddof=0)
    tensor([[0.0000, 0.8944, 1.7889, 2.6833]])
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_ddof(ddof)
    if baseline.shape != rewards.shape[:1] or not bool(torch.isfinite(baseline).all()):
        raise ValueError(f"baseline must be a finite (B,) = ({rewards.shape[0]},) tensor, got "
                         f"{tuple(baseline.shape)} {baseline.tolist()[:4]}")
    _, sigma, _ = _masked_stats(rewards, valid, ddof)
    adv = (rewards - baseline[:, None].to(rewards.dtype)) / (sigma[:, None] + eps)
    return torch.where(valid, adv, 0.0)


def taper_negatives(adv: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``adv`` with every negative entry multiplied by ``weight`` (same shape, in [0, 1]); positives as
    they are. ``weight`` 0/1 drops the negatives of some candidates (``RLConfig.negatives = "drop"``),
    ``topr_weights`` tapers them (``"topr"``).

    >>> taper_negatives(torch.tensor([[-1.0, -2.0, 3.5]]), torch.tensor([[0.25, 0.5, 0.0]]))
    tensor([[-0.2500, -1.0000,  3.5000]])
    """
    if weight.shape != adv.shape:
        raise ValueError(f"weight must have the shape of adv {tuple(adv.shape)}, got {tuple(weight.shape)}")
    return torch.where(adv < 0, adv * weight.to(adv.dtype), adv)


def topr_weights(logp: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) TOPR's taper min(1, pi(y) / mu(y)) with the group as the behaviour distribution.

    TOPR (Le Roux et al., arXiv 2503.14286) keeps positive advantages as they are and weights negative
    ones by the importance ratio truncated to [0, 1]. A set decoder (beam search, VED) has no sampling
    probability mu(y); here mu is uniform over the group, 1/n, and pi is the policy renormalised on the
    group, so w = min(1, n * softmax(logp)): a candidate the policy finds at least as likely as an
    average member keeps its full negative advantage, one it finds unlikely is pushed down in proportion
    to how likely it is. ``logp`` (B, C): log pi(y | x) under the behaviour policy. Padding gets 0.

    >>> topr_weights(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])))
    tensor([[1.0000, 1.0000, 0.6000, 0.2000]])
    """
    if valid is None:
        valid = torch.ones(logp.shape, dtype=torch.bool, device=logp.device)
    n = valid.sum(-1, keepdim=True).to(logp.dtype)
    share = torch.softmax(torch.where(valid, logp, -math.inf), -1).nan_to_num(0.0)  # pi renormalised on the group
    return torch.where(valid, (n * share).clamp(max=1.0), 0.0)


def sibling_topr_weights(sids: torch.Tensor, token_logp: torch.Tensor, valid: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """(B, C, L) the TOPR taper of every node on each candidate's path, with a parent's child nodes S(h)
    (Eq. 16) as the group: w(v | h) = min(1, |S(h)| * pi(v | x, h) / sum_{v' in S(h)} pi(v' | x, h)).
    ``token_logp`` (B, C, L): log pi(y_l | x, y_<l). A parent with one child gives that child weight 1.

    >>> s = torch.tensor([[[0, 0], [0, 1], [1, 0]]])
    >>> lp = torch.log(torch.tensor([[[0.6, 0.9], [0.6, 0.1], [0.2, 1.0]]]))
    >>> sibling_topr_weights(s, lp)
    tensor([[[1.0000, 1.0000],
             [1.0000, 0.2000],
             [0.5000, 1.0000]]])
    """
    if valid is None:
        valid = torch.ones(sids.shape[:2], dtype=torch.bool, device=sids.device)
    out = []
    for lv in range(1, sids.shape[-1] + 1):
        child = level_groups(sids, valid, lv)[-1]  # (B, C, C): j is a child node of i's parent (Eq. 16)
        p = token_logp[..., lv - 1].exp()
        total = torch.where(child, p[:, None, :], 0.0).sum(-1)  # sum of pi over S(h)
        n = child.sum(-1).to(p.dtype)
        w = (n * p / total.clamp_min(1e-30)).clamp(max=1.0)
        out.append(torch.where(valid, w, 0.0))
    return torch.stack(out, -1)


def own_prefixes(sids: torch.Tensor, own: torch.Tensor, valid: torch.Tensor | None = None,
                 own_valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, L) bool: the depth-(l + 1) prefix of candidate i is a prefix of one of the query's ``own``
    (B, C', L) SIDs, e.g. the policy's own beam-search set: the nodes the policy would have decoded
    itself (``RLConfig.negatives = "drop"``). Entry [..., L - 1] says the candidate itself is in the set.

    >>> own_prefixes(torch.tensor([[[0, 1], [0, 2], [1, 1]]]), torch.tensor([[[0, 1]]])).int()
    tensor([[[1, 1],
             [1, 0],
             [0, 0]]], dtype=torch.int32)
    """
    if valid is None:
        valid = torch.ones(sids.shape[:2], dtype=torch.bool, device=sids.device)
    if own_valid is None:
        own_valid = own[..., 0] >= 0
    match = sids[:, :, None, :] == own[:, None, :, :]  # (B, C, C', L)
    prefix_match = match.int().cumprod(-1).bool() & own_valid[:, None, :, None]
    return prefix_match.any(2) & valid[..., None]


def group_advantages(rewards: torch.Tensor, eps: float = EPS, valid: torch.Tensor | None = None, ddof: int = DDOF,
                     baseline: torch.Tensor | None = None, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) the advantage of GRPO's term under the update's options (``RLConfig``): Eq. 2
    (``grpo_advantages``) or, with ``baseline`` (B,), ``baseline_advantages``; then negative entries
    weighted by ``negatives`` (B, C) (``taper_negatives``). With neither it is Eq. 2 exactly.

    >>> group_advantages(torch.tensor([[1.0, 3.0]]), eps=1e-6, ddof=0, negatives=torch.tensor([[0.5, 1.0]]))
    tensor([[-0.5000,  1.0000]])
    """
    adv = grpo_advantages(rewards, eps, valid, ddof) if baseline is None else \
        baseline_advantages(rewards, baseline, eps, valid, ddof)
    return adv if negatives is None else taper_negatives(adv, negatives)


def critic_advantages(rewards: torch.Tensor, values: torch.Tensor, eps: float = EPS,
                      valid: torch.Tensor | None = None, ddof: int = DDOF,
                      baseline: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, L) GRPO's advantage per token with the value as a baseline per depth (``RLConfig.critic``).

    Token y_1 keeps the group's advantage (``group_advantages``: every candidate shares the root). Token
    y_l, l >= 2, is credited with R(x, y) minus a baseline of its prefix y_<l:
    b_l(x, y) = b(x) + beta_l (V(y_<l) - mean V(y_<l)), where b(x) is the group mean (or ``baseline`` (B,))
    and beta_l = cov(R, V(y_<l)) / var(V(y_<l)) over the group's valid candidates: least squares of R on V
    per depth, because V_phi learns the dense returns of Eq. 8, not R. A = (R - b_l) / (sigma_R + eps).
    With b(x) the group mean each level's advantages sum to 0 over the group, as Eq. 2's do; where V
    explains nothing (beta = 0, or V equal on the whole group) they are Eq. 2's; where R is an increasing
    affine function of V(y_<l), the level's advantages are 0: the prefix already said it all.

    ``values`` (B, C, L): V_phi(y_<=l) for l = 1 .. L (``ValueHead.of_candidates``); the last column is not
    read. Padding gets 0, whatever its values hold.

    >>> r = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    >>> v = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [7.0, 0.0], [7.0, 0.0]]])  # two level-1 branches
    >>> critic_advantages(r, v, eps=1e-6, ddof=0)[0].round(decimals=4)  # level 2: R minus its branch's mean
    tensor([[-1.3416, -0.4472],
            [-0.4472,  0.4472],
            [ 0.4472, -0.4472],
            [ 1.3416,  0.4472]])
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    _check_ddof(ddof)
    if values.shape[:2] != rewards.shape or values.dim() != 3:
        raise ValueError(f"values must be (B, C, L) with (B, C) = {tuple(rewards.shape)}, got {tuple(values.shape)}")
    mu, sigma, _ = _masked_stats(rewards, valid, ddof)
    b = mu if baseline is None else baseline.to(rewards.dtype)
    cols = [group_advantages(rewards, eps, valid, ddof, baseline)]  # level 1: the root is shared
    n = valid.sum(1).clamp_min(1).to(rewards.dtype)
    for lvl in range(1, values.shape[-1]):
        v = torch.where(valid, values[..., lvl - 1].to(rewards.dtype), 0.0)  # V(y_<l), l = lvl + 1
        dv = torch.where(valid, v - v.sum(1, keepdim=True) / n[:, None], 0.0)
        dr = torch.where(valid, rewards - mu[:, None], 0.0)
        var = dv.square().sum(1)
        beta = torch.where(var > 1e-12, (dv * dr).sum(1) / var.clamp_min(1e-12), 0.0)  # least squares of R on V
        base = b[:, None] + beta[:, None] * dv  # b_l(x, y)
        cols.append(torch.where(valid, (rewards - base) / (sigma[:, None] + eps), 0.0))
    return torch.stack(cols, -1)


def shifted_baseline(rewards: torch.Tensor, valid: torch.Tensor | None = None, shift: float = 0.0,
                     baseline: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) b(x) - delta: the group's mean reward (or ``baseline`` (B,), e.g. the beam baseline) lowered by
    ``shift`` = delta >= 0 (``RLConfig.baseline_shift``); a query without valid candidates gets 0.

    AsymRE (Arnal et al., arXiv 2506.20520): on samples that are not the policy's own, REINFORCE learns
    better with a baseline below the expected reward, which weighs the group's good candidates more than
    its bad ones; the principled form of dropping negatives. With ``baseline_advantages`` it gives
    A = (R - mu_R + delta) / (sigma_R + eps), whose sum over the group is n delta / (sigma_R + eps) > 0:
    the group as a whole is pushed up. delta = 0 is Eq. 2.

    >>> shifted_baseline(torch.tensor([[1.0, 3.0], [2.0, 9.0]]), torch.tensor([[True, True], [True, False]]), 0.5)
    tensor([1.5000, 1.5000])
    """
    if not (math.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift = {shift} is invalid: expected a number >= 0")
    rewards, valid = _check_rewards(rewards, valid)
    mu, _, _ = _masked_stats(rewards, valid)
    b = mu if baseline is None else baseline.to(rewards.dtype)
    return torch.nan_to_num(b, nan=0.0) - shift


def distill_weights(rewards: torch.Tensor, valid: torch.Tensor | None = None, kind: str = "best", tau: float = 1.0,
                    eps: float = EPS, ddof: int = DDOF) -> torch.Tensor:
    """(B, C) how much of each candidate a query's distillation term imitates, summing to 1 over its valid
    candidates (0 for a query without any): ``RLConfig.distill``.

    "best": all on the candidate of highest reward, the first of ties (expert iteration, Anthony et al.
    2017, and AlphaZero's policy target: imitate what the search found best). "awr": softmax(A / tau)
    over the group, A = Eq. 2's advantage (advantage-weighted regression, Peng et al. 2019,
    arXiv 1910.00177): every candidate, more of the better ones.

    >>> distill_weights(torch.tensor([[0.1, 0.9, 0.5]]), kind="best")
    tensor([[0., 1., 0.]])
    >>> distill_weights(torch.tensor([[0.0, 1.0]]), kind="awr", tau=1.0, eps=1e-6, ddof=0).round(decimals=4)
    tensor([[0.1192, 0.8808]])
    """
    rewards, valid = _check_rewards(rewards, valid, eps)
    if kind == "best":
        top = torch.where(valid, rewards, -math.inf).argmax(1)
        w = torch.zeros_like(rewards).scatter_(1, top[:, None], 1.0)
    elif kind == "awr":
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau = {tau} is invalid: expected a number > 0")
        w = torch.where(valid, grpo_advantages(rewards, eps, valid, ddof) / tau, -math.inf).softmax(1)
    else:
        raise ValueError(f"distill = {kind!r} is invalid: expected best or awr")
    return torch.where(valid.any(1, keepdim=True) & valid, w.nan_to_num(0.0), 0.0)


def negative_weights(kind: str, sids: torch.Tensor, token_logp: torch.Tensor | None, valid: torch.Tensor,
                     own: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The weights of negative advantages for ``RLConfig.negatives`` = ``kind``: None for "keep"; else
    ((B, C) for GRPO's term, (B, C, L) for Sibling-GRPO's nodes). "drop": 1 where the candidate (a node:
    its prefix) is in the policy's own set, ``own`` = ``own_prefixes(...)`` (B, C, L), else 0; "topr":
    ``topr_weights`` of the candidates' log pi and ``sibling_topr_weights`` of the nodes'.
    ``token_logp`` (B, C, L): log pi(y_l | x, y_<l) under the behaviour policy; only "topr" reads it."""
    if kind == "keep":
        return None
    if kind == "drop":
        if own is None:
            raise ValueError("negatives = 'drop' needs own: which candidates the policy would decode itself")
        dtype = torch.float32 if token_logp is None else token_logp.dtype
        return own[..., -1].to(dtype), own.to(dtype)
    if kind == "topr":
        if token_logp is None:
            raise ValueError("negatives = 'topr' needs token_logp: the behaviour policy's log-probs of the candidates")
        seq = torch.where(valid[..., None], token_logp, 0.0).sum(-1)
        return topr_weights(seq, valid), sibling_topr_weights(sids.clamp_min(0), token_logp, valid)
    raise ValueError(f"negatives = {kind!r} is invalid: expected keep, drop or topr")
