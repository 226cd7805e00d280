"""The prefix tree every decoder returns, and the candidate sets built from it.

A :class:`PrefixTree` holds the trees of a whole batch of queries as flat node arrays (a forest):
node j belongs to query ``query[j]``. Beam search records its kept beams and the children it
pruned; VED records every node it evaluated with V, H, G and its visit count. The explorer draws
it, Sibling-GRPO groups over the candidate SIDs it produced, and ``to_frame`` shows it as a table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..world.catalog import sid_str


@dataclass
class PrefixTree:
    """Flat node arrays of the decoding trees of B queries (M nodes in all).

    query: (M,) query row; parent: (M,) node index of the parent, -1 at a root; depth: (M,) l;
    token: (M,) the code y_l (-1 at a root); sid: (M, L) the prefix y_<=l, -1 padded;
    logp: (M,) log pi(y_<=l | x), the prefix log-probability; value: (M,) V_phi (NaN if not
    evaluated); entropy: (M,) H_theta (Eq. 12, NaN if not evaluated); priority: (M,) G (Eq. 11);
    visits: (M,) N(s) (Eq. 13); evaluated: (M,) a backbone forward was spent on it; pruned: (M,)
    scored as a child but dropped; fully_expanded: (M,) every valid child is in the tree.
    """

    query: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    token: np.ndarray
    sid: np.ndarray
    logp: np.ndarray
    value: np.ndarray
    entropy: np.ndarray
    priority: np.ndarray
    visits: np.ndarray
    evaluated: np.ndarray
    pruned: np.ndarray
    fully_expanded: np.ndarray

    def __len__(self) -> int:
        return len(self.query)

    def to_frame(self, query: int | None = None) -> pd.DataFrame:
        """One row per node (of one query, if given), with the columns above; sid as a string."""
        cols = {k: v for k, v in self.__dict__.items() if k != "sid"}
        df = pd.DataFrame(cols)
        df.insert(0, "node", np.arange(len(self)))
        df["sid"] = [sid_str(row) for row in self.sid]
        if query is not None:
            df = df[df["query"] == query].reset_index(drop=True)
        return df

    def for_query(self, b: int) -> PrefixTree:
        """The tree of one query, node indices renumbered from 0."""
        idx = np.flatnonzero(self.query == b)
        remap = np.full(len(self), -1)
        remap[idx] = np.arange(len(idx))
        sub = {k: v[idx] for k, v in self.__dict__.items()}
        sub["parent"] = np.where(sub["parent"] >= 0, remap[np.maximum(sub["parent"], 0)], -1)
        return PrefixTree(**sub)


FIELDS = {"query": (np.int64, None), "parent": (np.int64, None), "depth": (np.int64, None),
          "token": (np.int64, None), "sid": (np.int64, None), "logp": (np.float64, None),
          "value": (np.float64, np.nan), "entropy": (np.float64, np.nan), "priority": (np.float64, np.nan),
          "visits": (np.int64, 0), "evaluated": (bool, None), "pruned": (bool, None), "fully_expanded": (bool, False)}
"""PrefixTree's columns: their dtype, and the value of a column not given (None: it must be given)."""


