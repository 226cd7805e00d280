"""What a piece of torch code asks of the device, counted on any device, a CPU included (issue 34): the
operators it dispatches (each a kernel launch on a GPU) and the times it reads a value back to the host (each a
synchronisation on a GPU). A decode step that launches thousands of small kernels and syncs every level is
launch-bound on a GPU; both counts are the same on a CPU, where they can be measured without one.

    >>> x = torch.arange(6.0)
    >>> with Counts() as c:
    ...     y = (x * 2 + 1).sum()
    ...     _ = y.item()
    >>> c.ops, c.host_reads
    (4, 1)

Operators are counted by a ``TorchDispatchMode`` below autograd (one count per ATen call: a fused ``add``
is one, ``x * 2 + 1`` is two, plus the ``sum`` and the scalar read). Host reads are the calls that hand a
tensor's values to Python: ``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/``int``/``float`` of a tensor,
``torch.equal``;
``x.cpu().numpy()`` counts once (the copy), as it costs one synchronisation on a GPU.
"""

from __future__ import annotations

import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
"""The ``torch.Tensor`` methods that hand values to the host."""


SHAPE_OPS = ("nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "repeat_interleave",
             "bincount")
"""Operators whose output shape depends on the values: on a GPU each waits for the device to learn the shape."""


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.shape_syncs: collections.Counter[str] = collections.Counter()
        self.value_reads: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        self.ops[name] += 1
        if name == "equal":  # torch.equal hands Python a bool: a host read, though no Tensor method is called
            self.value_reads[name] += 1
        if name in SHAPE_OPS or (name in ("index", "index_put", "index_put_") and _bool_index(args)):
            self.shape_syncs[name] += 1  # x[mask]: the mask's true count sets the shape
        return func(*args, **(kwargs or {}))


def count_launch(name: str = "graph_replay") -> None:
    """Count one launch that dispatches no ATen operator (a CUDA graph's replay, ``policy/graphs.py``) in every
    ``Counts`` active now: with graphs, ``ops`` is what the host launches, whatever the graph holds."""
    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, _OpCounter):
            mode.ops[name] += 1


class Counts(contextlib.AbstractContextManager):
    """A context that counts the operators dispatched (``ops``, by name in ``by_op``) and the host reads
    (``host_reads``, by method in ``by_read``) of the code inside it."""

    def __init__(self) -> None:
        self.by_op: collections.Counter[str] = collections.Counter()
        self.by_read: collections.Counter[str] = collections.Counter()
        self.by_shape_sync: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, object] = {}
        self._mode = _OpCounter()
        self._depth = 0

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def host_reads(self) -> int:
        return sum(self.by_read.values())

    @property
    def shape_syncs(self) -> int:
        """Operators whose output shape depends on values (``SHAPE_OPS``, boolean-mask indexing): on a GPU each
        synchronises as a host read does, though no value reaches Python."""
        return sum(self.by_shape_sync.values())

    def _wrap(self, name: str, method):
        counts = self

        def read(tensor, *args, **kwargs):
            copied = getattr(tensor, "_vstar_copied", False)  # the result of .cpu(): its values are on the host
            if copied:
                del tensor._vstar_copied  # once (on a CPU, .cpu() returns the tensor itself)
            outer = counts._depth == 0 and not copied
            counts._depth += 1
            try:
                out = method(tensor, *args, **kwargs)
            finally:
                counts._depth -= 1
            if outer:
                counts.by_read[name] += 1
            if name == "cpu" and isinstance(out, torch.Tensor):
                out._vstar_copied = True  # the numpy() / tolist() that follows reads nothing more
            return out

        return read

    def __enter__(self) -> Counts:
        for name in READS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(name, self._saved[name]))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self.by_op.update(self._mode.ops)
        self.by_shape_sync.update(self._mode.shape_syncs)
        self.by_read.update(self._mode.value_reads)
