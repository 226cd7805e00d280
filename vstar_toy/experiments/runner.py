"""The artefacts the claims share, built once per seed and cached: worlds, SFT policies, value
heads, RL runs and their test scores.

Seed s sets the world's seed, the policy's initial weights, the value head's, and the RL batches,
so the arms of a comparison share everything but what is compared. SFT policies and value heads
are cached by ``vstar_toy.pipeline`` (on disk, across commands); RL runs live under
``OUT/runs/<name>/`` and resume after a crash; test scores are memoised for the session.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import pipeline
from ..config import UPDATES, Config, RLConfig
from ..evaluate import evaluate
from ..rl.train import STOP_FIELDS, train
from ..values import make_value


@dataclass(frozen=True)
class Settings:
    """How big a reproduction is.

    seeds: seeds 0 .. seeds-1, >= 1. quick: the small settings of ``--quick`` (a 1,000-item world,
    shorter training). test_queries: test users scored per seed (0, the default: the whole test split,
    1,200 users on the default world). rl_steps: policy
    updates per RL run, at most (a preset with fewer ``rl.steps``, like ``tiny``, keeps its own).
    budgets: the budget multipliers of the Fig. 4 experiment.
    """

    seeds: int = 3
    quick: bool = False
    test_queries: int = 0
    rl_steps: int = 60
    budgets: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)

    @staticmethod
    def make(seeds: int = 3, quick: bool = False, test_queries: int | None = None) -> Settings:
        if seeds < 1:
            raise ValueError(f"seeds = {seeds} is invalid: expected an integer >= 1")
        if test_queries is not None and test_queries < 0:
            raise ValueError(f"test_queries = {test_queries} is invalid: expected 0 (the whole split) or more")
        s = Settings(seeds=seeds, quick=True, rl_steps=25, budgets=(1.0,)) if quick else Settings(seeds=seeds)
        return s if test_queries is None else dataclasses.replace(s, test_queries=test_queries)


def quick_config(cfg: Config) -> Config:
    """``--quick``: a smaller world (1,000 items; 3,000 users, of whom 1,050 test), shorter SFT (8 epochs)
    and value pre-training (100 TD steps), RL steps of 48 users validated every 10 steps on 64; the same
    algorithms. ``Settings.make`` adds 25 RL steps and the 1x budget only: claim 7 compares VED with beam
    search at 1x (the full run sweeps 1x-4x), because with 1x and 2x the quick run of claims 1-9 took
    15 min 20 s on 2 cores."""
    w = cfg.world
    return cfg.replace(
        world={"n_items": min(w.n_items, 1000), "n_users": min(w.n_users, 3000), "test_frac": max(w.test_frac, 0.35)},
        sft={"epochs": min(cfg.sft.epochs, 8)},
        value={"pretrain_steps": min(cfg.value.pretrain_steps, 100),
               "pretrain_candidates": min(cfg.value.pretrain_candidates, 16)},
        rl={"eval_every": 10, "eval_queries": min(cfg.rl.eval_queries, 64),
            "batch_queries": min(cfg.rl.batch_queries, 48)},
    )


def _fields(**fields) -> tuple[tuple[str, object], ...]:
    """Config fields as sorted (field, value) pairs: hashable, so that they key the caches."""
    return tuple(sorted(fields.items()))


@dataclass(frozen=True)
class Pretrained:
    """The seed's SFT policy and its pre-trained value head, before any RL; ``policy``: PolicyConfig fields
    laid over the preset's, as sorted (field, value) pairs (``Pretrained(_fields(item_text=True))``)."""

    policy: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """``sft``, ``sft-item_text=True``."""
        return "sft" + "".join(f"-{k}={v}" for k, v in self.policy)


SFT = Pretrained()  # the seed's SFT policy with the preset's PolicyConfig


