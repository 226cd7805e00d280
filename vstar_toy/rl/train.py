"""The self-evolving loop (Sec. 4.4): decode -> reward -> value TD update -> policy update.

One step, for a batch of training users:

1. *decode* C(x) with ``cfg.decode`` (beam search for the GRPO baseline, VED for V-STAR), the
   policy in eval mode and without gradients: the behaviour policy pi_theta_old;
2. *reward* every candidate with ``cfg.rl.reward`` (what the learner may see: semantic similarity
   to the logged next item by default, never the oracle affinity unless asked);
3. *value*: ``cfg.rl.value_updates`` TD steps of V_phi on these candidates (Eq. 9), if a head is
   given;
4. *policy*: ``cfg.rl.inner_epochs`` passes of the objective (GRPO, Sibling-GRPO or joint, plus KL
   to the frozen SFT reference) over the batch, with the optimiser, warm-up and gradient clipping of
   ``cfg.rl`` (``TrainingState``).

Each step's log row (its columns: ``columns.py``) holds the diagnostics a practitioner needs to see why a run
does or does not learn (README, "Training diagnostics"): the reward the learner sees (mean and within-group
std), the share of GRPO groups with no reward variance (they give no gradient), the share of sibling groups with a
contrast, the KL to the reference, the policy's entropy per level, the gradient norm, the value loss,
the mass an update moves onto the SFT policy's top code and along the user's best item's path, and every
``eval_every`` steps validation HR@10 / NDCG@10 / mean true reward, the same users decoded by VED, the
``transfer`` of VED's lead into the policy (``rl/horizon.py``) and V's Spearman. A run stops early when
its validation curve is flat (``RLConfig.plateau_evals``).

Everything random is seeded by (seed, step), so a run is a function of its config, and a run that
resumes from its last checkpoint continues exactly as if it had never stopped. The run directory
holds ``metrics.csv`` (one row per step, rewritten atomically each step), ``state.pt`` (weights,
optimiser states and the log, every ``eval_every`` steps and at the end; tensors and plain types only,
loaded with ``weights_only=True``: a crafted file cannot run code), ``reference.pt`` (the SFT policy the
KL term holds on to), ``sft_point.json`` (the SFT policy's validation numbers that ``transfer`` starts
from) and ``config.json``.

Under torchrun (``distributed.init_from_env()`` called first), each rank decodes and scores its share
of the global batch and DDP averages the gradients, so a step equals one process on the whole batch
(``rl/distributed.py`` says when exactly). Only rank 0 writes the run directory, evaluates, calls
``say`` / ``on_step`` and shows progress; the logged metrics are means over ranks.
"""

from __future__ import annotations

import contextlib
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
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..checkpoint import fingerprint, load_tensors, load_weights
from ..config import VALUE_DECODERS, Config
from ..decoding import beam_search, decode
from ..decoding.tree import merge_sets
from ..evaluate import evaluate, true_reward_kind
from ..files import atomic_save, atomic_write_text, run_lock
from ..policy.base import Context
from ..seeding import seeded
from ..world import World
from ..world.rewards import rewards
from . import columns, distributed
from .diagnostics import best_item, deep_shift, diagnostics, evaluate_policy, mass_shift
from .horizon import flat, transfer
from .losses import loss_kwargs, policy_loss
from .updates import group_advantages, negative_weights, own_prefixes, shifted_baseline
from .value_learning import td_update

PHASES = ("decode", "reward", "value TD", "update: old and reference log-probs", "update: forward",
          "update: advantages", "update: loss, backward, step", "diagnostics", "evaluation", "checkpoint")
"""The loop's phases, each a ``torch.profiler.record_function`` range in ``train_step`` and ``_loop``
(free unless a profiler runs): ``benchmarks/profile_loop.py`` says where a step's time goes by them."""


@dataclass
class TrainResult:
    policy: torch.nn.Module
    value_head: torch.nn.Module | None
    log: pd.DataFrame  # one row per step; evaluation columns filled every eval_every steps
    run_dir: Path | None
    stopped: int | None = None  # the step at which the validation curve was flat (RLConfig.plateau_evals)


