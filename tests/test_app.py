"""The explorer, headless: every page runs without an exception, its widgets change what it shows."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from vstar_toy.config import UPDATES, RLConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "explorer.py"


@pytest.fixture
def open_page(model_cache, monkeypatch):
    """``open_page("world")`` runs the explorer on the tiny preset at ``?page=world``."""
    monkeypatch.setenv("VSTAR_TOY_APP_PRESET", "tiny")

    def run(page: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.query_params["page"] = page
        return ok(at.run())

    return run


def ok(at: AppTest) -> AppTest:
    """The run ended without an exception box."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame_with(at: AppTest, label: str) -> pd.DataFrame:
    """The first dataframe shown whose columns or index contain ``label``."""
    for df in at.dataframe:
        v = df.value
        if label in v.columns or label in v.index:
            return v
    raise AssertionError(f"no dataframe with {label!r}")


def test_world_page_moves_the_spearman_with_the_mismatch(open_page):
    at = open_page("world")
    assert "World" in at.header[0].value
    assert len(at.get("image")) == 2  # the tree and the mismatch curve
    rho = {m: None for m in (0.0, 1.0)}
    for m in rho:
        at.slider(key="mismatch").set_value(m)
        ok(at.run())
        rho[m] = [float(metrics(at)[f"Spearman rho, level {lvl}"]) for lvl in (1, 2, 3)]
    # m = 0: the logs follow the truth; m = 1: they follow popularity, independent of taste
    assert all(a > 0.8 for a in rho[0.0]), rho
    assert all(abs(b) < 0.2 for b in rho[1.0]), rho
    items = frame_with(at, "role")
    assert items["role"].iloc[-1] == "ground truth y*" and len(items) == 6 + 1  # tiny: history_len 6


@pytest.mark.parametrize("layout,colour", [("sunburst", "popularity"), ("treemap", "logged probability")])
def test_world_page_layouts_and_colourings(open_page, layout, colour):
    at = open_page("world")
    at.radio(key="layout").set_value(layout)
    at.selectbox(key="colour").set_value(colour)
    at.slider(key="depth").set_value(2)
    ok(at.run())
    assert len(at.get("image")) == 2


def test_decoding_page_spends_the_same_budget(open_page):
    at = open_page("decoding")
    assert len(at.get("image")) == 3  # two trees and the budget split
    for budget_x, budget in ((1.0, 17), (2.0, 33)):  # tiny: L = 3, |C| = 8, so kx = 1 + 16k tokens
        at.slider(key="budget_x").set_value(budget_x)
        ok(at.run())
        summary = frame_with(at, "budget_tokens")
        assert summary.loc["budget_tokens"].astype(int).tolist() == [budget, budget]
        assert (summary.loc["cost_tokens"].astype(int) <= budget).all()
        assert int(summary.loc["expansion_tokens", "VED"]) > 0
        assert int(summary.loc["expansion_tokens", "beam search"]) == 0
    tables = [df.value for df in at.dataframe if "V(y)" in df.value.columns]
    assert [len(t) for t in tables] == [8, 8]


def test_decoding_page_switches_ved_to_the_oracle_value(open_page):
    """The same search guided by the world's oracle: V of a full SID is then its item's true reward."""
    at = open_page("decoding")
    learned = frame_with(at, "V(y)")
    at.radio(key="value").set_value("oracle")
    ok(at.run())
    assert len(at.get("image")) == 3  # two trees and the budget split
    oracle = frame_with(at, "V(y)")  # beam search's candidates, now scored by the oracle
    np.testing.assert_allclose(oracle["V(y)"], oracle["true reward"], atol=1e-3)
    assert not np.allclose(learned["V(y)"], learned["true reward"], atol=1e-3)
    quality = frame_with(at, "level 1")  # the values' Spearman with the true prefix reward
    assert set(quality["value"]) == {"learned", "logp", "oracle", "cosine"}


