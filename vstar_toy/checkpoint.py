"""Saving and loading policies and value heads, tied to the world they were trained on.

A checkpoint directory holds ``policy.pt`` (weights), ``value.pt`` (optional), and ``meta.json``:
the configs, the world's name and seed, and a fingerprint of its catalog (a hash of every SID).
Loading into a different world raises a clear error instead of decoding garbage. Files are written
to a temporary name and renamed (``files.py``), and ``meta.json`` last, so a crash never leaves a
half-written checkpoint that looks complete.

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
import pickle
from pathlib import Path

import numpy as np
import torch

from .config import PolicyConfig, ValueConfig
from .files import atomic_save, atomic_write_text
from .world import World


def fingerprint(world: World) -> str:
    """A short hash of the catalog's SIDs and codebook sizes: equal iff decoders see the same trie."""
    h = hashlib.sha256(world.catalog.sids.tobytes())
    h.update(str(world.catalog.codebook_sizes).encode())
    return h.hexdigest()[:16]


def data_fingerprint(world: World) -> str:
    """A short hash of what a policy learns from beyond the trie: the users' histories, next items and
    split, the training windows and the item embeddings. Two worlds with one catalog but other logs
    (another mismatch, an edited CSV) differ here."""
    h = hashlib.sha256()
    for a in (world.histories, world.targets, world.split, world.train_histories, world.train_targets,
              world.catalog.embeddings):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_tensors(path: Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with a clear error: a truncated, corrupt or foreign file,
    or one that holds code rather than tensors (refused: loading it could run it)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe loader names a global it refused (os.system, a class, ...); garbage, and pickles
        # written outside torch.save, fail earlier on an opcode, so those two cannot be told apart.
        why = ("it holds Python objects that could run code, not only tensors (refused, not run)"
               if "global" in str(e).lower() else
               "torch's safe loader refused it (corrupt, or not only tensors; nothing in it was run)")
        raise ValueError(f"{path} cannot be loaded: {why}. Retrain, or pass another checkpoint") from None
    except Exception as e:  # garbage can fail a parser in any way: KeyError, RuntimeError, EOFError, ...
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} cannot be loaded ({first}): the file is truncated or corrupt. Retrain, or pass "
                         "another checkpoint") from None


def load_weights(module: torch.nn.Module, path: Path, map_location="cpu") -> None:
    """Load ``path`` into ``module``; a file of another shape (another d_model, another catalog) is one
    clear error naming the first parameter that does not fit."""
    state = load_tensors(path, map_location)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing" in ln
                       or "Unexpected" in ln), str(e).splitlines()[0])
        raise ValueError(f"{path} does not fit a {type(module).__name__} built from its meta.json ({detail}): "
                         "the files of this checkpoint do not belong together. Retrain, or pass another") from None


def save(directory: str | Path, world: World, policy, value_head=None, extra: dict | None = None,
         with_policy: bool = True) -> Path:
    """Write a checkpoint of ``policy`` (and ``value_head``) trained on ``world``. ``with_policy=False``
    writes the value head and the meta data only: a head cached for a policy that is saved elsewhere
    (the policy's weights are 3 GB for Qwen2.5-1.5B; the head's a few MB)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if with_policy:
        atomic_save(policy.state_dict(), d / "policy.pt")
    backbone = {}
    if type(policy).__name__ == "QwenPolicy":
        backbone = {"backbone": policy.backbone, "backbone_config": policy.model.config.to_dict(),
                    "sid_token_ids": policy.hf_token.tolist(), "normalize": policy.normalize,
                    "dtype": str(policy._dtype).removeprefix("torch.")}
        if policy.tokenizer is not None and with_policy:
            policy.tokenizer.save_pretrained(d / "tokenizer")
    if value_head is not None:
        atomic_save(value_head.state_dict(), d / "value.pt")
    meta = {
        "world": world.name,
        "world_fingerprint": fingerprint(world),
        "data_fingerprint": data_fingerprint(world),
        "world_config": dataclasses.asdict(world.config) if world.config else None,
        "policy_kind": type(policy).__name__,
        "policy_config": dataclasses.asdict(policy.cfg) if hasattr(policy, "cfg") else None,
        "value_config": dataclasses.asdict(value_head.cfg) if value_head is not None else None,
        **backbone,
        **(extra or {}),
    }
    atomic_write_text(json.dumps(meta, indent=2, default=str), d / "meta.json")
    return d


def read_meta(directory: str | Path, need_policy: bool = True) -> dict:
    d = Path(directory)
    if not (d / "meta.json").exists() or (need_policy and not (d / "policy.pt").exists()):
        raise FileNotFoundError(f"{d} is not a vstar_toy checkpoint: expected meta.json and policy.pt in it")
    try:
        meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{d / 'meta.json'} is not valid JSON ({e}): the checkpoint is damaged; retrain") from None
    if not isinstance(meta, dict) or "world_fingerprint" not in meta:
        raise ValueError(f"{d / 'meta.json'} is not a vstar_toy checkpoint's meta.json (no world_fingerprint)")
    return meta


def check_world(meta: dict, world: World, directory) -> None:
    """Refuse a checkpoint of another world: another SID tree, or the same tree with other logs."""
    if meta["world_fingerprint"] != fingerprint(world):
        raise ValueError(
            f"the checkpoint in {directory} was trained on world {meta['world']!r} (fingerprint "
            f"{meta['world_fingerprint']}), not on {world.name!r} ({fingerprint(world)}): its SIDs differ. "
            "Pass the same --mismatch/--seed/--data it was trained with, or retrain."
        )
    if meta.get("data_fingerprint", data_fingerprint(world)) != data_fingerprint(world):
        raise ValueError(
            f"the checkpoint in {directory} was trained on world {meta['world']!r}, not on {world.name!r}: the SID "
            "tree is the same but the users' logs differ (another mismatch or seed, or edited data files). "
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
        load_weights(policy, Path(directory) / "policy.pt")
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
    load_weights(policy, d / "policy.pt", map_location=device)
    return policy


def load_value(directory: str | Path, world: World, policy):
    """The value head saved beside a policy, or None when there is none."""
    from .policy.value import ValueHead

    meta = read_meta(directory, need_policy=False)
    check_world(meta, world, directory)
    path = Path(directory) / "value.pt"
    if not path.exists():
        return None
    cfg = meta["value_config"]
    cfg["step_weights"] = tuple(cfg["step_weights"])
    head = ValueHead.for_policy(policy, ValueConfig(**cfg))
    load_weights(head, path, map_location=policy.device)
    return head
