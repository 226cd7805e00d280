"""``report.md`` and its figures from the claims' DataFrames.

Figures: a Fig. 3-like chart of Spearman per level (claim 6), a Fig. 4-like budget-scaling chart
(claim 7), the mismatch sweep (claim 8), learning curves of the RL runs (validation true reward and
NDCG@10 per step, seeds as bands), and histograms of the within-parent advantage spread under GRPO's
global normalisation and under Sibling-GRPO's (from one seed's VED candidate sets). Tables: both
verdicts of every claim with the smallest difference each comparison could detect, and the training
diagnostics of every RL arm.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..baselines import KS, baselines_table
from ..config import DecodeConfig
from ..decoding import decode
from ..evaluate import evaluate
from ..files import atomic_write_text
from ..rl import columns
from ..rl.advantages import sibling_contrast
from ..world.rewards import rewards
from .runner import BEAM_GRPO, VSTAR, Runner


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table, its columns as the header (empty cells for NaN): every table of
    report.md and recipe.md is written by this function."""
    cells = df.astype(object).where(df.notna(), "")
    head = "| " + " | ".join(map(str, df.columns)) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in cells.itertuples(index=False))


def _with_ci(mean, low, high) -> str:
    return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def claim_table(df: pd.DataFrame) -> str:
    """Markdown: one row per arm, one column per metric, 'mean [low, high]'."""
    cell = df.assign(v=[_with_ci(m, lo, hi) for m, lo, hi in zip(df["mean"], df.ci_low, df.ci_high)])
    wide = cell.pivot(index="arm", columns="metric", values="v")
    wide = wide.loc[list(dict.fromkeys(df.arm)), list(dict.fromkeys(df.metric))]
    return markdown_table(wide.rename_axis(columns=None).reset_index())


def comparison_table(df: pd.DataFrame) -> str:
    """Both verdicts' paired comparisons, with the smallest difference each could detect (the CI half-width)."""
    rows = [("paper", c) for c in df.attrs["comparisons"]]
    if df.attrs["comparisons_truth"] is not df.attrs["comparisons"] and df.attrs["metric_truth"] != df.attrs["metric"]:
        rows += [("truth", c) for c in df.attrs["comparisons_truth"]]
    return markdown_table(pd.DataFrame(
        [[kind, f"{c.a} > {c.b}", c.metric, _with_ci(c.diff, c.low, c.high), _fmt(c.detectable),
          f"({c.verdict})" if c.reported else c.verdict] for kind, c in rows],
        columns=["verdict", "comparison", "metric", "mean difference [95% CI]", "detectable", "verdict"]))


