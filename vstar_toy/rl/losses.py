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

from .advantages import DDOF, EPS, grpo_advantages, sibling_node_advantages

SIBLING_NORMS = ("tokens", "candidates")


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


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(pi_theta || pi_ref) by the k3 estimator, exp(d) - d - 1 with d = log pi_ref -
    log pi_theta: unbiased on samples of pi_theta, never negative.

    >>> round(float(kl_penalty(torch.tensor([[[0.0]]]), torch.tensor([[[0.0]]]), torch.tensor([[True]]))), 6)
    0.0
    """
    logp, ref_logp = _drop_padding(valid, logp, ref_logp)
    d = ref_logp.detach() - logp
    k3 = torch.exp(d) - d - 1.0
    w = valid[..., None].expand_as(k3).to(k3.dtype)
    return (k3 * w).sum() / w.sum().clamp_min(1.0)


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
    clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF,
) -> torch.Tensor:
    """-J_GRPO: the group advantage A(x, y) of Eq. 2 on every token of y, token-level ratios,
    averaged over the valid tokens of the batch."""
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    adv = grpo_advantages(rewards, eps, valid, ddof).detach()  # (B, C), Eq. 2
    surr = _surrogate(logp, old_logp, adv[..., None].expand_as(logp), clip_eps)
    w = valid[..., None].expand_as(surr).to(surr.dtype)
    return -(surr * w).sum() / w.sum().clamp_min(1.0)


def sibling_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
    clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF, norm: str = "tokens",
) -> torch.Tensor:
    """-J_sib of Eq. 19, averaged over queries.

    For each query: a sum over depths l, parents h and child nodes v in S(h) of A_node(x; h, v) *
    rho(v | x, h), divided by |C(x)| * L (``norm = "tokens"``, the default) or by |C(x)| (``"candidates"``,
    Eq. 19 read literally; the module docstring says why they differ). A node is counted once however
    many candidates pass through it (the ``first`` mask of ``sibling_node_advantages``); the token v's
    log-prob is the same on all of them, so the first candidate's carries it. Parents with a single
    child node give 0.
    """
    if norm not in SIBLING_NORMS:
        raise ValueError(f"norm = {norm!r} is invalid: expected one of {', '.join(SIBLING_NORMS)}")
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    adv, first = sibling_node_advantages(sids.clamp_min(0), rewards, eps, valid, ddof)  # Eq. 18, (B, C, L)
    surr = _surrogate(logp, old_logp, adv.detach(), clip_eps) * first.to(logp.dtype)
    per_query = valid.sum(1).clamp_min(1).to(logp.dtype)  # |C(x)|
    if norm == "tokens":
        per_query = per_query * logp.shape[-1]  # |C(x)| * L
    return -(surr.sum((1, 2)) / per_query).mean()  # Eq. 19


def policy_loss(
    objective: str, logp, old_logp, ref_logp, sids, rewards, valid, *, grpo_weight: float = 1.0,
    sibling_weight: float = 1.0, kl_coef: float = 1e-3, clip_eps: float = 0.2, eps: float = EPS, ddof: int = DDOF,
    sibling_norm: str = "tokens",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of ``objective`` ("grpo", "sibling" or "joint") plus kl_coef * KL to the reference.

    joint = grpo_weight * (-J_GRPO) + sibling_weight * (-J_sib) (Sec. 4.4). Returns the loss and its
    parts (floats, for logging).
    """
    parts: dict[str, torch.Tensor] = {}
    if objective in ("grpo", "joint"):
        parts["grpo"] = grpo_loss(logp, old_logp, rewards, valid, clip_eps, eps, ddof)
    if objective in ("sibling", "joint"):
        parts["sibling"] = sibling_loss(logp, old_logp, sids, rewards, valid, clip_eps, eps, ddof, sibling_norm)
    if not parts:
        raise ValueError(f"objective = {objective!r} is invalid: expected grpo, sibling or joint")
    weights = {"grpo": grpo_weight if objective == "joint" else 1.0,
               "sibling": sibling_weight if objective == "joint" else 1.0}
    loss = sum(weights[k] * v for k, v in parts.items())
    if kl_coef > 0:
        parts["kl"] = kl_penalty(logp, ref_logp, valid)
        loss = loss + kl_coef * parts["kl"]
    return loss, {f"loss_{k}": float(v.detach()) for k, v in parts.items()}


def loss_kwargs(rl) -> dict:
    """The keyword arguments of ``policy_loss`` that an ``RLConfig`` sets (one place for train, the
    benchmarks and the tutorials)."""
    return dict(grpo_weight=rl.grpo_weight, sibling_weight=rl.sibling_weight, kl_coef=rl.kl_coef,
                clip_eps=rl.clip_eps, eps=rl.adv_eps, ddof=rl.adv_ddof, sibling_norm=rl.sibling_norm)
