"""Prefix values V(x, y_<=l): what VED ranks prefixes by (Sec. 4.2), and what Fig. 3 measures.

Four scorers behind one interface, so that a reader can tell "the value is weak" from "the search
is weak": run the same search with a learned value and with the world's own truth.

========  ==========================================================================================
name      V(x, y_<=l)
========  ==========================================================================================
learned   V_phi, the value head trained by TD (``policy/value.py``, ``rl/value_learning.py``)
oracle    the world's truth: the mean (or max) true reward a(u, i) of the catalog items below
          y_<=l (synthetic worlds only: real data has no latent tastes). An upper bound for V_phi.
logp      log pi(y_<=l | x): with it (and lambda = beta = 0) VED is a likelihood search
cosine    no learning: cos(mean embedding of the history's items, centroid of the items below y_<=l)
========  ==========================================================================================

Each scorer offers two calls:

- ``bind(queries) -> ValueFn``: the function VED calls while it searches, for that batch of queries:
  ``value_fn(parents: State, codes: (N,), prefix_logp: (N,)) -> (N,)``, the values of the children
  y_<=l = parents' prefix + code, whose log pi(y_<=l | x) is ``prefix_logp``. No scorer needs a
  child's own backbone forward (``policy/value.py`` says why), so a leaf costs nothing to score.
- ``of_candidates(policy, queries, sids, context=None) -> (B, C, L)``: the value of every prefix of
  finished candidates (Fig. 3's protocol, ``evaluate.value_quality``); ``context``, the policy's encoding
  of ``queries.histories`` (``SIDPolicy.encode``), spares a scorer that runs the backbone its prefill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import VALUE_KINDS
from .policy.base import State
from .policy.value import ValueHead
from .world import Queries, World

ValueFn = Callable[[State, torch.Tensor, torch.Tensor], torch.Tensor]


class NodeTableValue:
    """A scorer whose V(x, y_<=l) is a lookup in a per-query table over the trie's nodes; subclasses
    say how the table is made (``table``)."""

    world: World

    def table(self, queries: Queries) -> torch.Tensor:
        """(B, n_nodes) the value of every trie node for each query."""
        raise NotImplementedError

    def bind(self, queries: Queries) -> ValueFn:
        table = self.table(queries)
        child = self.world.catalog.child_t

        def value_fn(parents: State, codes: torch.Tensor, prefix_logp: torch.Tensor) -> torch.Tensor:
            node = child[parents.node.cpu(), codes.cpu()]
            return table[parents.query.cpu(), node].to(parents.logp.device)

        return value_fn

    def of_candidates(self, policy, queries: Queries, sids: torch.Tensor, context=None) -> torch.Tensor:
        nodes = self.world.catalog.prefix_nodes(sids.cpu())  # (B, C, L)
        return self.table(queries).gather(1, nodes.reshape(len(queries), -1)).reshape(nodes.shape)


@dataclass(frozen=True)
class OracleValue(NodeTableValue):
    """The world's true prefix value (``World.prefix_values``): ``reduce`` "mean" (what V_phi
    estimates) or "max" (the best item still reachable below the prefix)."""

    world: World
    reduce: str = "mean"
    name: str = "oracle"

    def __post_init__(self) -> None:
        if self.world.tastes is None:
            raise ValueError(f"the oracle value needs the world's true rewards, and {self.world.name} has none "
                             "(real data): use --value learned, logp or cosine")
        if self.reduce not in ("mean", "max"):
            raise ValueError(f"reduce = {self.reduce!r} is invalid: expected mean or max")

    def table(self, queries: Queries) -> torch.Tensor:
        """(B, n_nodes) V* of every trie node for each query's user."""
        return torch.as_tensor(self.world.prefix_values(queries.users, self.reduce), dtype=torch.float32)


@dataclass(frozen=True)
class LikelihoodValue:
    """V(x, y_<=l) = log pi(y_<=l | x): guided by it, VED is a likelihood search (the tests' oracle)."""

    name: str = "logp"

    def bind(self, queries: Queries) -> ValueFn:
        return likelihood_value

    def of_candidates(self, policy, queries: Queries, sids: torch.Tensor, context=None) -> torch.Tensor:
        prompts = queries.histories if context is None else context
        with torch.no_grad():
            return policy.logprobs(prompts, sids.clamp_min(0)).float().cpu().cumsum(-1)


def likelihood_value(parents: State, codes: torch.Tensor, prefix_logp: torch.Tensor) -> torch.Tensor:
    """The ValueFn of ``LikelihoodValue``: the children's prefix log-probabilities."""
    return prefix_logp


@dataclass(frozen=True)
class CosineValue(NodeTableValue):
    """No learning: cos(mean embedding of the history's items, centroid of the catalog items below
    y_<=l). What the semantic value head starts from; how much it adds is what TD learned."""

    world: World
    name: str = "cosine"

    def table(self, queries: Queries) -> torch.Tensor:
        cat = self.world.catalog
        user = F.normalize(cat.history_centroid(queries.histories), dim=-1)  # (B, D)
        return user @ F.normalize(torch.as_tensor(cat.node_centroids), dim=-1).T  # (B, n_nodes)


def make_value(kind: str, world: World, head: ValueHead | None = None, reduce: str = "mean"):
    """The scorer called ``kind`` (one of ``VALUE_KINDS``); ``learned`` needs ``head``."""
    if kind == "learned":
        if head is None:
            raise ValueError("the learned value needs a value head (train one with `vstar-toy value`)")
        return head
    if kind == "oracle":
        return OracleValue(world, reduce)
    if kind == "logp":
        return LikelihoodValue()
    if kind == "cosine":
        return CosineValue(world)
    raise ValueError(f"value = {kind!r} is invalid: expected one of {', '.join(VALUE_KINDS)}")


__all__ = ["VALUE_KINDS", "ValueFn", "NodeTableValue", "OracleValue", "LikelihoodValue", "CosineValue",
           "likelihood_value", "make_value"]
