"""Seconds per RL step, this checkout against an earlier commit, measured in the same run.

    python benchmarks/steps.py [--against 004f7a3] [--preset cpu_demo] [--steps 6] [--rounds 3] [--threads 1]
                               [--json]

The earlier commit (by default 004f7a3, the code at the start of issue 28, "the demo in 90 seconds ...
training steps at a fraction of a second") is exported with ``git archive`` into a temporary folder. Each
round runs one worker process per code version, the versions taking turns, so that load on the machine
hits both alike. A worker imports ``vstar_toy`` from its version, loads the preset's SFT policy and value
head from the shared cache (both versions train and cache the same models: the first one to need them
trains them), and for beam search + GRPO and V-STAR (VED + the joint loss) takes 1 warm-up step and
``--steps`` timed steps of ``rl.train.train_step`` (decode, rewards, value TD, the update, the
diagnostics; no validation), the two arms taking turns; then times one validation evaluation
(``evaluate_policy``: beam search on the preset's ``eval_queries`` and the value's Spearman), which a
run pays every ``eval_every`` steps.

Reported per arm and version: the best step over all rounds (the median carries other processes' load),
the evaluation's best, a step with the evaluation spread over ``eval_every`` steps, and the ratios of
the earlier version to this one. Both versions run on the same machine with the same torch thread count
and numpy's BLAS on one thread (as the command line sets it, ``vstar_toy/cli.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_OF_ISSUE_28 = "004f7a3"
ARMS = {"beam+GRPO": {"decode": {"decoder": "beam"}, "rl": {"objective": "grpo"}},
        "V-STAR": {"decode": {"decoder": "ved"}, "rl": {"objective": "joint"}}}


# ----------------------------------------------------------------------------------------------
# the worker: one code version, both arms


def worker(preset_name: str, steps: int, threads: int) -> dict:
    """Time ``steps`` train steps of each arm (after 1 warm-up step) and one evaluation, with whatever
    ``vstar_toy`` is first on the path; returns seconds."""
    import copy

    import torch

    from vstar_toy import pipeline
    from vstar_toy.config import preset
    from vstar_toy.rl.diagnostics import evaluate_policy
    from vstar_toy.rl.train import train_step, training_state

    torch.set_num_threads(threads)
    cfg = preset(preset_name)
    world = pipeline.build_world(cfg.world)
    quiet = lambda msg: None  # noqa: E731
    policy = pipeline.sft_policy(world, cfg, progress=False, say=quiet)
    head = pipeline.value_model(world, policy, cfg, progress=False, say=quiet)
    runs = {}
    for arm, changes in ARMS.items():
        acfg = cfg.replace(**changes)
        value = copy.deepcopy(head) if acfg.decode.decoder == "ved" else None
        runs[arm] = (acfg, training_state(copy.deepcopy(policy), acfg, value))
    seconds: dict[str, list[float]] = {arm: [] for arm in runs}
    for step in range(steps + 1):  # the arms take turns, step by step
        for arm, (acfg, st) in runs.items():
            t0 = time.perf_counter()
            train_step(world, st, acfg, step)
            if step > 0:
                seconds[arm].append(time.perf_counter() - t0)
    val = world.queries("valid", n=cfg.rl.eval_queries, seed=cfg.rl.seed)
    eval_cfg = cfg.decode.beam_at_1x()
    evaluate_policy(world, policy, head, val, eval_cfg)  # warm-up
    t0 = time.perf_counter()
    evaluate_policy(world, policy, head, val, eval_cfg)
    return {"steps": seconds, "evaluation": time.perf_counter() - t0, "eval_every": cfg.rl.eval_every,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------
# the parent: export the earlier version, alternate the workers, compare


def export(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` under ``into`` (``git archive``; the commit must be in this clone)."""
    archive = into / "src.tar"
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot export {rev!r} from {ROOT}: {done.stderr.strip()} (a shallow clone lacks old "
                         "commits: git fetch --unshallow)")
    tree = into / rev
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def run_worker(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--preset", args.preset,
                          "--steps", str(args.steps), "--threads", str(args.threads)],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the worker for {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rounds: list[dict]) -> dict:
    """Best and median seconds per step of each arm over every round, the best evaluation, and a step
    with the evaluation spread over eval_every steps."""
    every = rounds[0]["eval_every"]
    evaluation = min(r["evaluation"] for r in rounds)
    out = {}
    for arm in ARMS:
        times = [s for r in rounds for s in r["steps"][arm]]
        best = min(times)
        out[arm] = {"best_s": best, "median_s": statistics.median(times), "evaluation_s": evaluation,
                    "with_evaluation_s": best + evaluation / every}
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--against", default=START_OF_ISSUE_28, help=f"the earlier commit (default {START_OF_ISSUE_28})")
    ap.add_argument("--preset", default="cpu_demo", help="config preset (default cpu_demo: 64 queries x 16)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm, version and round (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each version once per round (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in both versions (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table to stderr)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.threads < 1:
        ap.error(f"--steps, --rounds and --threads must be >= 1, got {args.steps}, {args.rounds}, {args.threads}")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.preset, args.steps, args.threads)))
        return None
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        versions = {args.against: export(args.against, Path(tmp)), "this checkout": ROOT}
        rounds: dict[str, list[dict]] = {v: [] for v in versions}
        for r in range(args.rounds):
            for name, tree in (versions.items() if r % 2 == 0 else reversed(versions.items())):
                say(f"round {r + 1}/{args.rounds}: {name}")
                rounds[name].append(run_worker(tree, args))
    result = {v: summarize(rs) for v, rs in rounds.items()}
    before, after = result[args.against], result["this checkout"]
    first = rounds["this checkout"][0]
    say()
    say(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | torch {first['torch']}, "
        f"{first['threads']} thread(s), CPU")
    say(f"preset {args.preset}; {args.rounds} rounds x {args.steps} steps per arm and version; validation every "
        f"{first['eval_every']} steps")
    say()
    say(f"| arm | seconds per step, {args.against} | this checkout | ratio | median {args.against} | median now | "
        "with validation, before | after | ratio |")
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm in ARMS:
        b, a = before[arm], after[arm]
        say(f"| {arm} | {b['best_s']:.3f} | {a['best_s']:.3f} | {b['best_s'] / a['best_s']:.2f}x | "
            f"{b['median_s']:.3f} | {a['median_s']:.3f} | {b['with_evaluation_s']:.3f} | "
            f"{a['with_evaluation_s']:.3f} | {b['with_evaluation_s'] / a['with_evaluation_s']:.2f}x |")
    say()
    say(f"one validation evaluation: {before['beam+GRPO']['evaluation_s']:.3f} s before, "
        f"{after['beam+GRPO']['evaluation_s']:.3f} s now")
    summary = {"against": args.against, "preset": args.preset, "machine": platform.platform(),
               "threads": first["threads"], "before": before, "after": after}
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
