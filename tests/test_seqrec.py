"""SASRec and GRU4Rec (vstar_toy/seqrec.py): they learn a sequential rule that no counting baseline reads
whole, a seed gives the same model, padding does not change GRU4Rec's state, rankings leave out the history,
and bad settings are refused."""

import dataclasses

import numpy as np
import pytest
import torch

from vstar_toy import seqrec
from vstar_toy.config import SeqRecConfig, presets
from vstar_toy.metrics import hit_rate
from vstar_toy.world import World

FAST = {"d_model": 32, "epochs": 30, "patience": 30, "batch_size": 128, "dropout": 0.1, "lr": 3e-3}


@pytest.fixture(scope="module")
def counting_world() -> World:
    """The tiny world's catalog (200 items) with 4,000 users and a rule for a sequence model: the next item is
    a fixed permutation of the one before the latest, so the latest item alone says nothing about it."""
    w = World.build(presets.tiny().world)
    n, h = w.catalog.n_items, 4
    rng = np.random.default_rng(0)
    histories = rng.integers(0, n, size=(6000, h))
    targets = rng.permutation(n)[histories[:, -2]]
    keep = ~(histories == targets[:, None]).any(1)  # the next item is new to the user, as on real data
    histories, targets = histories[keep][:4000], targets[keep][:4000]
    split = np.repeat([0, 1, 2], [3200, 400, 400])
    return dataclasses.replace(w, histories=histories, targets=targets, split=split, train_histories=histories[:3200],
                               train_targets=targets[:3200, None], tastes=None, log_pop=None, config=None)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_learns_a_rule_of_the_whole_history(counting_world, kind):
    model, log = seqrec.fit(counting_world, SeqRecConfig(kind=kind, **FAST), progress=False)
    q = counting_world.queries("test")
    hr = hit_rate(seqrec.recommend(model, q.histories, 10), q.targets, 10).mean()
    assert hr > 0.3, log[-3:]  # chance is 10 / N = 0.05
    assert max(r["valid_hr@10"] for r in log) > 0.3


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_same_seed_same_model(counting_world, kind):
    cfg = SeqRecConfig(kind=kind, **{**FAST, "epochs": 2})
    a, log_a = seqrec.fit(counting_world, cfg, progress=False)
    b, log_b = seqrec.fit(counting_world, cfg, progress=False)
    assert log_a == log_b
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gru4rec_skips_the_padding_and_rankings_leave_out_the_history(counting_world):
    model = seqrec.GRU4Rec(counting_world.catalog.n_items, 4, SeqRecConfig(kind="gru4rec", d_model=16)).eval()
    with torch.no_grad():
        padded = model.state(torch.tensor([[-1, -1, 3, 4], [1, 2, 3, 4]]))
        short = model.state(torch.tensor([[3, 4], [3, 4]]))
    assert torch.allclose(padded[0], short[0], atol=1e-6) and not torch.allclose(padded[1], short[1])
    histories = np.array([[-1, -1, 3, 4], [5, 6, 7, 8]])
    top = seqrec.recommend(model, histories, counting_world.catalog.n_items - 4)
    assert not set(top[0]) & {3, 4} and not set(top[1]) & {5, 6, 7, 8}


@pytest.mark.parametrize(("field", "value", "match"), [("kind", "bert4rec", "kind"), ("n_heads", 3, "n_heads"),
                                                       ("dropout", 0.95, "dropout"), ("epochs", 0, "epochs")])
def test_bad_settings_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        SeqRecConfig(**{field: value})


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_target_ranks_say_what_the_recommended_list_says(counting_world, kind):
    model = seqrec.MODELS[kind](counting_world.catalog.n_items, 4, SeqRecConfig(kind=kind, d_model=16)).eval()
    q = counting_world.queries("valid")
    ranks = seqrec.target_ranks(model, q.histories, q.targets, batch=64)
    for k in (1, 10, 50):
        assert ((ranks < k) == hit_rate(seqrec.recommend(model, q.histories, k), q.targets, k).astype(bool)).all()
    inside = q.histories.copy()
    inside[:, -1] = q.targets  # the target in its own history: never recommended
    assert (seqrec.target_ranks(model, inside, q.targets) == counting_world.catalog.n_items).all()


def test_a_world_whose_validation_rows_are_training_pairs_keeps_the_last_epoch(counting_world):
    """World.valid_seen: every epoch runs (patience 1 does not stop it), none is chosen on validation."""
    seen = dataclasses.replace(counting_world, valid_seen=True)
    cfg = SeqRecConfig(**{**FAST, "epochs": 3, "patience": 1})
    _, log = seqrec.fit(seen, cfg, progress=False)
    assert [r["epoch"] for r in log] == [1, 2, 3] and all(np.isnan(r["valid_hr@10"]) for r in log)


def test_the_tested_config_takes_the_settings_chosen_on_validation_only_where_no_epoch_can_be_chosen(counting_world):
    from vstar_toy.config import SEQREC_TESTED

    seen = dataclasses.replace(counting_world, valid_seen=True)
    for kind in ("sasrec", "gru4rec"):
        assert seqrec.tested_config(kind, counting_world, seed=3) == SeqRecConfig(kind=kind, seed=3)
        chosen = seqrec.tested_config(kind, seen)
        assert chosen.kind == kind and chosen.epochs == SEQREC_TESTED[kind]["epochs"] < SeqRecConfig().epochs
