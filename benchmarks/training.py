"""Training speed: seconds per step of the self-evolving loop for GRPO, Sibling-GRPO and the joint
loss under beam search and VED, and what one shared prompt encoding per query buys over re-encoding
the prompt for every candidate.

    python benchmarks/training.py [--preset cpu_demo] [--steps N] [--repeats R] [--threads 1] [--json]

1. *Steps*: ``rl.train.train_step`` (the body of ``train``'s loop: decode + rewards + value TD + the
   policy update; no evaluation), from the preset's SFT policy and value head (cached by
   ``vstar_toy.pipeline``), for each decoder x objective: 1 warm-up step, then ``--steps`` timed steps,
   the configurations taking turns step by step. Reported: the best and the median seconds per step,
   and the best's ratio to GRPO with the same decoder and to beam + GRPO (the best, as in
   benchmarks/decoders.py: on a shared machine the median carries other processes' load). The
   objective only changes the update.
2. *Losses alone*: forward + backward of each objective on (B, C, L) log-probs of the preset's size,
   what Sibling-GRPO's grouping of candidates into parents and nodes costs over GRPO.
3. *Log-probs + backward*: ``TinyPolicy.logprobs`` (each prompt encoded once, its C candidates attend
   to that cache) against ``policy.tiny.naive_logprobs`` (one causal pass over [prompt, candidate] per
   candidate, as when a prompt is repeated before each completion), on one decoded batch of the
   preset's size with the joint loss; the two must agree (printed), best of ``--repeats``.

All ratios are measured in the same run, on the same machine; the output says which machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import sys
import time

import torch

from vstar_toy import pipeline
from vstar_toy.config import OBJECTIVES, PRESETS, preset
from vstar_toy.decoding import decode
from vstar_toy.policy.tiny import naive_logprobs
from vstar_toy.policy.value import ValueHead
from vstar_toy.rl.losses import loss_kwargs, policy_loss
from vstar_toy.rl.train import train_step, training_state
from vstar_toy.world.rewards import rewards

DECODERS = ("beam", "ved")


def load_models(world, cfg, say):
    """The preset's SFT policy and V_phi from the pipeline's cache (trained there if missing). A cached
    head of an older shape is replaced by an untrained one: a step's cost does not depend on its values."""
    policy = pipeline.sft_policy(world, cfg, progress=False, say=say)
    try:
        head = pipeline.value_model(world, policy, cfg, progress=False, say=say)
    except RuntimeError as err:
        say(f"value head: the cached one does not load ({str(err).splitlines()[-1].strip()}); "
            "timing VED with an untrained ValueHead of the current shape")
        head = ValueHead.for_policy(policy, cfg.value)
    return policy, head


# ----------------------------------------------------------------------------------------------
# 1. seconds per training step


class Runner:
    """One decoder x objective: the state ``train()`` sets up before its loop (``training_state``: a copy
    of the policy, the frozen reference, the optimisers), stepped by ``train_step``, the loop's body."""

    def __init__(self, world, policy, head, cfg, decoder: str, objective: str):
        self.world = world
        self.cfg = cfg.replace(rl={"objective": objective}, decode={"decoder": decoder})
        self.state = training_state(copy.deepcopy(policy), self.cfg, copy.deepcopy(head) if decoder == "ved" else None)
        self.seconds: list[float] = []
        self.rewards: list[float] = []

    def step(self, step: int) -> None:
        t0 = time.perf_counter()
        row = train_step(self.world, self.state, self.cfg, step)
        self.seconds.append(time.perf_counter() - t0)
        self.rewards.append(row["reward"])


