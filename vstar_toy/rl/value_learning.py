"""Learning V_phi by one-step temporal differences (Sec. 4.1, Eq. 6-9).

Targets are one-step TD (Eq. 9) on the dense semantic step returns of Eq. 8
(``world.rewards.step_returns``), with prefix buckets taken from the sampled candidate set (Eq. 6).
Before RL the head is pre-trained on temperature-1.5 samples of the SFT policy
(``pretrain_value``); during RL, ``td_update`` runs on each step's decoded candidates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..config import ValueConfig
from ..decoding.sampling import sample
from ..policy.value import ValueHead
from ..world.rewards import step_returns


def td_targets(step_rewards: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step TD targets of Eq. 9 along each candidate's path.

    Args:
        step_rewards: (..., L) r_l for l = 1 .. L.
        next_values: (..., L) V_phi(s_{l+1}) for l = 1 .. L (the last column is ignored).
        gamma: discount in (0, 1].

    Returns:
        (..., L): r_l + gamma * V(s_{l+1}) for l < L, and r_L at l = L. No gradient flows through
        the bootstrap.

    >>> td_targets(torch.tensor([0.3, 0.5, 1.0]), torch.tensor([2.0, 4.0, 9.0]), 0.5)  # 0.3 + 0.5 * 4, ...
    tensor([2.3000, 5.0000, 1.0000])
    """
    boot = torch.zeros_like(step_rewards)
    boot[..., :-1] = gamma * next_values[..., 1:].detach()
    return step_rewards + boot  # Eq. 9


def value_loss(values: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_V = E[(V(s_l) - y~_l)^2] over valid candidates and levels (Eq. 9)."""
    err = (values - targets.detach()) ** 2
    if valid is None:
        return err.mean()
    w = valid[..., None].expand_as(err).float()
    return (err * w).sum() / w.sum().clamp_min(1.0)


def td_update(policy, head: ValueHead, opt, world, queries, cands, cfg: ValueConfig, context=None) -> float:
    """One TD step (Eq. 9) on decoded candidate sets; returns the loss. ``context``: the policy's
    encoding of ``queries.histories`` (``SIDPolicy.encode``), if the caller has it."""
    emb = torch.as_tensor(world.catalog.embeddings)
    items = cands.items.clamp_min(0)
    r_step = step_returns(cands.sids.clamp_min(0), emb[items], torch.as_tensor(world.catalog.sids[queries.targets]),
                          emb[torch.as_tensor(queries.targets)], cfg.step_weights, cands.valid)
    values = head.of_candidates(policy, queries, cands.sids, context)
    r_step, valid = r_step.to(values.device), cands.valid.to(values.device)
    loss = value_loss(values, td_targets(r_step, values, cfg.gamma), valid)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def pretrain_value(policy, world, cfg: ValueConfig, head: ValueHead | None = None, progress: bool = True,
                   state: dict | None = None, on_checkpoint: Callable[[dict], None] | None = None,
                   checkpoint_every: int = 25):
    """Train V_phi on SFT-policy candidates before RL (``vstar-toy value``). Returns (head, losses).

    ``state`` (from an earlier ``on_checkpoint``) resumes an interrupted pre-training where it stopped:
    step ``s`` always trains on the same users and samples, so a resumed run equals an uninterrupted
    one. ``on_checkpoint(state)`` is called every ``checkpoint_every`` steps with what resuming needs
    (plain tensors and numbers: the head's and the optimiser's state, the losses, the step)."""
    head = head or ValueHead.for_policy(policy, cfg)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    losses: list[float] = []
    start = 0
    if state is not None:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        losses, start = list(state["losses"]), int(state["step"])
    bar = tqdm(range(start, cfg.pretrain_steps), desc="value TD", disable=not progress, initial=start,
               total=cfg.pretrain_steps)
    for step in bar:
        queries = world.queries("train", n=cfg.pretrain_queries, seed=cfg.seed * 100_003 + step)
        with torch.no_grad():
            context = policy.encode(queries.histories)  # one prefill for the samples and V's inputs
            cands = sample(policy, context, cfg.pretrain_candidates, temperature=1.5, seed=step)
        losses.append(td_update(policy, head, opt, world, queries, cands, cfg, context))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if on_checkpoint is not None and done % checkpoint_every == 0 and done < cfg.pretrain_steps:
            on_checkpoint({"head": head.state_dict(), "opt": opt.state_dict(), "losses": losses, "step": done})
    return head, losses


__all__ = ["td_targets", "value_loss", "td_update", "pretrain_value"]
