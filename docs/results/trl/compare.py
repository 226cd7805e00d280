"""V-STAR inside TRL beside the toolkit's own loop (issue 33): on the tiny preset's world, for world seeds 0-4, a
tiny Qwen2 (random weights) SFT-trained once (``pipeline.sft_policy(..., backbone="tiny-qwen")``), then the same
steps of RL from it by the toolkit's loop (``rl.train.train``) and by TRL's GRPOTrainer with the toolkit's
candidates and per-token advantages (``integrations.trl_grpo.train_with_trl``), for beam search + GRPO and for
V-STAR+ (VED, joint, negatives dropped); every policy then decoded by beam search at 1x on the world's test users.
Mean over seeds of the candidates' mean true reward, and each loop minus SFT with its 95% t interval over seeds.
Writes compare.json and compare.md beside this file. About 10 minutes on 2 cores.
"""

import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vstar_toy.config import UPDATES, presets  # noqa: E402
from vstar_toy.evaluate import evaluate  # noqa: E402
from vstar_toy.experiments.stats import compare  # noqa: E402
from vstar_toy.integrations.trl_grpo import train_with_trl  # noqa: E402
from vstar_toy.pipeline import build_world, sft_policy, value_model  # noqa: E402
from vstar_toy.rl.train import train  # noqa: E402

HERE = Path(__file__).parent
SEEDS = range(5)
STEPS, LR = 100, 3e-4
ARMS = {"beam+GRPO": ({"decoder": "beam"}, {"objective": "grpo", **UPDATES["paper"]}),
        "V-STAR+": ({"decoder": "ved"}, {"objective": "joint", **UPDATES["vstar+"]})}


def main() -> None:
    quiet = dict(progress=False, say=lambda m: None)
    scores: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    for seed in SEEDS:
        base = presets.tiny().replace(world={"seed": seed}, sft={"epochs": 8})
        world = build_world(base.world)
        sft = sft_policy(world, base, backbone="tiny-qwen", **quiet)
        head = value_model(world, sft, base, **quiet)
        test = world.queries("test")

        def score(policy, cfg=base, world=world, test=test):
            return evaluate(world, policy, test, cfg.decode.beam_at_1x())[0]["mean_reward"]

        scores.setdefault("SFT", {}).setdefault("SFT", []).append(score(sft))
        for arm, (dec, rl) in ARMS.items():
            cfg = base.replace(decode=dec, rl={**rl, "steps": STEPS, "lr": LR, "eval_every": STEPS, "seed": seed})
            t0 = time.perf_counter()
            res = train(world, copy.deepcopy(sft), cfg, copy.deepcopy(head), **quiet)
            seconds[f"{arm}, toolkit"] = seconds.get(f"{arm}, toolkit", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            trl_policy, _ = train_with_trl(world, sft, cfg, head, out=f"runs/trl_compare/{seed}", disable_tqdm=True)
            seconds[f"{arm}, TRL"] = seconds.get(f"{arm}, TRL", 0.0) + time.perf_counter() - t0
            scores.setdefault(arm, {}).setdefault("toolkit", []).append(score(res.policy))
            scores[arm].setdefault("TRL", []).append(score(trl_policy))
            print(f"seed {seed} {arm}: SFT {scores['SFT']['SFT'][-1]:.4f} toolkit {scores[arm]['toolkit'][-1]:.4f} "
                  f"TRL {scores[arm]['TRL'][-1]:.4f}", file=sys.stderr)
    sft = scores["SFT"]["SFT"]
    rows = []
    for arm in ARMS:
        for loop in ("toolkit", "TRL"):
            vals = scores[arm][loop]
            c = compare(vals, sft)
            rows.append({"arm": arm, "loop": loop, "mean_reward": sum(vals) / len(vals), "minus_sft": c["diff"],
                         "low": c["low"], "high": c["high"], "seconds_per_run": seconds[f"{arm}, {loop}"] / len(sft)})
        c = compare(scores[arm]["TRL"], scores[arm]["toolkit"])
        rows.append({"arm": arm, "loop": "TRL minus toolkit", "mean_reward": None, "minus_sft": c["diff"],
                     "low": c["low"], "high": c["high"], "seconds_per_run": None})
    out = {"seeds": len(sft), "steps": STEPS, "lr": LR, "test_users": len(world.queries("test")),
           "sft_mean_reward": sum(sft) / len(sft), "per_seed": scores, "rows": rows}
    (HERE / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"Tiny preset, {out['test_users']} test users per world, world seeds {SEEDS.start}-{SEEDS.stop - 1}, "
             f"{STEPS} steps at lr {LR:g}, every policy decoded by beam search at 1x. SFT: "
             f"{out['sft_mean_reward']:.4f}.\n", "| arm | loop | mean true reward | minus SFT [95% CI over seeds] | "
             "seconds per run |", "|---|---|---|---|---|"]
    for r in rows:
        mean = "" if r["mean_reward"] is None else f"{r['mean_reward']:.4f}"
        secs = "" if r["seconds_per_run"] is None else f"{r['seconds_per_run']:.0f}"
        what = "difference" if r["mean_reward"] is None else "minus SFT"
        lines.append(f"| {r['arm']} | {r['loop']} | {mean} | {what} {r['minus_sft']:+.4f} [{r['low']:+.4f}, "
                     f"{r['high']:+.4f}] | {secs} |")
    (HERE / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
