"""The explorer's cached library calls: every number a page shows comes from here.

Two kinds of cache (Streamlit's):

- ``st.cache_resource`` for objects shared by all sessions and never copied: the world, the SFT
  policy and the value head (``vstar_toy.pipeline`` also caches the trained models on disk, so only
  the very first run of a preset trains them). Sessions decode with them at the same time: the
  encoded prompts travel with each decode's states, never on the policy.
- ``st.cache_data`` for results (DataFrames, dicts of numbers), keyed by the widgets' values.

Training runs are cached on disk instead, in run directories named by their knobs (``TrainSpec``):
a run is a function of its config, and ``rl.train.train`` reads a finished one back and resumes a
stopped one.

No algorithm lives here: each function calls the library and arranges its output for display.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from vstar_toy import metrics, plots
from vstar_toy.config import UPDATES, Config, preset
from vstar_toy.decoding import beam_search, decode
from vstar_toy.evaluate import scorers, value_quality
from vstar_toy.pipeline import build_world, sft_policy, value_model
from vstar_toy.rl import advantages as adv
from vstar_toy.rl.train import train
from vstar_toy.values import make_value
from vstar_toy.world import World, sid_str
from vstar_toy.world.rewards import rewards as reward_fn

# ----------------------------------------------------------------------------------------------
# the world and the models


def config(preset_name: str) -> Config:
    return preset(preset_name)


@st.cache_resource(show_spinner="Building the synthetic world...")
def load_world(preset_name: str) -> World:
    """The preset's world (docs/design.md, section 3)."""
    return build_world(config(preset_name).world)


@st.cache_resource(show_spinner="Setting the mismatch knob...")
def world_at(preset_name: str, mismatch: float) -> World:
    """The preset's world with the logs' mismatch knob set to ``mismatch`` (``World.with_mismatch``)."""
    return load_world(preset_name).with_mismatch(mismatch)


@dataclass
class Models:
    world: World
    policy: object
    head: object
    notes: list[str]


@st.cache_resource(show_spinner="Loading the SFT policy and the value head. On a preset's first run they are trained "
                                "(about 2 minutes on 2 CPU cores; `make demo` trains the high_mismatch ones), then "
                                "read from the disk cache...")
def load_models(preset_name: str) -> Models:
    """The preset's SFT policy and value head V_phi, from vstar_toy.pipeline's disk cache (or trained)."""
    cfg = config(preset_name)
    world = load_world(preset_name)
    notes: list[str] = []
    policy = sft_policy(world, cfg, progress=False, say=notes.append)
    head = value_model(world, policy, cfg, progress=False, say=notes.append)
    return Models(world, policy, head.eval(), notes)


@st.cache_data(show_spinner="Building the synthetic world...")
def test_users(preset_name: str) -> list[int]:
    """Ids of the test split's users (the explorer only shows users SFT never trained on)."""
    return load_world(preset_name).queries("test").users.tolist()


# ----------------------------------------------------------------------------------------------
# World page


@st.cache_data(show_spinner="Measuring the mismatch...")
def spearman_at(preset_name: str, mismatch: float) -> list[float]:
    """Per level, Spearman rho between a prefix's logged log-probability and its true reward."""
    return world_at(preset_name, mismatch).spearman_exposure_reward()


@st.cache_data(show_spinner="Measuring the mismatch over the knob's range...")
def mismatch_table(preset_name: str, grid: tuple[float, ...]) -> pd.DataFrame:
    """Columns mismatch, level, spearman: the curve of ``plots.mismatch_curve`` (``World.mismatch_table``)."""
    return load_world(preset_name).mismatch_table(grid)


@st.cache_data(show_spinner=False)
def node_colours(preset_name: str, mismatch: float, user: int, colour: str) -> np.ndarray:
    """One value per trie node: log popularity, the user's mean true reward, or the logs' mass."""
    w = world_at(preset_name, mismatch)
    if colour == "popularity":
        return plots.node_popularity(w)
    if colour == "true reward":
        return plots.node_mean(w, w.affinity([user])[0])
    return plots.node_logsumexp(w, w.logged_logprobs([user])[0])