def _ci_err(df: pd.DataFrame) -> np.ndarray:
    lo = (df["mean"] - df.ci_low).fillna(0).to_numpy()
    hi = (df.ci_high - df["mean"]).fillna(0).to_numpy()
    return np.vstack([lo, hi])


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig_spearman(df: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = [("SFT", "logp", "P (SFT)"), ("beam+GRPO", "logp", "P (beam+GRPO)"), ("V-STAR", "logp", "P (V-STAR)"),
              ("V-STAR", "value", "V (V-STAR)"), ("V-STAR", "cosine", "cosine (no learning)"),
              ("V-STAR", "oracle", "oracle (the truth)")]
    levels = sorted({int(m.split("_l")[1]) for m in df.metric if "_l" in m})
    width = 0.8 / len(series)
    for i, (arm, kind, label) in enumerate(series):
        sub = df[(df.arm == arm) & df.metric.isin([f"{kind}_l{lv}" for lv in levels])]
        if sub.empty:
            continue
        ax.bar(np.arange(len(sub)) + (i - (len(series) - 1) / 2) * width, sub["mean"], width, yerr=_ci_err(sub),
               label=label, capsize=2)
    ax.set_xticks(range(len(levels)), [f"level {lv}" for lv in levels])
    ax.set_ylabel("Spearman rho with prefix reward")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title("Fig. 3 in the toy: probability (P) and value (V) vs true reward", fontsize=9)
    _save(fig, path)


def fig_budget(df: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sub = df[df.metric == "ndcg@10"]
    for dec, g in sub.groupby("trained_with"):
        g = g.sort_values("budget_x")
        ax.errorbar(g.budget_x, g["mean"], yerr=_ci_err(g), marker="o", capsize=3, label=f"train with {dec}")
    ax.set_xlabel("training-time decoding budget (x of 1 + 2|C| tokens)")
    ax.set_ylabel("test NDCG@10")
    ax.legend(fontsize=8)
    ax.set_title("Fig. 4 in the toy: budget scaling", fontsize=9)
    _save(fig, path)


def fig_mismatch(df: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for metric in ("max_reward", "ndcg@10", "reachability", "oracle max_reward"):
        g = df[df.metric == metric].copy()
        if g.empty:
            continue
        g = g.sort_values("mismatch")
        oracle = metric.startswith("oracle ")
        ax.errorbar(g.mismatch, g["mean"], yerr=_ci_err(g), marker="o", capsize=3, ls="--" if oracle else "-",
                    label=metric.removeprefix("oracle ") + (" (VED with the oracle value)" if oracle else ""))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("mismatch m")
    ax.set_ylabel("VED minus beam search")
    ax.legend(fontsize=8)
    ax.set_title("The VED gain as the mismatch knob turns", fontsize=9)
    _save(fig, path)


CURVES = (BEAM_GRPO, VSTAR)  # the arms whose learning curves the report draws
DIAGNOSTICS = (columns.REWARD, columns.ZERO_VAR_SHARE, columns.SIBLING_SIGNAL_SHARE, columns.LOSS_KL,
               columns.GRAD_NORM, columns.entropy(1), columns.VALUE_LOSS, columns.moved(columns.SFT_TOP),
               columns.moved(columns.ORACLE_BEST), columns.pushed(columns.ORACLE_BEST), columns.BEAM_OVERLAP)


def fig_learning_curves(runner: Runner, path: Path) -> bool:
    """Validation mean true reward and NDCG@10 (beam search) per step of the RL runs of claim 1's two
    trained arms, from the SFT policy at step 0: the mean over seeds, the band from the lowest to the
    highest seed. False if none ran."""
    logs = {arm.name: runner.train_logs.get((arm, None), {}) for arm in CURVES}
    if not any(logs.values()):
        return False
    start = {}  # seed -> the SFT policy's numbers on the validation users the runs are evaluated on
    for seed in sorted({s for per_seed in logs.values() for s in per_seed}):
        cfg = runner.config(seed)
        val = runner.world(seed).queries("valid", n=cfg.rl.eval_queries, seed=cfg.rl.seed)
        m, _ = evaluate(runner.world(seed), runner.sft(seed), val, cfg.decode.beam_at_1x())
        start[seed] = {columns.VALID_MEAN_REWARD: m["mean_reward"], columns.VALID_NDCG10: m["ndcg@10"]}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, col, label in zip(axes, (columns.VALID_MEAN_REWARD, columns.VALID_NDCG10), ("mean true reward", "NDCG@10")):
        for arm, per_seed in logs.items():
            if not per_seed:
                continue
            curves = pd.concat({s: pd.concat([pd.Series({0: start[s][col]}), log.set_index(columns.STEP)[col].dropna()])
                                for s, log in per_seed.items() if col in log}, axis=1)
            if curves.empty:
                continue
            mean = curves.mean(axis=1)
            ax.plot(curves.index, mean, marker="o", ms=3, label=arm)
            ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1), alpha=0.2)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"validation {label}")
        ax.legend(fontsize=7)
    fig.suptitle(f"Learning curves ({len(next(v for v in logs.values() if v))} seeds: mean and min-max band)",
                 fontsize=9)
    _save(fig, path)
    return True


