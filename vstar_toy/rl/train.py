"""The self-evolving loop (Sec. 4.4): decode -> reward -> value TD update -> policy update.

One step, for a batch of training users:

1. *decode* C(x) with ``cfg.decode`` (beam search for the GRPO baseline, VED for V-STAR), the
   policy in eval mode and without gradients: the behaviour policy pi_theta_old;
2. *reward* every candidate with ``cfg.rl.reward`` (what the learner may see: semantic similarity
   to the logged next item by default, never the oracle affinity unless asked);
3. *value*: ``cfg.rl.value_updates`` TD steps of V_phi on these candidates (Eq. 9), if a head is
   given;
4. *policy*: ``cfg.rl.inner_epochs`` passes of the objective (GRPO, Sibling-GRPO or joint, plus KL
   to the frozen SFT reference) over the batch.

Everything random is seeded by (seed, step), so a run is a function of its config, and a run that
resumes from its last checkpoint continues exactly as if it had never stopped. The run directory
holds ``metrics.csv`` (one row per step, rewritten atomically each step), ``state.pt`` (weights,
optimiser states and the log, every ``eval_every`` steps and at the end), ``reference.pt`` (the
SFT policy the KL term holds on to) and ``config.json``.

Under torchrun (``distributed.init_from_env()`` called first), each rank decodes and scores its share
of the global batch and DDP averages the gradients, so a step equals one process on the whole batch
(``rl/distributed.py`` says when exactly). Only rank 0 writes the run directory, evaluates, calls
``say`` / ``on_step`` and shows progress; the logged metrics are means over ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_save, atomic_write_text, fingerprint
from ..config import Config
from ..decoding import decode
from ..evaluate import evaluate, scorers, true_reward_kind, value_quality
from ..world import World
from ..world.rewards import rewards
from . import distributed
from .advantages import reward_range, sibling_contrast
from .losses import policy_loss
from .value_learning import td_update


@dataclass
class TrainResult:
    policy: torch.nn.Module
    value_head: torch.nn.Module | None
    log: pd.DataFrame  # one row per step; evaluation columns filled every eval_every steps
    run_dir: Path | None


def _identity(cfg_json: str) -> dict:
    """What makes two runs the same run: the config and world, but not rl.steps, so that a finished
    run can be extended with more steps."""
    run = json.loads(cfg_json)
    run["config"]["rl"].pop("steps", None)
    return run


def _step_seed(seed: int, step: int) -> int:
    return (seed + 1) * 1_000_003 + step


def train(world: World, policy, cfg: Config, value_head=None, run_dir: str | Path | None = None,
          progress: bool = True, say: Callable[[str], None] = print, resume: bool = True,
          on_step: Callable[[dict], None] | None = None, decode_value=None) -> TrainResult:
    """Run ``cfg.rl.steps`` steps of the loop on ``policy`` (in place) and return it with its log.

    VED decodes with ``value_head`` unless ``decode_value`` (a scorer of ``vstar_toy.values``, e.g.
    the world's oracle) is given; the head learns by TD either way.

    With ``run_dir``, metrics and checkpoints are written there, and an existing run with the same
    config resumes from its last checkpoint (``resume=False`` starts over). ``on_step(row)`` is
    called with each step's log row (live curves in the explorer). Under torchrun, every rank calls it
    with the same arguments; ``cfg.rl.batch_queries`` must be divisible by the number of processes.
    """
    rl, dcfg = cfg.rl, cfg.decode
    if dcfg.decoder == "ved" and value_head is None and decode_value is None:
        raise ValueError("training with the ved decoder needs a value head (see pipeline.value_model)")
    rank, world_size = distributed.rank_and_size()
    distributed.check_batch(rl.batch_queries, world_size)
    main = rank == 0
    if not main:  # rank 0 speaks and writes for all
        progress, say, on_step = False, (lambda msg: None), None
    distributed.broadcast(policy)
    distributed.broadcast(value_head)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=rl.lr)
    vopt = torch.optim.Adam(value_head.parameters(), lr=cfg.value.lr) if value_head is not None else None
    rows: list[dict] = []
    start = 0
    run = Path(run_dir) if run_dir is not None else None
    cfg_json = json.dumps({"config": dataclasses.asdict(cfg), "world": fingerprint(world)}, sort_keys=True,
                          default=str)
    if run is not None:
        if main:
            run.mkdir(parents=True, exist_ok=True)
        if resume and (run / "state.pt").exists():
            if _identity((run / "config.json").read_text()) != _identity(cfg_json):
                raise ValueError(f"{run} holds a run with another config or world: pass a new --out, or resume=False")
            state = torch.load(run / "state.pt", map_location="cpu", weights_only=False)  # every rank reads it
            reference.load_state_dict(torch.load(run / "reference.pt", map_location="cpu", weights_only=True))
            policy.load_state_dict(state["policy"])
            opt.load_state_dict(state["opt"])
            if value_head is not None:
                value_head.load_state_dict(state["value"])
                vopt.load_state_dict(state["vopt"])
            rows, start = state["rows"], state["step"]
            if main and start < rl.steps:  # an extended run: config.json records the new length
                atomic_write_text(cfg_json, run / "config.json")
            say(f"resuming {run} at step {start} of {rl.steps}")
        elif main:
            atomic_write_text(cfg_json, run / "config.json")
            atomic_save(reference.state_dict(), run / "reference.pt")

    val = world.queries("valid", n=rl.eval_queries, seed=rl.seed)
    eval_cfg = dataclasses.replace(dcfg, decoder="beam", budget_x=1.0)

    ddp = distributed.wrap(policy) if world_size > 1 else None  # the update's all-reduce; None in one process
    if vopt is not None:
        distributed.sync_gradients(vopt)

    def checkpoint(step: int) -> None:
        if run is None or not main:
            return
        atomic_save({"policy": policy.state_dict(), "opt": opt.state_dict(), "step": step, "rows": rows,
                     "value": value_head.state_dict() if value_head is not None else None,
                     "vopt": vopt.state_dict() if vopt is not None else None}, run / "state.pt")

    bar = tqdm(range(start, rl.steps), desc=f"RL {dcfg.decoder}+{rl.objective}", disable=not progress,
               initial=start, total=rl.steps)
    for step in bar:
        t0 = time.perf_counter()
        row = train_step(world, policy, reference, value_head, opt, vopt, cfg, step, model=ddp,
                         decode_value=decode_value)
        if main and ((step + 1) % rl.eval_every == 0 or step + 1 == rl.steps):
            row.update(evaluate_policy(world, policy, value_head, val, eval_cfg, seed=rl.seed))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if on_step is not None:
            on_step(row)
        if run is not None and main:
            atomic_write_text(pd.DataFrame(rows).to_csv(index=False), run / "metrics.csv")
            if (step + 1) % rl.eval_every == 0 or step + 1 == rl.steps:
                checkpoint(step + 1)
    policy.eval()
    return TrainResult(policy, value_head, pd.DataFrame(rows), run)


def train_step(world: World, policy, reference, value_head, opt, vopt, cfg: Config, step: int,
               model: torch.nn.Module | None = None, decode_value=None) -> dict:
    """One step of the loop; returns its log row. ``model`` computes the update's log-probs: the DDP
    wrapper of ``policy`` under torchrun (its backward averages gradients over ranks), else ``policy``."""
    rl, dcfg = cfg.rl, cfg.decode
    seed = _step_seed(rl.seed, step)
    q = distributed.shard(world.queries("train", n=rl.batch_queries, seed=seed))  # this rank's share
    # 1. decode with the behaviour policy
    policy.eval()
    with torch.no_grad():
        guide = decode_value if decode_value is not None else value_head
        cands = decode(policy, q.histories, dataclasses.replace(dcfg, seed=distributed.rank_seed(seed % (2**31))),
                       guide.bind(q) if guide is not None else None)
    items, valid = cands.items.numpy(), cands.valid
    # 2. rewards: what the learner sees, and (for the log) the truth
    r = torch.as_tensor(rewards(world, rl.reward, q.users, q.targets, items, cands.logp.numpy()), dtype=torch.float32)
    r_true = rewards(world, true_reward_kind(world), q.users, q.targets, items)
    # 3. value TD (Eq. 9)
    v_loss = math.nan
    if value_head is not None and vopt is not None:
        for _ in range(rl.value_updates):
            v_loss = td_update(policy, value_head, vopt, world, q, cands, cfg.value)
    # 4. policy update
    sids = cands.sids  # padding candidates (-1 codes) get log-prob 0 and no loss
    with torch.no_grad():  # pi_theta_old in eval mode, as it decoded
        old = policy.logprobs(q.histories, sids)
        ref = reference.logprobs(q.histories, sids)
    torch.manual_seed(seed)
    policy.train()
    parts = {}
    for _ in range(rl.inner_epochs):
        new = (policy if model is None else model)(q.histories, sids)  # forward = logprobs
        dev = new.device  # decoders and rewards live on the CPU; a GPU policy's loss on its GPU
        loss, parts = policy_loss(rl.objective, new, old, ref, cands.sids.to(dev), r.to(dev), valid.to(dev),
                                  grpo_weight=rl.grpo_weight, sibling_weight=rl.sibling_weight, kl_coef=rl.kl_coef,
                                  clip_eps=rl.clip_eps, eps=rl.adv_eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    policy.eval()
    contrast = sibling_contrast(sids.clamp_min(0), r, rl.adv_eps, valid)
    vmask = valid.numpy()
    return distributed.mean_scalars({
        "step": step + 1,
        "reward": float(r[valid].mean()),
        "true_reward": float(np.nanmean(np.where(vmask, r_true, np.nan))),
        "max_true_reward": float(np.nanmean(np.nanmax(np.where(vmask, r_true, np.nan), 1))),
        "hit": float((items == q.targets[:, None]).any(1).mean()),
        "reward_range": float(torch.nanmean(reward_range(r, valid))),
        "adv_spread_global": float(torch.nanmean(contrast["global"])),
        "adv_spread_sibling": float(torch.nanmean(contrast["sibling"])),
        "entropy": float(np.nanmean(cands.tree.entropy)),
        "value_loss": v_loss,
        "expansion_tokens": float(np.mean(cands.expansion_tokens)),
        **parts,
    })


def evaluate_policy(world: World, policy, value_head, queries, eval_cfg, seed: int = 0) -> dict:
    """Validation HR@10 / NDCG@10 by beam search, and per level the Spearman with the prefix reward
    (Fig. 3) of V_phi (``rho_value_l*``, NaN without a head), log pi, and (``evaluate.scorers``) the
    world's oracle and the no-learning cosine where the world has them."""
    m, _ = evaluate(world, policy, queries, eval_cfg)
    out = {"valid_hr@10": m["hr@10"], "valid_ndcg@10": m["ndcg@10"]}
    rho = value_quality(world, policy, queries.take(slice(0, 128)), scorers(world, value_head), seed=seed)
    for lvl in range(world.catalog.levels):
        out[f"rho_value_l{lvl + 1}"] = rho["learned"][lvl] if value_head is not None else math.nan
        for name in ("logp", "oracle", "cosine"):
            if name in rho:
                out[f"rho_{name}_l{lvl + 1}"] = rho[name][lvl]
    return out