class TreeBuilder:
    """Collects nodes batch by batch (torch tensors on any device, numpy arrays or scalars) and freezes them into
    a PrefixTree. Tensors stay where they are until ``build``, which reads them all back to the host in one
    copy: a decoder on a GPU records its tree without a synchronisation per level."""

    def __init__(self, levels: int):
        self.levels = levels
        self.parts: list[tuple[int, dict[str, object]]] = []  # (nodes, the columns as given)
        self.updates: list[tuple[np.ndarray, dict[str, object]]] = []  # ``set`` calls, applied by ``build``
        self.n = 0

    def add(self, *, query, parent, depth, token, sid, logp, value=None, entropy=None, priority=None,
            visits=None, evaluated, pruned, fully_expanded=None) -> np.ndarray:
        """Append ``len(query)`` nodes; returns their node indices."""
        given = dict(query=query, parent=parent, depth=depth, token=token, sid=sid, logp=logp, value=value,
                     entropy=entropy, priority=priority, visits=visits, evaluated=evaluated, pruned=pruned,
                     fully_expanded=fully_expanded)
        n = len(query)
        self.parts.append((n, given))
        ids = np.arange(self.n, self.n + n)
        self.n += n
        return ids

    def set(self, ids: np.ndarray, **columns) -> None:
        """Fill columns of nodes already added (e.g. the entropy of a node once it is forwarded)."""
        self.updates.append((np.asarray(ids), columns))

    def build(self) -> PrefixTree:
        return self.build_with([])[0]

    def build_with(self, also: list[torch.Tensor]) -> tuple[PrefixTree, list[np.ndarray]]:
        """The tree, and the tensors ``also`` as numpy arrays, all read back to the host in one copy per device
        (a decoder's candidates with its tree: one synchronisation for both)."""
        tensors = [x for _, given in self.parts for x in given.values() if isinstance(x, torch.Tensor)]
        tensors += [x for _, cols in self.updates for x in cols.values() if isinstance(x, torch.Tensor)]
        arrays = host_arrays(tensors + list(also))
        host = dict(zip(map(id, tensors), arrays))
        if not self.parts:
            empty = {k: np.zeros(0, dtype=np.int64) for k in PrefixTree.__dataclass_fields__}
            empty["sid"] = np.zeros((0, self.levels), dtype=np.int64)
            return PrefixTree(**empty), arrays[len(tensors):]

        def arr(x, n: int, dtype, fill):
            if x is None:
                return np.full(n, fill, dtype=dtype)
            x = host[id(x)] if isinstance(x, torch.Tensor) else x
            return np.broadcast_to(np.asarray(x, dtype=dtype), (n,) + np.shape(x)[1:]).copy()

        cols = {k: np.concatenate([arr(given[k], n, dtype, fill) for n, given in self.parts])
                for k, (dtype, fill) in FIELDS.items()}
        for ids, values in self.updates:
            for name, v in values.items():
                cols[name][ids] = host[id(v)] if isinstance(v, torch.Tensor) else np.asarray(v)
        return PrefixTree(**cols), arrays[len(tensors):]