@dataclass
class StepPrompts:
    """One step's prompts, each model's prefill done once (``SIDPolicy.encode``).

    histories: (B, H) item ids, -1 left-padded (each update pass with gradients encodes them anew);
    behaviour: the policy's Context before the update (its decoders, the old log-probs, V's inputs);
    reference: the frozen SFT reference's Context (the KL term's log-probs, the diagnostics)."""

    histories: np.ndarray
    behaviour: Context
    reference: Context


@dataclass
class TrainingState:
    """What the loop updates: the policy, the frozen SFT reference of the KL term, the value head, and
    their optimisers; ``scheduler`` warms the policy's learning rate up (``RLConfig.warmup_steps``)."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    value_head: torch.nn.Module | None
    opt: torch.optim.Optimizer
    vopt: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def state_dict(self, step: int, rows: list[dict]) -> dict:
        """A checkpoint of tensors and plain types only (the log as JSON), safe to load with
        ``torch.load(..., weights_only=True)``."""
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": step, "rows": json.dumps(rows),
                "value": self.value_head.state_dict() if self.value_head is not None else None,
                "vopt": self.vopt.state_dict() if self.vopt is not None else None}

    def load_state_dict(self, state: dict) -> tuple[int, list[dict]]:
        """Restore a ``state_dict``; returns (step, log rows)."""
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value"])
            self.vopt.load_state_dict(state["vopt"])
        return int(state["step"]), json.loads(state["rows"])


def training_state(policy: torch.nn.Module, cfg: Config, value_head=None) -> TrainingState:
    """The one way to set up RL on ``policy``: a frozen copy of it as the KL reference, its optimiser
    (``cfg.rl.optimizer``, ``lr``, linear warm-up over ``warmup_steps``) and the value head's Adam."""
    rl = cfg.rl
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if rl.optimizer == "adamw":
        opt = torch.optim.AdamW(policy.parameters(), lr=rl.lr, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(policy.parameters(), lr=rl.lr)
    warm = rl.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (warm + 1)))
    vopt = torch.optim.Adam(value_head.parameters(), lr=cfg.value.lr) if value_head is not None else None
    return TrainingState(policy, reference, value_head, opt, vopt, scheduler)


STOP_FIELDS = ("steps", "plateau_evals", "plateau_gain", "plateau_from")
"""RLConfig's fields that say where a run stops, not what it is: left out of its identity and its name."""


def _identity(cfg_json: str) -> dict:
    """What makes two runs the same run: the config and world, but not where it stops (rl.steps and the
    horizon rule's plateau_*), so that a finished or stopped run can be extended. A field that the stored
    config lacks (written before the field existed) counts as its default, which is what that run ran with."""
    run = json.loads(cfg_json)
    for stage, fields in run["config"].items():
        defaults = dataclasses.asdict(Config.__dataclass_fields__[stage].default_factory())  # e.g. RLConfig()
        run["config"][stage] = {**json.loads(json.dumps(defaults, default=str)), **fields}
    for field in STOP_FIELDS:
        run["config"]["rl"].pop(field, None)
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
    if dcfg.decoder in VALUE_DECODERS and value_head is None and decode_value is None:
        raise ValueError(f"training with the {dcfg.decoder} decoder needs a value head (see pipeline.value_model)")
    if rl.critic == "value" and value_head is None:
        raise ValueError("RLConfig.critic = 'value' needs a value head (see pipeline.value_model)")
    if rl.group == "mix" and dcfg.decoder == "beam":
        raise ValueError("RLConfig.group = 'mix' mixes beam search with another decoder: pass decoder ved, reranked, "
                         "topk or temperature")
    if rl.plateau_evals and world.valid_seen:
        raise ValueError(f"RLConfig.plateau_evals = {rl.plateau_evals} stops on the validation curve, but "
                         f"{world.name}'s validation rows are training windows (World.valid_seen): run a fixed number "
                         "of steps, or choose the horizon on a world loaded with train_until='valid'")
    rank, world_size = distributed.rank_and_size()
    distributed.check_batch(rl.batch_queries, world_size)
    main = rank == 0
    if not main:  # rank 0 speaks and writes for all
        progress, say, on_step = False, (lambda msg: None), None
    distributed.broadcast(policy)
    distributed.broadcast(value_head)
    st = training_state(policy, cfg, value_head)
    run = Path(run_dir) if run_dir is not None else None
    holding = run_lock(run) if run is not None and main else contextlib.nullcontext()
    with holding:  # one writer per run folder: a second process is refused, naming this one
        start, rows = _open_run(run, st, world, cfg, resume, main, say) if run is not None else (0, [])
        stopped = _loop(world, st, cfg, start, rows, run, main, progress, on_step, decode_value)
    if stopped is not None:
        say(f"stopped at step {stopped} of {cfg.rl.steps}: no validation gain above {cfg.rl.plateau_gain:g} over the "
            f"last {cfg.rl.plateau_evals} evaluations")
    policy.eval()
    return TrainResult(policy, value_head, pd.DataFrame(rows), run, stopped)