@dataclass(frozen=True)
class Arm:
    """One RL-trained policy of a reproduction: RL from the seed's SFT policy with candidates from
    ``decoder`` at ``budget_x`` and the loss ``objective``; a value decoder guided by ``value``
    ("learned": V_phi; "oracle": the world's true prefix value, while the head still learns by TD); and
    ``rl`` / ``decode`` / ``policy``: more fields laid over the preset's RLConfig / DecodeConfig /
    PolicyConfig as sorted (field, value) pairs (hashable: an arm keys the caches), e.g.
    ``(("baseline", "beam"),)``. A ``policy`` field makes another SFT policy and value head to start from
    (``pretrained``). ``name``: how tables and figures call it ("V-STAR"); not part of what the arm is (two
    arms of equal settings are one arm, however named)."""

    decoder: str
    objective: str
    budget_x: float = 1.0
    value: str = "learned"
    rl: tuple[tuple[str, object], ...] = ()
    decode: tuple[tuple[str, object], ...] = ()
    policy: tuple[tuple[str, object], ...] = ()
    name: str = dataclasses.field(default="", compare=False)

    def named(self, name: str) -> Arm:
        """This arm under the display name ``name``."""
        return dataclasses.replace(self, name=name)

    def stages(self) -> dict[str, dict]:
        """The DecodeConfig and RLConfig fields this arm lays over a preset: ``cfg.replace(**arm.stages())``
        (its ``policy`` fields shape the SFT policy it starts from, ``Runner.config``)."""
        return {"decode": {"decoder": self.decoder, "budget_x": self.budget_x, **dict(self.decode)},
                "rl": {"objective": self.objective, **dict(self.rl)}}

    @property
    def pretrained(self) -> Pretrained:
        """The SFT policy and value head this arm's RL starts from."""
        return Pretrained(self.policy)

    def reading(self, **policy) -> Arm:
        """This arm from a policy with more PolicyConfig fields set: ``VSTAR.reading(item_text=True)``; another
        arm, so without this one's display name."""
        return dataclasses.replace(self, policy=_fields(**{**dict(self.policy), **policy}), name="")

    def where(self, **rl) -> Arm:
        """This arm with more RLConfig fields set: ``VSTAR.where(baseline="beam")``. A field set to
        RLConfig's default is left out, so that one arm has one name; another arm, so without this one's display
        name."""
        fields = {**dict(self.rl), **rl}
        default = RLConfig()
        return dataclasses.replace(self, rl=tuple(sorted((k, v) for k, v in fields.items()
                                                         if getattr(default, k) != v)), name="")

    @property
    def label(self) -> str:
        """The arm in a run folder's name: ``ved1x-joint``, ``ved1x-oracle-joint``, ``ved1x-grpo-baseline=beam``.
        Where the run stops (``rl/train.py: STOP_FIELDS``) is not in it: resumed with a later stop, a run goes on
        in its own folder."""
        guide = "" if self.value == "learned" else f"-{self.value}"
        fields = self.decode + tuple((k, v) for k, v in self.rl if k not in STOP_FIELDS)
        extra = "".join(f"-{k}={v:g}" if isinstance(v, float) else f"-{k}={v}" for k, v in fields)
        start = "".join(f"{k}={v}-" for k, v in self.policy)
        return f"{start}{self.decoder}{self.budget_x:g}x{guide}-{self.objective}{extra}"


BEAM_GRPO = Arm("beam", "grpo", name="beam+GRPO")
"""The GRPO baseline: candidates by beam search, Eq. 2 alone."""
VSTAR = Arm("ved", "joint", name="V-STAR")
"""V-STAR as written: candidates by VED, GRPO + Sibling-GRPO (Eq. 19)."""
VSTAR_PLUS = VSTAR.where(**UPDATES["vstar+"]).named("V-STAR+")
"""The corrected V-STAR of claim 9 (``config.UPDATES["vstar+"]``), beside the paper's form."""


