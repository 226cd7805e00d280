"""Decode a split and score it: the numbers `vstar-toy decode` prints and the experiments tabulate;
and how well a prefix value ranks prefixes by their true reward (Fig. 3's protocol)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DecodeConfig
from .decoding import CandidateSets, decode
from .decoding.sampling import sample
from .metrics import prefix_spearman, summarize
from .values import CosineValue, LikelihoodValue, OracleValue
from .world import Queries, World
from .world.rewards import rewards


def true_reward_kind(world: World) -> str:
    """The reward that tells the truth in this world: oracle affinity when tastes exist, else semantic."""
    return "affinity" if world.tastes is not None else "semantic"


def evaluate(world: World, policy, queries: Queries, cfg: DecodeConfig, value=None, batch: int = 128,
             reward_kind: str | None = None, progress: bool = False) -> tuple[dict, list[CandidateSets]]:
    """Decode ``queries`` in batches; returns (metrics dict, the candidate sets). ``value`` is the
    prefix value VED searches with (a ValueHead or any scorer of ``vstar_toy.values``)."""
    kind = reward_kind or true_reward_kind(world)
    rows, sets = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in tqdm(range(0, len(queries), batch), desc=f"decode {cfg.decoder}", disable=not progress):
            q = queries.take(slice(s, s + batch))
            c = decode(policy, q.histories, cfg, value.bind(q) if value is not None else None)
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
        "prefill_tokens": sum(c.prefill_tokens for c in sets),
        "queries": len(queries),
        "seconds": round(seconds, 3),
        "reward": kind,
    })
    return metrics, sets


def scorers(world: World, head=None) -> dict:
    """The prefix scorers Fig. 3 compares, by name: V_phi (when ``head`` is given), log pi, the
    world's oracle (synthetic worlds only) and the no-learning cosine (``vstar_toy.values``)."""
    out = {"learned": head} if head is not None else {}
    out["logp"] = LikelihoodValue()
    if world.tastes is not None:
        out["oracle"] = OracleValue(world)
    out["cosine"] = CosineValue(world)
    return out


def value_quality(world: World, policy, queries: Queries, scorers: dict, n_candidates: int = 32, seed: int = 0,
                  reward_kind: str | None = None) -> dict[str, list[float]]:
    """Fig. 3's protocol: ``n_candidates`` temperature-1.5 samples per query; per level, the Spearman
    rho between each scorer's value of a prefix and the prefix's reward (the mean true reward of the
    sampled candidates sharing it), averaged over queries. Returns {scorer name: [rho per level]}."""
    kind = reward_kind or true_reward_kind(world)
    with torch.no_grad():
        context = policy.encode(queries.histories)  # one prefill for the samples and every scorer
        cands = sample(policy, context, n_candidates, temperature=1.5, seed=seed)
        r = rewards(world, kind, queries.users, queries.targets, cands.items.numpy())
        out = {}
        for name, scorer in scorers.items():
            score = scorer.of_candidates(policy, queries, cands.sids, context).float().cpu().numpy()
            rho = prefix_spearman(cands.sids.numpy(), score, r, cands.valid.numpy())
            out[name] = np.nanmean(rho, 0).tolist()
    return out