def time_steps(world, policy, head, cfg, steps: int) -> dict:
    """1 warm-up step and ``steps`` timed steps of every decoder x objective, taken in turns (step s of
    every configuration, then step s + 1), so that a burst of load on the machine hits them all alike."""
    runners = {(d, o): Runner(world, policy, head, cfg, d, o) for d in DECODERS for o in OBJECTIVES}
    for step in range(steps + 1):
        for r in runners.values():
            r.step(step)
    return {key: {"best_s": min(r.seconds[1:]), "median_s": statistics.median(r.seconds[1:]),
                  "reward": statistics.fmean(r.rewards)} for key, r in runners.items()}


# ----------------------------------------------------------------------------------------------
# 2. and 3. the losses alone, and shared vs naive log-probs


def decoded_batch(world, policy, cfg, seed: int = 0) -> dict:
    """One training batch of the preset's size, decoded by beam search and rewarded."""
    q = world.queries("train", n=cfg.rl.batch_queries, seed=seed)
    with torch.no_grad():
        cands = decode(policy.eval(), q.histories, dataclasses.replace(cfg.decode, decoder="beam"))
    r = rewards(world, cfg.rl.reward, q.users, q.targets, cands.items.numpy(), cands.logp.numpy())
    return {"histories": q.histories, "sids": cands.sids, "valid": cands.valid,
            "rewards": torch.as_tensor(r, dtype=torch.float32)}


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_losses(batch: dict, cfg, repeats: int) -> dict:
    """Forward + backward of each objective on fixed (B, C, L) log-probs."""
    g = torch.Generator().manual_seed(0)
    base = -3 * torch.rand(batch["sids"].shape, generator=g)
    old, ref = base - 0.05, base + 0.05
    out = {}
    for objective in OBJECTIVES:
        def one(objective=objective):
            logp = base.clone().requires_grad_(True)
            loss, _ = policy_loss(objective, logp, old, ref, batch["sids"], batch["rewards"], batch["valid"],
                                  **loss_kwargs(cfg.rl))
            loss.backward()
        out[objective] = best_of(one, repeats * 4)
    return out


