"""The Policy protocol: pi(next SID token | context, prefix) with a KV cache.

Every decoder and every loss talks to a policy through four calls (docs/design.md, section 2):

- ``start(histories) -> State``: encode a batch of contexts once (the prompt prefill,
  ``Context.prefill_tokens``), then forward the generation-start token: the state at the empty prefix,
  with log-probs over the level-1 codes. Costs 1 forward token per context. The encoded contexts
  travel with the states (``State.context``), never on the policy: two decodes may interleave.
- ``step(states, tokens, strict=True) -> State``: extend any batch of prefixes by one SID token each,
  reusing the context cache and each parent's prefix cache. Rows may mix queries and depths, which is
  what lets VED advance all queries in one call. Costs 1 forward token per row.
- ``logprobs(histories, sids) -> (N, L)`` with gradients, for the losses: each context is encoded
  once and all its candidates reuse it.

The decoders count what they spend, the paper's Cost(.) (Sec. 4.2), in ``CandidateSets.cost_tokens``;
the prompt prefill is counted apart, as in Sec. 5.5. ``CountingPolicy`` counts the same from outside.

Log-probabilities are restricted to valid children with the catalog's dense masks: a softmax over
the codes that continue the prefix to a real item (``-inf`` elsewhere). Two normalisations exist
(``normalize``): ``"valid"`` (the default: over the valid children, what constrained decoding
samples from) and ``"level"`` (over all codes of the level, masked afterwards, the convention of
``generate`` with ``prefix_allowed_tokens_fn`` when the vocabulary is the level's codes). A backbone
with a wider vocabulary may add its own (``normalizations``, ``_log_partition``): Qwen's ``"vocab"``
normalises over its whole vocabulary, exactly what ``generate`` does.

A concrete policy supplies three pieces: ``_encode`` (a causal pass over context tokens returning
hidden states and a cache), ``_extend`` (new tokens attending to a context cache and a prefix
cache) and ``_code_logits`` (the output rows of one level's codes). Token layout: every item is
``[SEP, code_1, ..., code_L]``; the generation-start token is the SEP of the next item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..world.catalog import Catalog

PAD, SEP = 0, 1  # special token ids; code (level l, c) has id 2 + offset[l] + c


@dataclass
class Context:
    """The encoded prompts of a batch: per-layer keys/values (policy-owned layout), (B, T) key mask,
    the slot (item index) at which each context's next item is generated, the prompt's last-layer
    hidden states (B, T, d), and the history item ids (B, H), -1 left-padded. The value head reads
    the last two (the backbone's view of the prompt, and the items' semantics). ``encoder``: which
    policy, at which version of its weights, encoded it (``SIDPolicy.weights_key``; None for a
    hand-made Context, which no policy accepts in place of histories)."""

    kv: object
    mask: torch.Tensor
    next_slot: torch.Tensor
    hidden: torch.Tensor
    items: torch.Tensor
    encoder: tuple[int, int] | None = None
    n_prefill: int | None = None
    cache: object = None  # what a backbone keeps of a decode beside the prompts (policy/qwen.py: _DecodeCache)

    @property
    def prefill_tokens(self) -> int:
        """The prompt tokens encoded (the prefill, counted apart from decoding's Cost, Sec. 5.5): counted on the
        host by ``encode`` when the histories came from the host, else read from the mask (a host read)."""
        return self.n_prefill if self.n_prefill is not None else int(self.mask.sum())


ROW_FIELDS = ("query", "node", "depth", "tokens", "logp", "hidden", "kv")


@dataclass
class State:
    """A batch of decoding states s = (x, y_<=l), one row each.

    query: (N,) row of the context in ``context``; node: (N,) trie node of y_<=l; depth: (N,) l;
    tokens: (N, L) the prefix codes, -1 beyond depth; logp: (N, K_max) log pi(next | x, y_<=l),
    -inf at invalid codes (all -inf at depth L); hidden: (N, L+1, d) backbone hidden states of
    [start, y_1 .. y_l] (zeros beyond depth), what the value head reads; kv: (N, ...) the prefix
    cache, layout owned by the policy; context: the encoded prompts of the batch, shared by all rows
    (not a row field: ``index`` and ``cat`` keep it whole); block: c when the rows are grouped by
    context, c consecutive rows of context 0, then c of context 1, ... (``query`` is [0]*c + [1]*c + ...),
    as whoever built the rows knows from their shapes (``start``: 1; a beam level where every query kept c
    beams), None when not known. A backbone may lay such rows out as one block per context without reading
    ``query`` back to the host to find out (``policy/qwen.py: _query_major``). most: the most rows of one
    context, when whoever built the rows knows it without reading the device (VED's expansions); a backbone
    then sizes its per-context layout without counting (``Packing.of``), and a State with ``most`` and no
    ``block`` is known not to be grouped. ``index`` and ``cat`` forget both.
    """

    query: torch.Tensor
    node: torch.Tensor
    depth: torch.Tensor
    tokens: torch.Tensor
    logp: torch.Tensor
    hidden: torch.Tensor
    kv: torch.Tensor
    context: Context
    block: int | None = None
    most: int | None = None

    def __len__(self) -> int:
        return len(self.query)

    def index(self, idx, cache: bool = True) -> State:
        """Rows ``idx`` (a LongTensor, a bool mask or a slice). ``cache=False`` leaves out the prefix cache
        (``kv`` of zero rows, which no ``step`` accepts), the largest field, for readers of the others such
        as value functions."""
        rows = {f: getattr(self, f)[idx] if cache or f != "kv" else self.kv[:0] for f in ROW_FIELDS}
        return State(**rows, context=self.context)

    @staticmethod
    def cat(states: list[State]) -> State:
        """Rows of several batches of states of one context, stacked."""
        if any(s.context is not states[0].context for s in states):
            raise ValueError("cannot stack states of different contexts: their query rows index different prompts")
        return State(**{f: torch.cat([getattr(s, f) for s in states]) for f in ROW_FIELDS},
                     context=states[0].context)

    @staticmethod
    def empty_like(like: State, n: int) -> State:
        """An uninitialised buffer of ``n`` rows shaped like ``like`` (for preallocated pools)."""
        return State(**{f: getattr(like, f).new_empty((n, *getattr(like, f).shape[1:])) for f in ROW_FIELDS},
                     context=like.context)

    def put(self, start: int, rows: State) -> None:
        """Write ``rows`` into this buffer at rows start .. start + len(rows) - 1, in place."""
        for f in ROW_FIELDS:
            getattr(self, f)[start : start + len(rows)] = getattr(rows, f)

    def entropy(self) -> torch.Tensor:
        """(N,) H_theta(s) of Eq. 12 over the valid next codes; 0 at depth L."""
        p = self.logp.exp()
        return -(p * torch.where(p > 0, self.logp, torch.zeros_like(self.logp))).sum(-1)


class SIDPolicy(nn.Module):
    """Shared logic of every policy over SID tokens; subclasses supply the backbone pieces."""

    normalizations: tuple[str, ...] = ("valid", "level")  # the values ``normalize`` may take

    def __init__(self, catalog: Catalog, normalize: str = "valid"):
        super().__init__()
        if normalize not in self.normalizations:
            raise ValueError(f"normalize = {normalize!r} is invalid: expected "
                             + " or ".join(repr(n) for n in self.normalizations))
        self.catalog = catalog
        self.normalize = normalize
        self.levels = catalog.levels
        self.k_max = max(catalog.codebook_sizes)
        offsets = np.concatenate([[0], np.cumsum(catalog.codebook_sizes)[:-1]])
        self.register_buffer("code_offset", torch.as_tensor(offsets, dtype=torch.long), persistent=False)
        self.code_offsets = [int(o) for o in offsets]  # the same on the host: a level's rows without a device read
        self.n_codes = int(sum(catalog.codebook_sizes))
        self.vocab_size = 2 + self.n_codes
        self.register_buffer("child", torch.as_tensor(catalog.child), persistent=False)
        # prefix node of every item before each of its tokens: (N, L), column 0 = the root
        prefix_nodes = np.zeros((catalog.n_items, self.levels), dtype=np.int64)
        for lvl in range(1, self.levels):
            prefix_nodes[:, lvl] = catalog.node_of(catalog.sids[:, :lvl])
        self.register_buffer("item_prefix_nodes", torch.as_tensor(prefix_nodes), persistent=False)
        self.register_buffer("item_sids", torch.as_tensor(catalog.sids), persistent=False)

    # -- pieces a backbone supplies ----------------------------------------------------------------
    hidden_size: int

    def _encode(self, tokens, levels, slots, mask, items=None) -> tuple[torch.Tensor, object]:
        """Causal pass over (B, T) tokens; returns hidden (B, T, d) and the per-layer cache. ``items``
        (B, T): the catalog item each token belongs to (-1 for none), for a backbone that reads the
        items' text (``PolicyConfig.item_text``); others ignore it."""
        raise NotImplementedError

    def _extend(self, ctx: Context, query, past_kv, past_len, tokens, levels, slots, block: int | None = None,
                keep: bool = False, most: int | None = None):
        """(N, S) new tokens attending to ctx rows ``query``, to the first ``past_len`` positions of
        ``past_kv`` and causally to themselves. Returns hidden (N, S, d) and their kv (N, ..., S, ...).
        ``block``: c when the caller knows the rows are grouped by context, c each (``State.block``); ``most``:
        the most rows of one context, when the caller knows it (``State.most``).
        ``keep``: a decoding call (``start``, ``step``), whose tokens later steps attend to; a backbone may keep
        their keys and values where it likes and return, as their kv, what ``_write_kv`` stores in the state.
        Without ``keep`` (the training passes, ``candidate_hidden``) the kv is not read and may be None."""
        raise NotImplementedError

    def _code_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """(N, K_level) logits of the codes of ``level`` (0-based) from hidden (N, d)."""
        raise NotImplementedError

    def _log_partition(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """(N, 1) log Z of a backbone's own normalisation (one not in ("valid", "level")) at hidden (N, d)."""
        raise NotImplementedError

    def _empty_kv(self, n: int) -> torch.Tensor:
        """A zero prefix cache for n rows, room for L+1 positions."""
        raise NotImplementedError

    def prefix_cache(self, states: State) -> torch.Tensor:
        """(N, ...) the keys and values of each row's prefix positions, in one layout whatever the backbone keeps
        in ``State.kv`` (zeros at positions not reached): what ``policy/contract.py`` compares."""
        return states.kv

    def _write_kv(self, kv: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Copy of prefix cache ``kv`` with ``new`` (one position) written at per-row ``pos``."""
        raise NotImplementedError

    # -- tokens ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.child.device

    def code_token(self, level: torch.Tensor | int, code: torch.Tensor) -> torch.Tensor:
        """Vocabulary id of ``code`` at 0-based ``level``."""
        return 2 + self.code_offset[level] + code

    def item_tokens(self, items: torch.Tensor):
        """Token layout of item sequences (B, H), left-padded with -1.

        Returns tokens, levels, slots, mask, each (B, H * (L+1)), and next_slot (B,): the slot of
        the item to be generated after the sequence.
        """
        b, h = items.shape
        real = items >= 0
        safe = items.clamp_min(0)
        codes = self.item_sids[safe]  # (B, H, L)
        lv = torch.arange(self.levels, device=items.device)
        code_tok = self.code_token(lv, codes)  # (B, H, L)
        sep = torch.full((b, h, 1), SEP, device=items.device)
        tokens = torch.cat([sep, code_tok], -1)  # (B, H, L+1)
        tokens = torch.where(real[..., None], tokens, torch.full_like(tokens, PAD))
        levels = torch.arange(self.levels + 1, device=items.device).expand(b, h, -1)
        slots = (real.cumsum(1) - 1).clamp_min(0)[..., None].expand(-1, -1, self.levels + 1)
        mask = real[..., None].expand(-1, -1, self.levels + 1)
        flat = (lambda t: t.reshape(b, h * (self.levels + 1)))  # noqa: E731
        return flat(tokens), flat(levels), flat(slots), flat(mask), real.sum(1)

    def token_items(self, items: torch.Tensor) -> torch.Tensor:
        """(B, H * (L+1)) the item of every token of ``item_tokens``' layout (-1 at padding)."""
        return items.repeat_interleave(self.levels + 1, dim=1)

    # -- restricted log-probabilities --------------------------------------------------------------
    def restricted_logp(self, hidden: torch.Tensor, level: torch.Tensor, node: torch.Tensor,
                        at: int | None = None) -> torch.Tensor:
        """(N, K_max) log pi(code | prefix) over valid children of ``node``; -inf elsewhere.

        Rows at depth L (``level`` == L) get all -inf. ``level`` (N,) is 0-based: the level of the
        code being predicted. ``at``: every row's level, when the caller knows it (a training pass, ``start``);
        else each level's code head runs on every row and each row keeps its own level's (no host read to sort
        the rows by level: the heads are small beside a layer).
        """
        n = hidden.shape[0]
        out = torch.full((n, self.k_max), float("-inf"), device=hidden.device, dtype=torch.float32)
        for lvl in range(self.levels) if at is None else range(at, min(at + 1, self.levels)):  # none at depth L
            k = self.catalog.codebook_sizes[lvl]
            logits = self._code_logits(hidden, lvl).float()  # (N, K_l)
            valid = self.child[node, :k] >= 0
            if at is None:  # rows of other levels (or at depth L) are dropped below; keep them finite meanwhile
                valid = valid | ~valid.any(-1, keepdim=True)
            if self.normalize == "valid":
                lp = logits.masked_fill(~valid, float("-inf")).log_softmax(-1)
            elif self.normalize == "level":
                lp = logits.log_softmax(-1).masked_fill(~valid, float("-inf"))
            else:  # the backbone's own normaliser, e.g. over its whole vocabulary
                lp = (logits - self._log_partition(hidden, lvl).float()).masked_fill(~valid, float("-inf"))
            lp = torch.nn.functional.pad(lp, (0, self.k_max - k), value=float("-inf"))
            out = lp if at is not None else torch.where((level == lvl)[:, None], lp, out)
        return out

    @property
    def graphs(self):
        """The captured steps (``policy/graphs.py: StepGraphs``) a decoder may replay its own work through, as
        VED's ``decide`` does; None, eager, unless a backbone turns them on (``QwenPolicy.use_cuda_graphs``)."""
        return None

    # -- the protocol ------------------------------------------------------------------------------
    def weights_key(self) -> tuple[int, int]:
        """(this module, the version of its weights): PyTorch bumps a tensor's ``_version`` at every
        in-place change (an optimiser step, ``load_state_dict``), so the key changes with the weights."""
        return id(self), sum(p._version for p in self.parameters())

    def encode(self, histories: np.ndarray | torch.Tensor | Context) -> Context:
        """The prompt prefill: a causal pass over the contexts (B, H item ids, -1 left-padded).

        Every call that takes histories (``start``, ``logprobs``, ``candidate_hidden``, hence every
        decoder) also takes the Context this returns, so that one prefill serves several calls (the
        training step encodes its prompts once for its decoders, the old log-probs and the value's
        inputs). Refused, as they would silently give wrong numbers: a Context encoded by another policy,
        or by this one before its weights changed, and one encoded without gradients where gradients are
        being recorded (the update's log-probs must reach the prompt's encoding)."""
        if isinstance(histories, Context):
            if histories.encoder != self.weights_key():
                raise ValueError("this Context was encoded by another policy, or by this one before its weights "
                                 "changed: encode the histories again")
            if torch.is_grad_enabled() and not histories.hidden.requires_grad and any(
                    p.requires_grad for p in self.parameters()):
                raise ValueError("this Context was encoded without gradients: pass the histories where the "
                                 "log-probs need gradients")
            return histories
        on_host = not isinstance(histories, torch.Tensor)
        if on_host:
            histories = np.asarray(histories)
        n_prefill = int((histories >= 0).sum()) * (self.levels + 1) if on_host else None  # no device read
        items = torch.as_tensor(histories, dtype=torch.long, device=self.device)
        tokens, levels, slots, mask, next_slot = self.item_tokens(items)
        ctx_hidden, kv = self._encode(tokens, levels, slots, mask, self.token_items(items))
        return Context(kv=kv, mask=mask, next_slot=next_slot, hidden=ctx_hidden, items=items,
                       encoder=self.weights_key(), n_prefill=n_prefill)

    def start(self, histories: np.ndarray | torch.Tensor | Context) -> State:
        """Prefill the contexts (B, H item ids, -1 padded, or their ``encode``) and forward the start
        token of each."""
        context = self.encode(histories)
        b = len(context.items)
        query = torch.arange(b, device=self.device)
        start = torch.full((b, 1), SEP, device=self.device)
        zero = torch.zeros(b, dtype=torch.long, device=self.device)
        hidden, new_kv = self._extend(
            context, query, None, zero, start, zero[:, None], context.next_slot[:, None], block=1, keep=True
        )
        h0 = hidden[:, 0]
        state_hidden = torch.zeros(b, self.levels + 1, h0.shape[-1], device=self.device, dtype=h0.dtype)
        state_hidden[:, 0] = h0
        return State(
            query=query, node=zero.clone(), depth=zero.clone(),
            tokens=torch.full((b, self.levels), -1, dtype=torch.long, device=self.device),
            logp=self.restricted_logp(h0, zero, zero, at=0), hidden=state_hidden,
            kv=self._write_kv(self._empty_kv(b), zero, new_kv), context=context, block=1,
        )

    def step(self, states: State, codes: torch.Tensor, strict: bool = True, at: int | None = None) -> State:
        """Extend each row of ``states`` by its code (N,); all rows in one backbone call. ``at``: every row's
        depth, when the caller knows it (a beam level), so that only the next level's code head runs.

        A code that is not a valid child of its row's prefix is refused: with ``strict`` by a ValueError that
        names it (one host read per call); otherwise by a device-side assertion that names nothing
        (``torch._assert_async``: no host read, on a GPU no synchronisation), what the decoders use, whose codes
        come from the valid children by construction."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        depth = states.depth
        out_of_range = (codes < 0) | (codes >= self.k_max)
        node = self.child[states.node, codes.clamp(0, self.k_max - 1)]
        bad = (depth >= self.levels).any() | out_of_range.any() | (node < 0).any()
        if not strict:
            torch._assert_async(~bad, "a decoder stepped a state by a code that is not a valid child of its prefix")
        elif bool(bad):  # one host read, not three
            if (depth >= self.levels).any():
                raise ValueError("cannot step a state at depth L: the SID is complete")
            if out_of_range.any():
                code = int(codes[out_of_range][0])
                raise ValueError(f"code {code} is out of range: expected 0 <= code < {self.k_max}")
            r = int((node < 0).nonzero()[0])
            raise ValueError(
                f"code {int(codes[r])} is not a valid child of prefix {states.tokens[r, : int(depth[r])].tolist()}"
            )
        lvl = depth + 1  # the level of the token being fed (1-based), its position in the prefix
        tok = self.code_token(depth, codes)
        slot = states.context.next_slot[states.query]
        hidden, new_kv = self._extend(
            states.context, states.query, states.kv, lvl, tok[:, None], lvl[:, None], slot[:, None], block=states.block,
            keep=True, most=states.most,
        )
        h = hidden[:, 0]
        rows = torch.arange(len(codes), device=self.device)
        tokens = states.tokens.clone()
        tokens[rows, depth] = codes
        state_hidden = states.hidden.clone()
        state_hidden[rows, lvl] = h.to(state_hidden.dtype)
        return State(
            query=states.query, node=node, depth=lvl, tokens=tokens,
            logp=self.restricted_logp(h, lvl, node, at=None if at is None else at + 1), hidden=state_hidden,
            kv=self._write_kv(states.kv, lvl, new_kv), context=states.context, block=states.block, most=states.most,
        )

    def candidate_hidden(self, histories, sids: torch.Tensor, with_last: bool = False):
        """Hidden states of [start, y_1 .. y_{L-1}] (and y_L if ``with_last``) for candidates
        (B, C, L) of contexts (B, H): (B, C, L or L+1, d), with gradients, and the encoded Context.
        Each context is encoded once and all its candidates attend to that one cache."""
        sids = torch.as_tensor(sids, dtype=torch.long, device=self.device)
        b, c, L = sids.shape
        ctx = self.encode(histories)
        next_slot = ctx.next_slot
        flat = sids.reshape(b * c, L).clamp_min(0)  # padding candidates: any code, masked by callers
        n_in = L + 1 if with_last else L
        lv = torch.arange(n_in, device=self.device)
        inp = torch.cat([torch.full((b * c, 1), SEP, device=self.device),
                         self.code_token(lv[:-1], flat[:, : n_in - 1])], 1)
        query = torch.arange(b, device=self.device).repeat_interleave(c)
        zero = torch.zeros(b * c, dtype=torch.long, device=self.device)
        hidden, _ = self._extend(ctx, query, None, zero, inp, lv.expand(b * c, -1),
                                 next_slot[query][:, None].expand(-1, n_in), block=c)
        return hidden.reshape(b, c, n_in, -1), ctx

    def logprobs(self, histories, sids: torch.Tensor) -> torch.Tensor:
        """log pi(y_l | x, y_<l) for candidate SIDs, with gradients: (B, C, L) for sids (B, C, L),
        (B, L) for sids (B, L). Each prompt is encoded once for all its candidates. Padding
        candidates (-1 codes) get 0. Costs no budget: this is training, not decoding."""
        sids = torch.as_tensor(sids, dtype=torch.long, device=self.device)
        squeeze = sids.dim() == 2
        if squeeze:
            sids = sids[:, None]
        b, c, L = sids.shape
        hidden = self.candidate_hidden(histories, sids)[0].reshape(b * c, L, -1)
        flat = sids.reshape(b * c, L)
        pad = (flat < 0).any(1)
        flat = flat.clamp_min(0)
        node = torch.zeros(b * c, dtype=torch.long, device=self.device)
        out = []
        for lvl in range(L):
            lp = self.restricted_logp(hidden[:, lvl], torch.full_like(node, lvl), node, at=lvl)
            code = torch.where(pad, lp.argmax(1), flat[:, lvl])  # padding rows follow any valid code
            out.append(torch.where(pad, torch.zeros_like(lp[:, 0]), lp.gather(1, code[:, None]).squeeze(1)))
            node = self.child[node, code]
        res = torch.stack(out, 1).reshape(b, c, L)
        return res[:, 0] if squeeze else res

    def forward(self, histories, sids: torch.Tensor) -> torch.Tensor:
        """``logprobs(histories, sids)``: the call that ``DistributedDataParallel`` wraps, so that its
        gradient all-reduce hooks fire (``rl/distributed.py``). Decoders use ``start`` / ``step``."""
        return self.logprobs(histories, sids)


class CountingPolicy:
    """A policy seen through a counter: ``start`` and ``step`` pass through and add what they cost, 1
    backbone forward token per context and per row, to ``tokens`` (and the prompt tokens to
    ``prefill_tokens``); every other attribute is the policy's. How the tests check, apart from each
    decoder's own accounting, that ``CandidateSets.cost_tokens`` is what was spent."""

    def __init__(self, policy: SIDPolicy):
        self.policy = policy
        self.tokens = 0
        self.prefill_tokens = 0

    def start(self, histories) -> State:
        root = self.policy.start(histories)
        self.tokens += len(root)
        self.prefill_tokens += root.context.prefill_tokens
        return root

    def step(self, states: State, codes: torch.Tensor, strict: bool = True, at: int | None = None) -> State:
        out = self.policy.step(states, codes, strict, at)
        self.tokens += len(out)
        return out

    def __getattr__(self, name: str):  # called only for what this wrapper does not hold itself
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)
