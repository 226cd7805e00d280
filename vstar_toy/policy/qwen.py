"""A Hugging Face Qwen2 backbone behind the Policy protocol: the GPU path (docs/design.md, section 6).

Vocabulary. Every (level, code) of the catalog becomes one new token, ``<a_12>`` for code 12 of
level 1, ``<b_3>`` for code 3 of level 2, ...; ``<sid>`` separates items and starts generation. The
backbone's embedding rows (and its LM head, tied or not) are resized to hold them. A prompt is the
user's history written as those tokens, ``<sid><a_4><b_0><c_7><sid><a_1>...``, left-padded; the item
to recommend is generated after one more ``<sid>``.

Positions. RoPE positions count real tokens only (prompt token j sits at the number of real tokens
before it; the generated ``<sid>, y_1 .. y_L`` at n_real + 0 .. L), as ``generate`` does with a
left-padded attention mask, so left padding changes nothing.

Layers. The forward runs the backbone's own weights (embeddings, RMSNorms, q/k/v/o projections,
rotary embedding, MLP) in its modules' arithmetic, with our attention, so that the masks and the cache
are ours (``compile_blocks`` fuses the dense parts with ``torch.compile``): a context
cache per layer, keys (B, kv_heads, T, dh) after RoPE, computed once by ``encode``. A decode (``start``,
``step``) writes each token's keys and values in place into one cache per Context (``_DecodeCache``: the
prompts' columns, then a column per forwarded token), and a state's ``kv`` is only the columns of its
prefix ``<sid>, y_1 .. y_l``: no layer copies the prompt or the prefix, and indexing states copies
L + 1 integers a row. Rows of any queries and depths step in one call. When a call's rows come grouped
by query, c rows each (``start``, a beam level where every query kept B beams, ``logprobs``,
``candidate_hidden``), each prompt's c rows are one block of queries over its keys, read in place;
otherwise (VED's uneven expansions) each row gathers its prompt's keys, as tiny.py does.
The oracles (``reference_logprobs``: the stock Hugging Face forward on [prompt, candidate] for each
candidate; ``hf_beam_search``: ``generate``) live here too, for the tests and ``benchmarks/gpu.py``.

Normalisations (``normalize``): ``"valid"`` and ``"level"`` read only the level's K_l rows of the
LM head (softmax over the valid children, or over the level's codes); ``"vocab"`` normalises over
the whole vocabulary, log pi(y_l) = z[y_l] - logsumexp(z), as ``generate`` with
``prefix_allowed_tokens_fn`` does: it costs the full LM head (V x d per row, V ~ 152k for Qwen2.5).

Backbones (``QwenPolicy.from_backbone``): a local checkpoint directory (weights and, when present,
its tokenizer; nothing is downloaded), the published Qwen2.5-0.5B / 1.5B architectures with random
weights, or ``"tiny-qwen"`` (hidden 64, 2 layers) for CPU tests. bf16 on a GPU, float32 on a CPU.
``pipeline.sft_policy(..., backbone=...)`` SFT-trains and caches one; ``vstar_toy.checkpoint`` saves the
backbone's config and the SID token ids (``token_ids``), so a saved policy reloads from its own weights.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import BACKBONE_NAMES
from ..seeding import seeded
from ..world.catalog import Catalog
from .base import SEP, Context, SIDPolicy
from .graphs import StepGraphs
from .packing import Packing

# published sizes (the models' config.json); weights are random unless a checkpoint path is given
_QWEN25 = dict(vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
               bos_token_id=151643, eos_token_id=151643, pad_token_id=151643, initializer_range=0.02)
BACKBONES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(_QWEN25, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072),
    "tiny-qwen": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e4,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu", pad_token_id=0,
                      initializer_range=0.02),
}
if set(BACKBONES) != set(BACKBONE_NAMES):  # the names are declared in config (the command line offers them)
    raise ImportError(f"policy.qwen.BACKBONES holds {sorted(BACKBONES)}; config.BACKBONE_NAMES names {BACKBONE_NAMES}")
SEP_TOKEN = "<sid>"
MAX_BLOCK = 64  # rows per context laid out as one block (block-diagonal masks grow as rows squared)
MAX_STATIC = 8  # batch shapes whose decode caches stay allocated for CUDA graphs (use_cuda_graphs)


def sid_token_names(codebook_sizes) -> list[str]:
    """``<sid>`` then one name per (level, code): ``<a_0> .. <a_{K_1-1}>, <b_0> ..``."""
    letter = "abcdefghijklmnopqrstuvwxyz"
    return [SEP_TOKEN] + [f"<{letter[lvl] if lvl < 26 else f'l{lvl}'}_{c}>"
                          for lvl, k in enumerate(codebook_sizes) for c in range(k)]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (N, h, S, dh) with cos, sin (N, 1, S, dh): x cos + rotate_half(x) sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``Qwen2RMSNorm`` in its own arithmetic (x / rms(x) in float32, rounded to x's dtype, times the
    weight), with the normalisation as one ``F.rms_norm`` call where torch has it (fewer kernels)."""
    xf = x.float()
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        normed = F.rms_norm(xf, (x.shape[-1],), eps=eps)
    else:
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def _qkv(x, norm_w, eps: float, w_qkv, b_qkv, cos, sin, heads: int, kv_heads: int, head_dim: int):
    """The attention's inputs of one layer: RMSNorm, the q / k / v projections as one matrix product (their
    weights and biases stacked, ``QwenPolicy._stacked_qkv``), RoPE on q and k in one pass.
    x (N, S, d) -> q (N, H, S, dh), k and v (N, kv, S, dh), views of two tensors."""
    n, s, _ = x.shape
    h = _rms_norm(x, norm_w, eps)
    y = F.linear(h, w_qkv, b_qkv).view(n, s, heads + 2 * kv_heads, head_dim).transpose(1, 2)
    qk = _rope(y[:, : heads + kv_heads], cos, sin)
    return qk[:, :heads], qk[:, heads:], y[:, heads + kv_heads :]


