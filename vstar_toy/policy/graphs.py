"""CUDA graphs of a decode step: capture once per shape, replay after (issue 34, item 3).

A decode step of a 28-layer backbone launches hundreds of small kernels, and at the batch sizes of a
decode the GPU finishes each before the host has launched the next: the step is launch-bound. A CUDA
graph records the step's kernels once and replays them as one launch. A graph replays the same kernels on
the same memory, so what it reads and writes must sit at the same addresses at every replay: the step's
inputs are copied into static buffers first, and everything else it touches (the weights, the decode's
KV cache) must be the same tensors as at capture. ``policy/qwen.py`` keeps its decode caches in such
buffers (one per batch shape) and names in each step's key every Python value the step depends on.

``StepGraphs.run(key, fn, *inputs)`` runs ``fn(*inputs)``: the first time a key is seen, eagerly (a shape
seen once is not worth a capture); the second time, it captures ``fn`` on static copies of the inputs
and replays; afterwards it only copies the inputs and replays. ``fn`` must be a pure function of its
inputs and of state that stays put: no host reads (a capture refuses them), no output shape chosen by
values; what it closes over is kept as long as its graph. At most ``most`` graphs are kept, the least
recently used dropped first.

Without a GPU the same plan is rehearsed (``rehearse=True``): the capture runs ``fn`` once under
``dispatch.Counts`` and refuses any host read or value-dependent shape, as a CUDA capture would, and a
replay calls the recorded ``fn`` on the static buffers with the counters told one launch, not its
operators, as on a GPU; a replay that dispatches other operators than its capture did (Python state that ``fn``
reads changed, which a CUDA replay would not follow) is refused. What the rehearsal cannot see: a kernel that is
not capturable on CUDA, and a step whose Python changes only the values it bakes in (a scalar argument).

    >>> g = StepGraphs(torch.device("cpu"), rehearse=True)
    >>> double = lambda x: x * 2
    >>> [g.run("k", double, torch.tensor([i])).item() for i in range(3)]  # eager, capture, replay
    [0, 2, 4]
    >>> g.captures, g.replays
    (1, 2)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_map

from .. import dispatch


class _Graph:
    """One captured step: its static inputs, its output, how to replay it, and the step itself, kept so that what
    it closes over (tensors a CUDA graph reads at fixed addresses) lives as long as the graph."""

    def __init__(self, static: tuple, out: Any, replay: Callable[[], Any], fn: Callable[..., Any]):
        self.static, self.out, self.replay, self.fn = static, out, replay, fn


class StepGraphs:
    """Per-key captured steps (the module docstring): CUDA graphs on a CUDA device, their rehearsal elsewhere.

    captures, replays, eager: how many calls captured a graph, replayed one, or ran eagerly (tests, benchmarks).
    """

    def __init__(self, device: torch.device, rehearse: bool = False, most: int = 256):
        if device.type != "cuda" and not rehearse:
            raise ValueError(f"CUDA graphs need a CUDA device, not {device.type!r}: rehearse=True runs the same "
                             "plan without one (the tests do)")
        self.device, self.rehearse, self.most = device, rehearse, most
        self.graphs: collections.OrderedDict[Hashable, _Graph] = collections.OrderedDict()
        self.seen: collections.OrderedDict[Hashable, None] = collections.OrderedDict()  # keys run once
        self.captures = self.replays = self.eager = 0
        self._pool = None if rehearse else torch.cuda.graph_pool_handle()

    def run(self, key: Hashable, fn: Callable[..., Any], *inputs: torch.Tensor | None) -> Any:
        """``fn(*inputs)``: eagerly on a key's first call, captured on its second, replayed after; a copy of
        the graph's outputs (a tensor, or tuples and lists of them: the next replay overwrites the graph's own).
        ``None`` inputs stay None (the key must say so)."""
        graph = self.graphs.get(key)
        if graph is None and key not in self.seen:
            self.seen[key] = None
            while len(self.seen) > 4 * self.most:
                self.seen.popitem(last=False)
            self.eager += 1
            return fn(*inputs)
        if graph is None:
            graph = self._capture(fn, inputs)
            self.graphs[key] = graph
            self.captures += 1
            while len(self.graphs) > self.most:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        for static, x in zip(graph.static, inputs):
            if static is not None:
                static.copy_(x)
        self.replays += 1
        return tree_map(torch.Tensor.clone, graph.replay())

    def forget(self, stale: Callable[[Hashable], bool]) -> None:
        """Drop the graphs whose keys ``stale`` names (a buffer they replay on was replaced)."""
        for key in [k for k in self.graphs if stale(k)]:
            del self.graphs[key]
        for key in [k for k in self.seen if stale(k)]:
            del self.seen[key]

    def _capture(self, fn, inputs) -> _Graph:
        static = tuple(None if x is None else x.clone() for x in inputs)
        if self.rehearse:
            with dispatch.Counts() as c:
                out = fn(*static)
            if c.host_reads or c.shape_syncs:
                raise RuntimeError(f"a captured step read the host {c.host_reads} times and chose "
                                   f"{c.shape_syncs} shapes by values ({dict(c.by_read)}, "
                                   f"{dict(c.by_shape_sync)}): a CUDA graph cannot capture it")

            captured = c.by_op

            def replay():
                dispatch.count_launch()
                with _disable_current_modes(), dispatch.Counts() as again:  # one launch on a GPU, not its operators
                    out = fn(*static)
                if again.by_op != captured:
                    raise RuntimeError("a replay ran other operators than its capture (Python state that the step "
                                       "reads changed since): a CUDA replay would not follow it; bring that state up "
                                       f"to date before the replay. Added {dict(again.by_op - captured)}, "
                                       f"missing {dict(captured - again.by_op)}")
                return out

            return _Graph(static, out, replay, fn)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up off the capture (lazy initialisations, cuBLAS workspaces)
            fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn(*static)

        def replay():
            dispatch.count_launch()
            graph.replay()
            return out

        return _Graph(static, out, replay, fn)