class Runner:
    """Builds and caches the artefacts of one reproduction (see the module docstring)."""

    def __init__(self, base: Config, settings: Settings, out: Path, progress: bool = True,
                 say: Callable[[str], None] | None = None, world_loader: Callable | None = None,
                 backbone: str | None = None):
        self.base = quick_config(base) if settings.quick else base
        if world_loader is not None:
            self.base = self.base.for_real_data()
        self.settings = settings
        self.out = Path(out)
        self.progress = progress
        self.say = say or (lambda msg: print(msg, file=sys.stderr))
        self.world_loader = world_loader  # real data: a function () -> World (mismatch does not apply)
        self.backbone = backbone  # None: the tiny transformer; else a Qwen2 backbone (pipeline.make_policy)
        self._memo: dict = {}
        self.train_logs: dict[tuple[Arm, float | None], dict[int, pd.DataFrame]] = {}  # (arm, mismatch) ->
        # {seed: the run's per-step log}, for the report's learning curves and diagnostics

    # -- configs and worlds ----------------------------------------------------------------------
    def config(self, seed: int, mismatch: float | None = None, policy: tuple = (), **stages) -> Config:
        """The preset's config for ``seed`` at ``mismatch``, with ``policy`` (sorted PolicyConfig field pairs)
        and ``stages`` (``decode={...}``, ``rl={...}``) laid over it."""
        world = {"seed": seed} if self.world_loader is None else {}
        if mismatch is not None:
            world["mismatch"] = mismatch
        cfg = self.base.replace(world=world, policy={"seed": seed, **dict(policy)}, value={"seed": seed},
                                rl={"seed": seed, "steps": min(self.settings.rl_steps, self.base.rl.steps)})
        return cfg.replace(**stages) if stages else cfg

    def _cached(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def world(self, seed: int, mismatch: float | None = None):
        if self.world_loader is not None:
            if mismatch is not None:
                raise ValueError("the mismatch knob exists only in the synthetic world, not on real data")
            return self._cached(("world",), self.world_loader)
        return pipeline.build_world(self.config(seed, mismatch).world)

    def test_queries(self, seed: int, mismatch: float | None = None):
        w = self.world(seed, mismatch)
        n_split = w.size("test")
        n = n_split if self.settings.test_queries == 0 else min(self.settings.test_queries, n_split)
        return self._cached(("test", seed, mismatch), lambda: w.queries("test", n=n))

    # -- models ------------------------------------------------------------------------------------
    def sft(self, seed: int, mismatch: float | None = None, policy: tuple = ()):
        """The SFT policy of ``seed`` (``policy``: PolicyConfig fields over the preset's, as in ``Pretrained``)."""
        def make():
            return pipeline.sft_policy(self.world(seed, mismatch), self.config(seed, mismatch, policy),
                                       progress=self.progress, say=self.say, backbone=self.backbone)
        return self._cached(("sft", seed, mismatch, policy), make)

    def value(self, seed: int, mismatch: float | None = None, policy: tuple = ()):
        """The value head pre-trained on that SFT policy's samples."""
        def make():
            return pipeline.value_model(self.world(seed, mismatch), self.sft(seed, mismatch, policy),
                                        self.config(seed, mismatch, policy), progress=self.progress, say=self.say)
        return self._cached(("value", seed, mismatch, policy), make)

    def trained(self, seed: int, arm: Arm, mismatch: float | None = None):
        """(policy, value head) after RL from this seed's SFT policy and pre-trained head (``Arm``)."""
        def make():
            cfg = self.config(seed, mismatch, arm.policy, **arm.stages())
            where = f"m{cfg.world.mismatch}-" if self.world_loader is None else ""  # real data: no knob
            name = f"s{seed}-{where}{arm.label}"
            self.say(f"RL run {name}")
            policy = copy.deepcopy(self.sft(seed, mismatch, arm.policy))
            head = copy.deepcopy(self.value(seed, mismatch, arm.policy))
            guide_value = None if arm.value == "learned" else make_value(arm.value, self.world(seed, mismatch))
            res = train(self.world(seed, mismatch), policy, cfg, head, run_dir=self.out / "runs" / name,
                        progress=self.progress, say=self.say, decode_value=guide_value)
            self.train_logs.setdefault((arm, mismatch), {})[seed] = res.log
            return res.policy, res.value_head
        return self._cached(("rl", seed, arm, mismatch), make)

    # -- scores ------------------------------------------------------------------------------------
    def score(self, policy: Arm | Pretrained, seed: int, decode: dict, mismatch: float | None = None,
              value: str = "learned", split: str = "test") -> dict:
        """Test metrics of ``policy`` (``SFT``, another ``Pretrained`` or an ``Arm``) decoded with the preset's
        DecodeConfig and ``decode``'s fields laid over it; a value decoder ranks prefixes by ``value`` ("learned":
        the policy's head; "oracle": the world's truth, ``vstar_toy.values``). ``split`` "valid": on all the
        validation users instead (for choices made before a test, as claim 9's)."""
        def make():
            if isinstance(policy, Pretrained):
                pol, head = self.sft(seed, mismatch, policy.policy), self.value(seed, mismatch, policy.policy)
            else:
                pol, head = self.trained(seed, policy, mismatch=mismatch)
            cfg = self.config(seed, mismatch, decode={**decode, "seed": seed}).decode
            scorer = head if value == "learned" else make_value(value, self.world(seed, mismatch))
            w = self.world(seed, mismatch)
            q = self.test_queries(seed, mismatch) if split == "test" else w.queries(split)
            m, _ = evaluate(w, pol, q, cfg, scorer)
            return m
        return self._cached(("score", policy, seed, tuple(sorted(decode.items())), mismatch, value, split), make)
