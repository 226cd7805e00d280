"""Training page: the self-evolving loop (Sec. 4.4) live, GRPO with beam search against V-STAR, and
saved run directories side by side."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from vstar_toy import files, plots
from vstar_toy.config import REWARDS, UPDATES, DecodeConfig, RLConfig, field_docs
from vstar_toy.evaluate import value_quality
from vstar_toy.rl import columns
from vstar_toy.rl import diagnostics as rl_diagnostics
from vstar_toy.rl import train as rl_train
from vstar_toy.rl.advantages import sibling_contrast
from vstar_toy.rl.losses import policy_loss
from vstar_toy.rl.value_learning import td_update

from . import data, training_data
from .common import Settings, show, show_source, what_to_look_at

MODES = ("train a short run", "open saved runs")
OBJECTIVES = {"joint": "joint: GRPO + Sibling-GRPO (V-STAR)", "grpo": "GRPO (Eq. 2)",
              "sibling": "Sibling-GRPO (Eq. 19)"}
DECODERS = {"ved": "VED (V-STAR, Sec. 4.2)", "beam": "beam search (baseline)"}
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
# config fields always listed under the curves; any other field that differs between the runs is added
KEY_FIELDS = ("decode.decoder", "rl.objective", "rl.steps", "rl.eval_every", "rl.batch_queries", "rl.reward", "rl.lr",
              "rl.seed", "world.mismatch", "world.n_items")
LIVE_EVERY_S = 2.0  # redraw the live curves at most this often (a figure costs about half a second)


@dataclass(frozen=True)
class TrainingView:
    mode: str
    spec: training_data.TrainSpec | None
    """The knobs of the run to train (train mode)."""
    runs: list[str]
    """Saved run directories to show (with the run to train, in train mode)."""


def training_ui(settings: Settings) -> TrainingView:
    mode = st.radio("mode", MODES, horizontal=True, key="train_mode", label_visibility="collapsed")
    saved = training_data.saved_runs()
    if mode == MODES[1]:
        runs = st.multiselect("runs (under the runs folder, newest first)", saved, default=saved[:1], key="runs",
                              help=f"every folder under {training_data.runs_root()} that holds a metrics.csv")
        path = st.text_input("or open a run directory", key="run_path",
                             placeholder="a folder with metrics.csv and config.json, "
                                         "e.g. runs/reproduce/runs/s0-m0.5-ved1x-joint")
        return TrainingView(mode, None, runs + ([path.strip()] if path.strip() else []))
    cfg, doc = data.config(settings.preset), field_docs(RLConfig)  # the knobs' help: the config fields' own docs
    c1, c2, c3 = st.columns([2, 2, 1])
    objective = c1.selectbox("objective", list(OBJECTIVES), format_func=OBJECTIVES.get, key="objective",
                             help=doc["objective"])
    decoder = c2.radio("decoder building C(x)", list(DECODERS), format_func=DECODERS.get, horizontal=True,
                       key="decoder", help=field_docs(DecodeConfig)["decoder"])
    steps = c3.number_input("steps", 1, 1000, min(cfg.rl.steps, 10), key="steps", help=doc["steps"])
    with st.expander("more knobs"):
        k1, k2, k3, k4, k5 = st.columns(5)
        eval_every = k1.number_input("evaluate every (steps)", 1, 1000, min(cfg.rl.eval_every, 5), key="eval_every",
                                     help=doc["eval_every"])
        batch = k2.number_input("users per step", 1, 1024, cfg.rl.batch_queries, key="batch_queries",
                                help=doc["batch_queries"])
        reward = k3.selectbox("reward R(x, y)", REWARDS, index=REWARDS.index(cfg.rl.reward), key="train_reward",
                              help=doc["reward"])
        lr = k4.select_slider("learning rate", sorted({*LEARNING_RATES, cfg.rl.lr}), value=cfg.rl.lr, key="lr",
                              help=doc["lr"])
        seed = k5.number_input("seed", 0, 10_000, cfg.rl.seed, key="train_seed", help=doc["seed"])
        update = st.radio("update", list(UPDATES), horizontal=True, key="update",
                          help="paper: GRPO's group mean as the baseline (Eq. 2, as written); vstar+: the corrected "
                               "V-STAR of claim 9 (tutorial 07)")
    compare = st.multiselect("compare with saved runs", saved, key="compare")
    spec = training_data.TrainSpec(decoder=decoder, objective=objective, steps=int(steps), eval_every=int(eval_every),
                          batch_queries=int(batch), reward=reward, lr=float(lr), seed=int(seed), update=update)
    return TrainingView(mode, spec, compare)


def stamp(path: Path) -> float:
    """metrics.csv's modification time: read_run's cache key, so a run still being written is read afresh."""
    return (path / "metrics.csv").stat().st_mtime if (path / "metrics.csv").exists() else 0.0


def steps_done(path: Path) -> int:
    try:
        return int(training_data.read_run(str(path), stamp(path))[0][columns.STEP].max())
    except ValueError:  # no run there yet, or not one of rl.train's
        return 0


def run_status(done: int, steps: int) -> str:
    if done == 0:
        return "not trained yet"
    if done < steps:
        return f"{done} of {steps} steps trained; it resumes from its last checkpoint"
    return f"{done} of {steps} steps trained; equal knobs find the same run (change the seed for another)"


def train_live(preset_name: str, spec: training_data.TrainSpec) -> None:
    """Train ``spec`` with a progress bar and curves redrawn as the steps come in."""
    try:
        with files.run_lock(training_data.run_dir(preset_name, spec), option="the run folder"):
            _train_live(preset_name, spec)
    except files.FolderBusyError:
        st.warning("Another session or process is training this run right now; its curves below follow it when "
                   "you rerun.")


def _train_live(preset_name: str, spec: training_data.TrainSpec) -> None:
    bar = st.progress(0.0, text="decoding the first batch...")
    live = st.empty()
    rows: list[dict] = []
    last_draw = [0.0]
    t0 = time.monotonic()

    def on_step(row: dict) -> None:
        rows.append(row)
        text = f"step {row[columns.STEP]} of {spec.steps}: reward {row[columns.REWARD]:.3f}"
        if not math.isnan(row.get(columns.VALID_NDCG10, math.nan)):
            text += f", validation NDCG@10 {row[columns.VALID_NDCG10]:.3f}"
        bar.progress(min(row[columns.STEP] / spec.steps, 1.0), text=text)
        if time.monotonic() - last_draw[0] > LIVE_EVERY_S:
            with live.container():
                show(plots.training_curves({"training...": pd.DataFrame(rows)}))
            last_draw[0] = time.monotonic()

    notes: list[str] = []
    try:
        training_data.train_run(preset_name, spec, on_step, say=notes.append)
    except ValueError as e:  # e.g. the folder holds a run of another config
        st.error(str(e))
        return
    bar.empty()
    live.empty()
    done = f"{len(rows)} steps in {time.monotonic() - t0:.0f} s" if rows else "nothing left to train"
    st.success(f"Trained: {done}. " + " ".join(notes))


def resolve(run: str) -> Path:
    """A run named relative to the runs folder, or a path (absolute, or relative to the working directory)."""
    p = Path(run).expanduser()
    return p if p.is_absolute() or p.exists() else training_data.runs_root() / p


def runs_view(runs: dict[str, Path]) -> None:
    """The runs' curves on one chart, their ends in a table, and what their configs set."""
    logs, configs = {}, {}
    for name, path in runs.items():
        try:
            logs[name], configs[name] = training_data.read_run(str(path), stamp(path))
        except ValueError as e:
            st.error(str(e))
    if not logs:
        return
    show(plots.training_curves(logs))
    st.caption("Colours are runs; in a panel, line styles are its series (grey key). Markers: validation points "
               "(every eval_every steps; HR / NDCG by beam search for every run, so runs compare).")
    st.subheader("Where the runs ended")
    planned = {n: c.get("rl.steps") for n, c in configs.items()}
    st.dataframe(training_data.run_summary(logs, planned).round(4))
    fields = list(KEY_FIELDS) + sorted({k for c in configs.values() for k in c if k not in KEY_FIELDS
                                        and len({str(x.get(k)) for x in configs.values()}) > 1})
    table = pd.DataFrame({n: [str(c.get(k, "")) for k in fields] for n, c in configs.items()},
                         index=pd.Index(fields, name="config field"))
    st.dataframe(table)


