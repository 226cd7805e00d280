"""Decoders: constrained beam search, top-K / temperature sampling, VED, and the public code's
value-reranked tree. All return CandidateSets.

Every decoder is reached the same way: ``DECODERS[name](policy, histories, cfg, value_fn)``, or
``decode(policy, histories, cfg, value_fn)`` for ``cfg.decoder``. ``cfg`` is a ``DecodeConfig`` (its
``n_candidates``, ``budget_x`` and the decoder's own knobs); ``value_fn`` is the prefix value VED
searches with (``vstar_toy.values``), ignored by the others. The samplers draw |C| sequences at the
1x budget and refuse another (``DecodeConfig`` says so when it is built).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import DECODER_NAMES, VALUE_DECODERS, DecodeConfig
from .beam import beam_search
from .reranked import reranked_decode
from .sampling import sample
from .tree import CandidateSets, PrefixTree, budget_tokens
from .ved import ved_decode


def _beam(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    return beam_search(policy, histories, cfg.n_candidates, cfg.budget_x)


def _topk(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    return sample(policy, histories, cfg.n_candidates, cfg.temperature, cfg.top_k, cfg.seed)


def _temperature(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    return sample(policy, histories, cfg.n_candidates, cfg.temperature, None, cfg.seed)


def _ved(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    if value_fn is None:
        raise ValueError("the ved decoder needs a value (train a head with `vstar-toy value`, or use the oracle)")
    return ved_decode(policy, histories, value_fn, cfg)


def _reranked(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    if value_fn is None:
        raise ValueError("the reranked decoder needs a value (train a head with `vstar-toy value`, or use the oracle)")
    return reranked_decode(policy, histories, value_fn, cfg.n_candidates, cfg.budget_x, cfg.rerank_width)


DECODERS: dict[str, Callable[..., CandidateSets]] = {"beam": _beam, "topk": _topk, "temperature": _temperature,
                                                     "ved": _ved, "reranked": _reranked}
"""The decoders by name: what ``DecodeConfig.decoder`` may be (``config.DECODER_NAMES``) and how ``decode``
reaches each. A new decoder is one function and one entry here; ``VALUE_DECODERS`` (config) lists those
that read a value."""
if tuple(DECODERS) != DECODER_NAMES:  # one list of names, declared in config (which imports nothing of the package)
    raise ImportError(f"decoding.DECODERS registers {tuple(DECODERS)}; config.DECODER_NAMES declares {DECODER_NAMES}")


def decode(policy, histories, cfg: DecodeConfig, value_fn=None) -> CandidateSets:
    """Run the decoder ``cfg.decoder`` on a batch of contexts. VED needs ``value_fn``, a prefix value
    bound to these queries (``values.ValueFn``: e.g. ``head.bind(queries)``)."""
    if cfg.n_candidates > policy.catalog.n_items:
        raise ValueError(
            f"n_candidates = {cfg.n_candidates} is invalid: the catalog holds only {policy.catalog.n_items} items"
        )
    out = DECODERS[cfg.decoder](policy, histories, cfg, value_fn)
    return out.ranked_by_logp() if cfg.rank == "logp" and cfg.decoder in VALUE_DECODERS else out


__all__ = ["CandidateSets", "DECODERS", "PrefixTree", "beam_search", "budget_tokens", "decode", "reranked_decode",
           "sample", "ved_decode"]
