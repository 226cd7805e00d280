"""V-STAR inside TRL beside the toolkit's own loop (issue 33): on the tiny preset's world, for world seeds 0-4, a
tiny Qwen2 (random weights) SFT-trained once (``pipeline.sft_policy(..., backbone="tiny-qwen")``), then the same
steps of RL from it by the toolkit's loop (``rl.train.train``) and by TRL's GRPOTrainer with the toolkit's
candidates and per-token advantages (``integrations.trl_grpo.train_with_trl``), for beam search + GRPO and for
V-STAR+ (VED, joint, negatives dropped); every policy then decoded by beam search at 1x on the world's test users.
Mean over seeds of the candidates' mean true reward, and each loop minus SFT with its 95% t interval over seeds.
Writes compare.json and compare.md beside this file (``--table``: the table again from compare.json's per-seed
values). About 10 minutes on 2 cores.
"""

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vstar_toy.config import presets  # noqa: E402
from vstar_toy.evaluate import evaluate  # noqa: E402
from vstar_toy.experiments.runner import BEAM_GRPO, VSTAR_PLUS  # noqa: E402
from vstar_toy.experiments.stats import compare  # noqa: E402
from vstar_toy.integrations.trl_grpo import train_with_trl  # noqa: E402
from vstar_toy.pipeline import build_world, sft_policy, value_model  # noqa: E402
from vstar_toy.rl.train import train  # noqa: E402

HERE = Path(__file__).parent
SEEDS = range(5)
STEPS, LR = 100, 3e-4
ARMS = {arm.name: arm for arm in (BEAM_GRPO, VSTAR_PLUS)}


def main() -> None:
    quiet = dict(progress=False, say=lambda m: None)
    scores: dict[str, dict[str, list[float]]] = {}
    for seed in SEEDS:
        base = presets.tiny().replace(world={"seed": seed}, sft={"epochs": 8})
        world = build_world(base.world)
        sft = sft_policy(world, base, backbone="tiny-qwen", **quiet)
        head = value_model(world, sft, base, **quiet)
        test = world.queries("test")

        def score(policy, cfg=base, world=world, test=test):
            return evaluate(world, policy, test, cfg.decode.beam_at_1x())[0]["mean_reward"]

        scores.setdefault("SFT", {}).setdefault("SFT", []).append(score(sft))
        for arm, stages in ((name, a.stages()) for name, a in ARMS.items()):
            cfg = base.replace(decode=stages["decode"],
                               rl={**stages["rl"], "steps": STEPS, "lr": LR, "eval_every": STEPS, "seed": seed})
            res = train(world, copy.deepcopy(sft), cfg, copy.deepcopy(head), **quiet)
            trl_policy, _ = train_with_trl(world, sft, cfg, head, out=f"runs/trl_compare/{seed}", disable_tqdm=True)
            scores.setdefault(arm, {}).setdefault("toolkit", []).append(score(res.policy))
            scores[arm].setdefault("TRL", []).append(score(trl_policy))
            print(f"seed {seed} {arm}: SFT {scores['SFT']['SFT'][-1]:.4f} toolkit {scores[arm]['toolkit'][-1]:.4f} "
                  f"TRL {scores[arm]['TRL'][-1]:.4f}", file=sys.stderr)
    write(scores, len(world.queries("test")))


def write(scores: dict[str, dict[str, list[float]]], test_users: int) -> None:
    """compare.json and compare.md from the per-seed scores."""
    sft = scores["SFT"]["SFT"]
    rows = []
    for arm in ARMS:
        for loop in ("toolkit", "TRL"):
            vals = scores[arm][loop]
            c = compare(vals, sft)
            rows.append({"arm": arm, "loop": loop, "mean_reward": sum(vals) / len(vals), "minus": "SFT",
                         "diff": c["diff"], "low": c["low"], "high": c["high"]})
        c = compare(scores[arm]["TRL"], scores[arm]["toolkit"])
        rows.append({"arm": arm, "loop": "TRL", "mean_reward": None, "minus": "toolkit", "diff": c["diff"],
                     "low": c["low"], "high": c["high"]})
    out = {"seeds": len(sft), "steps": STEPS, "lr": LR, "test_users": test_users,
           "sft_mean_reward": sum(sft) / len(sft), "per_seed": scores, "rows": rows}
    (HERE / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"Tiny preset, {test_users} test users per world, world seeds {SEEDS.start}-{SEEDS.stop - 1}, {STEPS} "
             f"steps at lr {LR:g}, every policy decoded by beam search at 1x. SFT: {out['sft_mean_reward']:.4f}.\n",
             "| arm | loop | mean true reward | difference [95% CI over seeds] |", "|---|---|---|---|"]
    for r in rows:
        mean = "" if r["mean_reward"] is None else f"{r['mean_reward']:.4f}"
        lines.append(f"| {r['arm']} | {r['loop']} | {mean} | {r['loop']} minus {r['minus']}: {r['diff']:+.4f} "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] |")
    (HERE / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    if "--table" in sys.argv:
        saved = json.loads((HERE / "compare.json").read_text())
        write(saved["per_seed"], saved["test_users"])
    else:
        main()
