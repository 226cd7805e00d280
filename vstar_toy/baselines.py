"""Non-generative baselines on the same split: what a trained policy should at least beat.

Each baseline ranks the whole catalog for every query and returns its top K items; the table scores them
with the same HR@K / NDCG@K as the decoders (``metrics.py``), on the same test users:

================  =========================================================================================
baseline          the ranking
================  =========================================================================================
popular           items by how often they are a training pair's next item (``World.train_targets``)
content-NN        items by the cosine of their embedding to the latest history item's (``Catalog.embeddings``,
                  the title encoder on real data: ``World.embedding``)
transitions       items by how often they followed the query's latest history item in the training pairs
                  (item-to-item counts of last history item -> next item), ties and unseen items by
                  popularity
SASRec, GRU4Rec   the sequential recommenders of the paper's Table 1 (``seqrec.py``), trained on the same
                  training windows as the SFT policy, ranking the whole catalog
SFT, beam search  the tiny SFT policy decoded by beam search at the 1x budget, |C| = K (``evaluate``)
================  =========================================================================================

The baselines never recommend an item already in the query's history (a recommender would not, and
MiniOneRec's next items are new to the user); ties are broken by item id. Intervals are over users: on real
data one user has several rows (sliding windows), so they resample users (``metrics.cluster_ci``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from . import seqrec
from .metrics import cluster_ci, hit_rate, ndcg
from .ranking import top_k
from .world import Queries, World

KS = (3, 5, 10)


def _rank(queries: Queries, scores, k: int, chunk: int = 512) -> np.ndarray:
    """(B, k): ``scores(histories)`` -> (b, N) for chunks of queries, each chunk's top k."""
    h = queries.histories
    return np.concatenate([top_k(scores(h[s : s + chunk]), h[s : s + chunk], k) for s in range(0, len(h), chunk)])


def popularity(world: World) -> np.ndarray:
    """(N,) how often each item is a training pair's next item."""
    t = world.train_targets.reshape(-1)
    return np.bincount(t[t >= 0], minlength=world.catalog.n_items).astype(np.float64)


def latest_items(histories: np.ndarray) -> np.ndarray:
    """(B,) the latest item of each left-padded history (its last column); -1 for an empty one."""
    return histories[:, -1]


def most_popular(world: World, queries: Queries, k: int = 10) -> np.ndarray:
    """(B, k) the most popular items the user has not seen."""
    pop = popularity(world)
    return _rank(queries, lambda h: np.broadcast_to(pop, (len(h), len(pop))), k)


def content_nn(world: World, queries: Queries, k: int = 10) -> np.ndarray:
    """(B, k) the items whose embedding is closest (cosine) to the latest history item's."""
    emb = world.catalog.embeddings.astype(np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def scores(h):
        last = latest_items(h)
        return np.where(last[:, None] >= 0, emb[np.maximum(last, 0)] @ emb.T, 0.0)

    return _rank(queries, scores, k)


def transition_counts(world: World) -> sparse.csr_matrix:
    """(N, N) sparse counts of (latest history item -> next item) over the training pairs."""
    n = world.catalog.n_items
    last = np.repeat(latest_items(world.train_histories), world.train_targets.shape[1])
    nxt = world.train_targets.reshape(-1)
    ok = (last >= 0) & (nxt >= 0)
    return sparse.csr_matrix((np.ones(int(ok.sum())), (last[ok], nxt[ok])), shape=(n, n))  # duplicates add up


def transitions(world: World, queries: Queries, k: int = 10) -> np.ndarray:
    """(B, k) the items that most often followed the latest history item; ties and the rest by popularity
    (scaled below one count, so that a single observed transition outranks any popularity)."""
    counts = transition_counts(world)
    pop = popularity(world)
    prior = pop / (pop.max() + 1.0)

    def scores(h):
        last = latest_items(h)
        followed = counts[np.maximum(last, 0)].toarray()
        return np.where(last[:, None] >= 0, followed, 0.0) + prior

    return _rank(queries, scores, k)


RANKERS = {"popular": most_popular, "content-NN (latest item)": content_nn, "transitions (latest item)": transitions,
           "SASRec": seqrec.ranker("sasrec"), "GRU4Rec": seqrec.ranker("gru4rec")}


def baselines_table(world: World, queries: Queries, policy=None, decode_cfg=None,
                    progress: bool = False) -> pd.DataFrame:
    """One row per baseline (and the SFT policy by beam search when ``policy`` is given): HR@K and
    NDCG@K for K in 3, 5, 10, each the mean over ``queries`` with its 95% interval over users (the cluster
    bootstrap over ``World.people``); with a policy, also the SFT policy's HR@10 and NDCG@10 minus the
    baseline's, paired by query. ``progress``: a bar over the baselines (SASRec and GRU4Rec train for minutes
    on real data)."""
    ranked = {name: fn(world, queries, max(KS)) for name, fn in tqdm(RANKERS.items(), desc="baselines",
                                                                     disable=not progress)}
    sft = "SFT policy, beam search"
    if policy is not None:
        from .evaluate import evaluate

        n = min(max(KS), world.catalog.n_items)
        _, sets = evaluate(world, policy, queries, decode_cfg.beam_at_1x(n))
        ranked[sft] = np.concatenate([c.items.numpy() for c in sets])
    # per user, once per ranking: hit and NDCG at each K
    per_user = {name: {(metric, k): fn(items, queries.targets, k) for k in KS
                       for metric, fn in (("hr", hit_rate), ("ndcg", ndcg))} for name, items in ranked.items()}
    people = world.people_of(queries.users)
    rows = []
    for name, scores in per_user.items():
        row = {"baseline": name}
        for k in KS:
            for metric in ("hr", "ndcg"):
                mean, low, high = cluster_ci(scores[metric, k], people)
                row |= {f"{metric}@{k}": mean, f"{metric}@{k}_low": low, f"{metric}@{k}_high": high}
        if sft in per_user:  # the SFT policy minus this baseline, paired by user
            for metric in ("hr", "ndcg"):
                mean, low, high = cluster_ci(per_user[sft][metric, 10] - scores[metric, 10], people)
                row |= {f"SFT - it, {metric}@10": mean, f"SFT - it, {metric}@10_low": low,
                        f"SFT - it, {metric}@10_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["RANKERS", "baselines_table", "content_nn", "most_popular", "popularity", "transition_counts", "transitions"]
