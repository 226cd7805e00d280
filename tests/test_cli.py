"""The command line on the tiny preset: every command runs, --json prints one parseable object, and
bad input exits with status 2 and one line naming the problem."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from vstar_toy.cli import app
from vstar_toy.experiments.claims import VSTAR_PLUS


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
    dec = _json(run("decode", "--preset", "tiny", "--policy", tmp_path / "rl" / "final", "--decoder", "ved",
                    "--candidates", "8", "--json"))
    assert dec["valid_frac"] == 1.0


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


@pytest.mark.slow
def test_reproduce_all_claims_two_seeds(run, tmp_path):
    out = _json(run("reproduce", "--preset", "tiny", "--seeds", "2", "--quick", "--out", tmp_path / "rep", "--json"))
    assert [c["id"] for c in out["claims"]] == list(range(1, 10))
    assert all(c[v] in ("holds", "does not hold", "inconclusive") for c in out["claims"] for v in ("verdict",
                                                                                                "verdict_truth"))


@pytest.mark.parametrize("args, words", [
    (["world", "--preset", "nope"], "preset"),
    (["world", "--mismatch", "1.5"], "mismatch"),
    (["reproduce", "--claims", "1,10", "--quick", "--out", "{tmp}"], "claims"),
    (["decode", "--data", "amazon18-office", "--mismatch", "0.5"], "--data"),
])
def test_bad_input_exits_2_with_one_line(args, words, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-m", "vstar_toy.cli", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and words in lines[-1]


def test_torchrun_train_two_processes(tmp_path):
    """The multi-process entry point as a user types it: rank 0 prints one summary and writes the run."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    res = subprocess.run([*torchrun, "-m", "vstar_toy.cli", "train", "--preset", "tiny", "--decoder", "beam",
                          "--steps", "2", "--queries", "20", "--out", str(tmp_path / "ddp"), "--json"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VSTAR_TOY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]  # one rank speaks
    assert json.loads(line)["steps"] == 2
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 steps
