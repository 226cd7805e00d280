"""`vstar-toy`: the command line. Each command is a thin shell around library calls.

    vstar-toy world   --mismatch 0.9 --json       the world and its measured mismatch
    vstar-toy sft     --out runs/sft              supervised policy -> checkpoint
    vstar-toy value   --policy runs/sft           V_phi by TD on the policy's candidates
    vstar-toy decode  --decoder ved --json        decode the test split and score it
    vstar-toy demo    --out runs/demo             the whole story in a few minutes

Errors in what you typed (a bad config value, a checkpoint from another world, a budget below the
minimum) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

from . import checkpoint, plots
from .config import Config, DecodeConfig, preset
from .evaluate import evaluate
from .pipeline import build_world, sft_policy, value_model

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="V-STAR toolkit: value-guided decoding and Sibling-GRPO over SID prefix trees.")

Preset = Annotated[str, typer.Option("--preset", help="a named preset: cpu_demo, paper, high_mismatch, ...")]
Mismatch = Annotated[float | None, typer.Option(help="the world's mismatch knob m in [0, 1] (overrides the preset)")]
Seed = Annotated[int | None, typer.Option(help="the world's seed (overrides the preset)")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object and nothing else on stdout")]
PolicyDir = Annotated[Path | None, typer.Option("--policy", help="a checkpoint from `vstar-toy sft` (default: cached)")]


def make_config(preset_name: str, mismatch: float | None = None, seed: int | None = None) -> Config:
    cfg = preset(preset_name)
    world = {}
    if mismatch is not None:
        world["mismatch"] = mismatch
    if seed is not None:
        world["seed"] = seed
    return cfg.replace(world=world) if world else cfg


def say_to(quiet: bool):
    """Progress and notes go to stderr, so that --json output on stdout stays clean."""
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


# ----------------------------------------------------------------------------------------------
@app.command()
def world(preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None, as_json: AsJson = False,
          plot: Annotated[Path | None, typer.Option(help="save the SID-tree picture in this folder")] = None):
    """Build the synthetic world and print its summary (items, SIDs, branching, measured mismatch)."""
    cfg = make_config(preset_name, mismatch, seed)
    w = build_world(cfg.world)
    summary = w.summary()
    if as_json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
        print("\nspearman_exposure_reward: per level, rho between the logs' log-probability of a prefix and its "
              "true reward.\nNear 1 = likelihood ranks prefixes as reward does; near 0 = it does not (mismatch).")
    if plot is not None:
        plot.mkdir(parents=True, exist_ok=True)
        plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), plot / "sid_tree.png")
        say_to(as_json)(f"saved {plot / 'sid_tree.png'}")


@app.command()
def sft(out: Annotated[Path, typer.Option(help="checkpoint directory to write")],
        preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
        epochs: Annotated[int | None, typer.Option(help="maximum SFT epochs")] = None, quiet: bool = False):
    """Supervised next-item training on the logs; writes a checkpoint that `--policy DIR` loads."""
    cfg = make_config(preset_name, mismatch, seed)
    if epochs is not None:
        cfg = cfg.replace(sft={"epochs": epochs})
    w = build_world(cfg.world)
    from .policy.tiny import TinyPolicy
    from .rl.sft import train_sft

    policy = TinyPolicy(w.catalog, cfg.policy)
    log = train_sft(policy, w, cfg.sft, progress=not quiet)
    checkpoint.save(out, w, policy, extra={"sft_log": log, "preset": preset_name})
    best = max(r["valid_hr@10"] for r in log)
    print(f"saved {out}: {len(log)} epochs, best validation HR@10 = {best:.4f}")


@app.command()
def value(policy: Annotated[Path, typer.Option("--policy", help="a checkpoint from `vstar-toy sft`")],
          preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
          steps: Annotated[int | None, typer.Option(help="TD steps")] = None, as_json: AsJson = False):
    """Pre-train the value head V_phi by TD (Eq. 9) on the policy's candidates; saves it beside the policy
    and reports Spearman(V, true prefix reward) against Spearman(log pi, ...) per level."""
    from .policy.value import pretrain_value, value_spearman

    cfg = make_config(preset_name, mismatch, seed)
    if steps is not None:
        cfg = cfg.replace(value={"pretrain_steps": steps})
    w = build_world(cfg.world)
    pol = checkpoint.load_policy(policy, w)
    head, losses = pretrain_value(pol, w, cfg.value, progress=not as_json)
    meta = checkpoint.read_meta(policy)
    checkpoint.save(policy, w, pol, head, extra={k: v for k, v in meta.items() if k.endswith("_log")})
    rho = value_spearman(pol, head, w, w.queries("valid", n=256))
    out = {"td_loss_first": losses[0] if losses else None, "td_loss_last": losses[-1] if losses else None,
           "spearman_value": rho["value"], "spearman_logp": rho["logp"]}
    print(json.dumps(out) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))


@app.command()
def decode(decoder: Annotated[str, typer.Option(help="beam, topk, temperature or ved")] = "ved",
           candidates: Annotated[int, typer.Option(help="|C|, candidates per query")] = 16,
           budget_x: Annotated[float, typer.Option(help="budget multiplier: kx = 1 + k (L-1) |C| tokens")] = 1.0,
           priority: Annotated[str, typer.Option(help="VED expansion rule: G, V or H (Table 3)")] = "G",
           queries: Annotated[int, typer.Option(help="test queries to decode")] = 300,
           policy: PolicyDir = None, preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
           as_json: AsJson = False):
    """Decode the test split with one decoder and print accuracy, diversity, reachability and budget."""
    cfg = make_config(preset_name, mismatch, seed)
    dcfg = DecodeConfig(decoder=decoder, n_candidates=candidates, budget_x=budget_x, priority=priority,
                        warm_beam=min(cfg.decode.warm_beam, max(1, candidates - 1)))
    w = build_world(cfg.world)
    say = say_to(as_json)
    pol = sft_policy(w, cfg, policy, progress=not as_json, say=say)
    head = value_model(w, pol, cfg, policy, progress=not as_json, say=say) if decoder == "ved" else None
    metrics, _ = evaluate(w, pol, w.queries("test", n=queries), dcfg, head)
    metrics["decoder"] = decoder
    if as_json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:<18} {v:.4f}" if isinstance(v, float) else f"{k:<18} {v}")


# ----------------------------------------------------------------------------------------------
@app.command()
def demo(out: Annotated[Path, typer.Option(help="where the tables and figures go")] = Path("runs/demo"),
         preset_name: Preset = "high_mismatch", queries: int = 300):
    """The whole story in a few minutes: the world and its mismatch knob, SFT, the value model, and
    beam search against VED at the same budget."""
    from .policy.value import value_spearman

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset(preset_name)
    print(f"[1/4] The world ({preset_name}): items with Semantic IDs, users with hidden tastes.")
    w = build_world(cfg.world)
    s = w.summary()
    print(f"      {s['items']} items, SIDs of {s['levels']} codes {s['codebook_sizes']}, {s['users']} users; "
          f"mismatch m = {s['mismatch']}")
    plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), out / "sid_tree.png")
    rows = []
    for m in (0.0, 0.25, 0.5, 0.75, 0.9):
        rho = build_world(cfg.world.__class__(**{**cfg.world.__dict__, "mismatch": m})).spearman_exposure_reward()
        rows += [{"mismatch": m, "level": lvl + 1, "spearman": r} for lvl, r in enumerate(rho)]
    knob = pd.DataFrame(rows)
    plots.save(plots.mismatch_curve(knob), out / "mismatch_knob.png")
    knob.to_csv(out / "mismatch_knob.csv", index=False)
    print("      rho(logged log-prob, true reward) per level as m grows:")
    print(knob.pivot(index="mismatch", columns="level", values="spearman").round(3).to_string())
    print(f"      -> {out / 'sid_tree.png'}, {out / 'mismatch_knob.png'}")

    print("[2/4] SFT: the policy learns the logs (which follow popularity as much as taste).")
    pol = sft_policy(w, cfg, None, progress=True)
    print("[3/4] The value model V_phi (Sec. 4.1): TD on dense semantic returns.")
    head = value_model(w, pol, cfg, None, progress=True)
    rho = value_spearman(pol, head, w, w.queries("valid", n=200))
    print("      Spearman with the true prefix reward, per level:  V_phi "
          f"{np.round(rho['value'], 3).tolist()}  vs  log pi {np.round(rho['logp'], 3).tolist()}")

    print("[4/4] Decoding the test users at the same budget (1x = 1 + 2|C| forward tokens):")
    q = w.queries("test", n=queries)
    table = []
    for name, dcfg in [("beam", DecodeConfig(decoder="beam")), ("topk", DecodeConfig(decoder="topk")),
                       ("ved", DecodeConfig(decoder="ved")), ("ved 2x", DecodeConfig(decoder="ved", budget_x=2.0)),
                       ("beam 2x", DecodeConfig(decoder="beam", budget_x=2.0))]:
        m, sets = evaluate(w, pol, q, dcfg, head)
        table.append({"decoder": name, **{k: m[k] for k in ("hr@10", "ndcg@10", "reachability", "max_reward", "div",
                                                              "mean_cost_tokens", "expansion_tokens")}})
        if name == "ved":
            tree = sets[0].tree.to_frame(0)
            tsid = "-".join(map(str, w.catalog.sids[q.targets[0]]))
            plots.save(plots.decoding_tree(tree, w.catalog.levels, target_sid=tsid,
                                           title="VED's tree for one test user (red: the ground-truth path)"),
                       out / "ved_tree.png")
        if name == "beam":
            tree = sets[0].tree.to_frame(0)
            tsid = "-".join(map(str, w.catalog.sids[q.targets[0]]))
            plots.save(plots.decoding_tree(tree, w.catalog.levels, target_sid=tsid, color="logp",
                                           title="Beam search's tree for the same user (x: pruned)"),
                       out / "beam_tree.png")
    df = pd.DataFrame(table)
    df.to_csv(out / "decoding.csv", index=False)
    print(df.round(4).to_string(index=False))
    print(f"done in {time.perf_counter() - t0:.0f} s; tables and figures in {out}/")


def main() -> None:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    try:
        app()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
