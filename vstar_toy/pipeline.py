"""The cached chain world -> SFT policy -> value head that every command, experiment, the explorer
and the notebooks share.

Without an explicit checkpoint, a trained policy is cached under ``$VSTAR_TOY_CACHE`` (default
``.cache/vstar_toy`` in the working directory), keyed by the world's fingerprint and the configs
that shape it; the functions say which they did (trained, or reused from where).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from . import checkpoint
from .config import Config, WorldConfig
from .policy.tiny import TinyPolicy
from .policy.value import ValueHead, pretrain_value
from .rl.sft import train_sft
from .world import World

CACHE_VERSION = 3  # part of every cache key: bump it when a model's architecture or training changes


def cache_root() -> Path:
    return Path(os.environ.get("VSTAR_TOY_CACHE", ".cache/vstar_toy"))


@functools.lru_cache(maxsize=16)
def build_world(cfg: WorldConfig) -> World:
    """The synthetic world of ``cfg`` (memoised: configs are frozen, worlds deterministic)."""
    return World.build(cfg)


def _key(*parts) -> str:
    blob = json.dumps([CACHE_VERSION] + [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _world_key(world: World):
    """What shapes a world's logs beyond its trie: the synthetic config (mismatch, seed, ...) or the
    real data set's name. Two worlds with one catalog but different logs train different policies."""
    cfg = getattr(world, "config", None)
    return cfg if dataclasses.is_dataclass(cfg) else world.name


def sft_policy(world: World, cfg: Config, policy_dir: str | Path | None = None, progress: bool = True,
               say: Callable[[str], None] = print) -> TinyPolicy:
    """The SFT policy: loaded from ``policy_dir``, reused from the cache, or trained (and cached)."""
    if policy_dir is not None:
        say(f"policy: loaded from {policy_dir}")
        return checkpoint.load_policy(policy_dir, world)
    d = cache_root() / f"sft-{checkpoint.fingerprint(world)}-{_key(_world_key(world), cfg.policy, cfg.sft)}"
    if (d / "meta.json").exists():  # written last: a checkpoint with meta.json is complete
        say(f"policy: reusing the cached SFT policy in {d} (pass --policy DIR to use another)")
        return checkpoint.load_policy(d, world)
    say(f"policy: no --policy given, training the default SFT policy on {world.name} (cached in {d})")
    policy = TinyPolicy(world.catalog, cfg.policy)
    log = train_sft(policy, world, cfg.sft, progress=progress)
    checkpoint.save(d, world, policy, extra={"sft_log": log})
    return policy


def value_model(world: World, policy, cfg: Config, policy_dir: str | Path | None = None, progress: bool = True,
                say: Callable[[str], None] = print) -> ValueHead:
    """V_phi for ``policy``: saved beside an explicit checkpoint, or cached, or pre-trained by TD."""
    if policy_dir is not None:
        head = checkpoint.load_value(policy_dir, world, policy)
        if head is not None:
            say(f"value head: loaded from {policy_dir}")
            return head
        say(f"value head: none in {policy_dir}; pre-training one on this policy's candidates (not saved there)")
        head, _ = pretrain_value(policy, world, cfg.value, progress=progress)
        return head
    key = _key(_world_key(world), cfg.policy, cfg.sft, cfg.value)
    d = cache_root() / f"value-{checkpoint.fingerprint(world)}-{key}"
    if (d / "meta.json").exists():
        say(f"value head: reusing the cached one in {d}")
        return checkpoint.load_value(d, world, policy)
    say(f"value head: pre-training V_phi by TD on SFT candidates (cached in {d})")
    head, losses = pretrain_value(policy, world, cfg.value, progress=progress)
    checkpoint.save(d, world, policy, head, extra={"value_losses": losses})
    return head
