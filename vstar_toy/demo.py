"""`vstar-toy demo`: the whole story in a few minutes, in five steps (``run``): the world and its mismatch
knob, SFT, the value model, beam search against VED at the same budget, and a short beam search + GRPO
against V-STAR (VED + joint), as written and corrected. Each step prints what it found and writes its table
or figure into the output folder; ``stages.csv`` says where the time went."""

from __future__ import annotations

import time
from pathlib import Path

from .config import Config, preset
from .flags import first_test_users


def run(out: Path, preset_name: str, queries: int | None, rl_steps: int) -> dict[str, float]:
    """The demo's five steps; returns the seconds each took, also written to ``stages.csv``."""
    import numpy as np
    import pandas as pd

    from .evaluate import scorers, value_quality
    from .pipeline import build_world, sft_policy, value_model

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:  # the seconds since the previous lap
        seconds[stage] = time.perf_counter() - t0 - sum(seconds.values())

    cfg = preset(preset_name)
    print(f"[1/5] The world ({preset_name}): items with Semantic IDs, users with hidden tastes.")
    w = build_world(cfg.world)
    _world(w, cfg, out)
    lap("world")
    print("[2/5] SFT: the policy learns the logs (which follow popularity as much as taste).")
    pol = sft_policy(w, cfg, None, progress=True)
    lap("SFT")
    print("[3/5] The value model V_phi (Sec. 4.1): TD on dense semantic returns.")
    head = value_model(w, pol, cfg, None, progress=True)
    rho = value_quality(w, pol, w.queries("valid", n=200), scorers(w, head))
    print("      Spearman with the true prefix reward, per level (the oracle is the world's truth):")
    for name, r in rho.items():
        print(f"        {name:<8} {np.round(r, 3).tolist()}")
    lap("value")
    print("[4/5] Decoding the test users at the same budget (1x = 1 + 2|C| forward tokens):")
    q = first_test_users(w, queries)
    _decoding(w, pol, head, q, cfg, out)
    lap("decoding")
    print(f"[5/5] Training from the SFT policy for {rl_steps} steps (Sec. 4.4): beam search + GRPO "
          "against V-STAR (VED + GRPO + Sibling-GRPO), as written and corrected (V-STAR+).")
    _training(w, pol, head, q, cfg, rl_steps, out)
    lap("training")
    pd.DataFrame({"stage": list(seconds), "seconds": list(seconds.values())}).to_csv(out / "stages.csv", index=False)
    print(f"done in {sum(seconds.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"); tables and figures in {out}/")
    return seconds


def _world(w, cfg: Config, out: Path) -> None:
    """Step 1: the world's size, its SID tree for one user, and the mismatch knob's curve."""
    from . import plots

    s = w.summary()
    print(f"      {s['items']} items, SIDs of {s['levels']} codes {s['codebook_sizes']}, {s['users']} users; "
          f"mismatch m = {s['mismatch']}")
    plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), out / "sid_tree.png")
    knob = w.mismatch_table()  # only the logging distribution depends on m: the same catalog, tastes, truth
    plots.save(plots.mismatch_curve(knob, mark=cfg.world.mismatch), out / "mismatch_knob.png")
    knob.to_csv(out / "mismatch_knob.csv", index=False)
    print("      rho(logged log-prob, true reward) per level as m grows:")
    print(knob.pivot(index="mismatch", columns="level", values="spearman").round(3).to_string())
    print(f"      -> {out / 'sid_tree.png'}, {out / 'mismatch_knob.png'}")


def _decoding(w, pol, head, q, cfg: Config, out: Path) -> None:
    """Step 4: beam search, top-K and VED at 1x (and beam search and VED at 2x) on the test users, with
    the two trees of the first user drawn."""
    import pandas as pd

    from . import plots
    from .evaluate import evaluate
    from .world import sid_str

    tsid = sid_str(w.catalog.sids[q.targets[0]])
    table = []
    for name, decoder, budget_x in [("beam", "beam", 1.0), ("topk", "topk", 1.0), ("ved", "ved", 1.0),
                                    ("ved 2x", "ved", 2.0), ("beam 2x", "beam", 2.0)]:
        dcfg = cfg.replace(decode={"decoder": decoder, "budget_x": budget_x}).decode
        m, sets = evaluate(w, pol, q, dcfg, head)
        keys = ("max_reward", "mean_reward", "reachability", "hr@10", "ndcg@10", "div", "mean_cost_tokens",
                "expansion_tokens")
        table.append({"decoder": name, **{k: m[k] for k in keys}})
        if name in ("ved", "beam"):
            title = ("VED's tree for one test user (red: the ground-truth path)" if name == "ved" else
                     "Beam search's tree for the same user (x: pruned)")
            plots.save(plots.decoding_tree(sets[0].tree.to_frame(0), w.catalog.levels, target_sid=tsid,
                                           color="value" if name == "ved" else "logp", title=title),
                       out / f"{name}_tree.png")
    df = pd.DataFrame(table)
    df.to_csv(out / "decoding.csv", index=False)
    print(df.round(4).to_string(index=False))


def _training(w, pol, head, q, cfg: Config, rl_steps: int, out: Path) -> None:
    """Step 5: beam search + GRPO, V-STAR and V-STAR+ trained from the SFT policy, each tested by beam search."""
    import copy

    import pandas as pd

    from . import plots
    from .experiments.runner import BEAM_GRPO, VSTAR, VSTAR_PLUS
    from .rl import columns
    from .rl.train import train as run_training

    logs, scores = {}, [{"policy": "SFT", **_test_row(w, pol, q, cfg)}]
    for arm in (BEAM_GRPO, VSTAR, VSTAR_PLUS):
        stages = arm.stages()
        rcfg = cfg.replace(decode=stages["decode"], rl={**stages["rl"], "steps": rl_steps})
        res = run_training(w, copy.deepcopy(pol), rcfg, copy.deepcopy(head), run_dir=out / "runs" / arm.name,
                           progress=True)  # an interrupted demo resumes its runs
        logs[arm.name] = res.log
        scores.append({"policy": arm.name, **_test_row(w, res.policy, q, cfg),
                       "train_reward_last10": float(res.log[columns.REWARD].tail(10).mean()),
                       "adv_spread_global": float(res.log[columns.ADV_SPREAD_GLOBAL].mean()),
                       "adv_on_best": float(res.log[columns.pushed(columns.ORACLE_BEST)].mean()),
                       "moved_to_best": float(res.log[columns.moved(columns.ORACLE_BEST)].sum())})
    plots.save(plots.training_curves(logs), out / "training.png")
    trained = pd.DataFrame(scores)
    trained.to_csv(out / "training.csv", index=False)
    print("      test users, every policy decoded by beam search (one seed: see `vstar-toy reproduce` for intervals):")
    print(trained.round(4).to_string(index=False))
    print("      V-STAR and V-STAR+ train on the same VED candidates. Eq. 2 measures each against the group's mean;\n"
          "      inside VED's concentrated group, which the policy would mostly not decode itself, that leaves little\n"
          "      advantage on the branch of the user's best item (adv_on_best) and moves little probability onto it\n"
          "      (moved_to_best, level 1). V-STAR+ keeps the positive advantage of a candidate outside the policy's\n"
          "      own beam set and drops its negative one (README, 'Why the learning half failed').")


def _test_row(world, policy, queries, cfg: Config) -> dict:
    from .evaluate import evaluate
    m, _ = evaluate(world, policy, queries, cfg.decode.beam_at_1x())
    return {k: m[k] for k in ("mean_reward", "max_reward", "hr@10", "ndcg@10")}