def test_advantages_page_toy_set(open_page):
    at = open_page("advantages")  # the toy set first
    assert len(at.get("image")) == 3  # the bounds and two trees
    m = metrics(at)  # the defaults: sample sigma, eps = 1e-4
    assert m["candidates n"] == "8"
    assert math.isclose(float(m["Samuelson's bound"]), 7 / math.sqrt(8), rel_tol=1e-2)
    assert float(m["max |A|"]) <= 7 / math.sqrt(8)
    table = frame_with(at, "A GRPO (Eq. 2)")
    assert table["A_node depth 3 (Eq. 18)"].round(2).tolist()[:2] == [-0.70, 0.70]  # two siblings: -+1/sqrt(2)
    at.radio(key="adv_ddof").set_value(0)  # the population sigma
    at.select_slider(key="adv_eps").set_value(1e-6)
    ok(at.run())
    m = metrics(at)
    assert math.isclose(float(m["Samuelson's bound"]), math.sqrt(7), rel_tol=1e-2)
    assert float(m["max |A|"]) <= math.sqrt(7)
    assert float(m["contrast, Sibling-GRPO"]) == pytest.approx(1.0, abs=1e-3)
    assert float(m["contrast, GRPO"]) < 1.0
    table = frame_with(at, "A GRPO (Eq. 2)")
    assert table["A_node depth 3 (Eq. 18)"].round(3).tolist()[:2] == [-1.0, 1.0]
    at.select_slider(key="adv_eps").set_value(1.0)
    ok(at.run())
    assert float(metrics(at)["contrast, Sibling-GRPO"]) < 0.5  # sigma_h / (sigma_h + 1)


@pytest.mark.parametrize("source,kind", [("beam search candidates", "hit"), ("VED candidates", "minionerec")])
def test_advantages_page_decoded_sets(open_page, source, kind):
    at = open_page("advantages")
    at.selectbox(key="adv_source").set_value(source)
    ok(at.run())  # the reward's selectbox is disabled for the toy set
    at.selectbox(key="adv_reward").set_value(kind)
    ok(at.run())
    assert metrics(at)["candidates n"] == "8"


def test_advantages_editor_rows_are_checked():
    sys.path.insert(0, str(APP.parent))
    from explorer_pages.advantages import parse_set

    df = pd.DataFrame({"sid": ["0-1-2", "0-1", "a-b-c", "1-1-1", "2-0-1"], "reward": [0.5, 1.0, 1.0, None, 0.25]})
    sids, rewards, skipped = parse_set(df)
    assert sids == [(0, 1, 2), (2, 0, 1)] and rewards == [0.5, 0.25]
    assert len(skipped) == 3


def test_sidebar_switches_pages_and_shows_the_source(open_page):
    at = open_page("world")
    at.sidebar.radio[0].set_value("Advantages")
    at.sidebar.toggle[0].set_value(True)
    ok(at.run())
    assert "Advantages" in at.header[0].value
    assert at.query_params["page"] == "advantages"
    sources = [c.value for c in at.code]
    assert any("def grpo_advantages" in s for s in sources)
    assert any("def sibling_node_advantages" in s for s in sources)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """The Training page saves and looks for runs here instead of the repository's runs/."""
    monkeypatch.setenv("VSTAR_TOY_APP_RUNS", str(tmp_path))
    return tmp_path


