"""The cached chain world -> SFT policy -> value head that every command, experiment, the explorer
and the notebooks share.

Without an explicit checkpoint, a trained policy is cached under ``$VSTAR_TOY_CACHE`` (default
``.cache/vstar_toy`` in the working directory), keyed by the world's fingerprint and the configs
that shape it; the functions say which they did (trained, or reused from where). Several processes
may share the cache: each entry is built under its own lock (``files.entry_lock``), so a second
process waits for the first and reuses its result.

The policy is the tiny transformer of ``cfg.policy`` by default, or a Qwen backbone (``backbone``: a
name of ``policy.qwen.BACKBONES`` or a local checkpoint directory; docs/design.md, section 6), SFT-trained by the
same ``rl/sft.py``; its cache keys add the backbone and the device kind (bf16 on a GPU, float32 on a CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint, files
from .config import BACKBONE_NAMES, Config, WorldConfig
from .files import cache_root
from .policy.base import SIDPolicy
from .policy.tiny import TinyPolicy
from .policy.value import ValueHead
from .rl.sft import train_sft
from .rl.value_learning import pretrain_value
from .world import World

CACHE_VERSION = 4  # part of every cache key: bump it when a model's architecture or training changes


@functools.lru_cache(maxsize=16)
def build_world(cfg: WorldConfig) -> World:
    """The synthetic world of ``cfg`` (memoised: configs are frozen, worlds deterministic)."""
    return World.build(cfg)


@functools.lru_cache(maxsize=4)
def load_data(source: str, train_until: str = "test") -> World:
    """The world of a real data set: a shipped name (``amazon18-office``) or a MiniOneRec directory
    (memoised by its name). By default the world of the model that is tested: trained on every window
    whose target precedes the test period, validation rows included (``World.valid_seen``); settings are
    chosen with ``train_until="valid"`` (docs/results/office_validation)."""
    from .world.amazon import load_world

    return load_world(source, train_until=train_until)


def check_names(data: str | None = None, backbone: str | None = None) -> None:
    """Refuse, before any work, a data set (``--data``) or a backbone (``--backbone``) that names nothing."""
    if data is not None:
        from .world.amazon import SHIPPED

        if data not in SHIPPED and not Path(data).exists():
            raise ValueError(f"--data = {data!r} is invalid: expected {', '.join(SHIPPED)}, a MiniOneRec directory or "
                             "a compact .jsonl.gz file")
    if backbone is not None and backbone not in BACKBONE_NAMES and not Path(backbone).is_dir():
        raise ValueError(f"--backbone = {backbone!r} is invalid: expected one of {', '.join(BACKBONE_NAMES)} "
                         "or a local checkpoint directory")


def load(cfg: Config, data: str | None = None, backbone: str | None = None) -> World:
    """The world a command runs on: the synthetic world of ``cfg.world``, or the real data set ``data``, the
    names checked first (``check_names``)."""
    check_names(data, backbone)
    return build_world(cfg.world) if data is None else load_data(data)


def _key(*parts) -> str:
    blob = json.dumps([CACHE_VERSION] + [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _world_key(world: World):
    """What shapes a world's logs beyond its trie: the synthetic config (mismatch, seed, ...), or the
    real data set's name and a hash of its content (an edited CSV, or another folder of the same name,
    is another data set). Two worlds with one catalog but different logs train different policies, and
    one whose validation rows are training pairs trains without choosing an epoch (``World.valid_seen``)."""
    cfg = getattr(world, "config", None)
    if dataclasses.is_dataclass(cfg):
        return cfg
    key = {"name": world.name, "data": checkpoint.data_fingerprint(world)}
    if world.valid_seen:  # only then: the keys of every other world stay what they were
        key["valid_seen"] = True
    return key


def _backbone_key(backbone: str) -> dict:
    """What identifies a backbone in a cache key: its name, or a local directory's path and the names,
    sizes and times of its files (new weights at the same path are a new backbone); and the device kind."""
    from .policy.qwen import BACKBONES

    key = {"backbone": backbone, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    path = Path(backbone)
    if backbone not in BACKBONES and path.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
        key.update(backbone=str(path.resolve()), files=files)
    return key


def _policy_parts(policy_or_backbone) -> tuple:
    """The parts of a cache key that name the policy: none for the tiny transformer (its config is keyed
    already; keys stay what they were), the backbone's for a Qwen policy."""
    held = policy_or_backbone
    backbone = held if held is None or isinstance(held, str) else getattr(held, "backbone", None)
    return () if backbone is None else (_backbone_key(backbone),)


def make_policy(world: World, cfg: Config, backbone: str | None = None,
                device: str | torch.device | None = None) -> SIDPolicy:
    """An untrained policy over ``world``'s SIDs: the tiny transformer of ``cfg.policy`` (on the CPU), or
    ``QwenPolicy.from_backbone`` for ``backbone`` (random weights drawn with ``cfg.policy.seed`` for a
    named architecture; bf16 on a GPU). ``device`` defaults to this process's GPU (``LOCAL_RANK`` under
    torchrun) when there is one."""
    if backbone is None:
        return TinyPolicy(world.catalog, cfg.policy)
    from .policy.qwen import QwenPolicy
    from .rl.distributed import device as local_device

    return QwenPolicy.from_backbone(world.catalog, backbone, device=device or local_device(), seed=cfg.policy.seed)


