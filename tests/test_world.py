"""The synthetic world: valid unique SIDs, a trie that matches them, determinism, and a mismatch
knob that moves the measured Spearman rho (docs/design.md, section 3)."""

import numpy as np
import pytest
import torch

from vstar_toy.config import WorldConfig
from vstar_toy.world import InvalidSIDError, World
from vstar_toy.world.catalog import Catalog

SMALL = dict(n_items=600, n_users=400)
SEEDS = (0, 1, 2)
MISMATCHES = (0.0, 0.5, 0.9)


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(WorldConfig(**SMALL, seed=0))


@pytest.fixture(scope="module")
def rho_by_seed() -> dict:
    """{(seed, mismatch): per-level Spearman rho of logged log-prob vs true reward}."""
    return {
        (s, m): World.build(WorldConfig(**SMALL, seed=s, mismatch=m)).spearman_exposure_reward()
        for s in SEEDS
        for m in MISMATCHES
    }


def world_arrays(w: World) -> dict[str, np.ndarray]:
    """Every array of a world and its catalog, by name."""
    cat = w.catalog
    names = "sids embeddings depth parent token child leaf_item item_leaf order lo hi".split()
    out = {f"catalog.{k}": getattr(cat, k) for k in names}
    for k in ("histories", "targets", "split", "train_histories", "train_targets", "tastes", "log_pop"):
        out[k] = getattr(w, k)
    return out


# -- SIDs and the trie -------------------------------------------------------------------------


def test_sids_unique_and_valid(world):
    cat = world.catalog
    assert cat.sids.shape == (600, 3)
    assert len(np.unique(cat.sids, axis=0)) == cat.n_items
    for lvl, k in enumerate(cat.codebook_sizes):
        assert cat.sids[:, lvl].min() >= 0 and cat.sids[:, lvl].max() < k
    cat.check_valid(cat.sids)  # raises if any item's SID leaves the trie
    np.testing.assert_array_equal(cat.item_of(cat.sids), np.arange(cat.n_items))
    np.testing.assert_array_equal(cat.sid_of(np.arange(cat.n_items)), cat.sids)


def test_trie_masks_match_the_sids(world):
    cat = world.catalog
    # the set of next codes after each prefix, read from the SIDs directly
    continuations: dict[tuple, set] = {}
    for sid in cat.sids.tolist():
        for lvl in range(cat.levels):
            continuations.setdefault(tuple(sid[:lvl]), set()).add(sid[lvl])
    assert cat.n_nodes == len(continuations) + cat.n_items  # internal prefixes + leaves

    for node in range(cat.n_nodes):
        # the node's prefix, by walking up the parents
        prefix, n = [], node
        while n > 0:
            prefix.append(int(cat.token[n]))
            n = cat.parent[n]
        prefix = tuple(reversed(prefix))
        assert len(prefix) == cat.depth[node]
        expected = continuations.get(prefix, set())
        assert set(np.flatnonzero(cat.child[node] >= 0).tolist()) == expected, f"node {node} {prefix}"
        # children point back: parent, token, depth
        for code in expected:
            kid = cat.child[node, code]
            assert (cat.parent[kid], cat.token[kid], cat.depth[kid]) == (node, code, cat.depth[node] + 1)
        # the items below the node are the ones whose SIDs start with its prefix
        below = cat.order[cat.lo[node] : cat.hi[node]]
        starts = (cat.sids[:, : len(prefix)] == np.array(prefix, dtype=np.int64)).all(1)
        assert set(below.tolist()) == set(np.flatnonzero(starts).tolist())

    # the dense masks are the same table, as torch
    nodes = np.arange(cat.n_nodes)
    assert torch.equal(cat.valid_mask(nodes), torch.from_numpy(cat.child >= 0))


def test_leaf_item_round_trip(world):
    cat = world.catalog
    leaves = cat.nodes_at(cat.levels)
    assert len(leaves) == cat.n_items
    np.testing.assert_array_equal(cat.leaf_item[cat.item_leaf], np.arange(cat.n_items))
    np.testing.assert_array_equal(np.sort(cat.item_leaf), leaves)
    assert (cat.leaf_item[cat.depth < cat.levels] == -1).all()
    np.testing.assert_array_equal(cat.node_of(cat.sids), cat.item_leaf)
    assert (cat.child[leaves] == -1).all()


def test_node_of_prefixes(world):
    cat = world.catalog
    for lvl in range(cat.levels + 1):
        nodes = cat.node_of(cat.sids[:, :lvl])
        assert (cat.depth[nodes] == lvl).all()
        assert set(nodes.tolist()) == set(cat.nodes_at(lvl).tolist())