@st.cache_data(show_spinner=False)
def user_items(preset_name: str, mismatch: float, user: int) -> pd.DataFrame:
    """The user's history and ground truth, with their SIDs, true reward and logged log-probability."""
    w = world_at(preset_name, mismatch)
    hist = w.histories[user][w.histories[user] >= 0]
    items = np.concatenate([hist, [w.targets[user]]])
    aff = w.affinity([user])[0]
    logp = w.logged_logprobs([user])[0]
    rank = (-aff).argsort().argsort()
    return pd.DataFrame({
        "role": ["history"] * len(hist) + ["ground truth y*"],
        "item": items,
        "SID": [sid_str(s) for s in w.catalog.sids[items]],
        "true reward a(u, i)": aff[items].round(3),
        "reward rank (of N)": rank[items] + 1,
        "log P_log(i | u)": logp[items].round(2),
    })


# ----------------------------------------------------------------------------------------------
# Decoding page


def _tree_frame(world: World, cands, user: int, prefix_values: dict[str, float] | None) -> pd.DataFrame:
    """One query's PrefixTree as a DataFrame, plus the oracle's mean true reward below each prefix
    and (for beam search, whose nodes VED never scored) V_phi of the prefixes of its candidates."""
    tree = cands.tree.for_query(0)
    df = tree.to_frame()
    cat_node = np.zeros(len(tree), dtype=np.int64)
    for d in range(1, world.catalog.levels + 1):
        at = tree.depth == d
        cat_node[at] = world.catalog.node_of(tree.sid[at, :d])
    df["true_reward"] = plots.node_mean(world, world.affinity([user])[0])[cat_node]
    if prefix_values is not None:
        df["value"] = df["value"].fillna(df["sid"].map(prefix_values))
    return df


def _candidate_table(world, cands, values: torch.Tensor, user: int, target: int) -> pd.DataFrame:
    c = cands.valid[0].numpy()
    items = cands.items[0].numpy()[c]
    return pd.DataFrame({
        "rank": np.arange(1, c.sum() + 1),
        "SID": [sid_str(s) for s in cands.sids[0].numpy()[c]],
        "item": items,
        "log pi(y|x)": cands.logp[0].numpy()[c].round(3),
        "V(y)": values[0, :, -1].numpy()[c].round(3),
        "true reward": world.affinity([user], items[None])[0].round(3),
        "is y*": items == target,
    })


