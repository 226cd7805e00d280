"""Users: latent tastes, popularity (exposure bias), logged histories and ground-truth next items.

The world's two distributions over items, for a user with taste u (docs/design.md, section 3):

- truth:   a(u, i) = cos(u, e(i));   y* ~ softmax(a(u, .) / tau)
- logs:    log P_log(i | u) = (1 - m) * a(u, i) / tau + m * log pop(i) + const

A user's history (the context x) holds items drawn from the truth: what the user chose to engage
with, so the context always carries the taste. The *logged next items* that SFT learns to predict
from that history are drawn from P_log: what the old, popularity-driven system exposed and got
clicked. Rewards and hits are measured against the truth. The knob m (``mismatch``) moves the logs
from the truth (m = 0, SFT's likelihood is the reward) to popularity (m = 1). Putting the bias on
the logged targets and not on the history keeps the taste recoverable from the context at every m,
so that RL and a value model have something to recover.
"""

from __future__ import annotations

import numpy as np

from ..config import WorldConfig

SPLITS = {"train": 0, "valid": 1, "test": 2}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def hierarchical_embeddings(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, D) unit item embeddings from a two-level Gaussian mixture (clusters inside clusters)."""
    centres = unit(rng.normal(size=(cfg.n_clusters, cfg.embed_dim)))
    shape = (cfg.n_clusters, cfg.n_subclusters, cfg.embed_dim)
    subs = unit(centres[:, None] + cfg.cluster_spread * rng.normal(size=shape))
    c = rng.integers(cfg.n_clusters, size=cfg.n_items)
    s = rng.integers(cfg.n_subclusters, size=cfg.n_items)
    return unit(subs[c, s] + cfg.item_spread * rng.normal(size=(cfg.n_items, cfg.embed_dim))).astype(np.float32)


def zipf_popularity(level1: np.ndarray, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) log-popularity: Zipf over level-1 branches times Zipf over items within each branch.

    Ranks are random permutations, independent of any user's taste: popularity is exposure, not merit.
    """
    n = len(level1)
    codes = np.unique(level1)
    branch_rank = np.empty(codes.max() + 1)
    branch_rank[codes] = rng.permutation(len(codes)) + 1
    log_pop = -exponent * np.log(branch_rank[level1])
    item_rank = np.empty(n)
    for c in codes:
        members = np.flatnonzero(level1 == c)
        item_rank[members] = rng.permutation(len(members)) + 1
    log_pop = log_pop - exponent * np.log(item_rank)
    return log_pop - np.logaddexp.reduce(log_pop)


def user_tastes(cfg: WorldConfig, emb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(U, D) unit tastes: each near a random item, so tastes live where items are."""
    anchor = emb[rng.integers(len(emb), size=cfg.n_users)]
    return unit(anchor + cfg.taste_noise * rng.normal(size=(cfg.n_users, emb.shape[1]))).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def true_logits(tastes: np.ndarray, emb: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """(U, N) a(u, i) / tau: the logits of the ground-truth next item."""
    return (tastes @ emb.T) / cfg.temperature


def logged_logprobs(tastes: np.ndarray, emb: np.ndarray, log_pop: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """(U, N) log P_log(i | u) = log_softmax((1 - m) a / tau + m log pop): the exposure-biased logs."""
    m = cfg.mismatch
    return log_softmax((1 - m) * true_logits(tastes, emb, cfg) + m * log_pop[None, :])


def gumbel_top_k(logp: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(U, k) distinct items per row drawn without replacement from exp(logp), in random order."""
    top = np.argpartition(_perturbed(logp, rng, negate=True), k - 1, axis=1)[:, :k]
    return rng.permuted(top, axis=1)


def sample_rows(logp: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(U, k) items per row drawn with replacement from exp(logp) (Gumbel-max, one draw per column)."""
    return np.stack([_perturbed(logp, rng).argmax(1) for _ in range(k)], 1)


def _perturbed(logp: np.ndarray, rng: np.random.Generator, negate: bool = False) -> np.ndarray:
    """logp + Gumbel noise, -log(-log(u)) with u ~ U(1e-12, 1) (negated if ``negate``), computed in one
    buffer: the same numbers as the expression, without its four (U, N) temporaries."""
    g = rng.uniform(1e-12, 1.0, size=logp.shape)
    np.log(g, out=g)
    np.negative(g, out=g)
    np.log(g, out=g)  # log(-log(u)) = -Gumbel
    return np.subtract(g, logp, out=g) if negate else np.subtract(logp, g, out=g)


def split_users(n_users: int, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(U,) 0 = train, 1 = valid, 2 = test, by user."""
    perm = rng.permutation(n_users)
    n_test = max(1, int(round(cfg.test_frac * n_users)))
    n_val = int(round(cfg.val_frac * n_users))
    split = np.zeros(n_users, dtype=np.int64)
    split[perm[:n_test]] = SPLITS["test"]
    split[perm[n_test : n_test + n_val]] = SPLITS["valid"]
    return split