def sft_policy(world: World, cfg: Config, policy_dir: str | Path | None = None, progress: bool = True,
               say: Callable[[str], None] = print, backbone: str | None = None) -> SIDPolicy:
    """The SFT policy: loaded from ``policy_dir``, reused from the cache, or trained (and cached).

    ``backbone`` (a ``policy.qwen.BACKBONES`` name or a local checkpoint directory) trains a Qwen policy
    instead of the tiny transformer; with ``policy_dir``, it must be the backbone that checkpoint holds."""
    if policy_dir is not None:
        policy = checkpoint.load_policy(policy_dir, world)
        held = getattr(policy, "backbone", None)
        if backbone is not None and _policy_parts(held) != _policy_parts(backbone):
            holds = "the tiny policy" if held is None else f"backbone {held!r}"
            raise ValueError(f"backbone = {backbone!r} does not match the checkpoint in {policy_dir}, which holds "
                             f"{holds}: drop --backbone or pass another --policy")
        say(f"policy: loaded from {policy_dir}")
        return policy
    d = sft_cache_dir(world, cfg, backbone)

    def build() -> SIDPolicy:
        name = "the default SFT policy" if backbone is None else f"an SFT policy on backbone {backbone}"
        partial = d / "sft_state.pt"  # an interrupted SFT resumes from its last epoch
        state = checkpoint.load_tensors(partial) if partial.exists() else None
        if state is None:
            say(f"policy: no --policy given, training {name} on {world.name} (cached in {d})")
        else:
            say(f"policy: resuming the interrupted SFT in {d} after epoch {state['epoch']}")
        policy = make_policy(world, cfg, backbone)
        log = train_sft(policy, world, cfg.sft, progress=progress, state=state,
                        on_checkpoint=lambda st: _save_partial(d, partial, st))
        checkpoint.save(d, world, policy, extra={"sft_log": log})
        partial.unlink(missing_ok=True)
        return policy

    return files.cache_entry(d, "policy", "the cached SFT policy", lambda: checkpoint.load_policy(d, world), build, say,
                        hint=" (pass --policy DIR to use another)")


def _save_partial(directory: Path, path: Path, state: dict) -> None:
    """Write an interrupted stage's resume state into its cache directory (which is not complete until
    its meta.json exists)."""
    directory.mkdir(parents=True, exist_ok=True)
    files.atomic_save(state, path)


def sft_cache_dir(world: World, cfg: Config, backbone: str | None = None) -> Path:
    """The cache entry of the SFT policy that ``sft_policy`` trains for ``cfg`` (and ``backbone``): complete
    once its meta.json exists, which holds the training log (``sft_log``)."""
    key = _key(_world_key(world), cfg.policy, cfg.sft, *_policy_parts(backbone))
    return cache_root() / f"sft-{checkpoint.fingerprint(world)}-{key}"


def value_cache_dir(world: World, policy, cfg: Config) -> Path:
    """The cache entry of the V_phi that ``value_model`` pre-trains for the cached SFT ``policy`` of ``cfg``
    (complete once its meta.json exists)."""
    key = _key(_world_key(world), cfg.policy, cfg.sft, cfg.value, *_policy_parts(policy))
    return cache_root() / f"value-{checkpoint.fingerprint(world)}-{key}"


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
    d = value_cache_dir(world, policy, cfg)

    def build() -> ValueHead:
        partial = d / "pretrain_state.pt"  # an interrupted pre-training resumes from here
        state = checkpoint.load_tensors(partial) if partial.exists() else None
        if state is None:
            say(f"value head: pre-training V_phi by TD on SFT candidates (cached in {d})")
        else:
            say(f"value head: resuming the interrupted pre-training in {d} at step {state['step']}")
        head, losses = pretrain_value(policy, world, cfg.value, progress=progress, state=state,
                                      on_checkpoint=lambda st: _save_partial(d, partial, st))
        checkpoint.save(d, world, policy, head, extra={"value_losses": losses}, with_policy=False)  # the head only
        partial.unlink(missing_ok=True)
        return head

    return files.cache_entry(d, "value head", "the cached one", lambda: checkpoint.load_value(d, world, policy), build,
                        say)


def trained_value(world: World, cfg: Config, policy_dir: str | Path | None = None, progress: bool = True,
                  say: Callable[[str], None] = print) -> tuple[SIDPolicy, ValueHead, bool, float]:
    """(policy, head, trained, seconds) of `vstar-toy value`: with ``policy_dir``, a head pre-trained by TD on
    that checkpoint and saved beside it; without, the cached SFT policy and its cached head (trained once).
    ``trained`` is False when the head was read from the cache."""
    if policy_dir is not None:
        files.check_output_dir(Path(policy_dir), "--policy")  # the head is saved there
        policy = checkpoint.load_policy(policy_dir, world)
        t0 = time.perf_counter()
        head, _ = pretrain_value(policy, world, cfg.value, progress=progress)
        seconds = time.perf_counter() - t0
        meta = checkpoint.read_meta(policy_dir)
        checkpoint.save(policy_dir, world, policy, head, extra={k: v for k, v in meta.items() if k.endswith("_log")})
        return policy, head, True, seconds
    policy = sft_policy(world, cfg, None, progress=progress, say=say)
    trained = not (value_cache_dir(world, policy, cfg) / "meta.json").exists()  # else the cached head is read
    t0 = time.perf_counter()
    head = value_model(world, policy, cfg, None, progress=progress, say=say)
    return policy, head, trained, time.perf_counter() - t0
