"""Data parallelism for the RL loop: one global batch of queries, split across processes (docs/design.md, section 6).

``torchrun --nproc_per_node W`` starts W processes; each holds a full copy of the policy, the value head,
the SFT reference and the optimisers. One step of ``rl.train`` (Sec. 4.4) then runs as:

1. every rank draws the *same* global batch of B = ``cfg.rl.batch_queries`` queries (same seed) and keeps
   its own contiguous share of B / W (``shard``): ranks decode, reward and score disjoint queries;
2. the policy loss is computed on the share, through ``torch.nn.parallel.DistributedDataParallel``
   (``wrap``): backward all-reduces the gradients (their mean over ranks), in buckets, while it runs;
3. the value head's TD step (Eq. 9) reads the head through ``values``, not ``forward``, so DDP's hooks
   would not fire: its gradients are averaged by an optimiser pre-step hook instead (``sync_gradients``);
4. every rank applies the same averaged gradient with the same optimiser, so parameters stay identical
   (DDP broadcasts rank 0's at construction, ``broadcast`` does it for the rest).

Why the update equals one process on the whole batch: each loss is a mean over the rank's B / W queries
(Sibling-GRPO, Eq. 19: a mean over queries) or over its valid tokens (GRPO, Eq. 2, the KL term, the TD
loss of Eq. 9). With equal shares, the mean of the W shard means is the mean over the B queries, and the
gradient is linear: grad (1/W) sum_r L_r = grad L. For the token means this needs every rank to hold as
many valid candidates, which holds whenever each query gets its ``n_candidates`` valid SIDs (beam search
always does when the catalog holds that many items; VED and the samplers may pad a set). Adam then sees
the same gradient as the single process. Decoding must also give each query the same candidates as in the full
batch: true of beam search (deterministic); the samplers and VED draw with a per-rank seed
(``rank_seed``), so their candidates differ from a one-process run's, though not in distribution.

Logged metrics are the mean over ranks of each rank's value (``mean_scalars``): the global-batch value
for per-query means (hit, max true reward, the Sibling-GRPO loss) and for per-candidate or per-token
means when shares hold as many valid candidates (reward, the GRPO and KL losses), an average of per-rank
values otherwise (entropy, a mean over tree nodes).

Launching: call ``init_from_env()`` first (it reads torchrun's environment; a no-op in one process),
build the SFT policy and value head inside ``with main_first():`` (rank 0 trains and caches them, the
others then load the cache), call ``rl.train.train`` on every rank with the same arguments, write any
other output only where ``is_main()``, and ``shutdown()`` at the end. ``spawn_local`` starts W processes
on this machine with the same environment for tests and rehearsals; they meet through a file, not a port.

FSDP is not offered: decoding calls ``start`` / ``step``, not ``forward``, so FSDP would have to gather
every parameter around each decoder call anyway, and the backbones here fit one device per rank
(Qwen2.5-1.5B in bf16 with bf16 AdamW states: about 12 GB of parameters and states). ``wrap`` names the
only strategy, so that a sharded one can be added behind the same call.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from ..world import Queries

STRATEGIES = ("ddp",)


def init_from_env(backend: str | None = None, timeout_min: float = 60.0) -> tuple[int, int]:
    """(rank, world_size); initialises the default process group when launched by torchrun.

    With ``WORLD_SIZE`` > 1 in the environment (torchrun sets it, with ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``): NCCL for CUDA tensors and gloo for CPU ones
    (``"cpu:gloo,cuda:nccl"``, each rank on ``cuda:LOCAL_RANK``) when CUDA is available, so the tiny
    policy, which stays on the CPU, runs there too; ``gloo`` without CUDA; ``backend`` overrides.
    ``timeout_min``: how long a collective waits, e.g. ranks at ``main_first`` while rank 0 runs SFT.
    One process: (0, 1) and nothing is initialised. Called again in an initialised process, it returns
    the same pair.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend or ("cpu:gloo,cuda:nccl" if cuda else "gloo"),
                            init_method=os.environ.get(INIT_METHOD, "env://"), rank=int(os.environ.get("RANK", "0")),
                            world_size=world_size, timeout=datetime.timedelta(minutes=timeout_min))
    return dist.get_rank(), dist.get_world_size()


INIT_METHOD = "VSTAR_TOY_INIT_METHOD"
"""An environment variable that, where set, replaces torchrun's ``env://`` rendezvous (``MASTER_ADDR`` and
``MASTER_PORT``) with its ``init_method``, e.g. ``file:///tmp/x``: what ``spawn_local`` sets."""