@st.cache_data(show_spinner="Decoding with beam search and VED...")
def decode_user(preset_name: str, user: int, budget_x: float, warm_beam: int, lam: float, beta: float,
                priority: str, value_kind: str = "learned") -> dict:
    """Beam search and VED for one user at the same budget (the preset's |C|), VED guided by the value
    ``value_kind`` (learned V_phi, or the world's oracle: ``vstar_toy.values``).

    Returns trees (DataFrames), candidate tables, the budget split, a summary per decoder, the
    target's SID, and ``error`` (the library's message when VED cannot run at this budget)."""
    m = load_models(preset_name)
    w, cfg = m.world, config(preset_name)
    row = int(np.flatnonzero(w.queries("test").users == user)[0])
    q = w.queries("test").take([row])
    n_cand = cfg.decode.n_candidates
    dcfg = cfg.overlay(decode=dict(decoder="ved", budget_x=budget_x, warm_beam=warm_beam, lam=lam, beta=beta,
                                   priority=priority)).decode
    out: dict = {"target_sid": sid_str(w.catalog.sids[q.targets[0]]), "error": None, "n_candidates": n_cand}
    sets = {}
    value = make_value(value_kind, w, m.head)
    with torch.no_grad():
        sets["beam search"] = beam_search(m.policy, q.histories, n_cand, budget_x)
        try:
            sets["VED"] = decode(m.policy, q.histories, dcfg, value.bind(q))
        except ValueError as e:
            out["error"] = str(e)
        values = {k: value.of_candidates(m.policy, q, c.sids) for k, c in sets.items()}
    out["trees"], out["candidates"], rows = {}, {}, []
    for name, c in sets.items():
        # V of every prefix of the candidates, keyed by its SID string (fills beam search's tree)
        pv = {sid_str(s[: lvl + 1]): float(values[name][0, i, lvl])
              for i, s in enumerate(c.sids[0].numpy()) if c.valid[0, i] for lvl in range(w.catalog.levels)}
        out["trees"][name] = _tree_frame(w, c, user, pv if name == "beam search" else None)
        table = _candidate_table(w, c, values[name], user, int(q.targets[0]))
        out["candidates"][name] = table
        r = reward_fn(w, "affinity", q.users, q.targets, c.items.numpy())
        rows.append({
            "decoder": name,
            "budget_tokens": int(c.budget_tokens),
            "cost_tokens": int(c.cost_tokens[0]),
            "warmup_tokens": int(c.warmup_tokens[0]),
            "expansion_tokens": int(c.expansion_tokens[0]),
            "y* reached": bool(metrics.reachability(c.items.numpy(), q.targets)[0]),
            "max true reward": float(metrics.max_reward(r, c.valid.numpy())[0]),
            "mean true reward": float(table["true reward"].mean()),
            "Div(C)": float(metrics.diversity(c.sids.numpy(), c.valid.numpy())[0]),
            "nodes in tree": int((~out["trees"][name]["pruned"]).sum()),
            "pruned children": int(out["trees"][name]["pruned"].sum()),
        })
    out["summary"] = pd.DataFrame(rows)
    return out


@st.cache_data(show_spinner="Measuring how each value ranks prefixes...")
def value_quality_table(preset_name: str) -> pd.DataFrame:
    """Per level, Spearman's rho with the true prefix reward of V_phi, log pi, the world's oracle and
    the no-learning cosine (Fig. 3's protocol on 100 validation users; ``evaluate.value_quality``)."""
    m = load_models(preset_name)
    rho = value_quality(m.world, m.policy, m.world.queries("valid", n=100), scorers(m.world, m.head))
    return pd.DataFrame([{"value": name, **{f"level {lvl + 1}": r for lvl, r in enumerate(v)}}
                         for name, v in rho.items()])


# ----------------------------------------------------------------------------------------------
# Advantages page


@st.cache_data(show_spinner=False)
def decoded_rewards(preset_name: str, user: int, decoder: str, kind: str) -> pd.DataFrame:
    """Columns sid, reward: the user's candidates from ``decoder`` (beam search or VED, 1x budget,
    the preset's knobs) with rewards R(x, y) of ``kind`` (world.rewards)."""
    cfg = config(preset_name)
    m = load_models(preset_name)
    w = m.world
    row = int(np.flatnonzero(w.queries("test").users == user)[0])
    q = w.queries("test").take([row])
    dcfg = dataclasses.replace(cfg.decode, decoder="ved" if decoder == "VED" else "beam", budget_x=1.0)
    with torch.no_grad():
        c = decode(m.policy, q.histories, dcfg, m.head.bind(q))
    r = reward_fn(w, kind, q.users, q.targets, c.items.numpy(), c.logp.numpy())
    ok = c.valid[0].numpy()
    return pd.DataFrame({"sid": [sid_str(s) for s in c.sids[0].numpy()[ok]], "reward": r[0][ok].round(4)})