def fig_horizon(df: pd.DataFrame, path: Path) -> None:
    """Claim 10's learning curves: per mismatch (columns), the validation mean true reward by beam search
    (top) and the same users decoded by VED (bottom) at every evaluation of each arm's runs, the mean over
    the seeds and the band from the lowest to the highest; a run that stopped (its curve was flat) counts
    with its last value from then on (the policy it ended with), so a mean never shows only the survivors."""
    curves = df.attrs["curves"]
    fig, axes = plt.subplots(2, len(curves), figsize=(5 * len(curves), 6.4), squeeze=False, sharex="col")
    for j, (m, arms) in enumerate(curves.items()):
        for i, (col, label) in enumerate(((columns.VALID_MEAN_REWARD, "beam search"),
                                          (columns.VALID_VED_MEAN_REWARD, "VED"))):
            ax = axes[i, j]
            for name, per_seed in arms.items():
                series = {s: log.set_index(columns.STEP)[col].dropna() for s, log in per_seed.items() if col in log}
                if not series or all(v.empty for v in series.values()):
                    continue
                table = pd.concat(series, axis=1).ffill()  # a stopped run keeps the policy it ended with
                ax.plot(table.index, table.mean(axis=1), marker="o", ms=2, label=name)
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), alpha=0.15)
            ax.set_title(f"m = {m:g}: validation, decoded by {label}", fontsize=9)
            ax.set_ylabel("mean true reward")
            if i == 1:
                ax.set_xlabel("RL step")
            ax.legend(fontsize=6)
    n = max(len(per_seed) for arms in curves.values() for per_seed in arms.values())
    fig.suptitle(f"Claim 10: training to the horizon ({n} seeds: mean and min-max band)", fontsize=10)
    _save(fig, path)


def diagnostics_table(runner: Runner) -> str:
    """Markdown: per RL arm, the mean over seeds of each run's mean of the training diagnostics (rl/train.py);
    the KL over the last 10 steps."""
    if not runner.train_logs:
        return ""
    rows = []
    for key, per_seed in runner.train_logs.items():
        cells = []
        for col in DIAGNOSTICS:
            vals = [(log[col].tail(10) if col == columns.LOSS_KL else log[col]).mean() for log in per_seed.values()
                    if col in log]
            cells.append(_fmt(float(np.mean(vals))) if vals else "")
        arm, mismatch = key
        name = arm.label + ("" if mismatch is None else f"; m = {mismatch}")
        rows.append([f"{name} ({len(per_seed)} seeds)", *cells])
    return markdown_table(pd.DataFrame(rows, columns=["RL arm (decoder, budget, value, objective, options; m)",
                                                      *DIAGNOSTICS]))


def fig_advantage_spread(runner: Runner, path: Path, seed: int = 0) -> dict:
    """Per-query within-parent spread of node advantages, global (GRPO) vs sibling normalisation, on
    the SFT policy's VED and beam candidate sets with the training reward. Returns the means."""
    w, policy, head = runner.world(seed), runner.sft(seed), runner.value(seed)
    q = runner.test_queries(seed).take(slice(0, 256))
    cfg = runner.config(seed)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    means = {}
    for ax, dec in zip(axes, ("beam", "ved")):
        with torch.no_grad():
            c = decode(policy, q.histories, DecodeConfig(decoder=dec, seed=seed), head)
        r = torch.as_tensor(rewards(w, cfg.rl.reward, q.users, q.targets, c.items.numpy(), c.logp.numpy()),
                            dtype=torch.float32)
        s = sibling_contrast(c.sids.clamp_min(0), r, cfg.rl.adv_eps, c.valid, cfg.rl.adv_ddof)
        g, sib = s["global"].numpy(), s["sibling"].numpy()
        bins = np.linspace(0, 1.1, 23)
        ax.hist(g[~np.isnan(g)], bins=bins, alpha=0.7, label="GRPO (global sigma)")
        ax.hist(sib[~np.isnan(sib)], bins=bins, alpha=0.7, label="Sibling-GRPO")
        ax.set_title(f"{dec} candidates", fontsize=9)
        ax.set_xlabel("within-parent spread of node advantages")
        means[dec] = {"global": float(np.nanmean(g)), "sibling": float(np.nanmean(sib))}
    axes[0].set_ylabel("queries")
    axes[0].legend(fontsize=7)
    fig.suptitle("Advantage compression: what shrinks under global normalisation", fontsize=9)
    _save(fig, path)
    return means


