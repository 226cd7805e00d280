"""Shared fixtures."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

# One thread per process: `make test` runs two xdist workers on two cores, and the notebook kernels,
# the explorer's server and torchrun's children inherit this environment. Oversubscribed torch threads
# run dozens of times slower on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Real data embeds its titles with TF-IDF in the tests (fast, no sentence encoder needed); the sentence
# encoder has its own test in test_amazon.py.
os.environ.setdefault("VSTAR_TOY_ENCODER", "tfidf")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """A model cache (``VSTAR_TOY_CACHE``; default: the repository's ``.cache/vstar_toy``) that holds the
    tiny preset's SFT policy and value head, for the explorer and notebook tests.

    The first test session on a machine trains them (about 30 s on 2 cores); xdist workers take turns
    under a file lock, so the others find them on disk. The variable is set for this process, and so
    for the servers and kernels the tests start.
    """
    cache = Path(os.environ.get("VSTAR_TOY_CACHE", ROOT / ".cache" / "vstar_toy")).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["VSTAR_TOY_CACHE"] = str(cache)
    from vstar_toy.config import presets
    from vstar_toy.pipeline import build_world, sft_policy, value_model

    cfg = presets.tiny()
    with open(cache / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        world = build_world(cfg.world)
        policy = sft_policy(world, cfg, progress=False, say=lambda msg: None)
        value_model(world, policy, cfg, progress=False, say=lambda msg: None)
    return cache
