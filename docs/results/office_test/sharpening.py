"""RL's sharpening on Office (issue 29, item 5; MiniOneRec's issue #35: RL lifts HR@1 and lowers HR@50): for
the SFT policy and each trained policy of claim 1, a width-50 beam over all 4,866 test rows, HR@1/10/50, the
mean semantic reward of the top 1/10/50 (``metrics.sharpening``), how many items are ranked first over the
rows and the share of the most frequent; mean over 3 seeds and its 95% t interval. The trained policies are
those of `vstar-toy reproduce --data amazon18-office --claims 1,2,5 --out runs/reproduce_office` (finished
runs are read back, not trained again). Writes sharpening.json and sharpening.md beside this file.
"""

import json
from pathlib import Path

import numpy as np
from scipy import stats

from vstar_toy.config import BEAM_1X, preset
from vstar_toy.evaluate import evaluate, true_reward_kind
from vstar_toy.experiments.claims import BEAM_GRPO, SHARPENING_KS, VSTAR, VSTAR_PLUS
from vstar_toy.experiments.runner import SFT, Runner, Settings
from vstar_toy.metrics import sharpening
from vstar_toy.pipeline import load_data
from vstar_toy.world.rewards import rewards

HERE = Path(__file__).parent
POLICIES = {"SFT": SFT, "beam+GRPO": BEAM_GRPO, "V-STAR": VSTAR, "V-STAR+": VSTAR_PLUS}


def main() -> None:
    runner = Runner(preset("cpu_demo"), Settings.make(test_queries=0), Path("runs/reproduce_office"), progress=False,
                    say=lambda m: None, world_loader=lambda: load_data("amazon18-office"))
    world = runner.world(0)
    q = runner.test_queries(0)
    out = {}
    for name, arm in POLICIES.items():
        per_seed = []
        for seed in range(runner.settings.seeds):
            policy = runner.sft(seed) if arm is SFT else runner.trained(seed, arm)[0]
            cfg = runner.config(seed, decode={**BEAM_1X, "n_candidates": max(SHARPENING_KS)}).decode
            _, sets = evaluate(world, policy, q, cfg)
            items = np.concatenate([c.items.numpy() for c in sets])
            r = rewards(world, true_reward_kind(world), q.users, q.targets, items)
            per_seed.append(sharpening(items, q.targets, r, items >= 0, SHARPENING_KS))
        out[name] = {k: [s[k] for s in per_seed] for k in per_seed[0]}
        print(name, {k: round(float(np.mean(v)), 4) for k, v in out[name].items()}, flush=True)
    (HERE / "sharpening.json").write_text(json.dumps(out, indent=1))

    def cell(v):
        m, half = float(np.mean(v)), float(stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v)))
        return f"{m:.4f} ± {half:.4f}" if m < 10 else f"{m:.0f} ± {half:.0f}"

    keys = list(out["SFT"])
    lines = ["| policy | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(v[k]) for k in keys) + " |" for name, v in out.items()]
    (HERE / "sharpening.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
