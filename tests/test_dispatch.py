"""Counting what torch code asks of the device (``vstar_toy.dispatch``): operators and host reads, and the
decoders' counts on the tiny Qwen2 at 64 queries x 16 beams, held at or below their latest counts (issue 34:
benchmarks/results/cpu-tiny-2026-12-07*.md), so that a change that adds launches or synchronisations to a decode
step is seen on a CPU."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from vstar_toy.config import DecodeConfig, ValueConfig
from vstar_toy.decoding import beam_search, decode
from vstar_toy.dispatch import Counts
from vstar_toy.policy.value import ValueHead

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402  (benchmarks/gpu.py: the benchmark's policy and histories)


def test_each_read_counts_once_and_arithmetic_counts_per_operator():
    x = torch.arange(4.0)
    item = torch.Tensor.item
    with Counts() as c:
        y = x + 1  # 1
        _ = y.cpu().numpy()  # a copy to the host: one read (the numpy() of the copy reads nothing more)
        _ = bool(y.sum() > 0)  # sum, gt, the scalar: one read
        _ = y.tolist()  # one read
        _ = int(y[0])  # select, the scalar: one read
    assert c.host_reads == 4, dict(c.by_read)
    with Counts() as shapes:
        _ = x[x > 1]  # the mask's true count sets the shape
        _ = x.nonzero()
        _ = x[torch.tensor([0, 2])]  # integer indices: the shape is known
    assert shapes.shape_syncs == 2 and shapes.host_reads == 0
    assert c.by_op["add"] == 1 and c.by_op["sum"] == 1 and c.by_op["gt"] == 1
    assert torch.Tensor.item is item  # the methods restored on exit
    with Counts() as none:
        pass
    assert none.ops == 0 and none.host_reads == 0


def counted_searches():
    """The benchmark's tiny Qwen2 at 64 queries x 16 (a new one: the graphs test turns graphs on), its histories,
    a value head, and VED's configs in exact and fixed shapes."""
    torch.manual_seed(0)
    size = dict(gpu.TINY, **gpu.COUNTED)
    policy = gpu.build(size, 0, torch.device("cpu"))
    hist, _ = gpu.histories(size, 0)
    head = ValueHead.for_policy(policy, ValueConfig()).eval()
    ved = DecodeConfig(decoder="ved", n_candidates=16, warm_beam=8, budget_x=1.0)
    return policy, hist, head, ved, dataclasses.replace(ved, shapes="fixed")


def test_the_decoders_do_not_ask_more_of_the_device_than_when_counting_began():
    policy, hist, head, ved, fixed = counted_searches()
    counted, outs = {}, {}
    with torch.no_grad():
        for name, fn in [("beam", lambda: beam_search(policy, hist, 16)),
                         ("ved", lambda: decode(policy, hist, ved, head)),
                         ("ved fixed", lambda: decode(policy, hist, fixed, head))]:
            fn()
            with Counts() as c:
                out = outs[name] = fn()
            counted[name] = (c.ops, c.host_reads, c.shape_syncs)
            assert out.valid.all() and np.all(out.items.numpy() >= 0)
    # fixed shapes: the same candidates, costs and tree; log-probs within float noise (other rows share the batch)
    exact, same = outs["ved"], outs["ved fixed"]
    assert torch.equal(exact.sids, same.sids) and np.array_equal(exact.cost_tokens, same.cost_tokens)
    assert np.array_equal(exact.tree.sid, same.tree.sid) and np.array_equal(exact.tree.visits, same.tree.visits)
    assert torch.allclose(exact.logp, same.logp, atol=1e-4)
    assert counted["ved fixed"][1] <= gpu.TINY["levels"] + 1  # issue 34's goal: at most one read per level plus one
    # before (2026-12-07): beam 1,406 operators, 53 reads, 22 value-dependent shapes; VED 16,593, 319, 385. The
    # trees recorded on the device and read back once (decoding/tree.py: TreeBuilder): beam 1,431, 12, 21; VED
    # 16,521, 299, 385. The tree, candidates and cost in one copy, the rows' layout known from shapes
    # (State.block), the decoders' code check on the device: beam 1,419, 1, 21; VED 16,514, 276, 385. q, k, v as
    # one product (QwenPolicy._stacked_qkv): beam 1,311; VED 15,958. Keys written in place into one decode cache
    # (_DecodeCache): beam 1,287; VED 15,630 (benchmarks/results/cpu-tiny-2026-12-07*.md). VED's tree on the
    # device, read once per iteration (decoding/ved.py: plan), its Gumbel keys hashed there, code heads chosen
    # without sorting rows by level: beam 1,251, 1, 12; VED 17,031, 19, 9 (more operators: the keys and the
    # bookkeeping that numpy and the host did between reads now run as device operators). Child tables for
    # the forwarded nodes only (SearchTree.child by pool row): VED 17,130, 19, 9; every leaf's row written
    # (masked rows' spare slots): 17,164. Fixed shapes (DecodeConfig.shapes): 17,038, 2, 9. A beam level's
    # log-probs by a where instead of a masked copy: beam 1,254, 1, 6; VED 17,167, 19, 3; fixed 17,041, 2, 3. The
    # decode step's arithmetic a function of its cache (for CUDA graphs), the tree read back with one cast per
    # dtype, beam search's kept rows indexed once: beam 1,173; VED 17,114; fixed 16,956
    assert all(a <= b for a, b in zip(counted["beam"], (1173, 1, 6))), counted
    assert all(a <= b for a, b in zip(counted["ved"], (17114, 19, 3))), counted
    assert all(a <= b for a, b in zip(counted["ved fixed"], (16956, 2, 3))), counted


def test_with_graphs_a_beam_search_launches_at_most_500_operators():
    """Issue 34's goal for a beam search (64 x 16, tiny Qwen2): at most 500 operators. Met with the decode steps and
    the prefill replayed as graphs (``QwenPolicy.use_cuda_graphs``, rehearsed here: a replay counts as the one
    launch it is on a GPU), the same candidates as the eager steps; VED's searches launch fewer operators too (its
    decode steps and its decisions replayed)."""
    policy, hist, head, _, fixed = counted_searches()
    searches = {"beam": lambda: beam_search(policy, hist, 16), "ved fixed": lambda: decode(policy, hist, fixed, head)}
    counted = {}
    with torch.no_grad():
        eager = {name: fn() for name, fn in searches.items()}
        policy.use_cuda_graphs(rehearse=True)
        for name, fn in searches.items():
            for _ in range(3):  # eager, captured, and once more for the cache that grew
                fn()
            with Counts() as c:
                out = fn()
            counted[name] = (c.ops, c.host_reads, c.by_op["graph_replay"])
            assert torch.equal(out.sids, eager[name].sids) and np.array_equal(out.cost_tokens, eager[name].cost_tokens)
    # beam search: the prefill and L decode steps are L + 1 replays (491 operators, 1 read); VED fixed: 13,358, 2
    # with its decode steps replayed, 9,134 with its decisions too (ved.decide)
    assert counted["beam"][0] <= 500 and counted["beam"][1] <= 1 and counted["beam"][2] == gpu.TINY["levels"] + 1
    assert counted["ved fixed"][0] <= 9134 and counted["ved fixed"][1] <= 2, counted