# The paper's numbers on Amazon Office Products (Tables 1, 2 and 6), shown beside ours on that data.
PAPER_OFFICE = {
    1: ("Table 1, Office (Qwen backbone, MiniOneRec protocol)",
        ["hr@3", "hr@5", "hr@10", "ndcg@3", "ndcg@5", "ndcg@10"],
        {"MiniOneRec (beam + GRPO-style RL)": [0.1217, 0.1420, 0.1634, 0.1088, 0.1172, 0.1242],
         "V-STAR (Ours-Train)": [0.1344, 0.1500, 0.1746, 0.1196, 0.1260, 0.1340]}),
    2: ("Table 2, Office", ["ndcg@10", "hr@10"],
        {"VED": [0.1340, 0.1746], "beam": [0.1299, 0.1684], "top-K": [0.1226, 0.1644]}),
    5: ("Table 6, Office, |C| = 64", ["div", "max_reward"],
        {"VED": [0.8852, 0.2473], "beam": [0.8624, 0.2321], "top-K": [0.8856, 0.2160]}),
}
NOT_COMPARABLE = (
    "The absolute numbers are not comparable with ours: the paper fine-tunes a Qwen2.5 LLM on MiniOneRec's "
    "training split (titles in the prompt, full histories), while this toolkit trains a small transformer from "
    "scratch on the SID tokens of the shipped copy, with training windows rebuilt from the valid / test "
    "histories (the training split is not in the data), at most 10 history items, and a semantic reward in "
    "the title embedding named above in place of the paper's. What can be compared is the ordering of the arms "
    "and its confidence.")


def baselines_section(runner: Runner) -> str:
    """Markdown: the baselines (counting, content, SASRec, GRU4Rec) and seed 0's SFT policy by beam search on
    the test users (``vstar_toy/baselines.py``), mean [95% interval over users]."""
    w, test = runner.world(0), runner.test_queries(0)
    table = baselines_table(w, test, runner.sft(0), runner.config(0).decode)
    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS] + ["SFT - it, hr@10", "SFT - it, ndcg@10"]
    head = ("\n## Baselines on the same split\n\nEvery catalog item ranked for each of the "
            f"{len(test)} test users, history items excluded (`vstar-toy baselines`; item embeddings: {w.embedding}); "
            "SASRec and GRU4Rec train on the SFT policy's windows; the SFT policy is seed 0's, by beam search at 1x "
            "with |C| = 10. Mean [95% interval, a bootstrap over users, each with all their rows]; 'SFT - it': the "
            "SFT policy's score minus the baseline's, paired by row.\n\n")
    rows = [[r["baseline"], *(_with_ci(r[c], r[c + "_low"], r[c + "_high"]) for c in cols)]
            for r in table.to_dict(orient="records")]
    return head + markdown_table(pd.DataFrame(rows, columns=["baseline", *cols]))


def paper_section(frames: list[pd.DataFrame]) -> str:
    """The paper's Office rows for the claims in ``frames`` that it reports, as markdown."""
    lines = ["\n## The paper on Office, for reference\n\n" + NOT_COMPARABLE + "\n"]
    for df in frames:
        if df.attrs["claim"] not in PAPER_OFFICE:
            continue
        title, cols, rows = PAPER_OFFICE[df.attrs["claim"]]
        table = pd.DataFrame([[arm, *(f"{v:.4f}" for v in vals)] for arm, vals in rows.items()], columns=["arm", *cols])
        lines.append(f"\n{title}:\n\n" + markdown_table(table))
    return "".join(lines)


