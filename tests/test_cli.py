"""The command line on the tiny preset: every command runs, --json prints one parseable object, and
bad input exits with status 2 and one line naming the problem."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vstar_toy import checkpoint
from vstar_toy.cli import app
from vstar_toy.config import preset
from vstar_toy.experiments.claims import VSTAR_PLUS
from vstar_toy.experiments.stats import combine
from vstar_toy.pipeline import build_world


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (res.output, res.exception)
        return res

    return invoke


def _json(res) -> dict:
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_world_json(run):
    out = _json(run("world", "--preset", "tiny", "--mismatch", "0.9", "--json"))
    assert out["mismatch"] == 0.9 and out["items"] > 0


def test_demo_tells_the_story_and_where_its_time_went(model_cache, tmp_path):
    out = tmp_path / "demo"  # the tiny preset's models from the shared cache; 20 test users, 2 RL steps per arm
    res = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--queries", "20", "--rl-steps", "2", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    stages = pd.read_csv(out / "stages.csv")
    assert stages["stage"].tolist() == ["world", "SFT", "value", "decoding", "training"]
    assert (stages["seconds"] > 0).all() and "done in" in res.stdout
    for table in ("decoding.csv", "training.csv", "mismatch_knob.csv"):
        assert len(pd.read_csv(out / table)) > 0, table
    trained = pd.read_csv(out / "training.csv")
    assert trained["policy"].tolist() == ["SFT", "beam+GRPO", "V-STAR", "V-STAR+"]


def test_decode_json_reports_valid_candidates(run):
    for decoder in ("beam", "ved"):
        out = _json(run("decode", "--preset", "tiny", "--decoder", decoder, "--json"))
        assert out["decoder"] == decoder and out["valid_frac"] == 1.0
        assert out["n_candidates"] == 8 and out["budget_tokens"] == 17  # the preset's |C|, not a CLI default
        assert 0.0 <= out["ndcg@10"] <= out["hr@10"] <= 1.0


def test_sft_then_train_then_decode_with_the_trained_policy(run, tmp_path):
    run("sft", "--preset", "tiny", "--out", tmp_path / "sft", "--epochs", "2", "--quiet")
    out = _json(run("train", "--preset", "tiny", "--policy", tmp_path / "sft", "--out", tmp_path / "rl",
                    "--decoder", "beam", "--objective", "grpo", "--steps", "3", "--queries", "20", "--json"))
    assert out["steps"] == 3 and out["objective"] == "grpo"
    assert (tmp_path / "rl" / "metrics.csv").exists() and (tmp_path / "rl" / "final" / "meta.json").exists()
    world = build_world(preset("tiny").world)
    before = checkpoint.load_policy(tmp_path / "sft", world).state_dict()
    after = checkpoint.load_policy(tmp_path / "rl" / "final", world).state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "head.weight" in moved and len(moved) > len(before) // 2, moved  # three updates moved the weights
    dec = _json(run("decode", "--preset", "tiny", "--policy", tmp_path / "rl" / "final", "--decoder", "ved",
                    "--candidates", "8", "--json"))
    assert dec["valid_frac"] == 1.0


def test_value_trains_once_then_reads_the_cache(run):
    first = _json(run("value", "--preset", "tiny", "--steps", "5", "--queries", "16", "--json"))
    again = _json(run("value", "--preset", "tiny", "--steps", "5", "--queries", "16", "--json"))
    assert (first["trained"], again["trained"]) == (True, False)
    assert first["spearman"] == again["spearman"]


def test_reproduce_claim_1_quick(run, tmp_path):
    """The issue's test: `reproduce --claims 1 --seeds 1 --quick` on the tiny preset."""
    out = _json(run("reproduce", "--preset", "tiny", "--claims", "1", "--seeds", "1", "--quick",
                    "--out", tmp_path / "rep", "--json"))
    (claim,) = out["claims"]
    assert claim["id"] == 1 and claim["verdict"] == claim["verdict_truth"] == "inconclusive"  # one seed: no interval
    assert (claim["metric"], claim["metric_truth"]) == ("ndcg@10", "mean_reward")
    assert set(claim["values"]) == set(claim["values_truth"]) == {
        "SFT", "beam+GRPO", "V-STAR", "V-STAR+", "SFT, VED-decoded", "beam+GRPO, VED-decoded", "V-STAR, VED-decoded",
        "V-STAR+, VED-decoded"}
    assert set(out["training"]) == {"beam1x-grpo", "ved1x-joint", VSTAR_PLUS.label}  # V-STAR+: the corrected update
    assert 0.0 <= out["training"]["beam1x-grpo"]["zero_var_share"] <= 1.0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert report.count("Claim 1") == 1 and "Training diagnostics" in report and "learning_curves.png" in report
    assert (tmp_path / "rep" / "learning_curves.png").exists()
    check_verdicts(claim, pd.read_csv(tmp_path / "rep" / "claim_1.csv"))