def _mlp(x, norm_w, eps: float, w_gate, w_up, w_down):
    """The residual MLP block of one layer: x + down(silu(gate(h)) * up(h)), h = RMSNorm(x)."""
    h = _rms_norm(x, norm_w, eps)
    return x + F.linear(F.silu(F.linear(h, w_gate)) * F.linear(h, w_up), w_down)


def _bias(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (N, 1, groups * S, T) from a key mask (N, 1, S, T), built once per call
    and shared by every layer: 0 where a query may attend, -inf elsewhere, rows repeated per query
    head of a kv head (see ``_attention``)."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias.repeat(1, 1, groups, 1)


def _attention(q, k, v, bias, scale) -> torch.Tensor:
    """SDPA with grouped-query heads: q (N, H, S, dh), k and v (N, kv, T, dh), bias from ``_bias``.

    Query head h reads kv head h // g (g = H / kv, Hugging Face's ``repeat_kv``); the g query heads of
    one kv head are folded into its query length, so keys are never copied g times."""
    n, h, s, dh = q.shape
    out = F.scaled_dot_product_attention(q.reshape(n, k.shape[1], h // k.shape[1] * s, dh), k, v,
                                         attn_mask=bias, scale=scale)
    return out.reshape(n, h, s, dh)


def _query_major(query: torch.Tensor, n_ctx: int, block: int | None = None, most: int | None = None) -> int | None:
    """c when ``query`` is [0]*c + [1]*c + ... + [n_ctx-1]*c (each context's rows together) and c is at
    most ``MAX_BLOCK``, else None. ``block``: c as the caller knows it (``State.block``), taken on its word;
    ``most`` without ``block``: a caller that knows the rows are not grouped (``State.most``); without
    either, ``query`` is compared on the device and the answer read back to the host."""
    n = len(query)
    if n == 0 or n % n_ctx or n // n_ctx > MAX_BLOCK:
        return None
    c = n // n_ctx
    if block is not None:
        return c if block == c else None
    if most is not None:
        return None
    return c if torch.equal(query, torch.arange(n_ctx, device=query.device).repeat_interleave(c)) else None


def _shape_of(ctx: Context) -> tuple:
    """What a decode cache's buffers depend on: the prompts' shape (B, T), their keys' dtype and device."""
    return tuple(ctx.mask.shape), ctx.kv[0][0].dtype, ctx.kv[0][0].device


class _DecodeCache:
    """A decode's keys and values per layer, written in place (``QwenPolicy._decode_step``): the prompts' in
    columns 0 .. T-1 (copied once from the Context), then every token that ``start`` and ``step`` forward, in the
    columns ``claim`` hands out and the rows' ``State.kv`` names. ``kv``: (layers, 2, B, kv_heads, capacity, dh),
    grown by doubling; ``end``: the first column not handed out; ``mask`` (B, T) and ``n_real`` (B,): the prompts'
    key mask and real lengths, kept beside the keys so that a decode step reads only this cache (what a CUDA graph
    of the step needs: the same buffers at every replay). Decodes that share a Context share its cache: columns
    are only ever added. ``owner``: the Context decoding in it (a weak reference), for a cache that
    ``QwenPolicy`` lends to one Context after another (``_decode_cache``)."""

    def __init__(self, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, room: int = 64):
        b, h, t, dh = prompt_kv[0][0].shape
        self.kv = prompt_kv[0][0].new_zeros(len(prompt_kv), 2, b, h, t + room, dh)
        self.mask, self.n_real = torch.empty_like(mask), mask.new_zeros(b, dtype=torch.long)
        self.owner = None
        self.load(prompt_kv, mask)

    def load(self, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Start a decode of these prompts (of the shape the cache was built for) in the same buffers."""
        t = mask.shape[1]
        for i, (k, v) in enumerate(prompt_kv):
            self.kv[i, 0, :, :, :t] = k
            self.kv[i, 1, :, :, :t] = v
        self.mask.copy_(mask)
        torch.sum(mask, 1, out=self.n_real)
        self.end = t

    def claim(self, width: int) -> int:
        """``width`` more columns for every context; returns the first."""
        first, self.end = self.end, self.end + width
        if self.end > self.kv.shape[-2]:
            grown = self.kv.new_zeros(*self.kv.shape[:-2], max(2 * self.kv.shape[-2], self.end), self.kv.shape[-1])
            grown[..., :first, :] = self.kv[..., :first, :]
            self.kv = grown
        return first


class QwenPolicy(SIDPolicy):
    """A ``Qwen2ForCausalLM`` with SID tokens added, behind the Policy protocol; see the module docstring."""

    normalizations = ("valid", "level", "vocab")

    def __init__(self, catalog: Catalog, model, tokenizer=None, normalize: str = "valid",
                 token_ids: list[int] | None = None, backbone: str | None = None):
        """``token_ids``: the backbone ids of [PAD, ``<sid>``, codes ..] when they are known already (a
        reloaded checkpoint, whose embeddings hold them: ``vstar_toy.checkpoint``); ``backbone``: the
        name or path it was built from, kept for checkpoints and cache keys."""
        super().__init__(catalog, normalize)
        cfg = model.config
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("use_sliding_window = True is not supported: prompts and SIDs need full attention")
        self.model, self.tokenizer = model, tokenizer
        self.hidden_size = cfg.hidden_size
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.checkpointing = False  # recompute each layer in backward: activation memory of one layer
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
            raise ValueError(f"hidden_act = {cfg.hidden_act!r} with mlp_bias = {getattr(cfg, 'mlp_bias', False)} "
                             "is not supported: expected Qwen2's silu MLP without biases")
        self.eps = cfg.rms_norm_eps
        self._qkv, self._mlp = _qkv, _mlp  # the dense parts of a layer; compile_blocks swaps in compiled ones
        self._stacked: tuple[tuple, list] | None = None  # (the projections' key, per layer (w_qkv, b_qkv))
        self._graphs: StepGraphs | None = None  # use_cuda_graphs: the decode steps' graphs
        self._static: dict[tuple, _DecodeCache] = {}  # with graphs: the decode cache of each batch shape
        self.backbone = backbone
        # 1. the new tokens: ids from the tokenizer when there is one, else appended after the vocabulary
        names = sid_token_names(catalog.codebook_sizes)
        if token_ids is not None:
            if len(token_ids) != 1 + len(names):
                raise ValueError(f"token_ids has {len(token_ids)} ids: expected {1 + len(names)} (PAD, <sid> and "
                                 f"one per code of codebooks {list(catalog.codebook_sizes)})")
            pad, ids = int(token_ids[0]), [int(i) for i in token_ids[1:]]
        elif tokenizer is not None:
            tokenizer.add_tokens(names, special_tokens=True)
            ids = tokenizer.convert_tokens_to_ids(names)
            pad = tokenizer.pad_token_id
        else:
            ids = list(range(cfg.vocab_size, cfg.vocab_size + len(names)))
            pad = None
        pad = next((p for p in (pad, cfg.pad_token_id, cfg.eos_token_id, 0) if isinstance(p, int)), 0)
        # 2. embeddings resized (the tied LM head follows); new rows drawn like the backbone's init
        n_rows = model.get_input_embeddings().weight.shape[0]
        if max(ids) >= n_rows:
            model.resize_token_embeddings(max(ids) + 1, mean_resizing=tokenizer is not None)
        # our token ids (PAD, SEP, codes: base.py's layout) -> the backbone's
        self.register_buffer("hf_token", torch.as_tensor([pad] + ids, dtype=torch.long), persistent=False)
        self.pad_id = pad
        self._allowed = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, catalog: Catalog, backbone: str, dtype: torch.dtype | None = None,
                      device: str | torch.device | None = None, normalize: str = "valid",
                      seed: int = 0) -> QwenPolicy:
        """A policy on ``backbone``: a local checkpoint directory, or one of ``BACKBONES`` (random weights
        drawn with ``seed``). ``dtype`` defaults to bf16 on a GPU and float32 on a CPU."""
        from transformers import Qwen2Config, Qwen2ForCausalLM

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        tokenizer = None
        if backbone in BACKBONES:
            with seeded(seed), torch.device(device):
                model = Qwen2ForCausalLM._from_config(Qwen2Config(**BACKBONES[backbone]), dtype=dtype,
                                                      attn_implementation="sdpa")
        elif Path(backbone).is_dir():
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
            except (OSError, ValueError):
                tokenizer = None  # weights without a tokenizer: the SID tokens are appended
            model = Qwen2ForCausalLM.from_pretrained(backbone, dtype=dtype, local_files_only=True,
                                                     attn_implementation="sdpa").to(device)
        else:
            raise ValueError(f"backbone = {backbone!r} is invalid: expected a local checkpoint directory or one of "
                             f"{', '.join(BACKBONES)}")
        return cls(catalog, model, tokenizer, normalize, backbone=backbone).to(device).eval()

    def sharpen(self, std: float, seed: int = 0) -> QwenPolicy:
        """Re-draw the LM head rows of the SID codes with std ``std`` (in place; tests and benchmarks).

        A random backbone's head (std 0.02) makes every code almost equally likely, so near-ties decide
        rankings and any rounding flips them; a sharp head separates them, as a trained model's does."""
        w = self.model.get_output_embeddings().weight
        rows = self.hf_token[2:]
        gen = torch.Generator(device=w.device).manual_seed(seed)
        with torch.no_grad():
            w[rows] = torch.randn(len(rows), w.shape[1], generator=gen, device=w.device, dtype=torch.float32).to(
                w.dtype) * std
        return self

    # -- the backbone --------------------------------------------------------------------------------
    def _stacked_qkv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the q, k and v projections' weights and biases stacked (``_qkv``'s one matrix product
        instead of three). Where gradients are recorded they are stacked at every call, so that gradients
        reach each projection; otherwise once per version of the weights and kept (the key: each projection
        tensor's storage and in-place version, so an optimiser step, ``load_state_dict``, ``.to()`` or a deep
        copy stacks them again): for Qwen2.5-1.5B, 88M numbers (176 MB in bf16) beside its 1.5B."""
        layers = [(a.q_proj, a.k_proj, a.v_proj) for a in (layer.self_attn for layer in self.model.model.layers)]
        tensors = [t for projections in layers for p in projections for t in (p.weight, p.bias) if t is not None]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        key = None if grad else tuple((t.data_ptr(), t._version) for t in tensors)
        if key is not None and self._stacked is not None and self._stacked[0] == key:
            return self._stacked[1]
        # without gradients, stacked again into the same tensors where they fit: a CUDA graph of a decode step
        # (use_cuda_graphs) reads them at the addresses it was captured with
        old = self._stacked[1] if key is not None and self._stacked is not None else None
        stacked = []
        for i, projections in enumerate(layers):
            biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in projections]
            weights = [p.weight for p in projections]
            if old is not None and all(t.dtype == old[i][0].dtype and t.device == old[i][0].device
                                       for t in weights + biases):
                stacked.append((torch.cat(weights, out=old[i][0]), torch.cat(biases, out=old[i][1])))
            else:
                stacked.append((torch.cat(weights), torch.cat(biases)))
        if key is not None:
            self._stacked = (key, stacked)
        return stacked

    def _layer(self, layer, stacked, x, cos, sin, attend):
        """One decoder layer with attention ``attend(q, k, v)``: x (N, S, d) -> x, and this layer's k, v.
        The layer's own weights (``stacked``: its q, k, v projections', ``_stacked_qkv``) in the arithmetic
        of its modules (``_qkv``, ``_mlp``; tested against the Hugging Face forward)."""
        a, mlp = layer.self_attn, layer.mlp
        n, s, _ = x.shape
        q, k, v = self._qkv(x, layer.input_layernorm.weight, self.eps, *stacked, cos, sin, self.n_heads, self.n_kv,
                            self.head_dim)
        x = x + a.o_proj(attend(q, k, v).transpose(1, 2).reshape(n, s, -1))
        return self._mlp(x, layer.post_attention_layernorm.weight, self.eps, mlp.gate_proj.weight,
                         mlp.up_proj.weight, mlp.down_proj.weight), k, v

    def compile_blocks(self, on: bool = True) -> QwenPolicy:
        """Run the dense parts of every layer (``_qkv``, ``_mlp``) through ``torch.compile`` (one graph
        each, shared by the layers, dynamic shapes), which fuses the norms, RoPE and the MLP's gating into
        few kernels; ``on=False`` goes back to eager. Inference only: the first calls compile (16 s on an
        H200). Measured there (``benchmarks/gpu.py``, README): beam search 0.115 -> 0.111 s, so the
        fused elementwise work is not where the decode's time goes."""
        if on:
            self._qkv = torch.compile(_qkv, dynamic=True)
            self._mlp = torch.compile(_mlp, dynamic=True)
        else:
            self._qkv, self._mlp = _qkv, _mlp
        return self

    def _layers(self, tokens, positions, attend):
        """Our tokens (N, S) at RoPE ``positions`` (N, S) through every layer; ``attend(i, q, k, v)``
        is layer i's attention. Returns the final-norm hidden states (N, S, d) and [(k, v)] per layer."""
        backbone = self.model.model
        x = self.model.get_input_embeddings()(self.hf_token[tokens])
        cos, sin = backbone.rotary_emb(x, positions)
        cos, sin = cos[:, None], sin[:, None]  # (N, 1, S, dh)
        kv = []
        stacked = self._stacked_qkv()
        for i, layer in enumerate(backbone.layers):
            fn = functools.partial(self._layer, layer, stacked[i], attend=functools.partial(attend, i))
            if self.checkpointing and torch.is_grad_enabled():
                x, k, v = checkpoint(fn, x, cos, sin, use_reentrant=False)
            else:
                x, k, v = fn(x, cos, sin)
            kv.append((k, v))
        return _rms_norm(x, backbone.norm.weight, self.eps), kv

    @property
    def _dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def _encode(self, tokens, levels, slots, mask, items=None):  # the backbone reads SID tokens only
        if self._graphs is not None and not torch.is_grad_enabled():  # a decode's prefill, replayed per shape
            return self._replayed(("prefill", tuple(tokens.shape)), self._prefill, tokens, mask)
        return self._prefill(tokens, mask)

    def _prefill(self, tokens, mask):
        """The causal pass of ``_encode``: hidden (B, T, d) and per layer (k, v), a function of its tensors."""
        t = tokens.shape[1]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # real tokens only; pads sit at 0
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
        att = ((causal[None] & mask[:, None, :]) | eye)[:, None]  # (B, 1, T, T): causal, pads hidden, see themselves
        bias = _bias(att, self.n_heads // self.n_kv, self._dtype)
        hidden, kv = self._layers(tokens, positions, lambda i, q, k, v: _attention(q, k, v, bias, self.scale))
        return hidden, [(k.contiguous(), v.contiguous()) for k, v in kv]  # views of q's tensors: kept compact

    def _extend(self, ctx: Context, query, past_kv, past_len, tokens, levels, slots, block=None, keep=False,
                most=None):
        if keep:
            return self._decode_step(ctx, query, past_kv, tokens, levels, block, most)
        if past_kv is not None:
            raise ValueError("QwenPolicy keeps prefix caches only for decoding calls (keep=True)")
        n, s = tokens.shape
        n_ctx, t = ctx.mask.shape
        dev = tokens.device
        positions = ctx.mask.sum(1)[query][:, None] + levels  # after the prompt's real tokens
        causal = torch.ones(s, s, dtype=torch.bool, device=dev).tril()
        c = _query_major(query, n_ctx, block, most)
        if c is not None:
            # each context's c rows as one block after it: keys [prompt, the c rows' tokens], the prompt's read in
            # place (never copied per row); a row sees only its own
            b = n_ctx
            own = torch.eye(c, dtype=torch.bool, device=dev)[:, None, :, None]  # (c, 1, c, 1): row r, key row r'
            mask = torch.cat([ctx.mask[:, None, :].expand(b, c * s, t),
                              (own & causal[None, :, None, :]).reshape(c * s, c * s).expand(b, -1, -1)], -1)
            bias = _bias(mask[:, None], self.n_heads // self.n_kv, self._dtype)

            def fold(x):  # (N, h, S', dh) -> (B, h, c * S', dh)
                return x.reshape(b, c, *x.shape[1:]).transpose(1, 2).reshape(b, x.shape[1], -1, x.shape[-1])

            def attend(i, q, k, v):
                ck, cv = ctx.kv[i]
                out = _attention(fold(q), torch.cat([ck, fold(k)], 2), torch.cat([cv, fold(v)], 2), bias, self.scale)
                return out.view(b, -1, c, s, out.shape[-1]).transpose(1, 2).reshape(n, -1, s, out.shape[-1])
        else:
            # rows of any queries, in any order: gather each row's prompt keys
            mask = torch.cat([ctx.mask[query][:, None, :].expand(n, s, t), causal[None].expand(n, -1, -1)], -1)
            bias = _bias(mask[:, None], self.n_heads // self.n_kv, self._dtype)  # (N, 1, gS, T+S)

            def attend(i, q, k, v):
                ck, cv = ctx.kv[i]
                return _attention(q, torch.cat([ck[query], k], 2), torch.cat([cv[query], v], 2), bias, self.scale)

        hidden, _ = self._layers(tokens, positions, attend)
        return hidden, None  # a training pass: no later step reads its keys

    def _decode_step(self, ctx: Context, query, prefix, tokens, levels, block, most=None):
        """One token per row of a decode (``start``, ``step``): its keys and values written in place into the
        decode's cache (``_DecodeCache``), and attention over that cache, so no layer copies the prompt's or the
        prefix's keys. ``prefix`` (N, L+1): the cache columns of each row's prefix positions (-1: none), the
        rows' ``State.kv`` (None at ``start``). Returns hidden (N, 1, d) and each new token's column (N, 1).

        The host plans (the layout, the columns handed out); ``_decode_body`` does the arithmetic, a function of
        its tensors and of the cache alone: with ``use_cuda_graphs``, a step whose rows come grouped by
        context (a beam level, VED's fixed shapes) and whose cache is the static one of its batch shape is
        captured once per key and replayed (``policy/graphs.py``)."""
        n, s = tokens.shape
        if s != 1:
            raise ValueError(f"a decoding call forwards one token per row, not {s}")
        n_ctx = ctx.mask.shape[0]
        cache = self._decode_cache(ctx)
        c = _query_major(query, n_ctx, block, most)
        # g new columns per context; row r takes its rank among its context's rows (its slot), r itself when grouped
        if c is not None:
            slot, g = None, c
        else:
            pack = Packing.of(query, n_ctx, None, most)  # without most: counts each context's rows (one host read)
            slot, g = pack.slot, pack.g
        buffer = cache.kv
        first = cache.claim(g)
        body = functools.partial(self._decode_body, cache.kv, cache.mask, cache.n_real, c, first, cache.end)
        graphs = self._graphs
        if graphs is not None and cache.kv is not buffer:  # the cache grew: graphs of the old buffer replay on nothing
            graphs.forget(lambda key: key[0] == buffer.data_ptr())
        if graphs is None or c is None or cache is not self._static.get(_shape_of(ctx)) or torch.is_grad_enabled():
            return body(tokens, levels, query, prefix, slot)
        key = (cache.kv.data_ptr(), tuple(cache.kv.shape), c, cache.end, n, prefix is None)
        return self._replayed(key, body, tokens, levels, query, prefix, slot)

    def _replayed(self, key: tuple, fn, *inputs):
        """``fn(*inputs)`` through the graphs (``use_cuda_graphs``), under ``key`` and what every forward's graph
        depends on beyond its shapes: the weights' addresses (an optimiser's step writes in place and keeps them;
        ``.to()`` does not) and whether the dense parts are compiled. The stacked projections are brought up to
        date first: a replay reads them where they were, it runs none of the Python that restacks them."""
        self._stacked_qkv()
        return self._graphs.run((*key, self._qkv is _qkv, tuple(p.data_ptr() for p in self.parameters())), fn,
                                *inputs)

    def _decode_body(self, kv, mask, n_real, c, first, u, tokens, levels, query, prefix, slot):
        """The arithmetic of ``_decode_step`` over the decode cache ``kv`` (its ``mask``, ``n_real``) and its first
        ``u`` columns, of which this step writes ``first`` .. u - 1; rows grouped by context c each (c: None when
        they are not; then ``slot``: each row's rank among its context's rows): no host read, no shape chosen by
        values (what a CUDA graph can capture). Returns hidden (N, 1, d) and the rows' columns (N, 1)."""
        n = len(query)
        t = mask.shape[1]
        dev = tokens.device
        width = u - first  # columns per context
        col = first + (torch.arange(n, device=dev) if slot is None else slot) - query * width  # (N,)
        seen = torch.zeros(n, u + 1, dtype=torch.bool, device=dev)  # column u: where the empty positions point
        seen[:, :t] = mask[query]
        if prefix is not None:
            seen.scatter_(1, torch.where(prefix >= 0, prefix, u), True)
        seen[torch.arange(n, device=dev), col] = True  # the token sees itself
        seen = seen[:, :u]
        positions = n_real[query][:, None] + levels  # after the prompt's real tokens
        g = self.n_heads // self.n_kv

        def keep(i, k, v):  # layer i's keys and values of the new tokens, into their columns
            kv[i, 0, query, :, col] = k[:, :, 0]
            kv[i, 1, query, :, col] = v[:, :, 0]

        if c is not None:  # each context's c rows as one block of queries over its cache: the cache read in place
            b = mask.shape[0]
            bias = _bias(seen.view(b, 1, c, u), g, self._dtype)

            def attend(i, q, k, v):
                keep(i, k, v)
                out = _attention(q.reshape(b, c, -1, q.shape[-1]).transpose(1, 2), kv[i, 0, :, :, :u],
                                 kv[i, 1, :, :, :u], bias, self.scale)  # (B, H, c, dh)
                return out.transpose(1, 2).reshape(n, -1, 1, out.shape[-1])
        else:  # rows of any queries: each gathers its context's cache
            bias = _bias(seen.view(n, 1, 1, u), g, self._dtype)

            def attend(i, q, k, v):
                keep(i, k, v)
                return _attention(q, kv[i, 0, :, :, :u][query], kv[i, 1, :, :, :u][query], bias, self.scale)

        hidden, _ = self._layers(tokens, positions, attend)
        return hidden, col[:, None]

    def _decode_cache(self, ctx: Context) -> _DecodeCache:
        """The decode cache of ``ctx``, made at its first decoding call. With ``use_cuda_graphs``, the static cache
        of its batch shape (the buffers its graphs replay on) when no live Context decodes in it, else one of its
        own (stepped eagerly: a graph would overwrite the other Context's cache). At most ``MAX_STATIC`` shapes
        keep a static cache; the least recently lent goes first, with its graphs."""
        if ctx.cache is not None:
            return ctx.cache
        if self._graphs is None:
            ctx.cache = _DecodeCache(ctx.kv, ctx.mask)
            return ctx.cache
        shape = _shape_of(ctx)
        static = self._static.pop(shape, None)
        if static is not None and static.owner() is None:
            static.load(ctx.kv, ctx.mask)
            ctx.cache = static
        else:
            ctx.cache = _DecodeCache(ctx.kv, ctx.mask)
            static = static or ctx.cache
        self._static[shape] = static  # the most recently lent last
        if len(self._static) > MAX_STATIC:
            oldest = self._static.pop(next(iter(self._static)))
            self._graphs.forget(lambda key: key[0] == oldest.kv.data_ptr())
        ctx.cache.owner = weakref.ref(ctx)
        return ctx.cache

    @property
    def graphs(self) -> StepGraphs | None:
        return self._graphs

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) starts without graphs: they replay on this policy's memory."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return dict(state, _graphs=None, _static={})

    def use_cuda_graphs(self, on: bool = True, rehearse: bool = False, most: int = 256) -> QwenPolicy:
        """Replay a decode's prefill and the decode steps of beam search and of VED's grouped expansions
        (``DecodeConfig.shapes = "fixed"``) as CUDA graphs, one per batch shape (and per level and cache length
        for a step), captured at a shape's second call (``policy/graphs.py``); ``on=False`` goes back to eager.
        Inference only (a step that records gradients runs eagerly), and for one decode at a time per batch
        shape: a decode cache is static per shape, lent to the next Context when the last one is gone.
        ``rehearse``: run the same plan without CUDA (static buffers, capture refusing host reads, replays),
        what the CPU tests use; ``most``: graphs kept (the least recently used dropped). Same candidates and
        costs as eager steps (tests)."""
        self._graphs = StepGraphs(self.device, rehearse=rehearse, most=most) if on else None
        self._static = {}
        return self

    def _code_rows(self, level: int) -> torch.Tensor:
        k = self.catalog.codebook_sizes[level]
        off = 2 + self.code_offsets[level]
        return self.hf_token[off : off + k]

    def _code_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        w = self.model.get_output_embeddings().weight
        return F.linear(hidden, w[self._code_rows(level)])  # only the level's K_l rows of the LM head

    def _log_partition(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        if self.normalize != "vocab":
            raise ValueError(f"normalize = {self.normalize!r} has no partition function here")
        return self.model.get_output_embeddings()(hidden).float().logsumexp(-1, keepdim=True)  # all V rows

    def _empty_kv(self, n: int) -> torch.Tensor:
        """No prefix yet: a state's cache is the decode cache's column of each prefix position (-1: none)."""
        return torch.full((n, self.levels + 1), -1, dtype=torch.long, device=self.device)

    def _write_kv(self, kv: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = kv.clone()
        out[torch.arange(len(kv), device=kv.device), pos] = new[:, 0]  # new: (N, 1) columns
        return out

    def prefix_cache(self, states) -> torch.Tensor:
        """(N, L+1, layers, 2, kv, dh) the keys and values at each row's prefix columns of the decode cache."""
        cols = states.kv
        cache = states.context.cache
        if cache is None:
            return torch.zeros(len(cols), self.levels + 1, 0, device=self.device)
        out = cache.kv[:, :, states.query[:, None], :, cols.clamp_min(0)]  # (N, L+1, layers, 2, kv, dh)
        return torch.where((cols >= 0)[..., None, None, None, None], out, 0.0)

    # -- the oracles: the stock Hugging Face forward and generate ----------------------------------------
    def _prompt_ids(self, histories):
        """Backbone ids (B, T+1) of the prompts followed by the start ``<sid>``, and their attention mask."""
        items = torch.as_tensor(np.asarray(histories), dtype=torch.long, device=self.device)
        tokens, _, _, mask, _ = self.item_tokens(items)
        ones = torch.ones(len(items), 1, dtype=torch.bool, device=self.device)
        ids = self.hf_token[torch.cat([tokens, torch.full_like(ones, SEP, dtype=torch.long)], 1)]
        return ids, torch.cat([mask, ones], 1).long()

    def reference_logprobs(self, histories, sids: torch.Tensor) -> torch.Tensor:
        """log pi(y_l | x, y_<l) (B, C, L) of valid candidates the naive way: every candidate re-encodes
        [prompt, <sid>, y_1 .. y_{L-1}] through the Hugging Face forward (``model.model``). With gradients."""
        sids = torch.as_tensor(sids, dtype=torch.long, device=self.device)
        b, c, L = sids.shape
        prompt, mask = self._prompt_ids(histories)
        flat = sids.reshape(b * c, L)
        lv = torch.arange(L - 1, device=self.device)
        ids = torch.cat([prompt.repeat_interleave(c, 0), self.hf_token[self.code_token(lv, flat[:, :-1])]], 1)
        am = torch.cat([mask.repeat_interleave(c, 0), torch.ones_like(flat[:, 1:])], 1)
        positions = (am.cumsum(1) - 1).clamp_min(0)
        hidden = self.model.model(input_ids=ids, attention_mask=am, position_ids=positions,
                                  use_cache=False).last_hidden_state[:, -L:]  # [<sid>, y_1 .. y_{L-1}]
        node = torch.zeros(b * c, dtype=torch.long, device=self.device)
        out = []
        for lvl in range(L):
            lp = self.restricted_logp(hidden[:, lvl], torch.full_like(node, lvl), node, at=lvl)
            out.append(lp.gather(1, flat[:, lvl : lvl + 1]).squeeze(1))
            node = self.child[node, flat[:, lvl]]
        return torch.stack(out, 1).reshape(b, c, L)

    def _allowed_table(self) -> dict[tuple, list[int]]:
        """{backbone ids of a prefix: backbone ids of its valid next codes}, for ``prefix_allowed_tokens_fn``."""
        if self._allowed is None:
            cat = self.catalog
            tok = self.hf_token.cpu().numpy()
            prefix: list[tuple] = [()] * cat.n_nodes
            allowed: dict[tuple, list[int]] = {}
            off = self.code_offset.cpu().numpy()
            for node in range(cat.n_nodes):  # parents come before their children
                d = int(cat.depth[node])
                if node > 0:
                    prefix[node] = prefix[int(cat.parent[node])] + (int(tok[2 + off[d - 1] + cat.token[node]]),)
                if d < cat.levels:
                    codes = np.flatnonzero(cat.child[node] >= 0)
                    allowed[prefix[node]] = tok[2 + off[d] + codes].tolist()
            self._allowed = allowed
        return self._allowed

    def hf_beam_search(self, histories, num_beams: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained beam search by ``generate(num_beams, prefix_allowed_tokens_fn)``: SIDs (B, num_beams, L)
        (-1 where ``generate`` returned a token that is not a valid code) and their scores, the sum of
        full-vocabulary log-probs (``length_penalty=0``). What ``beam_search`` with normalize="vocab" returns."""
        ids, mask = self._prompt_ids(histories)
        t0 = ids.shape[1]
        allowed = self._allowed_table()
        no_code = [self.pad_id]

        def prefix_allowed_tokens_fn(batch_id, seq):
            return allowed.get(tuple(seq[t0:].tolist()), no_code)

        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, num_beams=num_beams, num_return_sequences=num_beams,
                do_sample=False, max_new_tokens=self.levels, min_new_tokens=self.levels,
                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, length_penalty=0.0, early_stopping=True,
                pad_token_id=self.pad_id, return_dict_in_generate=True, output_scores=True,
            )
        gen = out.sequences[:, t0:]  # (B * beams, L)
        code_of = torch.full((int(self.hf_token.max()) + 1,), -1, dtype=torch.long, device=self.device)
        code_of[self.hf_token[2:]] = torch.cat([torch.arange(k, device=self.device)
                                                for k in self.catalog.codebook_sizes])
        codes = torch.where(gen < len(code_of), code_of[gen.clamp_max(len(code_of) - 1)], -1)
        if codes.shape[1] < self.levels:
            codes = F.pad(codes, (0, self.levels - codes.shape[1]), value=-1)
        b = len(ids)
        return codes.reshape(b, num_beams, self.levels), out.sequences_scores.reshape(b, num_beams).float()
