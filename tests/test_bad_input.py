"""What a user meets with damaged or wrong input: one clear line naming the file (and line), exit status
2, nothing trained before an option is checked, nothing run from a crafted file; and --json keeps
stdout for its one object while progress goes to stderr."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_amazon import CAT, row, tiny_dir  # noqa: I001  (pytest puts tests/ on sys.path)

from vstar_toy import checkpoint
from vstar_toy.config import presets
from vstar_toy.pipeline import build_world, sft_policy
from vstar_toy.rl.train import train
from vstar_toy.world.amazon import DataFormatError, load_world

QUIET = dict(progress=False, say=lambda msg: None)


def cli(*args, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command line as a user runs it, with its own model cache."""
    env = {**os.environ, "VSTAR_TOY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vstar_toy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_error_line(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2, and the last line of stderr a single 'error: ...' naming ``words``."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error:") and all(w in last for w in words), last
    print(last)  # `pytest -s tests/test_bad_input.py` lists every message
    return last


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An SFT checkpoint of the tiny preset (trained once, 2 epochs)."""
    d = tmp_path_factory.mktemp("ckpt")
    cfg = presets.tiny().replace(sft={"epochs": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSTAR_TOY_CACHE", str(d / "cache"))
        world = build_world(cfg.world)
        policy = sft_policy(world, cfg, **QUIET)
    checkpoint.save(d / "sft", world, policy)
    return d / "sft"


def damaged(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the checkpoint to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "damaged"))


# -- damaged checkpoints ----------------------------------------------------------------------------


def test_truncated_policy_file(tiny_checkpoint, tmp_path):
    d = damaged(tiny_checkpoint, tmp_path)
    (d / "policy.pt").write_bytes((d / "policy.pt").read_bytes()[:500])
    one_error_line(cli("decode", "--preset", "tiny", "--decoder", "beam", "--policy", d, cache=tmp_path),
                   "policy.pt", "truncated or corrupt")


@pytest.mark.parametrize("seed", range(3))
def test_policy_file_of_random_bytes(tiny_checkpoint, tmp_path, seed):
    """Random bytes fail torch's parsers in several ways (seen: UnpicklingError, KeyError)."""
    d = damaged(tiny_checkpoint, tmp_path)
    (d / "policy.pt").write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(ValueError, match="policy.pt cannot be loaded.*corrupt") as e:
        checkpoint.load_policy(d, build_world(presets.tiny().world))
    assert "could run code" not in str(e.value)


class RunsCode:
    """A pickle that runs a command when loaded without weights_only: it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_policy_file_holding_code_is_refused_not_run(tiny_checkpoint, tmp_path):
    d = damaged(tiny_checkpoint, tmp_path)
    marker = tmp_path / "ran"
    with open(d / "policy.pt", "wb") as f:
        pickle.dump({"x": RunsCode(marker)}, f)
    one_error_line(cli("decode", "--preset", "tiny", "--decoder", "beam", "--policy", d, cache=tmp_path),
                   "policy.pt", "refused", "nothing in it was run")
    assert not marker.exists()


def test_meta_json_that_is_not_json(tiny_checkpoint, tmp_path):
    d = damaged(tiny_checkpoint, tmp_path)
    (d / "meta.json").write_text("{not json")
    one_error_line(cli("decode", "--preset", "tiny", "--decoder", "beam", "--policy", d, cache=tmp_path),
                   "meta.json", "not valid JSON")


def test_meta_json_of_another_shape(tiny_checkpoint, tmp_path):
    d = damaged(tiny_checkpoint, tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["policy_config"]["d_model"] = 64
    (d / "meta.json").write_text(json.dumps(meta))
    one_error_line(cli("decode", "--preset", "tiny", "--decoder", "beam", "--policy", d, cache=tmp_path),
                   "policy.pt", "does not fit", "size mismatch")


def test_a_model_of_another_mismatch_is_refused(tiny_checkpoint, tmp_path):
    """The tiny world at m = 0: the same SID tree as at m = 0.5, other logs."""
    one_error_line(cli("decode", "--preset", "tiny", "--mismatch", "0", "--decoder", "beam", "--policy",
                       tiny_checkpoint, cache=tmp_path), "logs differ", "m=0.5", "m=0")


def test_a_crafted_run_state_cannot_execute_code(tiny_checkpoint, tmp_path):
    """`train` resumes from OUT/state.pt: a state.pt that would run a command is refused, not run."""
    cfg = presets.tiny().replace(rl={"steps": 2, "eval_every": 2}, decode={"decoder": "beam"})
    world = build_world(cfg.world)
    policy = checkpoint.load_policy(tiny_checkpoint, world)
    run = tmp_path / "run"
    train(world, policy, cfg, run_dir=run, **QUIET)
    marker = tmp_path / "ran"
    torch.save({"policy": RunsCode(marker)}, run / "state.pt")  # torch's format: the refused global is named
    with pytest.raises(ValueError, match="state.pt cannot be loaded: it holds Python objects that could run code"):
        train(world, checkpoint.load_policy(tiny_checkpoint, world), cfg.replace(rl={"steps": 3}), run_dir=run,
              **QUIET)
    assert not marker.exists()


# -- damaged data files -----------------------------------------------------------------------------


def test_a_history_field_beyond_csv_s_default_limit_loads(tmp_path):
    """A history of 40,000 items is a 200,000-character field: csv's 131,072 limit is lifted while a
    split is read (the ids here are out of the index, which is what the error then says, with the line)."""
    long = row("u1", [0, 1, 2], 3).replace('"[0, 1, 2]"', '"[' + ", ".join(["1"] * 40_000) + ']"', 1)
    root = tiny_dir(tmp_path / "long", valid=[long, row("u2", [4, 0], 1)])
    with pytest.raises(DataFormatError, match=r"valid/Toy_5.csv, line 2: history_item_sid has 3 SIDs"):
        load_world(root)


def test_a_title_that_is_not_utf8_names_the_file_and_line(tmp_path):
    root = tiny_dir(tmp_path / "latin1")
    info = root / "info" / f"{CAT}_5.txt"
    lines = info.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"pen", "pén".encode("latin-1"))
    info.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError, match=r"info/Toy_5.txt, line 3: not UTF-8 text"):
        load_world(root)


def test_real_data_cache_keys_follow_the_content(tmp_path, monkeypatch):
    """Two MiniOneRec folders of the same name with other interactions are two data sets."""
    from vstar_toy.pipeline import _world_key

    a = load_world(tiny_dir(tmp_path / "a" / "Toy"))
    b = load_world(tiny_dir(tmp_path / "b" / "Toy", valid=[row("u1", [0, 1], 3), row("u2", [4, 0], 1)]))
    assert a.name == b.name and _world_key(a) != _world_key(b)


# -- options are checked before anything is trained -------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["--candidates", "100000"], ["--candidates = 100000", "holds 200 items"]),
    (["--queries", "0"], ["--queries", "greater than or equal to 1"]),  # click refuses it while parsing
    (["--queries", "100"], ["--queries = 100", "expected 1 .. 30"]),
    (["--decoder", "topk", "--budget-x", "2"], ["--budget-x = 2.0", "topk"]),
    (["--value", "wisdom"], ["--value", "'wisdom'", "'learned', 'oracle', 'logp', 'cosine'"]),
])
def test_decode_options_are_checked_before_training(args, words, tmp_path):
    res = cli("decode", "--preset", "tiny", *args, cache=tmp_path / "cache", timeout=120)
    one_error_line(res, *words)
    assert not (tmp_path / "cache").exists(), "nothing may be trained or cached before the options are checked"


def test_the_oracle_on_real_data_is_one_line(tmp_path):
    res = cli("decode", "--data", "amazon18-office", "--value", "oracle", cache=tmp_path / "cache", timeout=120)
    one_error_line(res, "oracle", "real data")
    assert not (tmp_path / "cache").exists()


# -- --json: one object on stdout, progress on stderr -----------------------------------------------


def test_json_keeps_progress_on_stderr_and_quiet_silences_it(tmp_path):
    res = cli("value", "--preset", "tiny", "--json", cache=tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = res.stdout.strip().splitlines()
    assert set(json.loads(line)["spearman"]) >= {"learned", "logp", "oracle", "cosine"}
    assert "SFT" in res.stderr and "value TD" in res.stderr and "training the default SFT policy" in res.stderr
    quiet = cli("value", "--preset", "tiny", "--json", "--quiet", cache=tmp_path / "cache")
    assert quiet.returncode == 0 and quiet.stderr.strip() == "" and json.loads(quiet.stdout)


def test_an_interrupted_sft_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """SFT saves its state after every epoch into the (incomplete) cache entry; a rerun continues from it."""
    import vstar_toy.rl.sft as sft_mod

    cfg = presets.tiny().replace(sft={"epochs": 3, "patience": 3})
    world = build_world(cfg.world)
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path / "whole"))
    whole = sft_policy(world, cfg, **QUIET)
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path / "cut"))
    real = sft_mod.validation_hr
    calls = []

    def crash_in_epoch_2(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sft_mod, "validation_hr", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        sft_policy(world, cfg, **QUIET)
    monkeypatch.setattr(sft_mod, "validation_hr", real)
    notes = []
    resumed = sft_policy(world, cfg, progress=False, say=notes.append)
    assert any("resuming the interrupted SFT" in n and "after epoch 1" in n for n in notes), notes
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