def test_why_runs_claim_9_quick_and_chooses_on_validation(run, tmp_path):
    """`vstar-toy why --quick` on the tiny preset: claim 9's three quick arms, the corrected arm chosen among
    the value-guided ones on validation users, its diagnostics in the table."""
    out = _json(run("why", "--preset", "tiny", "--seeds", "1", "--quick", "--out", tmp_path / "why", "--json"))
    (claim,) = out["claims"]
    assert claim["id"] == 9 and set(claim["values"]) == {"beam+GRPO @ 0.0001", "V-STAR @ 0.0001",
                                                        "negatives dropped @ 0.0001"}
    chosen = claim["comparisons_truth"][0]
    assert chosen["a"] in ("V-STAR @ 0.0001", "negatives dropped @ 0.0001") and chosen["b"] == "beam+GRPO @ 0.0001"
    table = pd.read_csv(tmp_path / "why" / "claim_9.csv")
    assert {"valid mean_reward", "moved sft_top", "mean beam_overlap", "VED mean_reward"} <= set(table.metric)


def check_verdicts(claim: dict, table: pd.DataFrame) -> None:
    """Each verdict follows from its comparisons, each comparison's verdict from its interval, and each
    difference from the per-arm means of the claim's CSV (paired by seed, the mean difference is the
    difference of the means)."""
    mean = table.set_index(["arm", "metric"])["mean"]
    checked = 0
    for key, comps in (("verdict", "comparisons"), ("verdict_truth", "comparisons_truth")):
        assert claim[key] == combine([c["verdict"] for c in claim[comps] if not c.get("reported")]), (claim["id"], key)
        for c in claim[comps]:
            if c["low"] is None:  # one seed: no interval, no verdict
                assert c["verdict"] == "inconclusive", (claim["id"], c)
            else:
                assert c["low"] <= c["diff"] <= c["high"], (claim["id"], c)
                assert c["verdict"] != "does not hold" or c["high"] < 0, (claim["id"], c)
                assert c["verdict"] != "holds" or c["high"] >= 0, (claim["id"], c)
            if (c["a"], c["metric"]) in mean.index and (c["b"], c["metric"]) in mean.index:
                expected = mean[c["a"], c["metric"]] - mean[c["b"], c["metric"]]
                assert c["diff"] == pytest.approx(expected, abs=1e-9), (claim["id"], c)
                checked += 1
    assert checked > 0, f"claim {claim['id']}: no comparison names two arms of its table"


@pytest.mark.slow
def test_reproduce_all_claims_two_seeds(run, tmp_path):
    out = _json(run("reproduce", "--preset", "tiny", "--seeds", "2", "--quick", "--out", tmp_path / "rep", "--json"))
    assert [c["id"] for c in out["claims"]] == list(range(1, 10))
    for claim in out["claims"]:
        check_verdicts(claim, pd.read_csv(tmp_path / "rep" / f"claim_{claim['id']}.csv"))


@pytest.mark.slow
def test_horizon_trains_to_the_horizon_and_reports_transfer_and_sharpening(run, tmp_path):
    out = _json(run("horizon", "--preset", "tiny", "--seeds", "2", "--quick", "--out", tmp_path / "hz", "--json"))
    (claim,) = out["claims"]
    assert claim["id"] == 10
    table = pd.read_csv(tmp_path / "hz" / "claim_10.csv")
    check_verdicts(claim, table)
    for metric in ("transfer", "hr@1", "hr@50", "distinct_top1", "top1_share", "steps", "VED mean_reward"):
        assert metric in set(table["metric"]), metric
    assert (tmp_path / "hz" / "horizon.png").exists()


@pytest.mark.parametrize("args, words", [
    (["world", "--preset", "nope"], "preset"),
    (["world", "--mismatch", "1.5"], "mismatch"),
    (["reproduce", "--claims", "1,11", "--quick", "--out", "{tmp}"], "claims"),
    (["decode", "--data", "amazon18-office", "--mismatch", "0.5"], "--data"),
])
def test_bad_input_exits_2_with_one_line(args, words, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-m", "vstar_toy.cli", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and words in lines[-1]


def test_torchrun_train_two_processes(tmp_path):
    """The multi-process entry point as a user types it: rank 0 prints one summary and writes the run.
    ``--standalone``: torchrun binds a port of its own choosing (no free port picked here and bound later,
    which another process on a busy machine could take in between)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run([*torchrun, "-m", "vstar_toy.cli", "train", "--preset", "tiny", "--decoder", "beam",
                          "--steps", "2", "--queries", "20", "--out", str(tmp_path / "ddp"), "--json"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VSTAR_TOY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]  # one rank speaks
    assert json.loads(line)["steps"] == 2
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 steps
