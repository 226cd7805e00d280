"""Top-K and temperature sampling restricted to valid SIDs, distinct candidates.

Sampling |C| sequences independently returns duplicates; we draw them *without replacement* with
stochastic beam search (Kool, Van Hoof and Welling, ICML 2019): the beam loop of beam.py ranks
children by Gumbel-perturbed log-probabilities of the sampling distribution q, where the Gumbel of
a child is conditioned on its parent's ("top-down" Gumbel-max). The surviving |C| leaves are an exact
sample without replacement from q over full SIDs, at the cost of beam search (1 + (L-1)|C| tokens).

q is the policy's constrained distribution, tempered (``temperature``) and, for top-K, cut to the
K most likely valid children at each step. Candidates are then ranked by the policy's log-prob.
"""

from __future__ import annotations

import time

import torch

from ..policy.base import SIDPolicy
from .beam import NEG_INF, candidates_from_trace, run_beam
from .tree import CandidateSets, budget_tokens


def shifted_gumbel(parent: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Gumbels ``perturbed`` (..., K) conditioned on their max being ``parent`` (..., 1).

    Stable form of G = -log(exp(-T) - exp(-Z) + exp(-G~)) (Kool et al. 2019, Appendix B).
    """
    z = perturbed.max(-1, keepdim=True).values
    diff = (perturbed - z).clamp_max(0.0)
    log1mexp = torch.where(diff < -0.693, torch.log1p(-diff.exp()), torch.log(-torch.expm1(diff)))
    v = parent - perturbed + log1mexp
    out = parent - v.clamp_min(0.0) - torch.log1p(torch.exp(-v.abs()))
    return torch.where(perturbed > NEG_INF, out, torch.full_like(out, NEG_INF))


class GumbelRanker:
    """Ranks children by top-down Gumbel perturbations of log q (tempered, optionally top-K)."""

    def __init__(self, temperature: float, top_k: int | None, generator: torch.Generator):
        self.temperature = temperature
        self.top_k = top_k
        self.gen = generator
        self.phi = None  # (Q, W) cumulative log q of the kept beams

    def start(self, q: int) -> torch.Tensor:
        self.phi = torch.zeros(q, 1)
        return torch.zeros(q, 1)

    def children(self, level, parent_score, child_logp):
        k = child_logp.shape[-1]
        # log q(y_l | x, y_<l): the cumulative log-prob differs from the step's by a per-parent
        # constant, which the softmax removes
        logq = (child_logp / self.temperature).log_softmax(-1)
        if self.top_k is not None and self.top_k < k:
            kth = logq.topk(self.top_k, dim=-1).values[..., -1:]
            logq = logq.masked_fill(logq < kth, NEG_INF).log_softmax(-1)
        logq = torch.nan_to_num(logq, nan=NEG_INF, neginf=NEG_INF)  # rows with no valid child stay -inf
        phi = self.phi.to(child_logp.device)[..., None] + logq  # (Q, W, K)
        u = torch.rand(phi.shape, generator=self.gen).clamp(1e-12, 1 - 1e-12).to(phi.device)
        g = phi - torch.log(-torch.log(u))
        self._phi_children = phi
        return shifted_gumbel(parent_score[..., None], g)

    def select(self, idx: torch.Tensor) -> None:
        self.phi = self._phi_children.reshape(idx.shape[0], -1).gather(1, idx)


def sample(
    policy: SIDPolicy,
    histories,
    n_candidates: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> CandidateSets:
    """|C| distinct SIDs per query sampled without replacement from the (top-K / tempered) policy."""
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature} is invalid: expected a number > 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k} is invalid: expected an integer >= 1")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    trace = run_beam(policy, histories, n_candidates, ranker=GumbelRanker(temperature, top_k, gen))
    name = "topk" if top_k is not None else "temperature"
    return candidates_from_trace(trace, policy, n_candidates, name, budget_tokens(policy.levels, n_candidates, 1.0),
                                 t0, order_by_logp=True)
