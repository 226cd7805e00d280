"""The World: a catalog plus users, their logged histories and their ground truth.

``World.build(config)`` makes the synthetic world (docs/design.md, section 3). Real data (Amazon, in
MiniOneRec's format) builds the same type with ``tastes = None``: every decoder, loss and metric
only needs ``catalog``, ``histories``, ``targets`` and ``split``; the oracle quantities (true
affinity, the measured mismatch) need ``tastes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import WorldConfig
from . import users as U
from .catalog import Catalog, residual_kmeans, resolve_collisions


@dataclass(frozen=True)
class Queries:
    """A batch of recommendation queries x: who, what they did, what they will do next.

    users: (B,) user ids; histories: (B, H) item ids, left-padded with -1; targets: (B,) y*.
    """

    users: np.ndarray
    histories: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def take(self, idx) -> Queries:
        return Queries(self.users[idx], self.histories[idx], self.targets[idx])


@dataclass(frozen=True, eq=False)
class World:
    """Catalog + users. Attributes with a leading U are per user, N per item.

    Attributes:
        catalog: the items, their SIDs and the prefix trie.
        histories: (U, H) item ids, left-padded with -1: the context x of each user's query.
        targets: (U,) ground-truth next item y*.
        split: (U,) 0 train, 1 valid, 2 test.
        train_histories: (S, H) contexts of the supervised pairs SFT learns from (-1 left-padded).
        train_targets: (S, T) logged next items of each of those contexts (-1 padded).
        tastes: (U, D) latent tastes u, or None for real data.
        log_pop: (N,) log-popularity, or None for real data.
        config: the WorldConfig that built it, or None for real data.
        name: a short label ("synthetic(m=0.5, seed=0)", "amazon18-office").
        notes: what a reader must know about how it was built (e.g. the split protocol).
        embedding: what the item embeddings are (what the semantic reward, the value and the cosine
            read): the latent item vectors of a synthetic world, or a title encoder's (``world/text.py``).
        people: (U,) the person behind each query on real data, where one person has several rows (sliding
            windows of one history), or None (a synthetic world: one query per user). Intervals over users
            resample people, not rows (``metrics.cluster_ci``).
        valid_seen: True where the validation rows are among the training pairs (real data loaded for the model
            that is only tested: ``load_world(train_until="test")``). Nothing may be chosen on them then: SFT
            and the sequential recommenders run their configured epochs and keep the last, with the settings
            chosen on a world without them.
    """

    catalog: Catalog
    histories: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    train_histories: np.ndarray
    train_targets: np.ndarray
    tastes: np.ndarray | None = None
    log_pop: np.ndarray | None = None
    config: WorldConfig | None = None
    name: str = "world"
    collisions_resolved: int = 0
    notes: tuple[str, ...] = ()
    embedding: str = "the world's latent item vectors e(i) (hierarchical Gaussian mixture)"
    people: np.ndarray | None = None
    valid_seen: bool = False

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: WorldConfig | None = None) -> World:
        """The synthetic world of ``cfg``: same config, same world, bit for bit."""
        cfg = cfg or WorldConfig()
        rng = np.random.default_rng(cfg.seed)
        # 1. items: embeddings from a hierarchical mixture, SIDs from them by residual k-means
        emb = U.hierarchical_embeddings(cfg, rng)
        codes, books = residual_kmeans(emb, cfg.codebook_sizes, rng)
        codes, moved = resolve_collisions(codes, emb, books, cfg.codebook_sizes)
        catalog = Catalog.from_sids(codes, emb, cfg.codebook_sizes)
        # 2. exposure: Zipf popularity over level-1 branches and items
        log_pop = U.zipf_popularity(codes[:, 0], cfg.zipf_exponent, rng)
        # 3. users: tastes; histories and ground truth from the truth; logged next items biased by m
        tastes = U.user_tastes(cfg, emb, rng)
        truth = U.log_softmax(U.true_logits(tastes, emb, cfg))
        histories = U.gumbel_top_k(truth, cfg.history_len, rng)
        targets = U.sample_rows(truth, 1, rng)[:, 0]
        logged = U.sample_rows(U.logged_logprobs(tastes, emb, log_pop, cfg), cfg.logged_per_user, rng)
        split = U.split_users(cfg.n_users, cfg, rng)
        train = split == U.SPLITS["train"]
        return cls(
            catalog=catalog, histories=histories, targets=targets, split=split,
            train_histories=histories[train], train_targets=logged[train], tastes=tastes, log_pop=log_pop,
            config=cfg, name=f"synthetic(m={cfg.mismatch:g}, seed={cfg.seed})", collisions_resolved=moved,
        )

    def with_mismatch(self, mismatch: float) -> World:
        """This world with the logs' mismatch knob set to ``mismatch``: the same catalog, tastes,
        popularity and ground truth, another logging distribution P_log (``users.logged_logprobs``).

        Only P_log depends on m, and ``build`` draws everything else before it from the same seed, so
        no k-means is re-run; the histories and logged next items kept are this world's (the oracle
        quantities, ``logged_logprobs`` and ``spearman_exposure_reward``, read m from the config).
        ``tests/test_world.py`` checks that the measured mismatch equals ``build``'s at the same m."""
        self._need_truth()
        if not 0.0 <= mismatch <= 1.0:
            raise ValueError(f"mismatch = {mismatch} is invalid: expected a value in [0, 1]")
        cfg = dataclasses.replace(self.config, mismatch=float(mismatch))
        return dataclasses.replace(self, config=cfg, name=f"synthetic(m={cfg.mismatch:g}, seed={cfg.seed})")

    def mismatch_table(self, grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9)) -> pd.DataFrame:
        """Columns mismatch, level, spearman: ``spearman_exposure_reward`` of ``with_mismatch(m)`` for each
        m of ``grid`` (the curve of ``plots.mismatch_curve``)."""
        rows = [{"mismatch": m, "level": lvl + 1, "spearman": r}
                for m in grid for lvl, r in enumerate(self.with_mismatch(m).spearman_exposure_reward())]
        return pd.DataFrame(rows)

    # -- queries ----------------------------------------------------------------------------------
    def _in(self, split: str) -> np.ndarray:
        """(U,) bool: the queries of ``split`` ("train", "valid" or "test": ``users.SPLITS``)."""
        if split not in U.SPLITS:
            raise ValueError(f"split = {split!r} is invalid: expected one of {', '.join(U.SPLITS)}")
        return self.split == U.SPLITS[split]

    def size(self, split: str) -> int:
        """How many queries ``split`` holds."""
        return int(self._in(split).sum())

    def queries(self, split: str = "test", n: int | None = None, seed: int = 0) -> Queries:
        """The queries of one split; the first ``n`` of a seeded permutation when ``n`` is given."""
        ids = np.flatnonzero(self._in(split))
        if len(ids) == 0:
            raise ValueError(f"the {split} split of {self.name} is empty")
        if n is not None and n < len(ids):
            ids = np.sort(np.random.default_rng(seed).permutation(ids)[:n])
        return Queries(ids, self.histories[ids], self.targets[ids])

    def people_of(self, users: np.ndarray) -> np.ndarray:
        """(B,) the person behind each query ``users`` (``people``; a synthetic world's user is its own)."""
        users = np.asarray(users)
        return users.copy() if self.people is None else self.people[users]

    # -- the truth (synthetic worlds only) ---------------------------------------------------------
    def _need_truth(self) -> None:
        if self.tastes is None:
            raise ValueError(f"{self.name} has no latent tastes: oracle affinity exists only in synthetic worlds")

    def affinity(self, users: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """True reward a(u, i) = cos(u, e(i)): (B, N) for all items, or items' shape for (B, ...) items."""
        self._need_truth()
        u = self.tastes[np.asarray(users)]
        emb = self.catalog.embeddings
        if items is None:
            return u @ emb.T
        items = np.asarray(items)
        return np.einsum("bd,b...d->b...", u, emb[items])

    def prefix_values(self, users: np.ndarray, reduce: str = "mean") -> np.ndarray:
        """The oracle value of every prefix for each user: (B, n_nodes), the mean (or ``reduce="max"``)
        true reward a(u, i) of the catalog items below each trie node. A learned V_phi estimates the
        mean version from sampled returns (Eq. 5-9); the max is what a perfect search could still reach."""
        aff = self.affinity(users)
        if reduce == "mean":
            return self.catalog.node_mean(aff)
        if reduce == "max":
            return self.catalog.node_max(aff)
        raise ValueError(f"reduce = {reduce!r} is invalid: expected mean or max")

    def logged_logprobs(self, users: np.ndarray) -> np.ndarray:
        """(B, N) log P_log(i | u), the behaviour the logs (and so SFT) follow."""
        self._need_truth()
        return U.logged_logprobs(self.tastes[np.asarray(users)], self.catalog.embeddings, self.log_pop, self.config)

    def spearman_exposure_reward(self, max_users: int = 400) -> list[float]:
        """The world's measured mismatch: per level, Spearman rho between a prefix's logged
        log-probability (log-sum over the items below) and its true reward (mean affinity of the
        items below), over all prefixes of that level, averaged over users."""
        self._need_truth()
        users = np.arange(min(max_users, len(self.tastes)))
        logp = self.logged_logprobs(users)
        aff = self.affinity(users)
        cat = self.catalog
        log_mass, mean_aff = cat.node_logsumexp(logp), cat.node_mean(aff)  # every node's, once for all levels
        return [float(np.nanmean(spearman_rows(log_mass[..., cat.nodes_at(level)], mean_aff[..., cat.nodes_at(level)])))
                for level in range(1, cat.levels + 1)]

    def summary(self) -> dict:
        """The numbers `vstar-toy world --json` prints."""
        cat = self.catalog
        counts = np.bincount(self.split, minlength=3)
        out = {
            "name": self.name,
            "items": cat.n_items,
            "levels": cat.levels,
            "codebook_sizes": list(cat.codebook_sizes),
            "users": int(len(self.split)),
            "train_users": int(counts[0]),
            "valid_users": int(counts[1]),
            "test_users": int(counts[2]),
            "history_len": int(self.histories.shape[1]),
            "collisions_resolved": int(self.collisions_resolved),
            "children_per_level": [round(c, 3) for c in cat.children_per_level()],
            "prefixes_per_level": [int((cat.depth == lvl).sum()) for lvl in range(1, cat.levels + 1)],
        }
        if self.config is not None:
            out["mismatch"] = self.config.mismatch
            out["seed"] = self.config.seed
        if self.tastes is not None:
            out["spearman_exposure_reward"] = [round(r, 4) for r in self.spearman_exposure_reward()]
        out["embedding"] = self.embedding
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho between x[b] and y[b] for every row b (ties get average ranks); NaN for a
    constant row or a row of fewer than 2 entries."""
    from scipy.stats import rankdata  # here, not at the top: scipy.stats takes most of a second to import

    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)
