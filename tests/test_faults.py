"""Faults as they happen: a process killed (SIGKILL: nothing flushed, no handler runs) at several points
of a cache write, of SFT, of value pre-training and of a training run, then the same command again: it
resumes or redoes the work and ends with the result of an uninterrupted run, bit for bit. And several
processes on one cold cache: all end with the same result, the later ones waiting for the first.

Each case runs the real command line in subprocesses (``tests/kill_at.py`` kills at a named call) with
the tiny preset: about 5 s a run, 2 runs a case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

KILL_AT = Path(__file__).with_name("kill_at.py")
TRAIN = ("train", "--preset", "tiny", "--decoder", "ved", "--objective", "joint", "--queries", "20", "--json",
         "--quiet")
VALUE = ("value", "--preset", "tiny", "--steps", "60", "--queries", "32", "--json")
DECODE = ("decode", "--preset", "tiny", "--decoder", "ved", "--queries", "30", "--json")


def env(cache: Path) -> dict:
    return {**os.environ, "VSTAR_TOY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def cli(*args, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vstar_toy.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env(cache))


def killed(fault: tuple, *args, cache: Path) -> subprocess.CompletedProcess:
    """The command, killed by SIGKILL at ``fault`` = (MODULE:NAME, n, before|after, match)."""
    target, n, when, match = fault
    res = subprocess.run([sys.executable, str(KILL_AT), target, str(n), when, "--match", match, "--",
                          *map(str, args)], capture_output=True, text=True, timeout=300, env=env(cache))
    assert res.returncode == -9, f"not killed at {fault}: exit {res.returncode}\n{res.stderr[-2000:]}"
    return res


def outcome(res: subprocess.CompletedProcess, out: Path | None = None) -> dict:
    """What a run produced, without what legitimately differs (wall time, paths, how it got there)."""
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    for k in ("run", "seconds", "trained"):
        summary.pop(k, None)
    result = {"summary": summary}
    if out is not None:
        result["metrics"] = pd.read_csv(out / "metrics.csv").drop(columns="seconds").to_dict("list")
        result["weights"] = torch.load(out / "final" / "policy.pt", weights_only=True)
    return result


def assert_same(a: dict, b: dict) -> None:
    assert a["summary"] == b["summary"]
    if "metrics" in a:
        assert a["metrics"].keys() == b["metrics"].keys()
        for k in a["metrics"]:
            assert a["metrics"][k] == pytest.approx(b["metrics"][k], rel=0, abs=0, nan_ok=True), k
        for k in a["weights"]:
            assert torch.equal(a["weights"][k], b["weights"][k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The reference results: each command once, uninterrupted, on a cold cache."""
    d = tmp_path_factory.mktemp("whole")
    train = outcome(cli(*TRAIN, "--out", d / "run", cache=d / "cache"), d / "run")
    value = outcome(cli(*VALUE, cache=d / "cache"))
    return {"train": train, "value": value}


TRAIN_FAULTS = {
    # the SFT cache entry: its meta.json (the last file, which marks the entry complete) written to a
    # temporary file but not renamed into place
    "cache entry: meta.json half-written": ("os:replace", 1, "before", "meta.json"),
    # SFT after its second epoch's resume state
    "SFT: after epoch 2": ("vstar_toy.pipeline:_save_partial", 2, "after", "sft_state"),
    # the value head's cache entry: its weights written, its meta.json not
    "value cache entry: weights only": ("vstar_toy.checkpoint:atomic_write_text", 2, "before", "meta.json"),
    # the run: the step-2 checkpoint written, the next step's metrics not
    "run: after a checkpoint, before the next metrics": ("vstar_toy.rl.train:atomic_save", 1, "after", "state.pt"),
    # the run: step 2's metrics written, its checkpoint not
    "run: after the metrics, before their checkpoint": ("vstar_toy.rl.train:atomic_write_text", 2, "after",
                                                        "metrics.csv"),
    # the end: the trained policy's checkpoint half-written
    "run: the final checkpoint half-written": ("os:replace", 1, "before", "final"),
}


@pytest.mark.parametrize("fault", TRAIN_FAULTS)
def test_a_killed_train_command_reruns_to_the_uninterrupted_result(fault, uninterrupted, tmp_path):
    killed(TRAIN_FAULTS[fault], *TRAIN, "--out", tmp_path / "run", cache=tmp_path / "cache")
    again = cli(*TRAIN, "--out", tmp_path / "run", cache=tmp_path / "cache")
    assert_same(outcome(again, tmp_path / "run"), uninterrupted["train"])
    assert not list(tmp_path.rglob(".*.tmp")), "temporary files of the killed writer were left behind"


def test_a_killed_value_pretraining_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    killed(("vstar_toy.pipeline:_save_partial", 1, "after", "pretrain_state"), *VALUE, cache=tmp_path / "cache")
    again = cli(*VALUE, cache=tmp_path / "cache", timeout=300)
    assert "resuming the interrupted pre-training" in again.stderr and "at step 25" in again.stderr
    assert_same(outcome(again), uninterrupted["value"])


@pytest.mark.parametrize("n", [2, 3])
def test_processes_started_together_on_a_cold_cache_agree(n, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "vstar_toy.cli", *DECODE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env(tmp_path / "cache")) for _ in range(n)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0] * n, [err[-2000:] for _, _, err in results]
    decoded = [{k: v for k, v in json.loads(out).items() if k != "seconds"} for _, out, _ in results]
    assert all(d == decoded[0] for d in decoded), "the processes decoded different results"
    notes = "".join(err for _, _, err in results)
    assert notes.count("training the default SFT policy") == 1, notes  # one trains, the others wait and reuse
    assert "another process wrote" in notes, notes


def test_a_second_train_on_the_same_folder_is_refused_and_the_folder_survives_a_kill(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    cli(*DECODE, "--decoder", "beam", cache=cache)  # the SFT policy and the value head, cached
    first = subprocess.Popen([sys.executable, "-m", "vstar_toy.cli", *TRAIN, "--steps", "400", "--out", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(cache))
    try:
        deadline = time.monotonic() + 120
        while not (out / ".owner").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (out / ".owner").exists(), first.communicate()[1][-2000:]
        second = cli(*TRAIN, "--steps", "400", "--out", out, cache=cache)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --out") and f"process {first.pid} " in last, last
        print(last)
    finally:
        first.kill()
        first.wait()
    # the holder was killed: the kernel released its lock, and the next run takes the folder over
    third = cli(*TRAIN, "--steps", "4", "--out", out, cache=cache)
    assert third.returncode == 0, third.stderr[-2000:]
