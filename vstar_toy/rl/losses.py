"""The policy objectives on decoded candidate sets: GRPO (Eq. 2), Sibling-GRPO (Eq. 19) and both.

Every loss here is a pure function of per-token log-probabilities, shape (B, C, L) for B queries, C
candidates and L SID levels:

- ``logp``: log pi_theta(y_l | x, y_<l) of the policy being trained, with gradients;
- ``old_logp``: the same under the behaviour policy pi_theta_old that produced the candidates
  (detached); the importance ratio rho = pi_theta / pi_theta_old is 1 on the first pass over a batch
  and matters from the second (``RLConfig.inner_epochs``);
- ``ref_logp``: the same under the frozen SFT reference, for the KL penalty.

Losses are *minimised*, so each is the negative of the paper's objective J.

How the two terms weigh against each other (the reading of Eq. 19 here). GRPO averages its surrogate
over a query's |C(x)| * L tokens (DeepSeekMath's 1/G sum_i 1/|o_i| sum_t). Eq. 19 writes Sibling-GRPO
as 1/|C(x)| times a sum over *nodes*, and a query has up to |C(x)| * L of them, so read literally
(``sibling_norm = "candidates"``) the sibling term weighs a query up to L times as much as the GRPO
term, and "joint = GRPO + Sibling-GRPO" with unit weights (the paper gives none) is mostly Sibling.
The default (``sibling_norm = "tokens"``) divides the node sum by |C(x)| * L, the token count GRPO
averages over, so that equal weights mean equal weight per token; the two differ by the constant L,
i.e. only in the relative weight, which ``RLConfig.sibling_weight`` could also set. Candidates that are
padding (``valid`` False) contribute nothing, to the loss or to its gradient, whatever their
log-probs hold: a padding row may be -inf or NaN (e.g. the log-probs of a clamped ``-1`` SID that is
no catalog item), so it is masked out with ``torch.where`` before any arithmetic, never multiplied by
0 (``nan * 0`` is NaN).
"""

from __future__ import annotations

import torch

from ..config import KL_ESTIMATORS, SIBLING_NORMS
from . import columns
from .advantages import DDOF, EPS, sibling_node_advantages
from .updates import critic_advantages, distill_weights, group_advantages, taper_negatives


def _drop_padding(valid: torch.Tensor, *logps: torch.Tensor) -> list[torch.Tensor]:
    """Each (B, C, L) log-prob tensor with the tokens of padding candidates set to 0 (gradient 0 there)."""
    tok = valid[..., None].expand_as(logps[0])
    return [torch.where(tok, lp, 0.0) for lp in logps]