def time_logprobs(policy, batch: dict, cfg, repeats: int) -> dict:
    """logprobs (shared prompt encoding) vs naive_logprobs (per candidate), each + the joint loss's backward."""
    policy.train()
    hist, sids, valid, r = batch["histories"], batch["sids"], batch["valid"], batch["rewards"]
    with torch.no_grad():
        old = policy.logprobs(hist, sids)

    def step(fn):
        policy.zero_grad()
        new = fn(policy, hist, sids)
        loss, _ = policy_loss("joint", new, old, old, sids, r, valid, **loss_kwargs(cfg.rl))
        loss.backward()
        return new.detach(), [p.grad.clone() for p in policy.parameters()]

    shared_fn = (lambda pol, h, s: pol.logprobs(h, s))  # noqa: E731
    (lp_s, g_s), (lp_n, g_n) = step(shared_fn), step(naive_logprobs)
    rel = max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in zip(g_s, g_n))
    out = {"shared_s": best_of(lambda: step(shared_fn), repeats), "naive_s": best_of(lambda: step(naive_logprobs),
                                                                                     repeats),
           "max_abs_dlogp": float((lp_s - lp_n).abs().max()), "max_rel_dgrad": rel,
           "rows": int(sids.shape[0] * sids.shape[1]), "prompt_tokens": int(hist.shape[1] * (sids.shape[2] + 1))}
    policy.zero_grad()
    policy.eval()
    return out


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="cpu_demo", choices=list(PRESETS), help="config preset (default cpu_demo)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per decoder x objective (default 5)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes of the log-prob comparison (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's choice (default 1: on a busy\n"
                    "2-core machine torch's 2 threads ran these steps 20x slower)")
    ap.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout\n"
                    "(the table goes to stderr)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        ap.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = preset(args.preset)
    world = pipeline.build_world(cfg.world)
    policy, head = load_models(world, cfg, say)

    # 1. seconds per step, every decoder x objective in this run
    steps = time_steps(world, policy, head, cfg, args.steps)
    # 2. the losses alone; 3. shared vs naive log-probs
    batch = decoded_batch(world, policy, cfg)
    losses = time_losses(batch, cfg, args.repeats)
    lp = time_logprobs(policy, batch, cfg, args.repeats)

    B, C, L = batch["sids"].shape
    p = cfg.policy
    say()
    say(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    say(f"sizes:   preset {args.preset}: {world.catalog.n_items} items, L = {L}, "
        f"K = {list(world.catalog.codebook_sizes)}, {B} queries x |C| = {C} candidates per step, "
        f"budget {cfg.decode.budget_x:g}x, b0 = {cfg.decode.warm_beam}")
    say(f"policy:  TinyPolicy d_model = {p.d_model}, layers = {p.n_layers}, heads = {p.n_heads}; prompts of "
        f"{lp['prompt_tokens']} tokens")
    say()
    say(f"seconds per training step (best and median of {args.steps} steps after 1 warm-up; "
        "decode + reward + value TD + update; ratios of the best)")
    say()
    say(f"| {'decoder':<7} | {'objective':<9} | {'best s':>7} | {'median s':>8} | {'/ GRPO':>6} | "
        f"{'/ beam+GRPO':>11} | {'mean reward':>11} |")
    say(f"|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 13}|{'-' * 13}|")
    base = steps[("beam", "grpo")]["best_s"]
    for (d, o), r in steps.items():
        say(f"| {d:<7} | {o:<9} | {r['best_s']:>7.3f} | {r['median_s']:>8.3f} | "
            f"{r['best_s'] / steps[(d, 'grpo')]['best_s']:>6.2f} | {r['best_s'] / base:>11.2f} | "
            f"{r['reward']:>11.4f} |")
    say()
    say(f"the loss alone, forward + backward on ({B}, {C}, {L}) log-probs (best of {args.repeats * 4}): "
        + ", ".join(f"{o} {1e3 * s:.2f} ms" for o, s in losses.items())
        + f" -> sibling / grpo x{losses['sibling'] / losses['grpo']:.1f}")
    say()
    say(f"log-probs + joint loss + backward on one batch ({lp['rows']} candidate rows, best of {args.repeats}):")
    say()
    say(f"| {'log-probs':<39} | {'seconds':>8} | {'ratio':>6} |")
    say(f"|{'-' * 41}|{'-' * 10}|{'-' * 8}|")
    say(f"| {'shared prompt encoding (logprobs)':<39} | {lp['shared_s']:>8.3f} | {1.0:>6.2f} |")
    say(f"| {'prompt re-encoded per candidate (naive)':<39} | {lp['naive_s']:>8.3f} | "
        f"{lp['naive_s'] / lp['shared_s']:>6.2f} |")
    say()
    say(f"naive == shared: max |d log pi| = {lp['max_abs_dlogp']:.1e}, max relative gradient difference "
        f"(per parameter tensor) = {lp['max_rel_dgrad']:.1e}")
    say(f"total benchmark time: {time.perf_counter() - t_start:.1f} s")

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"},
        "sizes": {"preset": args.preset, "items": world.catalog.n_items, "levels": L,
                  "codebook_sizes": list(world.catalog.codebook_sizes), "queries_per_step": B, "n_candidates": C,
                  "d_model": p.d_model, "n_layers": p.n_layers, "timed_steps": args.steps, "repeats": args.repeats},
        "steps": {f"{d}+{o}": {**r, "over_grpo": r["best_s"] / steps[(d, "grpo")]["best_s"],
                               "over_beam_grpo": r["best_s"] / base} for (d, o), r in steps.items()},
        "loss_only_s": losses,
        "logprobs": {**lp, "naive_over_shared": lp["naive_s"] / lp["shared_s"]},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    if lp["max_rel_dgrad"] > 1e-4:
        raise SystemExit("naive and shared log-probs disagree: see above")
    return result


if __name__ == "__main__":
    main()