def _open_run(run: Path, st: TrainingState, world: World, cfg: Config, resume: bool, main: bool,
              say: Callable[[str], None]) -> tuple[int, list[dict]]:
    """Start the run folder ``run``, or resume the run it holds from its last checkpoint; returns (first
    step, the log rows so far). A folder holding another config's run is refused unless ``resume`` is
    False."""
    cfg_json = json.dumps({"config": dataclasses.asdict(cfg), "world": fingerprint(world)}, sort_keys=True,
                          default=str)
    if resume and (run / "state.pt").exists():
        if _identity((run / "config.json").read_text()) != _identity(cfg_json):
            raise ValueError(f"{run} holds a run with another config or world: pass a new --out, or resume=False")
        load_weights(st.reference, run / "reference.pt")
        start, rows = st.load_state_dict(load_tensors(run / "state.pt"))
        if main and start < cfg.rl.steps:  # an extended run: config.json records the new length
            atomic_write_text(cfg_json, run / "config.json")
        say(f"resuming {run} at step {start} of {cfg.rl.steps}")
        return start, rows
    if main:
        atomic_write_text(cfg_json, run / "config.json")
        atomic_save(st.reference.state_dict(), run / "reference.pt")
    return 0, []


def _loop(world: World, st: TrainingState, cfg: Config, start: int, rows: list[dict], run: Path | None, main: bool,
          progress: bool, on_step: Callable[[dict], None] | None, decode_value) -> int | None:
    """Steps ``start`` .. ``cfg.rl.steps`` of the loop, appending to ``rows``; rank 0 evaluates every
    ``eval_every`` steps and writes ``metrics.csv`` each step and ``state.pt`` after each evaluation.
    Returns the step at which the validation curve was flat (``RLConfig.plateau_evals``; the run stopped
    there), or None when it ran every step."""
    rl, dcfg, policy = cfg.rl, cfg.decode, st.policy
    val = world.queries("valid", n=rl.eval_queries, seed=rl.seed)
    eval_cfg = dcfg.beam_at_1x()
    guide = decode_value if decode_value is not None else st.value_head
    search = (dcfg.ved_at_1x(), guide) if guide is not None else None  # what VED finds on the policy now
    sft = _sft_point(run, world, st.reference, val, eval_cfg, search) if main else None
    ddp = distributed.wrap(policy) if distributed.rank_and_size()[1] > 1 else None  # the update's all-reduce
    if st.vopt is not None:
        distributed.sync_gradients(st.vopt)
    if distributed.any_rank(main and _flat(rows, rl)):  # a resumed run that had already stopped
        return int(rows[-1][columns.STEP])

    bar = tqdm(range(start, rl.steps), desc=f"RL {dcfg.decoder}+{rl.objective}", disable=not progress,
               initial=start, total=rl.steps)
    for step in bar:
        t0 = time.perf_counter()
        row = train_step(world, st, cfg, step, model=ddp, decode_value=decode_value)
        evaluating = (step + 1) % rl.eval_every == 0 or step + 1 == rl.steps
        if main and evaluating:
            with record_function("evaluation"):
                row.update(evaluate_policy(world, policy, st.value_head, val, eval_cfg, seed=rl.seed, search=search))
                row[columns.TRANSFER] = transfer(row[columns.VALID_MEAN_REWARD], sft["beam"], sft["ved"])
        row[columns.SECONDS] = time.perf_counter() - t0
        rows.append(row)
        bar.set_postfix(reward=f"{row[columns.REWARD]:.3f}")
        if on_step is not None:
            on_step(row)
        if run is not None and main:
            with record_function("checkpoint"):
                atomic_write_text(pd.DataFrame(rows).to_csv(index=False), run / "metrics.csv")
                if evaluating:
                    atomic_save(st.state_dict(step + 1, rows), run / "state.pt")
        if evaluating and distributed.any_rank(main and _flat(rows, rl)):  # the horizon: the curve is flat
            bar.close()  # (its state.pt was written with this evaluation)
            return step + 1
    return None


