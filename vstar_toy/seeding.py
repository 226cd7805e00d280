"""Seeded draws from torch's global generator that leave the caller's stream as it was.

Module initialisers (``nn.Linear``, ``nn.init.normal_``) and dropout draw from torch's global generator
and take no generator of their own. ``seeded(seed)`` runs a block on that generator seeded with ``seed``
and restores the caller's state afterwards (``torch.random.fork_rng``): building a model, or running an
update with dropout, gives the same numbers for the same seed and changes nothing the caller draws next.
This is the toolkit's one call of ``torch.manual_seed``; the decoders and SFT's shuffling carry a
``torch.Generator`` of their own instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(*keys: int) -> Iterator[None]:
    """Inside the block, torch's global generator (CPU and every visible GPU) is seeded with ``keys[0]``
    when one key is given, or with a seed mixed from all of them (``numpy.random.SeedSequence``) when
    several are, e.g. ``seeded(cfg.seed, epoch)``; outside it, the caller's generator state is untouched."""
    if not keys or any(int(k) != k or k < 0 for k in keys):
        raise ValueError(f"seeded{keys} is invalid: expected one or more integers >= 0")
    seed = int(keys[0]) if len(keys) == 1 else int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield
