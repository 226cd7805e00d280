"""The policy objectives on decoded candidate sets: GRPO (Eq. 2), Sibling-GRPO (Eq. 19) and both.

Every loss here is a pure function of per-token log-probabilities, shape (B, C, L) for B queries, C
candidates and L SID levels:

- ``logp``: log pi_theta(y_l | x, y_<l) of the policy being trained, with gradients;
- ``old_logp``: the same under the behaviour policy pi_theta_old that produced the candidates
  (detached); the importance ratio rho = pi_theta / pi_theta_old is 1 on the first pass over a batch
  and matters from the second (``RLConfig.inner_epochs``);
- ``ref_logp``: the same under the frozen SFT reference, for the KL penalty.

Losses are *minimised*, so each is the negative of the paper's objective J. Candidates that are
padding (``valid`` False) contribute nothing, to the loss or to its gradient, whatever their
log-probs hold: a padding row may be -inf or NaN (e.g. the log-probs of a clamped ``-1`` SID that is
no catalog item), so it is masked out with ``torch.where`` before any arithmetic, never multiplied by
0 (``nan * 0`` is NaN).
"""

from __future__ import annotations

import torch

from .advantages import grpo_advantages, sibling_node_advantages


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
    clip_eps: float = 0.2, eps: float = 1e-6,
) -> torch.Tensor:
    """-J_GRPO: the group advantage A(x, y) of Eq. 2 on every token of y, token-level ratios,
    averaged over the valid tokens of the batch."""
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    adv = grpo_advantages(rewards, eps, valid).detach()  # (B, C), Eq. 2
    surr = _surrogate(logp, old_logp, adv[..., None].expand_as(logp), clip_eps)
    w = valid[..., None].expand_as(surr).to(surr.dtype)
    return -(surr * w).sum() / w.sum().clamp_min(1.0)


def sibling_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, sids: torch.Tensor, rewards: torch.Tensor, valid: torch.Tensor,
    clip_eps: float = 0.2, eps: float = 1e-6,
) -> torch.Tensor:
    """-J_sib of Eq. 19, averaged over queries.

    For each query: (1 / |C(x)|) * sum over depths l, parents h and child nodes v in S(h) of
    A_node(x; h, v) * rho(v | x, h). A node is counted once however many candidates pass through it
    (the ``first`` mask of ``sibling_node_advantages``); the token v's log-prob is the same on all
    of them, so the first candidate's carries it. Parents with a single child node give 0.
    """
    logp, old_logp = _drop_padding(valid, logp, old_logp)
    adv, first = sibling_node_advantages(sids.clamp_min(0), rewards, eps, valid)  # Eq. 18, (B, C, L)
    surr = _surrogate(logp, old_logp, adv.detach(), clip_eps) * first.to(logp.dtype)
    n_cand = valid.sum(1).clamp_min(1).to(logp.dtype)  # |C(x)|
    return -(surr.sum((1, 2)) / n_cand).mean()


def policy_loss(
    objective: str, logp, old_logp, ref_logp, sids, rewards, valid, *, grpo_weight: float = 1.0,
    sibling_weight: float = 1.0, kl_coef: float = 1e-3, clip_eps: float = 0.2, eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of ``objective`` ("grpo", "sibling" or "joint") plus kl_coef * KL to the reference.

    joint = grpo_weight * (-J_GRPO) + sibling_weight * (-J_sib) (Sec. 4.4). Returns the loss and its
    parts (floats, for logging).
    """
    parts: dict[str, torch.Tensor] = {}
    if objective in ("grpo", "joint"):
        parts["grpo"] = grpo_loss(logp, old_logp, rewards, valid, clip_eps, eps)
    if objective in ("sibling", "joint"):
        parts["sibling"] = sibling_loss(logp, old_logp, sids, rewards, valid, clip_eps, eps)
    if not parts:
        raise ValueError(f"objective = {objective!r} is invalid: expected grpo, sibling or joint")
    weights = {"grpo": grpo_weight if objective == "joint" else 1.0,
               "sibling": sibling_weight if objective == "joint" else 1.0}
    loss = sum(weights[k] * v for k, v in parts.items())
    if kl_coef > 0:
        parts["kl"] = kl_penalty(logp, ref_logp, valid)
        loss = loss + kl_coef * parts["kl"]
    return loss, {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