def write_report(frames: list[pd.DataFrame], runner: Runner, out: Path, header: str, seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    n_test = len(runner.test_queries(0))
    lines = [f"# V-STAR toolkit: reproduction report\n\n{header}\n", f"Wall time: {seconds / 60:.1f} min.\n",
             f"Test users per seed: {n_test} (one hit = {1 / n_test:.4f} HR); seeds: {runner.settings.seeds}. "
             "Verdicts compare arms paired by seed: *holds* when the 95% interval of the mean difference lies "
             "above 0, *does not hold* when below, *inconclusive* when it contains 0 (or with one seed). "
             "*detectable* is the interval's half-width: the smallest mean difference that run could tell from 0. "
             "Each claim has two verdicts fixed before the runs (experiments/claims.py): on the paper's metric, "
             "and on a measure of the true reward.\n",
             "\n## Verdicts\n\n"]
    verdicts = [[f"{a['claim']}. {a['title']}", a["metric"], f"**{a['verdict']}**", a["metric_truth"],
                 f"**{a['verdict_truth']}**", ", ".join(f"{k}: {_fmt(v)}" for k, v in a["values_truth"].items())]
                for a in (df.attrs for df in frames)]
    lines.append(markdown_table(pd.DataFrame(verdicts, columns=[
        "claim", "paper metric", "verdict", "true-reward measure", "verdict",
        "values on the true-reward measure (mean over seeds)"])))
    by_id = {df.attrs["claim"]: df for df in frames}
    figures = {6: ("spearman.png", fig_spearman), 7: ("budget_scaling.png", fig_budget),
               8: ("mismatch_sweep.png", fig_mismatch), 10: ("horizon.png", fig_horizon)}
    for df in frames:
        a = df.attrs
        lines.append(f"\n## Claim {a['claim']}: {a['title']}\n\nPaper verdict ({a['metric']}): **{a['verdict']}**; "
                     f"truth verdict ({a['metric_truth']}): **{a['verdict_truth']}**. {a.get('note', '')}\n\n")
        lines.append(claim_table(df) + "\n" + comparison_table(df))
        if a["claim"] in figures:
            name, fn = figures[a["claim"]]
            fn(df, out / name)
            lines.append(f"\n![]({name})\n")
    if fig_learning_curves(runner, out / "learning_curves.png"):
        lines.append("\n## Learning curves\n\nValidation users, beam search, every `eval_every` steps of the RL "
                     "runs of claim 1, from the SFT policy at step 0 (mean over seeds; the band spans the lowest "
                     "and the highest seed).\n\n"
                     "![](learning_curves.png)\n")
    if runner.train_logs:
        lines.append("\n## Training diagnostics\n\nPer RL arm, the mean over seeds of each run's mean per step "
                     "(rl/train.py, README 'Training diagnostics'): the learner's reward, the share of GRPO groups "
                     "with no reward variance (no gradient from Eq. 2), the share of sibling groups with a contrast "
                     "(a term in Eq. 19), the KL to the SFT policy (k3, last 10 steps), the gradient norm before "
                     "clipping, the level-1 entropy and the value loss; then the squeezing diagnostics of claim 9: "
                     "level-1 mass moved per step onto the SFT policy's top code and onto the user's best code, the "
                     "group's advantage mass on the best code's branch, and the share of the policy's own beam set "
                     "inside the group.\n\n" + diagnostics_table(runner))
    if any(c in by_id for c in (1, 4)):
        means = fig_advantage_spread(runner, out / "advantage_spread.png")
        lines.append("\n## Advantage compression (Eq. 3-4, Sec. 4.3)\n\nWithin every parent with two or more "
                     "child nodes, the spread of node advantages: GRPO's global normalisation against "
                     "Sibling-GRPO's (seed 0, SFT policy, training reward). Means: "
                     + "; ".join(f"{d}: global {_fmt(m['global'])}, sibling {_fmt(m['sibling'])}"
                                 for d, m in means.items()) + ".\n\n![](advantage_spread.png)\n")
    if runner.world_loader is not None:  # real data: what a policy should beat, on the same test users
        lines.append(baselines_section(runner))
    if runner.world_loader is not None and "office" in runner.world(0).name.lower():  # the paper reports Office
        lines.append(paper_section(frames))
    path = out / "report.md"
    atomic_write_text("".join(lines), path)
    return path
