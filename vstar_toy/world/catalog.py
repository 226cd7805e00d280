"""The item catalog: embeddings, Semantic IDs by residual k-means, and the SID prefix trie.

The trie is what every decoder walks. Its nodes are numbered breadth-first: node 0 is the empty
prefix, then the depth-1 prefixes, and so on; ``child[node, code]`` is the child's node id or -1.
Row ``child[node] >= 0`` is the dense validity mask of the next token after that prefix, so a
batch of prefixes from any queries and depths gets its masks by one gather (``valid_mask``).

Items are sorted by SID inside the trie (``order``), so the items below a node are the slice
``order[lo[node]:hi[node]]``: prefix rewards (means over the items below) are one cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# residual k-means (RQ-KMeans): SIDs computed from embeddings, so SID prefixes are semantic


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding. Returns (centres (k, D), assignment (N,))."""
    n = len(x)
    k = min(k, n)
    centres = np.empty((k, x.shape[1]), dtype=np.float64)
    centres[0] = x[rng.integers(n)]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for j in range(1, k):  # k-means++: next centre drawn in proportion to squared distance
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres[j] = x[rng.choice(n, p=p)]
        d2 = np.minimum(d2, ((x - centres[j]) ** 2).sum(1))
    for _ in range(iters):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)  # (N, k)
        assign = dist.argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    return centres, dist.argmin(1)


