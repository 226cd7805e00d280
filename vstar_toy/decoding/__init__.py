"""Decoders: constrained beam search, top-K / temperature sampling, and VED. All return CandidateSets."""

from __future__ import annotations

from ..config import DecodeConfig
from .beam import beam_search
from .sampling import sample
from .tree import CandidateSets, PrefixTree, budget_tokens
from .ved import ved_decode


def decode(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    """Run the decoder ``cfg.decoder`` on a batch of contexts. VED needs ``value_fn``, a prefix value
    bound to these queries (``values.ValueFn``: e.g. ``head.bind(queries)``)."""
    if cfg.n_candidates > policy.catalog.n_items:
        raise ValueError(
            f"n_candidates = {cfg.n_candidates} is invalid: the catalog holds only {policy.catalog.n_items} items"
        )
    if cfg.decoder == "beam":
        return beam_search(policy, histories, cfg.n_candidates, cfg.budget_x)
    if cfg.decoder == "topk":
        return sample(policy, histories, cfg.n_candidates, cfg.temperature, cfg.top_k, cfg.seed)
    if cfg.decoder == "temperature":
        return sample(policy, histories, cfg.n_candidates, cfg.temperature, None, cfg.seed)
    if value_fn is None:
        raise ValueError("the ved decoder needs a value (train a head with `vstar-toy value`, or use the oracle)")
    return ved_decode(policy, histories, value_fn, cfg)


__all__ = ["CandidateSets", "PrefixTree", "beam_search", "budget_tokens", "decode", "sample", "ved_decode"]
