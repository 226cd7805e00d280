"""The non-generative baselines (vstar_toy/baselines.py) against rankings written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vstar_toy import baselines
from vstar_toy.world import Queries
from vstar_toy.world.catalog import Catalog
from vstar_toy.world.world import World


@pytest.fixture
def world() -> World:
    """Five items on a line of 2-d embeddings; training pairs 0->1, 0->1, 0->2, 3->4, 1->4."""
    sids = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
    angles = np.array([0.0, 0.3, 0.5, 1.4, 1.5])
    emb = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    cat = Catalog.from_sids(sids, emb, (3, 2))
    train_h = np.array([[-1, 0], [-1, 0], [-1, 0], [2, 3], [-1, 1]])
    train_t = np.array([[1], [1], [2], [4], [4]])
    hist = np.array([[-1, 0], [3, 4]])
    return World(catalog=cat, histories=hist, targets=np.array([2, 1]), split=np.array([2, 2]),
                 train_histories=train_h, train_targets=train_t, name="line")


def queries(world) -> Queries:
    return Queries(np.arange(2), world.histories, world.targets)


def test_popular_ranks_by_training_next_items_without_seen_ones(world):
    assert baselines.popularity(world).tolist() == [0, 2, 1, 0, 2]
    top = baselines.most_popular(world, queries(world), k=3)
    assert top.tolist() == [[1, 4, 2], [1, 2, 0]]  # ties by item id; query 1 has seen 3 and 4


def test_content_nn_ranks_by_cosine_to_the_latest_item(world):
    top = baselines.content_nn(world, queries(world), k=2)
    assert top.tolist() == [[1, 2], [2, 1]]  # nearest to item 0: 1, 2; to item 4 (3 and 4 seen): 2, 1


def test_transitions_follow_the_latest_item_then_popularity(world):
    top = baselines.transitions(world, queries(world), k=3)
    assert top.tolist() == [[1, 2, 4], [1, 2, 0]]  # 0 -> 1 (twice), 2 (once); item 4 was never followed


def test_the_table_scores_every_baseline_on_the_same_users(world):
    df = baselines.baselines_table(world, queries(world))
    assert df.baseline.tolist() == list(baselines.RANKERS)
    row = df.set_index("baseline").loc["transitions (latest item)"]
    assert row["hr@3"] == 1.0 and row["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(2)) / 2)


def test_the_command_scores_the_baselines_of_any_minionerec_folder(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from test_amazon import tiny_dir  # noqa: I001  (pytest puts tests/ on sys.path)

    root = tiny_dir(tmp_path / "Toy")
    res = subprocess.run([sys.executable, "-m", "vstar_toy.cli", "baselines", "--data", str(root), "--json", "--quiet"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VSTAR_TOY_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert [r["baseline"] for r in out["rows"]] == [*baselines.RANKERS, "SFT policy, beam search"]
    assert out["queries"] == 2 and "TF-IDF" in out["embedding"]


def test_intervals_resample_people_not_rows(world, monkeypatch):
    """Both test rows are one person's: one cluster, so no interval; as two people, an interval."""
    import dataclasses

    monkeypatch.setattr(baselines, "RANKERS", {"popular": baselines.most_popular})
    two = baselines.baselines_table(world, queries(world)).iloc[0]
    one = baselines.baselines_table(dataclasses.replace(world, people=np.array([7, 7])), queries(world)).iloc[0]
    assert np.isfinite(two["hr@10_low"]) and np.isnan(one["hr@10_low"]) and one["hr@10"] == two["hr@10"]
