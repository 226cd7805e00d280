"""Attention over a shared prompt without copying it: the rows of one decoding or training call packed per
context.

A decoding step forwards many rows of the same prompts (beam search: |C| beams per prompt; VED: any
number), and the update's log-probs |C| candidates per prompt. Attention that gathers each row's prompt
keys copies the prompt cache once per row (|C| x the prompt's keys and values, and as much again in the
backward). Packing lays each context's rows side by side after its prompt instead, so one attention call
per layer reads every prompt once; a block-diagonal mask keeps each row seeing exactly what it saw alone.
``policy/qwen.py`` does the same for the case of equal, contiguous groups (``_query_major``).
"""

from __future__ import annotations

import torch


class Packing:
    """The layout of one ``_extend`` call's rows, packed per context (the module docstring says why).

    Context b's rows sit side by side in G slots after its T context positions: one sequence of
    T + G * (P + S) keys per context (each row's P cached prefix positions, then its S new tokens) and
    G * S queries. The mask (``mask``) is block-diagonal over the slots, so a row sees its context, its
    own prefix and, causally, its own new tokens: what it saw alone. G is the largest number of rows of
    one context; empty slots are padding that sees only itself.

    slot: (N,) flat slot b * G + g of each row; g: G; n_ctx: B.
    """

    def __init__(self, slot: torch.Tensor, g: int, n_ctx: int):
        self.slot, self.g, self.n_ctx = slot, g, n_ctx

    @staticmethod
    def of(query: torch.Tensor, n_ctx: int, block: int | None = None, most: int | None = None) -> Packing:
        """Rows whose contexts are ``query`` (N,), in any order, among ``n_ctx`` contexts. ``block``: c when the
        caller knows the rows come grouped by context, c each (``State.block``): then row r is slot r, and nothing
        is counted or read back to the host. ``most``: the most rows of one context, when the caller knows it
        (``State.most``): the slots per context, not read back.

        >>> p = Packing.of(torch.tensor([1, 0, 1, 1]), 3)  # context 1 has the most rows: G = 3
        >>> p.g, p.slot.tolist()  # row 1 is context 0's first slot; rows 0, 2, 3 fill context 1's
        (3, [3, 0, 4, 5])
        >>> Packing.of(torch.tensor([0, 0, 1, 1]), 2, block=2).slot.tolist()
        [0, 1, 2, 3]
        """
        if block is not None and len(query) == block * n_ctx:
            return Packing(torch.arange(len(query), device=query.device), block, n_ctx)
        counts = torch.zeros(n_ctx, dtype=torch.long, device=query.device).index_add_(0, query, torch.ones_like(query))
        g = most if most is not None else int(counts.max()) if len(query) else 1  # else one read per call
        order = torch.argsort(query, stable=True)
        first = counts.cumsum(0) - counts  # (B,) the first sorted row of each context
        sorted_q = query[order]
        slot = torch.empty_like(query)
        slot[order] = sorted_q * g + torch.arange(len(query), device=query.device) - first[sorted_q]
        return Packing(slot, g, n_ctx)

    def rows_to_seq(self, t: torch.Tensor) -> torch.Tensor:
        """(N, h, S, dh) per row -> (B, h, G*S, dh): each context's rows one after another, zeros in empty
        slots."""
        n, h, s, dh = t.shape
        full = t.new_zeros(self.n_ctx * self.g, h, s, dh).index_copy(0, self.slot, t)
        return full.view(self.n_ctx, self.g, h, s, dh).transpose(1, 2).reshape(self.n_ctx, h, self.g * s, dh)

    def seq_to_rows(self, t: torch.Tensor, s: int) -> torch.Tensor:
        """(B, h, G*S, dh) -> (N, h, S, dh), the inverse of ``rows_to_seq``."""
        b, h, _, dh = t.shape
        return t.view(b, h, self.g, s, dh).transpose(1, 2).reshape(b * self.g, h, s, dh)[self.slot]

    def mask(self, ctx_mask: torch.Tensor, past_len: torch.Tensor, p: int, s: int) -> torch.Tensor:
        """(B, 1, G*S, T + G*(P+S)) attention mask: query (slot g, token i) sees the context's real
        positions, slot g's first ``past_len`` cached positions and its new tokens j <= i."""
        b, g, dev = self.n_ctx, self.g, ctx_mask.device
        lens = torch.zeros(b * g, dtype=torch.long, device=dev).index_copy(0, self.slot, past_len.to(dev))
        pos = torch.arange(p + s, device=dev)  # a slot's key positions: P cached, then S new
        tok = torch.arange(s, device=dev)
        own = torch.where(pos[None, None] < p, pos[None, None] < lens[:, None, None],
                          (pos[None, None] - p <= tok[None, :, None]))  # (B*G, S, P+S)
        same = torch.eye(g, dtype=torch.bool, device=dev)  # a query slot sees its own key slot only
        own = own.view(b, g, s, 1, p + s) & same[None, :, None, :, None]  # (B, G, S, G, P+S)
        ctx = ctx_mask[:, None, :].expand(b, g * s, -1)  # (B, G*S, T)
        return torch.cat([ctx, own.reshape(b, g * s, g * (p + s))], -1)[:, None]