def _surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Per-token PPO surrogate rho * A, pessimistically clipped to [1 - eps, 1 + eps] when eps > 0."""
    ratio = torch.exp(logp - old_logp.detach())
    if clip_eps <= 0:
        return ratio * adv
    return torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, valid: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Mean per-token KL(pi_theta || pi_ref), with d = log pi_ref - log pi_theta, by ``estimator``
    (``RLConfig.kl_estimator``): "k3" = exp(d) - d - 1 (unbiased on samples of pi_theta, never
    negative), "k1" = -d (unbiased, can be negative), "k2" = d^2 / 2 (biased, low variance).

    >>> lp, ref, ok = torch.tensor([[[-1.0]]]), torch.tensor([[[-2.0]]]), torch.tensor([[True]])
    >>> [round(float(kl_penalty(lp, ref, ok, e)), 4) for e in ("k3", "k1", "k2")]
    [0.3679, 1.0, 0.5]
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator = {estimator!r} is invalid: expected one of {', '.join(KL_ESTIMATORS)}")
    logp, ref_logp = _drop_padding(valid, logp, ref_logp)
    d = ref_logp.detach() - logp
    k = {"k3": lambda: torch.exp(d) - d - 1.0, "k1": lambda: -d, "k2": lambda: 0.5 * d.square()}[estimator]()
    w = valid[..., None].expand_as(k).to(k.dtype)
    return (k * w).sum() / w.sum().clamp_min(1.0)


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
    clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF, baseline: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None, critic: torch.Tensor | None = None,
) -> torch.Tensor:
    """-J_GRPO: the group advantage A(x, y) of Eq. 2 on every token of y, token-level ratios,
    averaged over the valid tokens of the batch. ``baseline`` (B,) replaces the group mean
    (``updates.baseline_advantages``); ``negatives`` (B, C) in [0, 1] weights the negative
    advantages (``updates.taper_negatives``: 0 drops one, TOPR's weights taper it); ``critic``
    (B, C, L), V_phi of each candidate's prefixes, gives each token its own baseline
    (``updates.critic_advantages``, ``RLConfig.critic``)."""
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    if critic is None:
        adv = group_advantages(rewards, eps, valid, ddof, baseline, negatives)[..., None].expand_as(logp)  # Eq. 2
    else:
        adv = critic_advantages(rewards, critic, eps, valid, ddof, baseline)  # (B, C, L)
        if negatives is not None:
            adv = taper_negatives(adv, negatives[..., None].expand_as(adv))
    surr = _surrogate(logp, old_logp, adv.detach(), clip_eps)
    w = valid[..., None].expand_as(surr).to(surr.dtype)
    return -(surr * w).sum() / w.sum().clamp_min(1.0)


def sibling_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
    clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF, norm: str = "tokens",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """-J_sib of Eq. 19, averaged over queries.

    For each query: a sum over depths l, parents h and child nodes v in S(h) of A_node(x; h, v) *
    rho(v | x, h), divided by |C(x)| * L (``norm = "tokens"``, the default) or by |C(x)| (``"candidates"``,
    Eq. 19 read literally; the module docstring says why they differ). A node is counted once however
    many candidates pass through it (the ``first`` mask of ``sibling_node_advantages``); the token v's
    log-prob is the same on all of them, so the first candidate's carries it. Parents with a single
    child node give 0. ``negatives`` (B, C, L) in [0, 1] weights negative node advantages, as in
    ``grpo_loss``.
    """
    if norm not in SIBLING_NORMS:
        raise ValueError(f"norm = {norm!r} is invalid: expected one of {', '.join(SIBLING_NORMS)}")
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    adv, first = sibling_node_advantages(sids.clamp_min(0), rewards, eps, valid, ddof)  # Eq. 18, (B, C, L)
    if negatives is not None:
        adv = taper_negatives(adv, negatives)
    surr = _surrogate(logp, old_logp, adv.detach(), clip_eps) * first.to(logp.dtype)
    per_query = valid.sum(1).clamp_min(1).to(logp.dtype)  # |C(x)|
    if norm == "tokens":
        per_query = per_query * logp.shape[-1]  # |C(x)| * L
    return -(surr.sum((1, 2)) / per_query).mean()  # Eq. 19


def distill_loss(logp: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The search-distillation term: -1/B sum_x sum_y w(x, y) * (1/L) sum_l log pi_theta(y_l | x, y_<l),
    maximum likelihood on the group's candidates weighted by ``weights`` (B, C), each query's summing to 1
    (``updates.distill_weights``): the policy is pulled towards what the search found, whether or not
    it would decode it itself. No importance ratio: the target is the search's choice, not a sample of the
    policy (expert iteration).

    >>> lp = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 1.0]]]))
    >>> round(float(distill_loss(lp, torch.tensor([[0.0, 1.0]]), torch.tensor([[True, True]]))), 4)
    0.6931
    """
    (logp,) = _drop_padding(valid, logp)
    per_query = (torch.where(valid, weights.to(logp.dtype), 0.0) * logp.mean(-1)).sum(1)  # (B,)
    return -per_query.mean()


def policy_loss(
    objective: str, logp, old_logp, ref_logp, sids, rewards, valid, *, grpo_weight: float = 1.0,
    sibling_weight: float = 1.0, kl_coef: float = 1e-3, clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF,
    sibling_norm: str = "tokens", kl_estimator: str = "k3", baseline: torch.Tensor | None = None,
    negatives: tuple[torch.Tensor, torch.Tensor] | None = None, distill: str = "none", distill_weight: float = 1.0,
    awr_tau: float = 1.0, critic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of ``objective`` ("grpo", "sibling" or "joint") plus kl_coef * KL to the reference, plus
    distill_weight * ``distill_loss`` when ``distill`` is "best" or "awr" (``updates.distill_weights``,
    with ``awr_tau``).

    joint = grpo_weight * (-J_GRPO) + sibling_weight * (-J_sib) (Sec. 4.4). ``baseline`` (B,) replaces
    GRPO's group mean; ``negatives`` = (the (B, C) weights of GRPO's negative advantages, the (B, C, L)
    weights of Sibling-GRPO's), as ``rl/train.py: policy_update`` makes them from ``RLConfig``; ``critic``
    (B, C, L), V_phi of the candidates' prefixes, a baseline per depth in GRPO's term (``grpo_loss``).
    Returns the loss and its parts (floats, for logging).
    """
    grpo_neg, sibling_neg = negatives if negatives is not None else (None, None)
    parts: dict[str, torch.Tensor] = {}
    if objective in ("grpo", "joint"):
        parts["grpo"] = grpo_loss(logp, old_logp, rewards, valid, clip_eps, eps, ddof, baseline, grpo_neg, critic)
    if objective in ("sibling", "joint"):
        parts["sibling"] = sibling_loss(logp, old_logp, sids, rewards, valid, clip_eps, eps, ddof, sibling_norm,
                                        sibling_neg)
    if not parts:
        raise ValueError(f"objective = {objective!r} is invalid: expected grpo, sibling or joint")
    weights = {"grpo": grpo_weight if objective == "joint" else 1.0,
               "sibling": sibling_weight if objective == "joint" else 1.0}
    loss = sum(weights[k] * v for k, v in parts.items())
    if distill != "none":
        w = distill_weights(rewards, valid, distill, awr_tau, eps, ddof)
        parts["distill"] = distill_loss(logp, w.to(logp.device), valid)
        loss = loss + distill_weight * parts["distill"]
    if kl_coef > 0:
        parts["kl"] = kl_penalty(logp, ref_logp, valid, kl_estimator)
        loss = loss + kl_coef * parts["kl"]
    return loss, {columns.loss(k): float(v.detach()) for k, v in parts.items()}


def loss_kwargs(rl) -> dict:
    """The keyword arguments of ``policy_loss`` that an ``RLConfig`` sets (one place for train, the
    benchmarks and the tutorials)."""
    return dict(grpo_weight=rl.grpo_weight, sibling_weight=rl.sibling_weight, kl_coef=rl.kl_coef,
                clip_eps=rl.clip_eps, eps=rl.adv_eps, ddof=rl.adv_ddof, sibling_norm=rl.sibling_norm,
                kl_estimator=rl.kl_estimator, distill=rl.distill, distill_weight=rl.distill_weight,
                awr_tau=rl.awr_tau)