def page(settings: Settings) -> None:
    st.header("Training: the self-evolving loop, GRPO against V-STAR")
    what_to_look_at(
        "Each step decodes candidates C(x) for a batch of training users (beam search for the GRPO baseline, VED "
        "for V-STAR), rewards them, takes one TD step of the value head V (Eq. 9) and one policy step (GRPO, "
        "Sibling-GRPO or both, with KL to the SFT policy). Train one run, then the other with the same seed, and "
        "compare them on one chart. Look at the **contrast among siblings**: on GRPO's scale it sits below 1 "
        "when siblings' rewards are compressed, Sibling-GRPO's is about 1 by construction (Eq. 18); at the "
        "**validation NDCG@10** (always by beam search, so runs compare); and at the **Spearman** of V and of "
        "log pi with the prefix reward. On a short run the reward curves are noisy: a gap between two runs is a "
        "finding only if it outlasts that noise (another seed is the test)."
    )
    view = training_ui(settings)
    runs: dict[str, Path] = {}
    if view.mode == MODES[0]:
        spec = view.spec
        rdir = training_data.run_dir(settings.preset, spec)
        done = steps_done(rdir)
        c1, c2 = st.columns([1, 4])
        label = "Train" if done == 0 else "Resume" if done < spec.steps else "Trained"
        clicked = c1.button(label, type="primary", key="train", disabled=done >= spec.steps)
        status = c2.empty()
        status.caption(f"run directory `{rdir}`: " + run_status(done, spec.steps))
        if clicked:
            train_live(settings.preset, spec)
        if (rdir / "metrics.csv").exists():
            status.caption(f"run directory `{rdir}`: " + run_status(steps_done(rdir), spec.steps))
            runs[str(rdir.relative_to(training_data.runs_root()))] = rdir
    elif not view.runs:
        st.info(f"No run chosen: none saved under {training_data.runs_root()} yet, or type a run directory's path. The "
                "'train a short run' mode writes one.")
    for run in view.runs:
        runs.setdefault(run, resolve(run))
    runs_view(runs)
    show_source(settings, [rl_train.train, rl_train.train_step, rl_diagnostics.evaluate_policy, policy_loss,
                           sibling_contrast, td_update, value_quality, plots.training_curves])
