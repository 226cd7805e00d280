"""Decode a split and score it: the numbers `vstar-toy decode` prints and the experiments tabulate."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DecodeConfig
from .decoding import CandidateSets, decode
from .metrics import summarize
from .world import Queries, World
from .world.rewards import rewards


def true_reward_kind(world: World) -> str:
    """The reward that tells the truth in this world: oracle affinity when tastes exist, else semantic."""
    return "affinity" if world.tastes is not None else "semantic"


def evaluate(world: World, policy, queries: Queries, cfg: DecodeConfig, value_head=None, batch: int = 128,
             reward_kind: str | None = None, progress: bool = False) -> tuple[dict, list[CandidateSets]]:
    """Decode ``queries`` in batches; returns (metrics dict, the candidate sets)."""
    kind = reward_kind or true_reward_kind(world)
    rows, sets = [], []
    t0 = time.perf_counter()
    policy.reset_cost()
    with torch.no_grad():
        for s in tqdm(range(0, len(queries), batch), desc=f"decode {cfg.decoder}", disable=not progress):
            q = queries.take(slice(s, s + batch))
            c = decode(policy, q.histories, cfg, value_head)
            r = rewards(world, kind, q.users, q.targets, c.items.numpy(), c.logp.numpy())
            rows.append((c, q, r))
            sets.append(c)
    seconds = time.perf_counter() - t0
    cat = lambda f: np.concatenate([f(c, q, r) for c, q, r in rows])  # noqa: E731
    metrics = summarize(cat(lambda c, q, r: c.items.numpy()), cat(lambda c, q, r: q.targets),
                        cat(lambda c, q, r: c.sids.numpy()), cat(lambda c, q, r: r),
                        cat(lambda c, q, r: c.valid.numpy()))
    metrics.update({
        "valid_frac": float(cat(lambda c, q, r: c.valid.numpy()).mean()),
        "mean_cost_tokens": float(cat(lambda c, q, r: c.cost_tokens).mean()),
        "budget_tokens": int(sets[0].budget_tokens),
        "warmup_tokens": float(cat(lambda c, q, r: c.warmup_tokens).mean()),
        "expansion_tokens": float(cat(lambda c, q, r: c.expansion_tokens).mean()),
        "prefill_tokens": int(policy.prefill_tokens),
        "queries": len(queries),
        "seconds": round(seconds, 3),
        "reward": kind,
    })
    return metrics, sets
