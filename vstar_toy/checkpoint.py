"""Saving and loading policies and value heads, tied to the world they were trained on.

A checkpoint directory holds ``policy.pt`` (weights), ``value.pt`` (optional), and ``meta.json``:
the configs, the world's name and seed, and a fingerprint of its catalog (a hash of every SID).
Loading into a different world raises a clear error instead of decoding garbage. Files are written
to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from .config import PolicyConfig, ValueConfig
from .world import World


def fingerprint(world: World) -> str:
    """A short hash of the catalog's SIDs and codebook sizes: equal iff decoders see the same trie."""
    h = hashlib.sha256(world.catalog.sids.tobytes())
    h.update(str(world.catalog.codebook_sizes).encode())
    return h.hexdigest()[:16]


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(directory: str | Path, world: World, policy, value_head=None, extra: dict | None = None) -> Path:
    """Write a checkpoint of ``policy`` (and ``value_head``) trained on ``world``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_save(policy.state_dict(), d / "policy.pt")
    if value_head is not None:
        atomic_save(value_head.state_dict(), d / "value.pt")
    meta = {
        "world": world.name,
        "world_fingerprint": fingerprint(world),
        "world_config": dataclasses.asdict(world.config) if world.config else None,
        "policy_kind": type(policy).__name__,
        "policy_config": dataclasses.asdict(policy.cfg) if hasattr(policy, "cfg") else None,
        "value_config": dataclasses.asdict(value_head.cfg) if value_head is not None else None,
        **(extra or {}),
    }
    atomic_write_text(json.dumps(meta, indent=2, default=str), d / "meta.json")
    return d


def read_meta(directory: str | Path) -> dict:
    d = Path(directory)
    if not (d / "meta.json").exists() or not (d / "policy.pt").exists():
        raise FileNotFoundError(f"{d} is not a vstar_toy checkpoint: expected meta.json and policy.pt in it")
    return json.loads((d / "meta.json").read_text())


def check_world(meta: dict, world: World, directory) -> None:
    if meta["world_fingerprint"] != fingerprint(world):
        raise ValueError(
            f"the checkpoint in {directory} was trained on world {meta['world']!r} (fingerprint "
            f"{meta['world_fingerprint']}), not on {world.name!r} ({fingerprint(world)}): its SIDs differ. "
            "Pass the same --mismatch/--seed/--data it was trained with, or retrain."
        )


def load_policy(directory: str | Path, world: World):
    """The tiny policy saved in ``directory``; raises if it belongs to another world."""
    from .policy.tiny import TinyPolicy

    meta = read_meta(directory)
    check_world(meta, world, directory)
    policy = TinyPolicy(world.catalog, PolicyConfig(**meta["policy_config"]))
    policy.load_state_dict(torch.load(Path(directory) / "policy.pt", weights_only=True))
    policy.eval()
    return policy


def load_value(directory: str | Path, world: World, policy):
    """The value head saved beside a policy, or None when there is none."""
    from .policy.value import ValueHead

    meta = read_meta(directory)
    check_world(meta, world, directory)
    path = Path(directory) / "value.pt"
    if not path.exists():
        return None
    cfg = meta["value_config"]
    cfg["step_weights"] = tuple(cfg["step_weights"])
    head = ValueHead.for_policy(policy, ValueConfig(**cfg))
    head.load_state_dict(torch.load(path, weights_only=True))
    return head
