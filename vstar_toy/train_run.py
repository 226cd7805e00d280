"""A training run as `vstar-toy train` starts it: the SFT policy and its value head (cached, or from a
checkpoint), the self-evolving loop (``train.train``) in a run folder that resumes, the final checkpoint,
and a summary of the test users' scores by beam search before and after, beside the loop's diagnostics.
Under torchrun every rank trains its shard of each batch and rank 0 writes and summarises."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path

from . import checkpoint
from .config import Config
from .evaluate import evaluate
from .files import run_lock
from .pipeline import sft_policy, value_model
from .rl import columns, distributed
from .rl.train import train
from .world import World

DIAGNOSTICS = (columns.ZERO_VAR_SHARE, columns.SIBLING_SIGNAL_SHARE, columns.LOSS_KL, columns.GRAD_NORM,
               columns.entropy(1), columns.ADV_SPREAD_GLOBAL, columns.ADV_SPREAD_SIBLING, columns.VALUE_LOSS)
"""The training log's columns the summary averages over the run (``columns.py`` documents each)."""
MEASURES = ("mean_reward", "top1_reward", "max_reward", "reachability", "hr@10", "ndcg@10")
"""The test measures the summary gives before (``_sft``) and after training."""


def train_from_sft(world: World, cfg: Config, out: Path, test, policy_dir: Path | None = None,
                   backbone: str | None = None, restart: bool = False, progress: bool = True,
                   say: Callable[[str], None] = print, extra: dict | None = None) -> dict | None:
    """Train from the SFT policy into the run folder ``out`` (resumed unless ``restart``), save ``out/final``
    (a ``--policy`` checkpoint, with ``extra`` in its meta) and return the summary; None on ranks other
    than 0."""
    main = distributed.is_main()
    with run_lock(out) if main else contextlib.nullcontext():  # refused at once if another process writes it
        with distributed.main_first():  # rank 0 trains and caches the SFT policy; the others load it
            policy = copy.deepcopy(sft_policy(world, cfg, policy_dir, progress=progress, say=say, backbone=backbone))
            head = copy.deepcopy(value_model(world, policy, cfg, policy_dir, progress=progress, say=say))
        before = evaluate(world, policy, test, cfg.decode.beam_at_1x())[0] if main else None
        res = train(world, policy, cfg, head, run_dir=out, progress=progress, say=say, resume=not restart)
        if not main:
            return None
        checkpoint.save(out / "final", world, res.policy, res.value_head,
                        extra={**(extra or {}), "decoder": cfg.decode.decoder, "objective": cfg.rl.objective,
                               "steps": cfg.rl.steps})
        after, _ = evaluate(world, res.policy, test, cfg.decode.beam_at_1x())
    log = res.log
    first, last = log.head(max(1, len(log) // 5)), log.tail(max(1, len(log) // 5))
    return {"run": str(out), "world": world.name, "decoder": cfg.decode.decoder, "objective": cfg.rl.objective,
            "steps": len(log), "reward_first": float(first[columns.REWARD].mean()),
            "reward_last": float(last[columns.REWARD].mean()),
            **{k: float(log[k].mean()) for k in DIAGNOSTICS if k in log},
            **{f"test_{k}_sft": before[k] for k in MEASURES},
            **{f"test_{k}": after[k] for k in MEASURES + ("hr@3", "hr@5", "ndcg@3", "ndcg@5")}}