def residual_kmeans(
    emb: np.ndarray, codebook_sizes: tuple[int, ...], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """RQ-KMeans: level l quantises what levels < l left over. Returns (codes (N, L), codebooks)."""
    residual = emb.astype(np.float64).copy()
    codes, books = [], []
    for k in codebook_sizes:
        centres, assign = kmeans(residual, k, rng)
        codes.append(assign)
        books.append(centres)
        residual = residual - centres[assign]
    return np.stack(codes, 1).astype(np.int64), books


def resolve_collisions(
    codes: np.ndarray, emb: np.ndarray, books: list[np.ndarray], codebook_sizes: tuple[int, ...]
) -> tuple[np.ndarray, int]:
    """Give every item a unique SID by moving the later duplicates to a free last-level code.

    Among items sharing a full SID, the one nearest its last-level centre keeps it; each other one
    takes the nearest free last-level code under the same parent prefix. When that parent is full,
    the item moves to the nearest second-to-last code whose parent prefix still has a free slot
    (never happens at the default sizes, but a catalog must always come out valid).
    Returns (unique codes, number of items moved).
    """
    codes = codes.copy()
    L = codes.shape[1]
    taken: dict[tuple, set] = {}
    moved = 0
    # residual that the last level quantises, per item
    resid = emb.astype(np.float64).copy()
    for lvl in range(L - 1):
        resid = resid - books[lvl][codes[:, lvl]]
    last = books[L - 1]
    dist_last = ((resid[:, None, :] - last[None]) ** 2).sum(-1)  # (N, K_L)
    # keep order: items closest to their own centre claim first
    order = np.argsort(dist_last[np.arange(len(codes)), codes[:, -1]], kind="stable")
    for i in order:
        parent = tuple(codes[i, :-1])
        used = taken.setdefault(parent, set())
        if codes[i, -1] not in used:
            used.add(int(codes[i, -1]))
            continue
        moved += 1
        free = [c for c in np.argsort(dist_last[i]) if int(c) not in used and c < codebook_sizes[-1]]
        if free:
            codes[i, -1] = free[0]
            used.add(int(free[0]))
            continue
        # parent full: the nearest parent prefix (by reconstruction error) that still has a free slot
        alt = _nearest_free_parent(emb[i], books, codebook_sizes, taken)
        c_last = next(int(c) for c in np.argsort(dist_last[i]) if int(c) not in taken.setdefault(alt, set()))
        codes[i, :-1], codes[i, -1] = alt, c_last
        taken[alt].add(c_last)
    return codes, moved


def _nearest_free_parent(e: np.ndarray, books: list[np.ndarray], sizes: tuple[int, ...], taken: dict) -> tuple:
    """The length-(L-1) code prefix whose reconstruction is nearest ``e`` among those with a free last
    code. Exhaustive over all prefixes: a rare fallback, taken only when an item's own parent is full."""
    grids = np.meshgrid(*[np.arange(k) for k in sizes[:-1]], indexing="ij")
    prefixes = np.stack([g.reshape(-1) for g in grids], 1)  # (P, L-1)
    recon = sum(books[lvl][prefixes[:, lvl]] for lvl in range(len(sizes) - 1))
    for p in np.argsort(((recon - e) ** 2).sum(-1)):
        key = tuple(int(c) for c in prefixes[p])
        if len(taken.get(key, ())) < sizes[-1]:
            return key
    raise ValueError("catalog has more items than SIDs: raise codebook_sizes")


# ----------------------------------------------------------------------------------------------
# the catalog and its trie


def sid_str(sid) -> str:
    """A SID (or prefix) as text, its codes joined by dashes: (3, 0, 7) -> "3-0-7"; -1 padding is left out.
    Every table, tree picture and page writes SIDs this way (``plots`` reads "1-2" as a prefix of "1-2-3")."""
    return "-".join(str(int(t)) for t in sid if t >= 0)


class InvalidSIDError(ValueError):
    """A SID that is not in the catalog; the message names the offending token."""


@dataclass(frozen=True, eq=False)
class Catalog:
    """Items, their SIDs and embeddings, and the prefix trie over the SIDs.

    Attributes:
        sids: (N, L) int64, item i's codes, each level's code in [0, K_l).
        embeddings: (N, D) float32 unit vectors e(i) (the semantic reward and Eq. 7 use them).
        codebook_sizes: K_l per level.
        depth, parent, token: (M,) per trie node; the root has depth 0, parent -1, token -1.
        child: (M, K_max) int64, child node id per next code, -1 where no item continues.
        leaf_item: (M,) item id at depth-L nodes, -1 elsewhere.
        item_leaf: (N,) the leaf node of each item.
        order, lo, hi: items sorted by SID; node n covers ``order[lo[n]:hi[n]]``.
        titles: optional display names (real data).
    """

    sids: np.ndarray
    embeddings: np.ndarray
    codebook_sizes: tuple[int, ...]
    depth: np.ndarray
    parent: np.ndarray
    token: np.ndarray
    child: np.ndarray
    leaf_item: np.ndarray
    item_leaf: np.ndarray
    order: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    titles: tuple[str, ...] | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sids(
        cls,
        sids: np.ndarray,
        embeddings: np.ndarray,
        codebook_sizes: tuple[int, ...],
        titles: tuple[str, ...] | None = None,
    ) -> Catalog:
        """Build the trie from unique SIDs (N, L). Raises ``ValueError`` on duplicates or bad codes."""
        sids = np.asarray(sids, dtype=np.int64)
        n, L = sids.shape
        if len(codebook_sizes) != L:
            raise ValueError(f"codebook_sizes has {len(codebook_sizes)} levels but SIDs have {L}")
        for lvl, k in enumerate(codebook_sizes):
            bad = np.flatnonzero((sids[:, lvl] < 0) | (sids[:, lvl] >= k))
            if len(bad):
                raise InvalidSIDError(
                    f"item {bad[0]} has code {sids[bad[0], lvl]} at level {lvl + 1}, expected [0, {k})"
                )
        order = np.lexsort(sids.T[::-1])  # items sorted by SID
        s = sids[order]
        dup = np.flatnonzero((s[1:] == s[:-1]).all(1))
        if len(dup):
            raise ValueError(f"items {order[dup[0]]} and {order[dup[0] + 1]} share SID {s[dup[0]].tolist()}")
        kmax = max(codebook_sizes)
        depth, parent, token, lo, hi = [0], [-1], [-1], [0], [n]
        prev_node_of_row = np.zeros(n, dtype=np.int64)  # node id of each sorted row's prefix so far
        for lvl in range(L):
            # a new node starts where the prefix of length lvl+1 changes
            new = np.ones(n, dtype=bool)
            new[1:] = (s[1:, : lvl + 1] != s[:-1, : lvl + 1]).any(1)
            starts = np.flatnonzero(new)
            ends = np.append(starts[1:], n)
            first_id = len(depth)
            ids = first_id + np.arange(len(starts))
            depth += [lvl + 1] * len(starts)
            parent += prev_node_of_row[starts].tolist()
            token += s[starts, lvl].tolist()
            lo += starts.tolist()
            hi += ends.tolist()
            prev_node_of_row = np.repeat(ids, ends - starts)
        m = len(depth)
        depth_a, parent_a, token_a = (np.array(a, dtype=np.int64) for a in (depth, parent, token))
        child = np.full((m, kmax), -1, dtype=np.int64)
        child[parent_a[1:], token_a[1:]] = np.arange(1, m)
        leaf_item = np.full(m, -1, dtype=np.int64)
        leaf_nodes = np.flatnonzero(depth_a == L)
        leaf_item[leaf_nodes] = order[np.array(lo)[leaf_nodes]]
        item_leaf = np.empty(n, dtype=np.int64)
        item_leaf[leaf_item[leaf_nodes]] = leaf_nodes
        emb = np.asarray(embeddings, dtype=np.float32)
        return cls(
            sids=sids, embeddings=emb, codebook_sizes=tuple(int(k) for k in codebook_sizes),
            depth=depth_a, parent=parent_a, token=token_a, child=child, leaf_item=leaf_item,
            item_leaf=item_leaf, order=order, lo=np.array(lo), hi=np.array(hi), titles=titles,
        )

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.sids)

    @property
    def levels(self) -> int:
        return self.sids.shape[1]

    @property
    def n_nodes(self) -> int:
        return len(self.depth)

    def nodes_at(self, level: int) -> np.ndarray:
        """Node ids of the prefixes of length ``level`` (0 = the root)."""
        return np.flatnonzero(self.depth == level)

    def children_per_level(self) -> list[float]:
        """Mean number of valid children of a node at depth 0 .. L-1 (the branching per level)."""
        counts = (self.child >= 0).sum(1)
        return [float(counts[self.depth == lvl].mean()) for lvl in range(self.levels)]

    # -- lookups --------------------------------------------------------------------------------
    def valid_mask(self, nodes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, K_max) bool: which next codes continue each prefix node to a real item."""
        return self.child_t[torch.as_tensor(nodes, dtype=torch.long)] >= 0

    @property
    def child_t(self) -> torch.Tensor:
        """The child table as a torch tensor (cached)."""
        cached = self.__dict__.get("_child_t")
        if cached is None:
            cached = torch.from_numpy(self.child)
            object.__setattr__(self, "_child_t", cached)
        return cached

    def node_of(self, sids: np.ndarray) -> np.ndarray:
        """Trie node of each prefix (N, l) for l in [0, L]; -1 where the prefix is not in the catalog."""
        sids = np.asarray(sids, dtype=np.int64)
        node = np.zeros(len(sids), dtype=np.int64)
        for lvl in range(sids.shape[1]):
            tok = sids[:, lvl]
            ok = (node >= 0) & (tok >= 0) & (tok < self.child.shape[1])
            nxt = np.full_like(node, -1)
            nxt[ok] = self.child[node[ok], tok[ok]]
            node = nxt
        return node

    def item_of(self, sids: np.ndarray) -> np.ndarray:
        """Item id of each full SID (N, L); -1 where the SID is not in the catalog."""
        node = self.node_of(sids)
        out = np.full(len(node), -1, dtype=np.int64)
        out[node >= 0] = self.leaf_item[node[node >= 0]]
        return out

    def sid_of(self, items: np.ndarray) -> np.ndarray:
        """SIDs (N, L) of item ids (N,)."""
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            bad = items[(items < 0) | (items >= self.n_items)][0]
            raise ValueError(f"item id {bad} is not in the catalog (valid: 0 .. {self.n_items - 1})")
        return self.sids[items]

    def check_valid(self, sids: np.ndarray) -> None:
        """Raise :class:`InvalidSIDError` naming the first token that leaves the trie."""
        sids = np.atleast_2d(np.asarray(sids, dtype=np.int64))
        if sids.shape[1] != self.levels:
            raise InvalidSIDError(f"SIDs have {sids.shape[1]} tokens, the catalog's have {self.levels}")
        node = np.zeros(len(sids), dtype=np.int64)
        for lvl in range(self.levels):
            tok = sids[:, lvl]
            in_range = (tok >= 0) & (tok < self.codebook_sizes[lvl])
            nxt = np.where(in_range, self.child[node, np.clip(tok, 0, self.child.shape[1] - 1)], -1)
            bad = np.flatnonzero(nxt < 0)
            if len(bad):
                r = bad[0]
                raise InvalidSIDError(
                    f"SID {sids[r].tolist()} (row {r}) is invalid at level {lvl + 1}: token {tok[r]} "
                    f"does not continue prefix {sids[r, :lvl].tolist()} to any item"
                )
            node = nxt

    def node_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of per-item ``values`` (..., N) over the items below every trie node: (..., n_nodes).
        Node 0 (the root) holds the mean over the whole catalog; a leaf, its item's value.

        >>> cat = Catalog.from_sids(np.array([[0, 0], [0, 1], [1, 0]]), np.eye(3), (2, 2))
        >>> cat.node_mean(np.array([1.0, 3.0, 8.0])).tolist()  # root, prefixes 0 and 1, the 3 leaves
        [4.0, 2.0, 8.0, 1.0, 3.0, 8.0]
        """
        v = np.asarray(values, dtype=np.float64)[..., self.order]
        csum = np.concatenate([np.zeros(v.shape[:-1] + (1,)), np.cumsum(v, -1)], -1)
        return (csum[..., self.hi] - csum[..., self.lo]) / (self.hi - self.lo)

    def node_max(self, values: np.ndarray) -> np.ndarray:
        """Max of per-item ``values`` (..., N) over the items below every trie node: (..., n_nodes)."""
        v = np.asarray(values, dtype=np.float64)[..., self.order]
        out = np.empty(v.shape[:-1] + (self.n_nodes,))
        for level in range(self.levels + 1):
            nodes = self.nodes_at(level)  # their item slices partition the sorted catalog, in order
            out[..., nodes] = np.maximum.reduceat(v, self.lo[nodes], axis=-1)
        return out

    def prefix_mean(self, values: np.ndarray, level: int) -> np.ndarray:
        """Mean of per-item ``values`` (..., N) over the items below each depth-``level`` node.

        Returns (..., n_nodes_at_level), in the order of :meth:`nodes_at`.
        """
        return self.node_mean(values)[..., self.nodes_at(level)]

    @property
    def node_centroids(self) -> np.ndarray:
        """(n_nodes, D) float32: the mean embedding of the items below each node (cached). The
        catalog-wide version of Eq. 7's prefix embedding, which averages a sampled bucket instead."""
        cached = self.__dict__.get("_node_centroids")
        if cached is None:
            cached = self.node_mean(self.embeddings.T).T.astype(np.float32)
            object.__setattr__(self, "_node_centroids", cached)
        return cached

    def history_centroid(self, histories: np.ndarray | torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) the mean embedding of each history's items (B, H), -1 left-padding ignored; zeros
        for an empty history. What the semantic value reads as the user's side. ``emb``: the embedding
        table already on the histories' device (a module's buffer), else this catalog's is copied there."""
        h = torch.as_tensor(np.asarray(histories) if not isinstance(histories, torch.Tensor) else histories)
        emb = (torch.as_tensor(self.embeddings) if emb is None else emb).to(h.device)
        real = (h >= 0).to(emb.dtype)[..., None]
        return (emb[h.clamp_min(0)] * real).sum(-2) / real.sum(-2).clamp_min(1.0)

    def prefix_nodes(self, sids: torch.Tensor, child: torch.Tensor | None = None) -> torch.Tensor:
        """(..., L) trie node of every prefix y_<=1 .. y_<=L of SIDs (..., L), as torch. SIDs must be
        in the catalog; a padding SID (-1 codes) gets some valid node, which callers mask. ``child``: the
        child table already on the SIDs' device (a module's buffer), else this catalog's is copied there."""
        child = (self.child_t if child is None else child).to(sids.device)
        node = torch.zeros(sids.shape[:-1], dtype=torch.long, device=sids.device)
        out = []
        for lvl in range(sids.shape[-1]):
            node = child[node, sids[..., lvl].clamp_min(0)].clamp_min(0)
            out.append(node)
        return torch.stack(out, -1)

    def node_logsumexp(self, logp: np.ndarray) -> np.ndarray:
        """log sum exp of per-item log-probabilities (..., N) below every trie node: (..., n_nodes), a
        prefix's probability mass (the root's: the whole catalog's).

        >>> cat = Catalog.from_sids(np.array([[0, 0], [0, 1], [1, 0]]), np.eye(3), (2, 2))
        >>> np.exp(cat.node_logsumexp(np.log([0.2, 0.3, 0.5]))).round(6).tolist()
        [1.0, 0.5, 0.5, 0.2, 0.3, 0.5]
        """
        x = np.asarray(logp, dtype=np.float64)[..., self.order]
        m = x.max(-1, keepdims=True)
        csum = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(np.exp(x - m), -1)], -1)
        return np.log(np.maximum(csum[..., self.hi] - csum[..., self.lo], 1e-300)) + m

    def prefix_logsumexp(self, logp: np.ndarray, level: int) -> np.ndarray:
        """log sum exp of per-item log-probabilities (..., N) below each depth-``level`` node, in the order of
        :meth:`nodes_at`."""
        return self.node_logsumexp(logp)[..., self.nodes_at(level)]
