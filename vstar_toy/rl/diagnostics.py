"""What a training step and an evaluation measure beside the loss (``train.py``'s log rows; README, "Training
diagnostics"): the learning signal in a step's candidate sets (``diagnostics``), the probability an update
moves onto marked codes and along the user's best item's path (``mass_shift``, ``deep_shift``), and the
validation measures every ``eval_every`` steps (``evaluate_policy``). Pure reads: nothing here changes a
policy or draws a random number."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import Config
from ..evaluate import evaluate, scorers, value_quality
from ..world import World
from . import columns
from .advantages import reward_range, sibling_contrast, sibling_signal_share


def best_item(world: World, q) -> np.ndarray:
    """(B,) the user's best item: by true affinity in a synthetic world; on real data (no tastes) the
    logged next item, the one the semantic reward rates highest."""
    return world.affinity(q.users).argmax(1) if world.tastes is not None else np.asarray(q.targets)


def deep_shift(before: torch.Tensor, after: torch.Tensor, name: str) -> dict[str, float]:
    """The mass one update moved below level 1 along a marked path y* (the user's best item): for each
    level l >= 2, ``p_NAME_l{l}`` = pi(y*_l | x, y*_<l) before the update and ``dp_NAME_l{l}`` its change,
    means over queries. ``before``/``after``: (B, L) log pi(y*_l | x, y*_<l). (Level 1 is ``mass_shift``'s.)"""
    p0, p1 = before.exp(), after.exp()
    out = {}
    for lvl in range(1, before.shape[1]):
        out[columns.mass(name, lvl + 1)] = float(p0[:, lvl].mean())
        out[columns.moved(name, lvl + 1)] = float((p1[:, lvl] - p0[:, lvl]).mean())
    return out


def mass_shift(before: torch.Tensor, after: torch.Tensor, codes: torch.Tensor, adv: torch.Tensor,
               valid: torch.Tensor, marked: dict[str, torch.Tensor]) -> dict[str, float]:
    """The squeezing diagnostics of one update, for each marked level-1 code c(x) (B,) (the SFT
    policy's top code, the user's best code): ``p_NAME``, pi(c | x) before the update; ``dp_NAME``, how
    much probability the update moved onto it; ``adv_NAME``, the signed advantage mass of the group on
    that branch, sum of A over the candidates whose first code is c, divided by |C(x)| (GRPO's
    advantages sum to 0 over the group, not over a branch: this is the push that survives the mean).
    Means over queries. ``before``/``after``: (B, K_1) level-1 log-probs; ``codes``: (B, C) first codes."""
    out = {}
    n = valid.sum(1).clamp_min(1).to(adv.dtype)
    for name, c in marked.items():
        p0 = before.gather(1, c[:, None]).exp().squeeze(1)
        p1 = after.gather(1, c[:, None]).exp().squeeze(1)
        on = (codes == c[:, None]) & valid
        out[columns.mass(name)] = float(p0.mean())
        out[columns.moved(name)] = float((p1 - p0).mean())
        out[columns.pushed(name)] = float((torch.where(on, adv, 0.0).sum(1) / n).mean())
    return out


def diagnostics(cands, r: torch.Tensor, r_true: np.ndarray, targets: np.ndarray, cfg: Config) -> dict:
    """What one step's candidate sets say about the learning signal (train's log row):

    ``reward`` / ``reward_std``: mean of the learner's reward and its mean within-group std;
    ``zero_var_share``: share of queries (GRPO groups) whose candidates all got the same reward (no
    gradient from Eq. 2); ``sibling_signal_share``: share of sibling groups (parents, any depth) whose
    child nodes differ in score (a non-zero term in Eq. 19); ``adv_spread_global`` / ``_sibling``:
    within-parent spread of node advantages under GRPO's and Sibling-GRPO's normalisation;
    ``true_reward`` / ``max_true_reward`` / ``hit``: the truth about the candidates; ``entropy_l1``..:
    the policy's mean entropy at the decoded prefixes of each depth (the distribution over level l's
    codes); ``expansion_tokens``: VED's value-guided spend."""
    rl, valid = cfg.rl, cands.valid
    vmask = valid.numpy()
    sids = cands.sids.clamp_min(0)
    rng = reward_range(r, valid)
    contrast = sibling_contrast(sids, r, rl.adv_eps, valid, rl.adv_ddof)
    std = torch.stack([r[b][valid[b]].std(correction=rl.adv_ddof) if valid[b].sum() > rl.adv_ddof
                       else torch.tensor(0.0) for b in range(len(r))])
    tree = cands.tree
    out = {
        columns.REWARD: float(r[valid].mean()),
        columns.REWARD_STD: float(std.mean()),
        columns.ZERO_VAR_SHARE: float((rng[valid.any(1)] == 0).float().mean()),
        columns.SIBLING_SIGNAL_SHARE: float(torch.nanmean(sibling_signal_share(sids, r, valid))),
        columns.TRUE_REWARD: float(np.nanmean(np.where(vmask, r_true, np.nan))),
        columns.MAX_TRUE_REWARD: float(np.nanmean(np.nanmax(np.where(vmask, r_true, np.nan), 1))),
        columns.HIT: float((cands.items.numpy() == targets[:, None]).any(1).mean()),
        columns.ADV_SPREAD_GLOBAL: float(torch.nanmean(contrast["global"])),
        columns.ADV_SPREAD_SIBLING: float(torch.nanmean(contrast["sibling"])),
        columns.EXPANSION_TOKENS: float(np.mean(cands.expansion_tokens)),
    }
    for d in range(cands.sids.shape[-1]):
        at = (tree.depth == d) & tree.evaluated & ~np.isnan(tree.entropy)
        out[columns.entropy(d + 1)] = float(tree.entropy[at].mean()) if at.any() else math.nan
    return out


def evaluate_policy(world: World, policy, value_head, queries, eval_cfg, seed: int = 0, search=None) -> dict:
    """Validation HR@10 / NDCG@10 and the mean true reward of the candidates, by beam search; and per
    level the Spearman with the prefix reward (Fig. 3) of V_phi (``rho_value_l*``, NaN without a head),
    log pi, and (``evaluate.scorers``) the world's oracle and the no-learning cosine where it has them.
    ``search`` = (a DecodeConfig, its value): the same users decoded by it too, ``valid_ved_mean_reward``
    (NaN without one)."""
    m, _ = evaluate(world, policy, queries, eval_cfg)
    out = {columns.VALID_HR10: m["hr@10"], columns.VALID_NDCG10: m["ndcg@10"],
           columns.VALID_MEAN_REWARD: m["mean_reward"], columns.VALID_VED_MEAN_REWARD: math.nan}
    if search is not None:
        out[columns.VALID_VED_MEAN_REWARD] = evaluate(world, policy, queries, search[0], search[1])[0]["mean_reward"]
    rho = value_quality(world, policy, queries.take(slice(0, 128)), scorers(world, value_head), seed=seed)
    for lvl in range(world.catalog.levels):
        out[columns.rho("value", lvl + 1)] = rho["learned"][lvl] if value_head is not None else math.nan
        for name in ("logp", "oracle", "cosine"):
            if name in rho:
                out[columns.rho(name, lvl + 1)] = rho[name][lvl]
    return out