def spawn_local(fn, nprocs: int, args: tuple = ()) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` new processes on this machine, each with the environment torchrun
    would give it (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), so that ``init_from_env`` joins them.

    They meet through a file in a fresh temporary folder (``init_method="file://..."``), not a TCP port: a
    port chosen free and bound later by rank 0 can be taken in between by another process on a busy machine,
    and the ranks then fail to meet. ``fn`` must be importable (defined at a module's top level)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_local_rank, args=(fn, nprocs, f"file://{os.path.join(d, 'rendezvous')}", args), nprocs=nprocs,
                 join=True)


def _local_rank(rank: int, fn, nprocs: int, init_method: str, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nprocs), INIT_METHOD: init_method})
    fn(rank, *args)


def rank_and_size() -> tuple[int, int]:
    """(rank, world_size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files, logs and shows progress."""
    return rank_and_size()[0] == 0


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextlib.contextmanager
def main_first():
    """Run the block on rank 0 first, then on the other ranks together; one process just runs it.

    For work whose result rank 0 caches on disk, such as ``pipeline.sft_policy`` and ``value_model``:
    rank 0 trains and writes, the others then find the cache instead of training (and writing) too.
    """
    rank, world_size = rank_and_size()
    if world_size > 1 and rank != 0:
        dist.barrier()
    yield
    if world_size > 1 and rank == 0:
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group, if any (end of a torchrun entry point)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_queries: int, world_size: int | None = None) -> int:
    """The per-rank share B / W; raises when the global batch does not split evenly.

    >>> check_batch(16, 2)
    8
    """
    world_size = world_size or rank_and_size()[1]
    if batch_queries % world_size:
        near = world_size * max(1, round(batch_queries / world_size))
        raise ValueError(f"rl.batch_queries = {batch_queries} is invalid with {world_size} processes: it must be "
                         f"divisible by the world size, so that every rank holds an equal share (e.g. {near})")
    return batch_queries // world_size


def shard(queries: Queries) -> Queries:
    """This rank's contiguous share of a global batch: rows rank * B/W .. (rank + 1) * B/W - 1.

    The same batch in a single process. Raises when B is not divisible by the world size."""
    rank, world_size = rank_and_size()
    if world_size == 1:
        return queries
    n = check_batch(len(queries), world_size)
    return queries.take(slice(rank * n, (rank + 1) * n))


def rank_seed(seed: int) -> int:
    """A decoding seed for this rank: ``seed`` on rank 0 (so one process is unchanged), shifted on the others
    so that samplers draw independent noise for their shares."""
    rank, _ = rank_and_size()
    return (seed + 7919 * rank) % (2**31)


def broadcast(module: nn.Module | None) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (in place); no-op in one process."""
    if module is None or rank_and_size()[1] == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def wrap(policy: nn.Module, strategy: str = "ddp") -> nn.Module:
    """``policy`` in ``DistributedDataParallel``; calling the wrapper runs ``policy.forward`` (its
    ``logprobs``) and arms the gradient all-reduce of the next backward.

    Buffers (the catalog's trie, token offsets) are constants, so they are not re-broadcast each call.
    All parameters take part in every loss (``find_unused_parameters`` off). Raises when the process
    group is not initialised, or for a strategy other than ``"ddp"`` (see the module docstring on FSDP).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy = {strategy!r} is invalid: expected one of {', '.join(STRATEGIES)} "
                         "(FSDP is not offered: see vstar_toy.rl.distributed)")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("wrap() needs an initialised process group: call init_from_env() under torchrun")
    dev = next(policy.parameters()).device
    ids = [dev] if dev.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # constant buffers: synced once at construction, not before every forward (the keyword's name changed in 2.13)
    params = inspect.signature(ddp).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return ddp(policy, device_ids=ids, **{no_sync: False})


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place, with one collective (flattened)."""
    _, world_size = rank_and_size()
    if world_size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def sync_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of ``optimizer``'s parameters over ranks before each of its steps (a step
    pre-hook; no-op in one process). For modules trained outside ``forward``, such as the value head,
    whose TD step calls ``head.values``. A parameter without a gradient on a rank counts as zero there."""
    if rank_and_size()[1] == 1:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def hook(opt, args, kwargs):
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        with torch.no_grad():
            all_reduce_mean([p.grad for p in params])

    optimizer.register_step_pre_hook(hook)


def mean_scalars(row: dict) -> dict:
    """``row`` with every float replaced by its mean over ranks (NaN stays NaN); other entries as they are.
    Every rank must call it with the same keys in the same order."""
    _, world_size = rank_and_size()
    keys = [k for k, v in row.items() if isinstance(v, float)]
    if world_size == 1 or not keys:
        return row
    vals = torch.tensor([row[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(vals)
    return {**row, **dict(zip(keys, (vals / world_size).tolist()))}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (a decision rank 0 makes alone, e.g. to stop a run
    whose validation curve is flat, reaches all ranks); ``flag`` itself on one process."""
    _, world_size = rank_and_size()
    if world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: the CPU when gloo is in the backend, else the GPU."""
    return torch.device("cpu") if "gloo" in str(dist.get_backend()) else device()


__all__ = ["init_from_env", "rank_and_size", "is_main", "device", "main_first", "shutdown", "check_batch", "shard",
           "rank_seed", "broadcast", "wrap", "all_reduce_mean", "sync_gradients", "mean_scalars", "spawn_local",
           "INIT_METHOD", "STRATEGIES"]
