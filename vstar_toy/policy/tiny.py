"""The tiny causal transformer over SID tokens: the CPU default policy.

nanoGPT-shaped (pre-LayerNorm blocks, GELU MLP), with two position signals instead of absolute
positions: the *level* of a token inside its item (0 = SEP, 1..L = codes) and the *slot* of its
item in the user's sequence. Left-padded contexts of any length therefore encode the same way.

The KV cache has two parts: the context cache (per layer, (B, heads, T, dh), computed once by
``start``) and a per-state prefix cache (N, layers, 2, heads, L+1, dh) for [start, y_1 .. y_L]. A
step gathers the context rows of its queries, so states of any queries and depths step together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import PolicyConfig
from ..seeding import seeded
from ..world.catalog import Catalog
from .base import PAD, SEP, Context, SIDPolicy
from .packing import Packing

MAX_SLOTS = 64  # items per sequence the slot embedding can tell apart; later slots share the last


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, S, d) -> q, k, v each (N, h, S, dh)."""
        n, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        return [t.view(n, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v)]

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Residual updates after attention output ``att`` (N, h, S, dh)."""
        n, _, s, _ = att.shape
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(n, s, -1)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyPolicy(SIDPolicy):
    """A small causal transformer over [SEP, code_1..code_L] items; see the module docstring."""

    def __init__(self, catalog: Catalog, cfg: PolicyConfig | None = None, normalize: str = "valid"):
        super().__init__(catalog, normalize)
        cfg = cfg or PolicyConfig()
        self.cfg = cfg
        with seeded(cfg.seed):  # the initial weights: the same for a seed, the caller's stream untouched
            self._layers(catalog, cfg)

    def _layers(self, catalog: Catalog, cfg: PolicyConfig) -> None:
        d = cfg.d_model
        self.hidden_size = d
        self.tok_emb = nn.Embedding(self.vocab_size, d)
        self.level_emb = nn.Embedding(self.levels + 1, d)
        self.slot_emb = nn.Embedding(MAX_SLOTS, d)
        self.blocks = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.n_codes, bias=False)  # the code rows of all levels
        self.text_proj = None
        if cfg.item_text:  # the history items' frozen text embeddings, projected into the token space
            self.register_buffer("item_text", torch.as_tensor(catalog.embeddings, dtype=torch.float32),
                                 persistent=False)
            self.text_proj = nn.Linear(catalog.embeddings.shape[1], d, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, tokens, levels, slots, items=None) -> torch.Tensor:
        x = self.tok_emb(tokens) + self.level_emb(levels) + self.slot_emb(slots.clamp_max(MAX_SLOTS - 1))
        if self.text_proj is not None and items is not None:  # every token of a history item: + its text
            text = self.text_proj(self.item_text[items.clamp_min(0)])
            x = x + torch.where(items[..., None] >= 0, text, 0.0)
        return x

    @property
    def reads_text(self) -> bool:
        """Whether the policy reads the items' text embeddings (``PolicyConfig.item_text``)."""
        return self.text_proj is not None

    def encode_titles(self, items) -> Context:
        """Contexts of one item each (B,), seen through its title alone: the positions of the item's
        [SEP, code_1 .. code_L] with the codes hidden (PAD tokens, attended to) and its text embedding on
        each, as ``item_text`` adds it to a history item. What the alignment task conditions on
        (``SFTConfig.align_weight``): ``logprobs(encode_titles(items), sids)`` is log pi(SID | title)."""
        if not self.reads_text:
            raise ValueError("encode_titles needs a policy that reads item text: PolicyConfig.item_text = True")
        items = torch.as_tensor(items, dtype=torch.long, device=self.device)
        b, width = len(items), self.levels + 1
        tokens = torch.full((b, width), PAD, dtype=torch.long, device=self.device)
        tokens[:, 0] = SEP
        levels = torch.arange(width, device=self.device).expand(b, -1)
        mask = torch.ones(b, width, dtype=torch.bool, device=self.device)
        hidden, kv = self._encode(tokens, levels, torch.zeros_like(levels), mask, items[:, None].expand(-1, width))
        return Context(kv=kv, mask=mask, next_slot=torch.ones(b, dtype=torch.long, device=self.device),
                       hidden=hidden, items=items[:, None], encoder=self.weights_key(), n_prefill=b * width)

    # -- backbone pieces -------------------------------------------------------------------------
    def _encode(self, tokens, levels, slots, mask, items=None):
        b, t = tokens.shape
        x = self._embed(tokens, levels, slots, items)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att_mask = causal[None] & mask[:, None, :]  # (B, T, T): causal, padding keys hidden
        att_mask = att_mask | torch.eye(t, dtype=torch.bool, device=x.device)[None]  # pads see themselves
        kv = []
        for blk in self.blocks:
            q, k, v = blk.heads(x)
            kv.append((k, v))
            x = blk.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=att_mask[:, None]))
        return self.ln_f(x), kv

    def _extend(self, ctx: Context, query, past_kv, past_len, tokens, levels, slots, block=None, keep=False,
                most=None):
        n, s = tokens.shape
        x = self._embed(tokens, levels, slots)
        pack = Packing.of(query, len(ctx.mask), block, most)
        p = 0 if past_kv is None else past_kv.shape[-2]
        att_mask = pack.mask(ctx.mask, past_len, p, s)  # (B, 1, G*S, T + G*(P+S))
        new_kv = []
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.heads(x)  # each (N, h, S, dh)
            own_k, own_v = (k, v) if past_kv is None else (torch.cat([past_kv[:, i, 0], k], 2),
                                                           torch.cat([past_kv[:, i, 1], v], 2))  # (N, h, P+S, dh)
            ck, cv = ctx.kv[i]  # (B, h, T, dh)
            keys, vals = torch.cat([ck, pack.rows_to_seq(own_k)], 2), torch.cat([cv, pack.rows_to_seq(own_v)], 2)
            att = F.scaled_dot_product_attention(pack.rows_to_seq(q), keys, vals, attn_mask=att_mask)
            new_kv.append(torch.stack([k, v], 1))  # (N, 2, h, S, dh)
            x = blk.finish(x, pack.seq_to_rows(att, s))
        return self.ln_f(x), torch.stack(new_kv, 1)  # hidden (N, S, d); kv (N, layers, 2, h, S, dh)

    def _code_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        k = self.catalog.codebook_sizes[level]
        off = self.code_offsets[level]
        return F.linear(hidden, self.head.weight[off : off + k])

    def _empty_kv(self, n: int) -> torch.Tensor:
        h = self.cfg.n_heads
        return torch.zeros(n, self.cfg.n_layers, 2, h, self.levels + 1, self.hidden_size // h, device=self.device)

    def _write_kv(self, kv: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = kv.clone()
        rows = torch.arange(len(kv), device=kv.device)
        out[rows, :, :, :, pos] = new[..., 0, :].to(out.dtype)  # new: (N, layers, 2, h, 1, dh)
        return out

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def param_count_str(n: int) -> str:
    return f"{n / 1e3:.0f}k" if n < 1e6 else f"{n / 1e6:.1f}M"



def naive_logprobs(policy: SIDPolicy, histories, sids: torch.Tensor) -> torch.Tensor:
    """Reference for ``SIDPolicy.logprobs``: every candidate re-encodes its whole prompt.

    Each of the B * C candidates gets its own row [prompt, SEP, y_1 .. y_{L-1}] and one causal pass of
    the backbone (``_encode``) over it, all rows in one batched call: what a GRPO implementation does
    when it repeats the prompt in front of every completion. ``logprobs`` instead encodes each prompt
    once and lets its C candidates attend to that one cache; both give the same log-probs and the
    same gradients up to rounding (tests/test_losses.py), this one at C times the prompt compute
    (benchmarks/training.py times both).

    Args:
        policy: any SIDPolicy (it uses ``_encode``, ``item_tokens`` and ``restricted_logp`` only).
        histories: (B, H) item ids, -1 left-padded.
        sids: (B, C, L) candidate SIDs; a padding candidate (any -1) gets 0 on every level.

    Returns:
        (B, C, L) log pi(y_l | x, y_<l), with gradients.
    """
    items = torch.as_tensor(np.asarray(histories), dtype=torch.long, device=policy.device)
    sids = torch.as_tensor(sids, dtype=torch.long, device=policy.device)
    b, c, L = sids.shape
    n = b * c
    # padding candidates follow the first catalog item (any real path would do), zeroed at the end
    pad = (sids < 0).any(-1).reshape(n)  # (N,)
    flat = torch.where(pad[:, None], policy.item_sids[0], sids.reshape(n, L))  # (N, L)
    # 1. one row per candidate: its own copy of the prompt, then [SEP, y_1 .. y_{L-1}]
    prompt_items = items.repeat_interleave(c, 0)
    tokens, levels, slots, mask, next_slot = policy.item_tokens(prompt_items)  # (N, T)
    lv = torch.arange(L, device=policy.device)
    gen = torch.cat([torch.full((n, 1), SEP, device=policy.device), policy.code_token(lv[:-1], flat[:, :-1])], 1)
    tokens = torch.cat([tokens, gen], 1)  # (N, T + L)
    levels = torch.cat([levels, lv.expand(n, -1)], 1)
    slots = torch.cat([slots, next_slot[:, None].expand(-1, L)], 1)
    mask = torch.cat([mask, torch.ones(n, L, dtype=torch.bool, device=policy.device)], 1)
    # 2. one causal pass over every row; the last L positions predict y_1 .. y_L
    token_items = torch.cat([policy.token_items(prompt_items), torch.full((n, L), -1, device=policy.device)], 1)
    hidden, _ = policy._encode(tokens, levels, slots, mask, token_items)
    hidden = hidden[:, -L:]  # (N, L, d)
    # 3. restricted log-probs along each path, as logprobs computes them
    node = torch.zeros(n, dtype=torch.long, device=policy.device)
    out = []
    for lvl in range(L):
        lp = policy.restricted_logp(hidden[:, lvl], torch.full_like(node, lvl), node, at=lvl)  # (N, K_max)
        out.append(lp.gather(1, flat[:, lvl : lvl + 1]).squeeze(1))
        node = policy.child[node, flat[:, lvl]]
    res = torch.stack(out, 1)  # (N, L)
    return torch.where(pad[:, None], torch.zeros_like(res), res).reshape(b, c, L)
