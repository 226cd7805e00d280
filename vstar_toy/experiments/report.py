"""``report.md`` and its figures from the claims' DataFrames (the figures drawn by ``plots.py``).

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

import numpy as np
import pandas as pd
import torch

from .. import plots
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


CURVES = (BEAM_GRPO, VSTAR)  # the arms whose learning curves the report draws
DIAGNOSTICS = (columns.REWARD, columns.ZERO_VAR_SHARE, columns.SIBLING_SIGNAL_SHARE, columns.LOSS_KL,
               columns.GRAD_NORM, columns.entropy(1), columns.VALUE_LOSS, columns.moved(columns.SFT_TOP),
               columns.moved(columns.ORACLE_BEST), columns.pushed(columns.ORACLE_BEST), columns.BEAM_OVERLAP)


def learning_curves(runner: Runner) -> dict[str, dict[str, pd.DataFrame]]:
    """Validation mean true reward and NDCG@10 (beam search) per step of the RL runs of claim 1's two trained
    arms (``CURVES``), from the SFT policy at step 0: {column: {arm: (step x seed) table}}; empty if none ran."""
    logs = {arm.name: runner.train_logs.get((arm, None), {}) for arm in CURVES}
    if not any(logs.values()):
        return {}
    start = {}  # seed -> the SFT policy's numbers on the validation users the runs are evaluated on
    for seed in sorted({s for per_seed in logs.values() for s in per_seed}):
        cfg = runner.config(seed)
        val = runner.world(seed).queries("valid", n=cfg.rl.eval_queries, seed=cfg.rl.seed)
        m, _ = evaluate(runner.world(seed), runner.sft(seed), val, cfg.decode.beam_at_1x())
        start[seed] = {columns.VALID_MEAN_REWARD: m["mean_reward"], columns.VALID_NDCG10: m["ndcg@10"]}
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    for col in (columns.VALID_MEAN_REWARD, columns.VALID_NDCG10):
        for arm, per_seed in logs.items():
            table = pd.concat({s: pd.concat([pd.Series({0: start[s][col]}), log.set_index(columns.STEP)[col].dropna()])
                               for s, log in per_seed.items() if col in log}, axis=1) if per_seed else pd.DataFrame()
            if not table.empty:
                curves.setdefault(col, {})[arm] = table
    return curves


def advantage_spreads(runner: Runner, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per query, the within-parent spread of node advantages under GRPO's global normalisation and under
    Sibling-GRPO's, on the SFT policy's beam and VED candidate sets with the training reward:
    {decoder: (global, sibling)}."""
    w, policy, head = runner.world(seed), runner.sft(seed), runner.value(seed)
    q = runner.test_queries(seed).take(slice(0, 256))
    cfg = runner.config(seed)
    out = {}
    for dec in ("beam", "ved"):
        with torch.no_grad():
            c = decode(policy, q.histories, DecodeConfig(decoder=dec, seed=seed), head)
        r = torch.as_tensor(rewards(w, cfg.rl.reward, q.users, q.targets, c.items.numpy(), c.logp.numpy()),
                            dtype=torch.float32)
        s = sibling_contrast(c.sids.clamp_min(0), r, cfg.rl.adv_eps, c.valid, cfg.rl.adv_ddof)
        out[dec] = (s["global"].numpy(), s["sibling"].numpy())
    return out


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
    figures = {6: ("spearman.png", plots.claim_spearman), 7: ("budget_scaling.png", plots.claim_budget),
               8: ("mismatch_sweep.png", plots.claim_mismatch),
               10: ("horizon.png", lambda df: plots.horizon_curves(df.attrs["curves"]))}
    for df in frames:
        a = df.attrs
        lines.append(f"\n## Claim {a['claim']}: {a['title']}\n\nPaper verdict ({a['metric']}): **{a['verdict']}**; "
                     f"truth verdict ({a['metric_truth']}): **{a['verdict_truth']}**. {a.get('note', '')}\n\n")
        lines.append(claim_table(df) + "\n" + comparison_table(df))
        if a["claim"] in figures:
            name, draw = figures[a["claim"]]
            plots.save(draw(df), out / name)
            lines.append(f"\n![]({name})\n")
    curves = learning_curves(runner)
    if curves:
        n_seeds = max(t.shape[1] for arms in curves.values() for t in arms.values())
        plots.save(plots.seed_curves(curves, {columns.VALID_MEAN_REWARD: "mean true reward",
                                              columns.VALID_NDCG10: "NDCG@10"},
                                     f"Learning curves ({n_seeds} seeds: mean and min-max band)"),
                   out / "learning_curves.png")
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
        spreads = advantage_spreads(runner)
        plots.save(plots.advantage_spread(spreads), out / "advantage_spread.png")
        means = {d: {"global": float(np.nanmean(g)), "sibling": float(np.nanmean(sib))}
                 for d, (g, sib) in spreads.items()}
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