def test_training_page_trains_and_compares_two_runs(open_page, runs_dir):
    at = open_page("training")
    assert "Training" in at.header[0].value
    assert not at.get("image") and at.button(key="train").label == "Train"  # nothing trained yet
    # beam search + GRPO, 3 steps, evaluated at steps 2 and 3
    at.number_input(key="steps").set_value(3)
    at.number_input(key="eval_every").set_value(2)
    at.selectbox(key="objective").set_value("grpo")
    at.radio(key="decoder").set_value("beam")
    ok(at.run())
    ok(at.button(key="train").click().run())
    assert any("Trained: 3 steps" in s.value for s in at.success)
    assert len(at.get("image")) == 1  # the run's curves (the live ones are cleared at the end)
    baseline = "explorer/tiny/beam-grpo-3steps-eval2-b16-semantic-lr0.0001-s0"
    log = pd.read_csv(runs_dir / baseline / "metrics.csv")
    assert log["step"].tolist() == [1, 2, 3] and log["valid_ndcg@10"].notna().tolist() == [False, True, True]
    summary = frame_with(at, "valid NDCG@10, last eval")
    assert summary.index.tolist() == [baseline] and summary.loc[baseline, "steps"] == "3 of 3"
    ok(at.run())
    assert at.button(key="train").disabled and len(at.get("image")) == 1  # equal knobs find the same, finished run
    # V-STAR from the same start, compared with the baseline on one chart
    at.radio(key="decoder").set_value("ved")
    at.selectbox(key="objective").set_value("joint")
    ok(at.run())
    assert at.multiselect(key="compare").options == [baseline]
    at.multiselect(key="compare").set_value([baseline])
    ok(at.button(key="train").click().run())
    vstar = "explorer/tiny/ved-joint-3steps-eval2-b16-semantic-lr0.0001-s0"
    assert len(at.get("image")) == 1
    summary = frame_with(at, "valid NDCG@10, last eval")
    assert summary.index.tolist() == [vstar, baseline]
    assert (summary["contrast Sibling-GRPO, mean"] > 0.99).all()  # sigma_h / (sigma_h + eps), about 1
    configs = frame_with(at, "decode.decoder")
    assert configs.loc["decode.decoder"].tolist() == ["ved", "beam"]
    assert configs.loc["rl.objective"].tolist() == ["joint", "grpo"]
    # the corrected update (claim 9): its own run, its options listed where they differ
    at.radio(key="update").set_value("vstar+")
    at.multiselect(key="compare").set_value([vstar])
    ok(at.button(key="train").click().run())
    plus = f"{vstar}-vstar+"
    assert (runs_dir / plus / "metrics.csv").exists()
    configs = frame_with(at, "decode.decoder")
    changed = {k: v for k, v in UPDATES["vstar+"].items() if getattr(RLConfig(), k) != v}
    assert changed and all(configs.loc[f"rl.{k}"].tolist() == [v, getattr(RLConfig(), k)] for k, v in changed.items())


def test_training_page_opens_a_saved_run(open_page, runs_dir):
    import copy

    from vstar_toy.config import presets
    from vstar_toy.pipeline import build_world, sft_policy, value_model
    from vstar_toy.rl.train import train

    cfg = presets.tiny().replace(rl={"steps": 2, "eval_every": 1})
    world = build_world(cfg.world)
    policy = copy.deepcopy(sft_policy(world, cfg, progress=False, say=lambda msg: None))
    head = copy.deepcopy(value_model(world, policy, cfg, progress=False, say=lambda msg: None))
    train(world, policy, cfg, head, run_dir=runs_dir / "cli" / "run-a", progress=False, say=lambda msg: None)
    at = open_page("training")
    at.radio(key="train_mode").set_value("open saved runs")
    ok(at.run())
    assert at.multiselect(key="runs").value == ["cli/run-a"]  # the newest run is shown first
    assert len(at.get("image")) == 1
    assert frame_with(at, "valid NDCG@10, last eval").loc["cli/run-a", "steps"] == "2 of 2"
    # a directory given by its path, next to a folder that is not a run
    at.multiselect(key="runs").set_value([])
    at.text_input(key="run_path").input(str(runs_dir / "cli" / "run-a"))
    ok(at.run())
    assert len(frame_with(at, "valid NDCG@10, last eval")) == 1
    at.text_input(key="run_path").input(str(runs_dir / "cli"))
    ok(at.run())
    assert any("holds no metrics.csv" in e.value for e in at.error)
    assert not at.get("image")


def test_training_page_shows_the_source(open_page, runs_dir):
    at = open_page("training")
    at.sidebar.toggle[0].set_value(True)
    ok(at.run())
    sources = [c.value for c in at.code]
    assert any("def train_step" in s for s in sources) and any("def training_curves" in s for s in sources)
