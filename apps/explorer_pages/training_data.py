"""The Training page's runs, cached on disk in run directories named by their knobs (``TrainSpec``): a
run is a function of its config, and ``rl.train.train`` reads a finished one back and resumes a
stopped one; saved run directories are listed and read here too."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from vstar_toy.config import UPDATES, Config
from vstar_toy.rl import columns
from vstar_toy.rl.train import train

from .data import config, load_models


@dataclass(frozen=True)
class TrainSpec:
    """The Training page's knobs: what a run changes in the preset's config (the rest is the preset's). Each is
    the config field of its name (``decoder``: ``DecodeConfig.decoder``, the others ``RLConfig``'s; their docs:
    ``config.field_docs``, shown as the knobs' help), and ``update`` a name of ``config.UPDATES``."""

    decoder: str
    objective: str
    steps: int
    eval_every: int
    batch_queries: int
    reward: str
    lr: float
    seed: int
    update: str = "paper"

    def name(self) -> str:
        """The run directory's name: a run is a function of its config, so equal knobs find the same run."""
        return (f"{self.decoder}-{self.objective}-{self.steps}steps-eval{self.eval_every}-b{self.batch_queries}-"
                f"{self.reward}-lr{self.lr:g}-s{self.seed}" + ("" if self.update == "paper" else f"-{self.update}"))


def runs_root() -> Path:
    """Where runs are saved and looked for: ``$VSTAR_TOY_APP_RUNS`` (the tests use a temporary folder),
    else the repository's ``runs/``. The page writes its runs under ``explorer/<preset>/``."""
    return Path(os.environ.get("VSTAR_TOY_APP_RUNS", Path(__file__).resolve().parents[2] / "runs"))


def run_dir(preset_name: str, spec: TrainSpec) -> Path:
    return runs_root() / "explorer" / preset_name / spec.name()


def train_config(preset_name: str, spec: TrainSpec) -> Config:
    return config(preset_name).replace(
        decode={"decoder": spec.decoder},
        rl={"objective": spec.objective, "steps": spec.steps, "eval_every": spec.eval_every,
            "batch_queries": spec.batch_queries, "reward": spec.reward, "lr": spec.lr, "seed": spec.seed,
            **UPDATES[spec.update]})


def train_run(preset_name: str, spec: TrainSpec, on_step, say) -> pd.DataFrame:
    """Train copies of the preset's SFT policy and value head with ``spec`` (rl.train.train), into
    ``run_dir``; returns the log. A finished run with the same knobs is read back, a stopped one
    resumes from its last checkpoint (train's resume). The head is trained by TD in every run, also
    with beam search, as in vstar_toy.experiments: the arms differ only in what is compared."""
    m = load_models(preset_name)
    policy, head = copy.deepcopy(m.policy), copy.deepcopy(m.head)
    res = train(m.world, policy, train_config(preset_name, spec), head, run_dir=run_dir(preset_name, spec),
                progress=False, say=say, on_step=on_step)
    return res.log


def saved_runs() -> list[str]:
    """Run directories (holding a metrics.csv) under runs_root(), newest first, relative to it."""
    root = runs_root()
    found = sorted(root.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p.parent.relative_to(root)) for p in found]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, list) else tuple(v)
    return out


@st.cache_data(show_spinner=False)
def read_run(path: str, stamp: float) -> tuple[pd.DataFrame, dict]:
    """A run directory's log (metrics.csv) and its config.json flattened to {"rl.objective": ...};
    ``stamp`` (metrics.csv's mtime) makes a run that is still being written read afresh."""
    d = Path(path)
    if not (d / "metrics.csv").is_file():
        raise ValueError(f"{d} holds no metrics.csv: a run directory is what `vstar-toy train --out` or this "
                         "page writes (metrics.csv, config.json, state.pt)")
    log = pd.read_csv(d / "metrics.csv")
    if columns.STEP not in log or columns.REWARD not in log:
        raise ValueError(f"{d / 'metrics.csv'} has no step and reward columns: not a log of vstar_toy.rl.train")
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    return log, _flatten(cfg.get("config", {})) | {"world": cfg.get("world")}


def _mean(log: pd.DataFrame, col: str) -> float:
    return float(log[col].mean()) if col in log else np.nan


def run_summary(logs: dict[str, pd.DataFrame], steps: dict[str, int | None]) -> pd.DataFrame:
    """One row per run: its end (means over the last 5 steps, the last evaluation) and its means."""
    rows = []
    for name, log in logs.items():
        tail = log.tail(5)
        ev = log.dropna(subset=[columns.VALID_NDCG10]) if columns.VALID_NDCG10 in log else log.iloc[:0]
        last = ev.iloc[-1] if len(ev) else {}
        rows.append({
            "run": name,
            "steps": f"{int(log[columns.STEP].max())} of {steps.get(name) or '?'}",
            "reward R, last 5 steps": tail[columns.REWARD].mean(),
            "true reward, last 5 steps": _mean(tail, columns.TRUE_REWARD),
            "valid NDCG@10, last eval": last.get(columns.VALID_NDCG10, np.nan),
            "valid HR@10, last eval": last.get(columns.VALID_HR10, np.nan),
            "contrast GRPO scale, mean": _mean(log, columns.ADV_SPREAD_GLOBAL),
            "contrast Sibling-GRPO, mean": _mean(log, columns.ADV_SPREAD_SIBLING),
            "entropy (level 1), last 5 steps": _mean(tail, columns.entropy(1)),
            "minutes": log[columns.SECONDS].sum() / 60 if columns.SECONDS in log else np.nan,
        })
    return pd.DataFrame(rows).set_index("run")