def _flat(rows: list[dict], rl) -> bool:
    """The horizon rule (``horizon.flat``) on the validation mean true reward logged so far, from step
    ``rl.plateau_from`` on."""
    history = [r[columns.VALID_MEAN_REWARD] for r in rows if columns.VALID_MEAN_REWARD in r]
    late_enough = bool(rows) and rows[-1][columns.STEP] >= rl.plateau_from
    return rl.plateau_evals > 0 and late_enough and flat(history, rl.plateau_evals, rl.plateau_gain)


def _sft_point(run: Path | None, world: World, reference, val, eval_cfg, search) -> dict:
    """The SFT policy's validation mean true reward decoded by beam search ("beam") and by the search
    ("ved"; NaN without a value): the reference point of ``transfer``. Measured once, at the run's start
    (the value is the pre-trained one then), and kept in ``RUN/sft_point.json`` for a resumed run; a run
    that was started before this file existed gets NaN."""
    path = run / "sft_point.json" if run is not None else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    if path is not None and (run / "state.pt").exists():
        return {"beam": math.nan, "ved": math.nan}
    with torch.no_grad():
        point = {"beam": evaluate(world, reference, val, eval_cfg)[0]["mean_reward"],
                 "ved": evaluate(world, reference, val, search[0], search[1])[0]["mean_reward"]
                 if search is not None else math.nan}
    if path is not None:
        atomic_write_text(json.dumps(point), path)
    return point