@st.cache_data(show_spinner=False)
def advantage_report(sids: tuple[tuple[int, ...], ...], rewards: tuple[float, ...], eps: float,
                     ddof: int = adv.DDOF) -> dict:
    """GRPO advantages (Eq. 2), node advantages (Eq. 18), the bounds (Eq. 4, Samuelson) and the
    sibling contrast of one candidate set (one query), with the standard deviation of ``ddof``."""
    s = torch.tensor([sids], dtype=torch.long)  # (1, C, L)
    r = torch.tensor([rewards], dtype=torch.float64)  # (1, C)
    a_grpo = adv.grpo_advantages(r, eps, ddof=ddof)
    a_node, first = adv.sibling_node_advantages(s, r, eps, ddof=ddof)
    scores = adv.sibling_node_scores(s, r)
    bounds = {k: float(v[0]) for k, v in adv.advantage_bounds(r, eps, ddof=ddof).items()}
    contrast = {k: float(v[0]) for k, v in adv.sibling_contrast(s, r, eps, ddof=ddof).items()}
    table = pd.DataFrame({"SID": [sid_str(x) for x in sids], "reward": rewards,
                          "A GRPO (Eq. 2)": a_grpo[0].numpy()})
    for lvl in range(s.shape[-1]):
        table[f"R-bar depth {lvl + 1} (Eq. 17)"] = scores[0, :, lvl].numpy()
    for lvl in range(s.shape[-1]):
        table[f"A_node depth {lvl + 1} (Eq. 18)"] = a_node[0, :, lvl].numpy()
    return {"table": table, "grpo": a_grpo[0].numpy(), "node": a_node[0].numpy(), "first": first[0].numpy(),
            "bounds": bounds, "contrast": contrast, "range": float(adv.reward_range(r)[0])}


# ----------------------------------------------------------------------------------------------
# Training page


@dataclass(frozen=True)
class TrainSpec:
    """The Training page's knobs: what a run changes in the preset's config (the rest is the preset's)."""

    decoder: str
    """Who builds C(x) during training: beam (the GRPO baseline) or ved (V-STAR)."""
    objective: str
    """grpo (Eq. 2), sibling (Eq. 19) or joint (both)."""
    steps: int
    """Policy updates."""
    eval_every: int
    """Validation HR@10 / NDCG@10 and the Spearman of V and log pi every this many steps."""
    batch_queries: int
    """Training users per step."""
    reward: str
    """R(x, y) the learner sees (world.rewards)."""
    lr: float
    """The policy's Adam learning rate."""
    seed: int
    """Seed of the batches and of decoding."""
    update: str = "paper"
    """The update's estimator, a name of ``config.UPDATES``: paper (Eq. 2 and 19 as written) or vstar+."""

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
    if "step" not in log or "reward" not in log:
        raise ValueError(f"{d / 'metrics.csv'} has no step and reward columns: not a log of vstar_toy.rl.train")
    cfg = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    return log, _flatten(cfg.get("config", {})) | {"world": cfg.get("world")}


def run_summary(logs: dict[str, pd.DataFrame], steps: dict[str, int | None]) -> pd.DataFrame:
    """One row per run: its end (means over the last 5 steps, the last evaluation) and its means."""
    rows = []
    for name, log in logs.items():
        tail = log.tail(5)
        ev = log.dropna(subset=["valid_ndcg@10"]) if "valid_ndcg@10" in log else log.iloc[:0]
        last = ev.iloc[-1] if len(ev) else {}
        rows.append({
            "run": name,
            "steps": f"{int(log['step'].max())} of {steps.get(name) or '?'}",
            "reward R, last 5 steps": tail["reward"].mean(),
            "true reward, last 5 steps": tail["true_reward"].mean() if "true_reward" in log else np.nan,
            "valid NDCG@10, last eval": last.get("valid_ndcg@10", np.nan),
            "valid HR@10, last eval": last.get("valid_hr@10", np.nan),
            "contrast GRPO scale, mean": log["adv_spread_global"].mean() if "adv_spread_global" in log else np.nan,
            "contrast Sibling-GRPO, mean": log["adv_spread_sibling"].mean() if "adv_spread_sibling" in log else np.nan,
            "entropy (level 1), last 5 steps": tail["entropy_l1"].mean() if "entropy_l1" in log else np.nan,
            "minutes": log["seconds"].sum() / 60 if "seconds" in log else np.nan,
        })
    return pd.DataFrame(rows).set_index("run")