# -- errors that speak ----------------------------------------------------------------------------


def test_invalid_sid_names_token_and_level(world):
    cat = world.catalog
    sid = cat.sids[0].copy()
    # a level-2 code that no item continues sid[:1] with
    used = set(np.flatnonzero(cat.child[cat.node_of(sid[None, :1])[0]] >= 0).tolist())
    free = [c for c in range(cat.codebook_sizes[1]) if c not in used]
    assert free, "the test needs a level-1 prefix with a free level-2 code"
    sid[1] = free[0]
    with pytest.raises(InvalidSIDError, match=rf"level 2: token {free[0]} "):
        cat.check_valid(np.stack([cat.sids[1], sid]))
    assert cat.item_of(sid[None])[0] == -1


def test_out_of_range_and_wrong_length_sids_raise(world):
    cat = world.catalog
    with pytest.raises(InvalidSIDError, match=r"level 1: token 99 "):
        cat.check_valid([99, 0, 0])
    with pytest.raises(InvalidSIDError, match=r"level 3: token -1 "):
        cat.check_valid([*cat.sids[0, :2].tolist(), -1])
    with pytest.raises(InvalidSIDError, match="2 tokens"):
        cat.check_valid([[0, 0]])
    assert issubclass(InvalidSIDError, ValueError)


def test_catalog_rejects_duplicates_and_bad_codes():
    emb = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="share SID"):
        Catalog.from_sids([[0, 1], [0, 1]], emb, (2, 2))
    with pytest.raises(InvalidSIDError, match="code 5 at level 2"):
        Catalog.from_sids([[0, 1], [0, 5]], emb, (2, 2))


def test_queries_bad_split_raises(world):
    with pytest.raises(ValueError, match="'dev'.*train, valid, test"):
        world.queries("dev")
    with pytest.raises(ValueError, match="'dev'.*train, valid, test"):
        world.size("dev")


def test_queries_cover_the_split(world):
    sizes = [len(world.queries(s)) for s in ("train", "valid", "test")]
    assert sum(sizes) == len(world.split)
    assert sizes == [world.size(s) for s in ("train", "valid", "test")]
    q = world.queries("test", n=5, seed=3)
    assert len(q) == 5 and (world.split[q.users] == 2).all()
    np.testing.assert_array_equal(q.targets, world.targets[q.users])


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_world_bit_for_bit(world):
    again = World.build(WorldConfig(**SMALL, seed=0))
    a, b = world_arrays(world), world_arrays(again)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert world.collisions_resolved == again.collisions_resolved


def test_different_seeds_differ(world):
    other = World.build(WorldConfig(**SMALL, seed=1))
    assert not np.array_equal(world.catalog.embeddings, other.catalog.embeddings)
    assert not np.array_equal(world.catalog.sids, other.catalog.sids)
    assert not np.array_equal(world.targets, other.targets)


# -- the mismatch knob -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_spearman_falls_with_mismatch_at_every_level(rho_by_seed, seed):
    rho = np.array([rho_by_seed[seed, m] for m in MISMATCHES])  # (3 mismatches, L)
    assert np.isfinite(rho).all()
    assert (np.diff(rho, axis=0) < 0).all(), f"seed {seed}: rho by mismatch {MISMATCHES} = {rho.round(3)}"


def test_default_world_spearman_at_the_extremes():
    low = World.build(WorldConfig(mismatch=0.0)).spearman_exposure_reward()
    high = World.build(WorldConfig(mismatch=0.9)).spearman_exposure_reward()
    assert low[0] > 0.8, low
    assert high[0] < 0.3, high


def test_with_mismatch_measures_what_a_rebuilt_world_does(world, rho_by_seed):
    """The knob is turned without re-running k-means: only the logging distribution depends on m."""
    for m in MISMATCHES:
        turned = world.with_mismatch(m)
        assert turned.spearman_exposure_reward() == rho_by_seed[0, m]
        assert turned.name == f"synthetic(m={m:g}, seed=0)"
        assert turned.catalog is world.catalog
    table = world.mismatch_table(MISMATCHES)
    assert list(table.columns) == ["mismatch", "level", "spearman"]
    assert table[table["mismatch"] == 0.9]["spearman"].tolist() == rho_by_seed[0, 0.9]


def test_with_mismatch_refuses_a_knob_outside_0_1_and_real_data(world):
    with pytest.raises(ValueError, match=r"mismatch = 1.5 is invalid"):
        world.with_mismatch(1.5)
    real = World(world.catalog, world.histories, world.targets, world.split, world.train_histories,
                 world.train_targets, name="real")
    with pytest.raises(ValueError, match="no latent tastes"):
        real.with_mismatch(0.5)