def host_arrays(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """``tensors`` as numpy arrays, read back in one copy per device (float64 holds their values exactly: ids,
    codes and counts far below 2^53, float32 log-probabilities, booleans)."""
    out: list[np.ndarray | None] = [None] * len(tensors)
    by_device: dict[torch.device, dict[torch.dtype, list[int]]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, {}).setdefault(t.dtype, []).append(i)
    for by_dtype in by_device.values():
        # one cast per dtype, not per tensor (each is an operator: a kernel launch on a GPU)
        idx = [i for group in by_dtype.values() for i in group]
        flat = torch.cat([torch.cat([_flat(tensors[i]) for i in group]).to(torch.float64)
                          for group in by_dtype.values()]).cpu().numpy()
        start = 0
        for i in idx:
            t = tensors[i]
            out[i] = flat[start : start + t.numel()].reshape(t.shape)
            start += t.numel()
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    """t as one dimension, detached only where it records gradients (a detach is an operator too)."""
    return (t.detach() if t.requires_grad else t).reshape(-1)


@dataclass
class CandidateSets:
    """What every decoder returns for a batch of B queries, C candidates each.

    sids: (B, C, L), -1 padded; items: (B, C), -1 padded; valid: (B, C); logp: (B, C) log pi(y|x)
    under the policy that decoded (the behaviour policy pi_old of the importance ratios);
    token_logp: (B, C, L) its per-token terms; order within a query is the decoder's ranking.
    cost_tokens: (B,) backbone forward tokens spent per query (the start token included, the prompt
    prefill not); budget_tokens: the per-query budget B; warmup_tokens / expansion_tokens: (B,) how
    VED split its cost (beam and sampling: all warm-up, 0 expansion).
    """

    sids: torch.Tensor
    items: torch.Tensor
    valid: torch.Tensor
    logp: torch.Tensor
    token_logp: torch.Tensor
    tree: PrefixTree
    cost_tokens: np.ndarray
    budget_tokens: int
    decoder: str
    warmup_tokens: np.ndarray = field(default=None)
    expansion_tokens: np.ndarray = field(default=None)
    seconds: float = 0.0
    prefill_tokens: int = 0

    def __post_init__(self) -> None:
        if self.warmup_tokens is None:
            self.warmup_tokens = self.cost_tokens.copy()
        if self.expansion_tokens is None:
            self.expansion_tokens = np.zeros_like(self.cost_tokens)

    def __len__(self) -> int:
        return self.sids.shape[0]

    @property
    def n_candidates(self) -> int:
        return self.sids.shape[1]

    def ranked_by_logp(self) -> CandidateSets:
        """The same sets, each ranked by log pi(y|x), most likely first (padding last): how the value
        decoders rank their candidates with ``DecodeConfig.rank = "logp"``. The sets, their trees and
        their costs are unchanged; only the order that HR@K and NDCG@K read is."""
        order = torch.sort(torch.where(self.valid, self.logp, float("-inf")), dim=1, descending=True,
                           stable=True).indices
        take = lambda x: x.gather(1, order if x.dim() == 2 else order[..., None].expand_as(x))  # noqa: E731
        return dataclasses.replace(self, sids=take(self.sids), items=take(self.items), valid=take(self.valid),
                                   logp=take(self.logp), token_logp=take(self.token_logp))

    def stats(self) -> dict[str, float]:
        """Budget bookkeeping as the CLI prints it."""
        return {
            "mean_cost_tokens": float(np.mean(self.cost_tokens)),
            "budget_tokens": int(self.budget_tokens),
            "warmup_tokens": float(np.mean(self.warmup_tokens)),
            "expansion_tokens": float(np.mean(self.expansion_tokens)),
            "valid_frac": float(self.valid.float().mean()),
        }


def merge_sets(first: CandidateSets, second: CandidateSets, n_candidates: int) -> CandidateSets:
    """One group of ``n_candidates`` per query from two decoders' sets of the same queries:
    ``first``'s candidates, then ``second``'s that are not among them (duplicates removed), padded.
    The start token is counted once (both decoders begin from the same prompt and root forward); the
    trees are kept side by side (two roots per query). ``RLConfig.group = "mix"``.
    """
    L = first.sids.shape[-1]
    sids = torch.cat([first.sids, second.sids], 1)
    valid = torch.cat([first.valid, second.valid], 1)
    items = torch.cat([first.items, second.items], 1)
    dup = (items[:, :, None] == items[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    valid = valid & ~dup.tril(-1).any(-1)  # a later copy of an earlier candidate is dropped
    order = torch.sort((~valid).int(), dim=1, stable=True).indices[:, :n_candidates]  # kept ones first
    take = lambda x: x.gather(1, order if x.dim() == 2 else order[..., None].expand(-1, -1, L))  # noqa: E731
    keep = take(valid)
    nodes = {k: [getattr(first.tree, k), getattr(second.tree, k)] for k in PrefixTree.__dataclass_fields__}
    parent = nodes["parent"][1]
    nodes["parent"][1] = np.where(parent >= 0, parent + len(first.tree), -1)  # second's node ids follow first's
    tree = PrefixTree(**{k: np.concatenate(v) for k, v in nodes.items()})
    return CandidateSets(
        sids=torch.where(keep[..., None], take(sids), -1),
        items=torch.where(keep, take(items), -1),
        valid=keep,
        logp=torch.where(keep, take(torch.cat([first.logp, second.logp], 1)), float("-inf")),
        token_logp=torch.where(keep[..., None], take(torch.cat([first.token_logp, second.token_logp], 1)), 0.0),
        tree=tree,
        cost_tokens=first.cost_tokens + second.cost_tokens - 1,
        budget_tokens=first.budget_tokens + second.budget_tokens - 1,
        decoder=f"{first.decoder}+{second.decoder}",
        warmup_tokens=first.warmup_tokens + second.warmup_tokens - 1,
        expansion_tokens=first.expansion_tokens + second.expansion_tokens,
        seconds=first.seconds + second.seconds,
        prefill_tokens=first.prefill_tokens + second.prefill_tokens,
    )


def budget_tokens(levels: int, n_candidates: int, budget_x: float) -> int:
    """The paper's budget (Sec. 5.5): kx = 1 + k * (L - 1) * |C| forward tokens (1x = 1 + 2B, 2x = 1 + 4B
    for L = 3), the start token plus k beams' worth of steps."""
    return 1 + int(round(budget_x * (levels - 1) * n_candidates))
