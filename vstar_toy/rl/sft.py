"""Supervised pre-training on the logs: next-item likelihood (the paper's SFT stage).

The loss is the mean negative log-likelihood of the logged next items' SID tokens given the history,
restricted to valid children (each history encoded once for all its logged items), with AdamW at a constant
or warmed-up cosine rate (``SFTConfig.schedule``, ``lr_factor``), plus, with ``SFTConfig.align_weight``, the
NLL of catalog items' SIDs given their titles alone (item alignment). Validation HR@10 by beam search picks the
epoch to keep (early stopping with ``patience``), except on a world whose validation rows are training pairs
(``World.valid_seen``): there every epoch runs and the last is kept.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import SFTConfig
from ..decoding.beam import beam_search
from ..metrics import hit_rate
from ..policy.base import SIDPolicy
from ..seeding import seeded
from ..world import Queries, World


def validation_hr(policy: SIDPolicy, queries: Queries, k: int = 10, batch: int = 256) -> float:
    """Mean HR@k of beam search (width k) on ``queries``."""
    hits = []
    policy.eval()
    with torch.no_grad():
        for s in range(0, len(queries), batch):
            q = queries.take(slice(s, s + batch))
            cands = beam_search(policy, q.histories, k)
            hits.append(hit_rate(cands.items.numpy(), q.targets, k))
    return float(np.concatenate(hits).mean())


def target_nll(policy: SIDPolicy, histories: np.ndarray, sids: torch.Tensor) -> torch.Tensor:
    """Mean per-token NLL of target SIDs (B, T, L) given histories (B, H); -1 rows are padding."""
    lp = policy.logprobs(histories, sids)  # (B, T, L)
    real = (sids >= 0).all(-1).to(lp.device)
    return -(lp.sum(-1) * real).sum() / (real.sum() * sids.shape[-1]).clamp_min(1)


def lr_factor(step: int, total: int, schedule: str = "constant", warmup: int = 0) -> float:
    """The learning rate's multiplier at optimiser step ``step`` (0-based) of ``total``: a linear warm-up over
    the first ``warmup`` steps, then 1 ("constant") or a cosine from 1 to 0 at step ``total``.

    >>> [round(lr_factor(s, 10, "cosine", warmup=2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    >>> lr_factor(5, 10)
    1.0
    """
    up = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return up
    after = min(1.0, max(0, step - warmup) / max(1, total - warmup))  # the cosine's progress after the warm-up
    return up * 0.5 * (1.0 + math.cos(math.pi * after))


def train_sft(policy: SIDPolicy, world: World, cfg: SFTConfig, progress: bool = True, state: dict | None = None,
              on_checkpoint: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``policy`` in place; returns one log row per epoch (loss, validation HR@10: NaN where the world's
    validation rows are training pairs, ``World.valid_seen``, and the last epoch is kept).

    ``on_checkpoint(state)`` is called after every epoch with what resuming needs (tensors and plain
    types); ``state`` resumes from it, and a resumed run equals an uninterrupted one (the batch order
    comes from a generator whose state is saved)."""
    hist = world.train_histories
    targets = torch.as_tensor(world.train_targets, dtype=torch.long)
    if len(hist) == 0:
        raise ValueError(f"{world.name} has no training pairs")
    sids = torch.as_tensor(world.catalog.sids)[targets.clamp_min(0)]  # (S, T, L)
    sids[targets < 0] = -1
    catalog_sids = torch.as_tensor(world.catalog.sids)
    if cfg.align_weight > 0 and not getattr(policy, "reads_text", False):
        raise ValueError(f"SFTConfig.align_weight = {cfg.align_weight:g} needs a policy that reads item titles: the "
                         "tiny policy with PolicyConfig.item_text = True")
    val = None if world.valid_seen else world.queries("valid", n=cfg.eval_queries, seed=cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_batches = (len(hist) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, cfg.epochs * n_batches, cfg.schedule, cfg.warmup_steps))
    best_hr, best_state, bad, log, start = -1.0, None, 0, [], 0
    if state is not None:
        policy.load_state_dict(state["policy"])
        opt.load_state_dict(state["opt"])
        if "sched" in state:  # a checkpoint written before schedules existed ran at a constant rate
            sched.load_state_dict(state["sched"])
        gen.set_state(state["generator"])
        best_hr, best_state, bad = float(state["best_hr"]), state["best_policy"], int(state["bad"])
        log, start = json.loads(state["log"]), int(state["epoch"])
    bar = tqdm(range(start, cfg.epochs), desc="SFT", disable=not progress, initial=start, total=cfg.epochs)
    for epoch in bar:
        policy.train()
        perm = torch.randperm(len(hist), generator=gen)
        total = 0.0
        with seeded(cfg.seed, epoch):  # dropout's draws: a function of (seed, epoch), so a resumed run matches
            for b in range(n_batches):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                loss = target_nll(policy, hist[idx.numpy()], sids[idx])
                if cfg.align_weight > 0:  # the alignment task: SIDs of catalog items drawn uniformly, given titles
                    items = torch.randint(world.catalog.n_items, (cfg.batch_size,), generator=gen)
                    aligned = target_nll(policy, policy.encode_titles(items), catalog_sids[items])
                    loss = loss + cfg.align_weight * aligned
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
                sched.step()
                total += float(loss.detach())
        hr = float("nan") if val is None else validation_hr(policy, val)
        log.append({"epoch": epoch + 1, "loss": total / n_batches, "valid_hr@10": hr})
        bar.set_postfix(loss=f"{total / n_batches:.3f}", **({} if val is None else {"hr10": f"{hr:.3f}"}))
        if hr > best_hr or val is None:
            best_hr, best_state, bad = hr, copy.deepcopy(policy.state_dict()), 0
        else:
            bad += 1
        if on_checkpoint is not None:
            on_checkpoint({"policy": policy.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                           "generator": gen.get_state(),
                           "best_hr": best_hr, "best_policy": best_state, "bad": bad, "log": json.dumps(log),
                           "epoch": epoch + 1})
        if bad >= cfg.patience:
            kept = max(log, key=lambda r: r["valid_hr@10"])["epoch"]
            bar.set_description(f"SFT stopped early: no better validation HR@10 for {bad} epochs; keeping epoch {kept}")
            break
    bar.close()
    policy.load_state_dict(best_state)
    policy.eval()
    return log
