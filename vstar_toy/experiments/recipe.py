"""The RL recipe, chosen once on the validation split of the default world and then frozen.

Every training arm of every claim uses the same ``RLConfig``; nothing is tuned per arm. This module
is how its values were chosen (``vstar-toy recipe``): a grid of learning rate x inner epochs, then the
warm-up and the joint loss's normalisation (``sibling_norm``) at the best grid point, each run for two
arms -- beam search + GRPO and V-STAR (VED + joint) -- from the same SFT policy and value head, with
the default world's seed 0. The criterion, fixed before the runs: the mean over the two arms of the
validation users' mean true reward of their beam-search candidates after training (the measure RL
moves, ``metrics.mean_reward``). NDCG@10 and the KL to the SFT policy are reported beside it. The test
split is never touched.

The grid started at lr 1e-3 .. 1e-2; its best point lay on its lower edge, so lower rates were added
(one rule, applied until the best point was inside the grid): ``GRID`` below is the grid as it ended.
Runs finished earlier are read back from their run directories, not trained again.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .. import pipeline
from ..config import Config
from ..evaluate import evaluate
from ..files import atomic_write_text
from ..rl import columns
from ..rl.train import train
from .report import markdown_table
from .runner import BEAM_GRPO, VSTAR, Arm

ARMS = (BEAM_GRPO, VSTAR)
GRID = {"lr": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "inner_epochs": (1, 2)}
CRITERION = "valid_mean_reward"


def _run(world, policy, head, cfg: Config, arm: Arm, out: Path, progress: bool, say) -> dict:
    cfg = cfg.replace(**arm.stages())
    rl = cfg.rl
    name = f"{arm.name}-lr{rl.lr:g}-ep{rl.inner_epochs}-wu{rl.warmup_steps}-{rl.sibling_norm}"
    res = train(world, copy.deepcopy(policy), cfg, copy.deepcopy(head), run_dir=out / name, progress=progress,
                say=say)
    m, _ = evaluate(world, res.policy, world.queries("valid"), cfg.decode.beam_at_1x())
    return {"arm": arm.name, "lr": rl.lr, "inner_epochs": rl.inner_epochs, "warmup_steps": rl.warmup_steps,
            "sibling_norm": rl.sibling_norm, "valid_mean_reward": m["mean_reward"], "valid_ndcg@10": m["ndcg@10"],
            "valid_hr@10": m["hr@10"], "kl_last10": float(res.log[columns.LOSS_KL].tail(10).mean()),
            "zero_var_share": float(res.log[columns.ZERO_VAR_SHARE].mean()),
            "sibling_signal_share": float(res.log[columns.SIBLING_SIGNAL_SHARE].mean())}


def recipe_sweep(base: Config, out: str | Path, steps: int = 60, progress: bool = True,
                 say: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """Run the grid and the two follow-ups; write ``out/recipe.csv`` and ``out/recipe.md``. Returns the
    table (one row per arm and setting, plus the SFT policy's own numbers) and the chosen settings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = base.replace(rl={"steps": steps, "seed": 0})
    world = pipeline.build_world(cfg.world)
    policy = pipeline.sft_policy(world, cfg, progress=progress, say=say)
    head = pipeline.value_model(world, policy, cfg, progress=progress, say=say)
    sft, _ = evaluate(world, policy, world.queries("valid"), cfg.decode.beam_at_1x())
    rows = [{"arm": "SFT", "valid_mean_reward": sft["mean_reward"], "valid_ndcg@10": sft["ndcg@10"],
             "valid_hr@10": sft["hr@10"]}]

    def score(setting: dict) -> float:
        runs = [_run(world, policy, head, cfg.replace(rl=setting), arm, out / "runs", progress, say) for arm in ARMS]
        rows.extend(runs)
        return sum(r[CRITERION] for r in runs) / len(runs)

    # 1. learning rate x inner epochs, no warm-up, Eq. 19 per token
    grid = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    scores = [score(g) for g in grid]
    best, best_score = grid[scores.index(max(scores))], max(scores)
    # 2. a warm-up of a sixth of the steps, then 3. Eq. 19 read literally: each kept if it scores higher
    for follow_up in ({"warmup_steps": steps // 6}, {"sibling_norm": "candidates"}):
        trial = {**best, **follow_up}
        trial_score = score(trial)
        if trial_score > best_score:
            best, best_score = trial, trial_score
    table = pd.DataFrame(rows)
    table.to_csv(out / "recipe.csv", index=False)
    atomic_write_text(_markdown(table, best, cfg, steps, time.perf_counter() - t0), out / "recipe.md")
    return table, best


def _others(cfg: Config, chosen: dict) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg.rl).items() if k not in chosen and k not in ("seed", "steps")}


def _markdown(table: pd.DataFrame, chosen: dict, cfg: Config, steps: int, seconds: float) -> str:
    n_valid = pipeline.build_world(cfg.world).size("valid")
    return "\n".join([
        "# The RL recipe, chosen on the validation split",
        "",
        f"World m = {cfg.world.mismatch:g}, seed 0 ({n_valid} validation users), {steps} steps of "
        f"{cfg.rl.batch_queries} users, both arms from the same SFT policy and value head. Criterion, fixed "
        f"before the runs: the mean over the two arms of `{CRITERION}` (validation users' mean true reward "
        f"of their beam-search candidates after training). {seconds / 60:.1f} min.",
        "",
        markdown_table(table.round(4).assign(lr=table["lr"].map(lambda v: f"{v:g}" if v == v else ""))),
        "",
        f"Chosen: {chosen}. The other RLConfig fields keep their defaults: {_others(cfg, chosen)}.",
        "",
    ])


__all__ = ["recipe_sweep", "GRID", "ARMS", "CRITERION"]
