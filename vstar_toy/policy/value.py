"""The prefix value V_phi(s_l) and its TD training (Sec. 4.1, Eq. 5-9).

V_phi is a light head on the policy backbone: a projection, one transformer block over the hidden
states of the decoding state s_l = (x, y_<=l) -- the prompt x's and the prefix's [start, y_1 .. y_l]
-- and an MLP regressor read at position l. It reads the backbone's hidden states *detached*: the
value loss trains the head only, never the policy. (Reading the prompt too matters in the toy: a
backbone trained on popularity-heavy logs keeps little of the user's taste at the start token.)

Targets are one-step TD (Eq. 9) on the dense semantic step returns of Eq. 8
(``world.rewards.step_returns``), with prefix buckets taken from the sampled candidate set (Eq. 6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import ValueConfig
from ..decoding.sampling import sample
from ..metrics import prefix_spearman
from ..world.rewards import rewards, step_returns
from .base import SIDPolicy, State
from .tiny import Block


class ValueHead(nn.Module):
    """V_phi(x, y_<=l): prefix hidden states (N, L+1, d), depths l (N,), and the prompt's hidden
    states (N, T, d) with their mask (N, T) -> (N,) values."""

    def __init__(self, d_backbone: int, levels: int, k_max: int, cfg: ValueConfig | None = None):
        super().__init__()
        cfg = cfg or ValueConfig()
        self.cfg = cfg
        self.levels, self.k_max = levels, k_max
        torch.manual_seed(cfg.seed)
        d = cfg.hidden
        self.proj = nn.Linear(d_backbone, d)
        self.code = nn.Embedding(levels * k_max, d)  # the head's own embedding of (level, code)
        self.pos = nn.Embedding(levels + 2, d)  # 0: a prompt position; 1 + l: prefix position l
        self.block = Block(d, 4 if d % 4 == 0 else 1, 0.0)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        # a two-tower term: <item(z), user(mean prompt)>, the user-item interaction an MLP finds slowly
        self.user = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self.item = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
        self._ctx = None  # (context, its projected keys): of_states reuses them within one decode

    def context_kv(self, ctx_hidden: torch.Tensor, ctx_mask: torch.Tensor):
        """The prompt's keys and values (B, h, T, dh) and mask (B, T), computed once per prompt: prompt
        positions attend only to the prompt, and only prefix positions are read out."""
        x = self.proj(ctx_hidden.detach().float()) + self.pos.weight[0]
        _, k, v = self.block.heads(x)
        m = ctx_mask[..., None].float()
        user = self.user((x * m).sum(1) / m.sum(1).clamp_min(1.0))  # (B, d)
        return k, v, ctx_mask, user

    @classmethod
    def for_policy(cls, policy: SIDPolicy, cfg: ValueConfig | None = None) -> ValueHead:
        return cls(policy.hidden_size, policy.levels, policy.k_max, cfg).to(policy.device)

    def values(self, hidden: torch.Tensor, tokens: torch.Tensor, ctx_kv, query: torch.Tensor,
               depth: torch.Tensor | None = None):
        """V at prefix positions: hidden (N, P, d) of [start, y_1 ..], the prefix codes (N, L) (-1
        beyond the prefix), prompt ``query`` (N,) of each row into ``ctx_kv``. Position j sees the
        prompt and prefix positions <= j. Returns (N, P), or (N,) read at ``depth`` only (then only
        that position's output is computed)."""
        k_c, v_c, m_c, user = ctx_kv
        n, p, _ = hidden.shape
        lv = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.proj(hidden.detach().float()) + self.pos.weight[1 : p + 1]
        x = x + F.pad(torch.where(tokens[..., None] >= 0, self.code(lv * self.k_max + tokens.clamp_min(0)), 0.0),
                      (0, 0, 1, p - 1 - tokens.shape[1]))
        q, k, v = self.block.heads(x)
        keys, vals = torch.cat([k_c[query], k], 2), torch.cat([v_c[query], v], 2)
        causal = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()
        if depth is None:
            mask = torch.cat([m_c[query][:, None, :].expand(n, p, -1), causal[None].expand(n, -1, -1)], -1)
            att = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask[:, None])
            return self._readout(self.block.finish(x, att), user[query][:, None])
        rows = torch.arange(n, device=x.device)
        mask = torch.cat([m_c[query], causal[depth]], -1)[:, None, None, :]  # (N, 1, 1, T + P)
        q1 = q[rows, :, depth][:, :, None]  # (N, h, 1, dh)
        att = F.scaled_dot_product_attention(q1, keys, vals, attn_mask=mask)
        return self._readout(self.block.finish(x[rows, depth][:, None], att), user[query][:, None]).squeeze(-1)

    def _readout(self, z: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(N, P, d) block outputs and (N, 1, d) user vectors -> (N, P) values."""
        two_tower = (self.item(z) * user).sum(-1) / z.shape[-1] ** 0.5
        return self.mlp(z).squeeze(-1) + two_tower

    def forward(self, hidden, tokens, depth, ctx_hidden, ctx_mask) -> torch.Tensor:
        """V of rows with their own prompts: hidden (N, L+1, d), prefix codes (N, L), depth (N,),
        prompts (N, T, d) with mask (N, T)."""
        rows = torch.arange(len(hidden), device=hidden.device)
        return self.values(hidden, tokens, self.context_kv(ctx_hidden, ctx_mask), rows, depth)

    def of_states(self, states: State, context) -> torch.Tensor:
        """V of decoding states (what VED evaluates when it adds a node); ``context`` is the
        policy's encoded prompts (``policy.context``), whose keys are projected once and reused."""
        if self._ctx is None or self._ctx[0] is not context:
            self._ctx = (context, self.context_kv(context.hidden, context.mask))
        return self.values(states.hidden, states.tokens, self._ctx[1], states.query, states.depth)


def td_targets(step_rewards: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step TD targets of Eq. 9 along each candidate's path.

    Args:
        step_rewards: (..., L) r_l for l = 1 .. L.
        next_values: (..., L) V_phi(s_{l+1}) for l = 1 .. L (the last column is ignored).
        gamma: discount in (0, 1].

    Returns:
        (..., L): r_l + gamma * V(s_{l+1}) for l < L, and r_L at l = L. No gradient flows through
        the bootstrap.

    >>> td_targets(torch.tensor([0.3, 0.5, 1.0]), torch.tensor([2.0, 4.0, 9.0]), 0.5).tolist()
    [1.3, 2.5, 1.0]
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


def candidate_values(policy: SIDPolicy, head: ValueHead, histories, sids: torch.Tensor) -> torch.Tensor:
    """V_phi of every candidate's prefixes y_<=1 .. y_<=L: (B, C, L). The backbone runs without
    gradients (the head reads detached states)."""
    b, c, L = sids.shape
    with torch.no_grad():
        hidden, ctx = policy.candidate_hidden(histories, sids, with_last=True)  # (B, C, L+1, d)
    sids = sids.to(hidden.device)
    query = torch.arange(b, device=hidden.device).repeat_interleave(c)
    vals = head.values(hidden.reshape(b * c, L + 1, -1), sids.reshape(b * c, L), head.context_kv(ctx.hidden, ctx.mask),
                       query)
    return vals[:, 1:].reshape(b, c, L)


def td_update(policy, head, opt, world, queries, cands, cfg: ValueConfig) -> float:
    """One TD step (Eq. 9) on decoded candidate sets; returns the loss."""
    emb = torch.as_tensor(world.catalog.embeddings)
    items = cands.items.clamp_min(0)
    r_step = step_returns(cands.sids.clamp_min(0), emb[items], torch.as_tensor(world.catalog.sids[queries.targets]),
                          emb[torch.as_tensor(queries.targets)], cfg.step_weights, cands.valid)
    values = candidate_values(policy, head, queries.histories, cands.sids.clamp_min(0))
    r_step, valid = r_step.to(values.device), cands.valid.to(values.device)
    loss = value_loss(values, td_targets(r_step, values, cfg.gamma), valid)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def value_spearman(policy, head, world, queries, n_candidates: int = 32, reward_kind: str | None = None,
                   seed: int = 0) -> dict[str, list[float]]:
    """Fig. 3's protocol: temperature-1.5 candidates; per level, Spearman rho against the prefix
    reward (bucket mean of R) of V_phi(prefix) and of log pi(prefix). Averaged over queries.
    ``head`` None gives NaN for V."""
    kind = reward_kind or ("affinity" if world.tastes is not None else "semantic")
    with torch.no_grad():
        cands = sample(policy, queries.histories, n_candidates, temperature=1.5, seed=seed)
        r = rewards(world, kind, queries.users, queries.targets, cands.items.numpy())
    logp_prefix = cands.token_logp.cumsum(-1)
    valid = cands.valid.numpy()
    rho_p = prefix_spearman(cands.sids.numpy(), logp_prefix.numpy(), r, valid)
    if head is None:
        return {"value": [float("nan")] * policy.levels, "logp": np.nanmean(rho_p, 0).tolist()}
    with torch.no_grad():
        v = candidate_values(policy, head, queries.histories, cands.sids.clamp_min(0))
    rho_v = prefix_spearman(cands.sids.numpy(), v.float().cpu().numpy(), r, valid)
    return {"value": np.nanmean(rho_v, 0).tolist(), "logp": np.nanmean(rho_p, 0).tolist()}


def pretrain_value(policy, world, cfg: ValueConfig, head: ValueHead | None = None, progress: bool = True):
    """Train V_phi on SFT-policy candidates before RL (``vstar-toy value``). Returns (head, losses)."""
    head = head or ValueHead.for_policy(policy, cfg)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    losses = []
    bar = tqdm(range(cfg.pretrain_steps), desc="value TD", disable=not progress)
    for step in bar:
        queries = world.queries("train", n=cfg.pretrain_queries, seed=cfg.seed * 100_003 + step)
        with torch.no_grad():
            cands = sample(policy, queries.histories, cfg.pretrain_candidates, temperature=1.5, seed=step)
        losses.append(td_update(policy, head, opt, world, queries, cands, cfg))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return head, losses


__all__ = ["ValueHead", "td_targets", "value_loss", "candidate_values", "td_update", "value_spearman",
           "pretrain_value", "rewards"]
