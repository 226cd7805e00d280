"""Prefix arithmetic over candidate sets: who shares a prefix with whom (Eq. 6, 15).

Candidate sets are tensors of SIDs with a query dimension, ``sids: (B, C, L)``. Everything that
groups candidates by prefix (prefix buckets, Eq. 6-7; sibling groups, Eq. 15-17; the prefix
rewards of Sec. 5.5) starts from :func:`same_prefix`.
"""

from __future__ import annotations

import torch


def same_prefix(sids: torch.Tensor, level: int) -> torch.Tensor:
    """(B, C, C) bool: candidates i and j of one query share their first ``level`` tokens.

    ``level = 0`` is the empty prefix (all True).

    >>> s = torch.tensor([[[0, 1], [0, 2], [1, 1]]])
    >>> same_prefix(s, 1)[0].int().tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    b, c, _ = sids.shape
    if level == 0:
        return torch.ones(b, c, c, dtype=torch.bool, device=sids.device)
    p = sids[..., :level]
    return (p[:, :, None, :] == p[:, None, :, :]).all(-1)


def bucket_mean(sids: torch.Tensor, values: torch.Tensor, level: int, valid: torch.Tensor | None = None):
    """Mean of ``values`` over each candidate's prefix bucket C(x; y_<=l) (Eq. 6-7).

    Args:
        sids: (B, C, L) candidate SIDs.
        values: (B, C) or (B, C, D) per-candidate values (rewards, embeddings).
        level: prefix length l in [0, L].
        valid: optional (B, C) bool; invalid (padding) candidates join no bucket.

    Returns:
        Same shape as ``values``: entry i is the mean over the candidates sharing i's prefix.
    """
    same = same_prefix(sids, level).to(values.dtype)
    if valid is not None:
        same = same * valid[:, None, :].to(values.dtype)
    count = same.sum(-1).clamp_min(1.0)  # (B, C)
    if values.dim() == 2:
        return torch.einsum("bij,bj->bi", same, values) / count
    return torch.einsum("bij,bjd->bid", same, values) / count[..., None]
