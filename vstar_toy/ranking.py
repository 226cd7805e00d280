"""Ranking a whole catalog by scores, as every non-generative recommender here does (``baselines.py``,
``seqrec.py``): an item already in the query's history is never recommended (a recommender would not, and
MiniOneRec's next items are new to the user), and ties are broken by item id."""

from __future__ import annotations

import numpy as np


def unseen_scores(scores: np.ndarray, histories: np.ndarray) -> np.ndarray:
    """A float64 copy of ``scores`` (B, N) with each row's history items (B, H; -1 padding) at -inf."""
    scores = scores.astype(np.float64).copy()
    rows = np.repeat(np.arange(len(scores)), histories.shape[1])
    seen = histories.reshape(-1)
    scores[rows[seen >= 0], seen[seen >= 0]] = -np.inf
    return scores


def top_k(scores: np.ndarray, histories: np.ndarray, k: int) -> np.ndarray:
    """(B, k) item ids of the highest ``scores`` (B, N), history items excluded, ties by item id."""
    order = np.argsort(-unseen_scores(scores, histories), axis=1, kind="stable")  # stable: ties keep id order
    return order[:, :k]
