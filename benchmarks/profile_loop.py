"""Where the time goes: one RL step of the loop, phase by phase, and ``vstar-toy demo``, stage by stage.

    python benchmarks/profile_loop.py [--preset cpu_demo] [--steps 20] [--demo] [--threads 1] [--json]

1. *RL steps*: ``rl.train.train`` from the preset's SFT policy and value head (cached by
   ``vstar_toy.pipeline``) for beam search + GRPO and V-STAR (VED + the joint loss), ``--steps`` steps
   each with the preset's ``eval_every`` and a run folder, so that validation and checkpoints cost what
   they cost in a real run, and numpy's BLAS on one thread as the command line sets it; under
   ``torch.profiler``, whose ranges are ``rl.train.PHASES``. Per phase: seconds per step (evaluation
   and checkpoints spread over the steps) and its share of the wall time;
   "other" is the wall time outside every phase (drawing the batch, the progress bar, the log row).
2. ``--demo``: ``vstar-toy demo`` as a new user runs it, in a subprocess with an empty cache and output
   folder: its wall time (Python's start and imports included) and its stages (the demo's
   ``stages.csv``).

The shares are what to optimise; for seconds to compare across code versions, use
benchmarks/steps.py, which times the loop against an earlier commit in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads as the command line sets them

import pandas as pd  # noqa: E402  (after the thread setting, which numpy reads when it loads)
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from vstar_toy import pipeline  # noqa: E402
from vstar_toy.config import PRESETS, UPDATES, preset  # noqa: E402
from vstar_toy.rl.train import PHASES, train  # noqa: E402

ARMS = {"beam+GRPO": ("beam", "grpo", "paper"), "V-STAR": ("ved", "joint", "paper")}


def profile_steps(world, policy, head, cfg, arm: str, steps: int) -> dict[str, float]:
    """Seconds per step of each phase of ``arm`` over ``steps`` steps, "other" and "wall"."""
    decoder, objective, update = ARMS[arm]
    rcfg = cfg.replace(decode={"decoder": decoder}, rl={"objective": objective, "steps": steps, **UPDATES[update]})
    with tempfile.TemporaryDirectory() as run, profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        train(world, copy.deepcopy(policy), rcfg, copy.deepcopy(head) if decoder == "ved" else None, run_dir=run,
              progress=False)
        wall = time.perf_counter() - t0
    spent = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PHASES}
    out = {phase: spent.get(phase, 0.0) / steps for phase in PHASES}
    out["other"] = wall / steps - sum(out.values())
    out["wall"] = wall / steps
    return out


def profile_demo() -> dict[str, float]:
    """``vstar-toy demo`` in a subprocess, with an empty cache and output folder: its stages and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VSTAR_TOY_CACHE": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vstar_toy.cli", "demo", "--out", str(Path(tmp) / "demo")], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        stages = pd.read_csv(Path(tmp) / "demo" / "stages.csv")
    out = dict(zip(stages["stage"], stages["seconds"]))
    out["start-up and imports"] = wall - sum(out.values())
    out["wall"] = wall
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="cpu_demo", choices=list(PRESETS), help="config preset (default cpu_demo)")
    ap.add_argument("--steps", type=int, default=20, help="profiled RL steps per arm (default 20: two evaluations)")
    ap.add_argument("--demo", action="store_true", help="also run `vstar-toy demo` from an empty cache (minutes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the RL steps; 0 = the library's choice")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (the tables go to stderr)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    demo = profile_demo() if args.demo else None  # first: nothing of this process is warm for it
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    world = pipeline.build_world(cfg.world)
    policy = pipeline.sft_policy(world, cfg, progress=False, say=say)
    head = pipeline.value_model(world, policy, cfg, progress=False, say=say)
    steps = {arm: profile_steps(world, policy, head, cfg, arm, args.steps) for arm in ARMS}

    say(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU")
    say(f"RL steps: preset {args.preset}, {cfg.rl.batch_queries} queries x |C| = {cfg.decode.n_candidates}, "
        f"{args.steps} steps per arm, validation on {cfg.rl.eval_queries} queries every {cfg.rl.eval_every} steps")
    say()
    say("| phase | " + " | ".join(f"{arm} s/step | share" for arm in ARMS) + " |")
    say("|---|" + "---:|---:|" * len(ARMS))
    for phase in (*PHASES, "other", "wall"):
        say(f"| {phase} | " + " | ".join(f"{steps[a][phase]:.3f} | {steps[a][phase] / steps[a]['wall']:.0%}"
                                        for a in ARMS) + " |")
    if demo is not None:
        say()
        say("`vstar-toy demo` from an empty cache (a subprocess, as a new user runs it):")
        say()
        say("| stage | seconds | share |")
        say("|---|---:|---:|")
        for stage, s in demo.items():
            say(f"| {stage} | {s:.1f} | {s / demo['wall']:.0%} |")
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "preset": args.preset, "steps": steps, "demo": demo}
    if args.json:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
