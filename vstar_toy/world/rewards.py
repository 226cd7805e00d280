"""Rewards R(x, y) of candidate sets, and the dense semantic step returns of Eq. 8.

All functions take candidate item ids ``items: (B, C)`` (-1 = padding, reward 0) for a batch of
queries and return tensors with the same leading shape.

=============  =================================================================================
kind           R(x, y)
=============  =================================================================================
hit            1 if y = y* else 0 (the sparse exact match)
semantic       cos(e(y), e(y*)): the item's similarity to the ground truth (Sec. 4.1)
affinity       a(u, y) = cos(u, e(y)), the world's true reward (synthetic worlds only: an oracle)
minionerec     hit, else a rank penalty -(1/log2(rank+2)) / sum_j 1/log2(j+2), rank by the
               policy's log-probability within the candidate set (MiniOneRec's rule + ranking)
=============  =================================================================================
"""

from __future__ import annotations

import numpy as np
import torch

from ..prefix import bucket_mean
from .world import World


def rewards(
    world: World,
    kind: str,
    users: np.ndarray,
    targets: np.ndarray,
    items: np.ndarray,
    logp: np.ndarray | None = None,
) -> np.ndarray:
    """R(x, y) for candidate ``items`` (B, C) of queries (users, targets); 0 at padding (-1)."""
    items = np.asarray(items)
    valid = items >= 0
    safe = np.where(valid, items, 0)
    targets = np.asarray(targets)
    hit = (safe == targets[:, None]) & valid
    if kind == "hit":
        r = hit.astype(np.float64)
    elif kind == "semantic":
        emb = world.catalog.embeddings
        r = np.einsum("bcd,bd->bc", emb[safe], emb[targets]).astype(np.float64)
    elif kind == "affinity":
        r = world.affinity(users, safe).astype(np.float64)
    elif kind == "minionerec":
        if logp is None:
            raise ValueError("the minionerec reward ranks candidates by log-probability: pass logp")
        lp = np.where(valid, logp, -np.inf)
        rank = np.argsort(np.argsort(-lp, axis=1, kind="stable"), axis=1)  # 0 = most likely
        disc = 1.0 / np.log2(rank + 2.0)
        norm = (disc * valid).sum(1, keepdims=True).clip(1e-12)
        r = np.where(hit, 1.0, -disc / norm)
    else:
        raise ValueError(f"reward kind = {kind!r} is invalid: expected hit, semantic, affinity or minionerec")
    return np.where(valid, r, 0.0)


def step_returns(
    sids: torch.Tensor,
    item_emb: torch.Tensor,
    target_sids: torch.Tensor,
    target_emb: torch.Tensor,
    weights: tuple[float, ...],
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense semantic step returns r_l of Eq. 8 for every candidate prefix.

    Args:
        sids: (B, C, L) candidate SIDs; item_emb: (B, C, D) their embeddings e(i).
        target_sids: (B, L) y*; target_emb: (B, D) e(y*).
        weights: w_l, one per level, positive and non-decreasing.
        valid: optional (B, C) bool; padding candidates join no bucket and get 0.

    Returns:
        (B, C, L): r_l of candidate i's prefix y_<=l.

    >>> s = torch.tensor([[[0, 0], [0, 1]]]); e = torch.eye(2)[None]
    >>> step_returns(s, e, torch.tensor([[0, 0]]), torch.eye(2)[:1], (0.5, 1.0)).tolist()
    [[[0.5, 1.0], [0.5, -1.0]]]
    """
    b, c, L = sids.shape
    if len(weights) != L:
        raise ValueError(f"step weights {weights} have {len(weights)} levels, SIDs have {L}")
    unit_t = torch.nn.functional.normalize(target_emb.float(), dim=-1)
    out = torch.zeros(b, c, L)
    for lvl in range(1, L + 1):
        # Eq. 6-7: prefix embedding = mean embedding over the sampled bucket sharing y_<=l
        e_bar = bucket_mean(sids, item_emb.float(), lvl, valid)
        cos = torch.einsum("bcd,bd->bc", torch.nn.functional.normalize(e_bar, dim=-1), unit_t)
        on_path = (sids[..., :lvl] == target_sids[:, None, :lvl]).all(-1)
        w = weights[lvl - 1]
        # Eq. 8: r_l = w_l on the ground-truth path, else -w_l (1 - cos(e_bar, e(y*)))
        out[..., lvl - 1] = torch.where(on_path, torch.full_like(cos, w), -w * (1.0 - cos))
    if valid is not None:
        out = out * valid[..., None]
    return out
