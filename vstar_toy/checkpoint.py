"""Saving and loading policies and value heads, tied to the world they were trained on.

A checkpoint directory holds ``policy.pt`` (weights), ``value.pt`` (optional), and ``meta.json``:
the configs, the world's name and seed, and a fingerprint of its catalog (a hash of every SID).
Loading into a different world raises a clear error instead of decoding garbage. Files are written
to a temporary name and renamed, so a crash never leaves a half-written checkpoint.

Two kinds of policy (``policy_kind`` in meta.json): the tiny transformer (rebuilt from its
``policy_config``) and a Qwen backbone (policy/qwen.py), rebuilt from what meta.json keeps of it: the
backbone's name or path, its Hugging Face config after the SID tokens were added, the ids of those
tokens, and the normalisation; a tokenizer, when it had one, is saved in ``tokenizer/``. The weights
then come from ``policy.pt`` alone, so a checkpoint of a local backbone does not need that path again.
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
    backbone = {}
    if type(policy).__name__ == "QwenPolicy":
        backbone = {"backbone": policy.backbone, "backbone_config": policy.model.config.to_dict(),
                    "sid_token_ids": policy.hf_token.tolist(), "normalize": policy.normalize,
                    "dtype": str(policy._dtype).removeprefix("torch.")}
        if policy.tokenizer is not None:
            policy.tokenizer.save_pretrained(d / "tokenizer")
    if value_head is not None:
        atomic_save(value_head.state_dict(), d / "value.pt")
    meta = {
        "world": world.name,
        "world_fingerprint": fingerprint(world),
        "world_config": dataclasses.asdict(world.config) if world.config else None,
        "policy_kind": type(policy).__name__,
        "policy_config": dataclasses.asdict(policy.cfg) if hasattr(policy, "cfg") else None,
        "value_config": dataclasses.asdict(value_head.cfg) if value_head is not None else None,
        **backbone,
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


def load_policy(directory: str | Path, world: World, device: str | torch.device | None = None):
    """The policy saved in ``directory`` (tiny or Qwen), in eval mode; raises if it belongs to another world.

    The tiny policy loads on the CPU; a Qwen policy on ``device`` (default: the GPU when there is one, in
    bf16; else the CPU, in float32), like ``QwenPolicy.from_backbone``."""
    meta = read_meta(directory)
    check_world(meta, world, directory)
    kind = meta.get("policy_kind", "TinyPolicy")
    if kind == "TinyPolicy":
        from .policy.tiny import TinyPolicy

        policy = TinyPolicy(world.catalog, PolicyConfig(**meta["policy_config"]))
        policy.load_state_dict(torch.load(Path(directory) / "policy.pt", map_location="cpu", weights_only=True))
    elif kind == "QwenPolicy":
        policy = _load_qwen(Path(directory), meta, world, device)
    else:
        raise ValueError(f"{directory} holds a policy of kind {kind!r}: expected TinyPolicy or QwenPolicy")
    policy.eval()
    return policy


def _load_qwen(d: Path, meta: dict, world: World, device):
    """A QwenPolicy rebuilt from its saved config and token ids, with the weights of ``policy.pt``."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from .policy.qwen import QwenPolicy

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):  # initialised, then overwritten: the architecture is all that is read here
        model = Qwen2ForCausalLM._from_config(Qwen2Config.from_dict(meta["backbone_config"]), dtype=dtype,
                                              attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer") if (d / "tokenizer").is_dir() else None
    policy = QwenPolicy(world.catalog, model, tokenizer, meta["normalize"], token_ids=meta["sid_token_ids"],
                        backbone=meta["backbone"]).to(device)
    policy.load_state_dict(torch.load(d / "policy.pt", map_location=device, weights_only=True))
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
    head.load_state_dict(torch.load(path, map_location=policy.device, weights_only=True))
    return head