def train_step(world: World, st: TrainingState, cfg: Config, step: int, model: torch.nn.Module | None = None,
               decode_value=None) -> dict:
    """One step of the loop; returns its log row. ``model`` computes the update's log-probs: the DDP
    wrapper of ``st.policy`` under torchrun (its backward averages gradients over ranks), else the policy.
    Its phases are ``PHASES``' profiler ranges."""
    rl, policy = cfg.rl, st.policy
    seed = _step_seed(rl.seed, step)
    q = distributed.shard(world.queries("train", n=rl.batch_queries, seed=seed))  # this rank's share
    # 1. decode with the behaviour policy: the group, and the policy's own beam-search set (what it would
    #    decode itself at test time: the "beam" baseline, "drop"'s test, and the diagnostics read it)
    policy.eval()
    with record_function("decode"), torch.no_grad():
        prompts = StepPrompts(q.histories, policy.encode(q.histories), st.reference.encode(q.histories))
        guide = decode_value if decode_value is not None else st.value_head
        cands, own = candidate_group(policy, q, cfg, guide, distributed.rank_seed(seed % (2**31)), prompts.behaviour)
    with record_function("diagnostics"), torch.no_grad():
        level1_before = policy.start(prompts.behaviour).logp.float().cpu()  # (B, K_1) log pi(y_1 | x)
        best = torch.as_tensor(world.catalog.sids[best_item(world, q)])[:, None]  # (B, 1, L) the best item's SID
        best_before = policy.logprobs(prompts.behaviour, best)[:, 0].float().cpu()  # (B, L) log pi(y*_l | x, y*_<l)
    items, valid = cands.items.numpy(), cands.valid
    # 2. rewards: what the learner sees, and (for the log) the truth
    with record_function("reward"):
        r = torch.as_tensor(rewards(world, rl.reward, q.users, q.targets, items, cands.logp.numpy()),
                            dtype=torch.float32)
        r_true = rewards(world, true_reward_kind(world), q.users, q.targets, items)
        baseline = None
        if rl.baseline == "beam":  # the learner's reward of the policy's own set: its expected reward for x
            r_own = rewards(world, rl.reward, q.users, q.targets, own.items.numpy(), own.logp.numpy())
            baseline = torch.as_tensor(np.where(own.valid, r_own, 0).sum(1) / own.valid.sum(1).clamp_min(1).numpy(),
                                       dtype=torch.float32)
        if rl.baseline_shift > 0:  # AsymRE: the baseline lowered by delta
            baseline = shifted_baseline(r, valid, rl.baseline_shift, baseline)
        own_mask = own_prefixes(cands.sids.clamp_min(0), own.sids, valid, own.valid)  # (B, C, L)
    # the value as a critic: V_phi of each candidate's prefixes as it stood when it guided the decode
    critic = None
    if rl.critic == "value":
        with record_function("update: advantages"), torch.no_grad():
            critic = st.value_head.of_candidates(policy, q, cands.sids, prompts.behaviour).float().cpu()
    # 3. value TD (Eq. 9)
    v_loss = math.nan
    if st.value_head is not None and st.vopt is not None:
        with record_function("value TD"):
            for _ in range(rl.value_updates):
                v_loss = td_update(policy, st.value_head, st.vopt, world, q, cands, cfg.value, prompts.behaviour)
    # 4. policy update
    parts, grad_norm, adv = policy_update(st, prompts, cands.sids, r, valid, cfg, seed, model, baseline, own_mask,
                                          critic)
    with record_function("diagnostics"), torch.no_grad():
        after = policy.encode(q.histories)  # the weights changed: a new prefill
        level1_after = policy.start(after).logp.float().cpu()
        sft_top = st.reference.start(prompts.reference).logp.float().cpu().argmax(-1)
        shift = mass_shift(level1_before, level1_after, cands.sids[..., 0], adv, valid,
                           {columns.SFT_TOP: sft_top, columns.ORACLE_BEST: best[:, 0, 0]})
        shift |= deep_shift(best_before, policy.logprobs(after, best)[:, 0].float().cpu(), columns.ORACLE_BEST)
        row = {columns.STEP: step + 1, **diagnostics(cands, r, r_true, q.targets, cfg), columns.VALUE_LOSS: v_loss,
               columns.GRAD_NORM: grad_norm, columns.LR: st.scheduler.get_last_lr()[0], **parts, **shift,
               columns.BEAM_OVERLAP: float(own_mask[..., -1].sum() / own.valid.sum().clamp_min(1))}
    return distributed.mean_scalars(row)


def candidate_group(policy, q, cfg: Config, guide, seed: int, context: Context | None = None):
    """(the group the update sees, the policy's own beam-search set at 1x |C|) for queries ``q``;
    ``context``: the policy's encoding of ``q.histories``, if the caller has it.

    ``RLConfig.group`` "decoder": ``cfg.decode``'s decoder; "mix": ceil(|C|/2) by beam search and the
    rest by that decoder, each at its own 1x budget (VED's b0 scaled with it), duplicates removed
    (``tree.merge_sets``). The own set is the group itself when the group is beam search at 1x."""
    dcfg, n = dataclasses.replace(cfg.decode, seed=seed), cfg.decode.n_candidates
    prompts = q.histories if context is None else context
    value_fn = guide.bind(q) if guide is not None else None
    own_is_group = cfg.rl.group == "decoder" and dcfg.decoder == "beam" and dcfg.budget_x == 1.0
    own = beam_search(policy, prompts, n, 1.0)
    if own_is_group:
        return own, own
    if cfg.rl.group == "decoder":
        return decode(policy, prompts, dcfg, value_fn), own
    half = n // 2
    first = beam_search(policy, prompts, n - half, 1.0)
    other = dataclasses.replace(dcfg, n_candidates=half, warm_beam=max(1, min(half - 1, dcfg.warm_beam * half // n)))
    return merge_sets(first, decode(policy, prompts, other, value_fn), n), own


def policy_update(st: TrainingState, prompts: StepPrompts, sids: torch.Tensor, r: torch.Tensor, valid: torch.Tensor,
                  cfg: Config, seed: int, model: torch.nn.Module | None = None, baseline: torch.Tensor | None = None,
                  own: torch.Tensor | None = None, critic: torch.Tensor | None = None
                  ) -> tuple[dict, float, torch.Tensor]:
    """``inner_epochs`` passes of the objective over one decoded batch; the importance ratios are
    against the behaviour policy (pi_theta_old, frozen before the first pass: ``prompts.behaviour``
    is its prefill; each pass with gradients encodes ``prompts.histories`` anew). ``baseline`` (B,) and
    ``own`` (B, C, L; ``updates.own_prefixes``) feed ``RLConfig.baseline`` and ``negatives``; ``critic``
    (B, C, L), V_phi of the candidates' prefixes, ``RLConfig.critic``.
    Returns the loss parts, the mean gradient norm before clipping, and GRPO's (B, C) advantages as
    used (for the diagnostics). Padding candidates (-1 codes) get log-prob 0, no loss."""
    rl, policy = cfg.rl, st.policy
    # pi_theta_old: the policy as it decoded. With one pass and no dropout it is the pass's own forward,
    # detached: bit for bit what a separate forward gives (TRL's GRPOTrainer skips it alike)
    old_is_first_pass = rl.inner_epochs == 1 and not _draws_dropout(policy)
    with record_function("update: old and reference log-probs"), torch.no_grad():
        old = None if old_is_first_pass else policy.logprobs(prompts.behaviour, sids)
        ref = st.reference.logprobs(prompts.reference, sids)
    policy.train()
    parts, norms = {}, []
    with seeded(seed):  # dropout's draws: the same for a step's seed, the caller's stream untouched
        for epoch in range(rl.inner_epochs):
            with record_function("update: forward"):
                new = (policy if model is None else model)(prompts.histories, sids)  # forward = logprobs
            if epoch == 0:
                with record_function("update: advantages"):
                    old = new.detach() if old is None else old
                    negatives = negative_weights(rl.negatives, sids, old.float().cpu(), valid, own)
                    adv = group_advantages(r, rl.adv_eps, valid, rl.adv_ddof, baseline,
                                           negatives[0] if negatives else None)
            with record_function("update: loss, backward, step"):
                dev = new.device  # decoders and rewards live on the CPU; a GPU policy's loss on its GPU
                loss, parts = policy_loss(
                    rl.objective, new, old, ref, sids.to(dev), r.to(dev), valid.to(dev), **loss_kwargs(rl),
                    baseline=None if baseline is None else baseline.to(dev),
                    negatives=None if negatives is None else tuple(w.to(dev) for w in negatives),
                    critic=None if critic is None else critic.to(dev))
                st.opt.zero_grad()
                loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.max_grad_norm)))
                st.opt.step()
    st.scheduler.step()
    policy.eval()
    return parts, float(np.mean(norms)), adv


def _draws_dropout(policy: torch.nn.Module) -> bool:
    """Whether the policy's forward in train mode is random (a dropout with p > 0)."""
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in policy.modules())
