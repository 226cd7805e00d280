"""The prefix value head V_phi(s_l) (Sec. 4.1, Eq. 5), a light head on the policy backbone.

What V_phi(s_l), s_l = (x, y_<=l), l >= 1, reads is fixed by one rule: everything known *before* y_l
is fed to the backbone -- the backbone's hidden state that predicted y_l (the parent's state) and
y_<=l itself -- never the backbone's state after y_l. A child's value therefore costs no backbone
forward, exactly like its log-probability: beam search and VED score a depth-L leaf from its parent's
state, and neither forwards it (``decoding/ved.py`` counts the budget by that rule).

Two variants (``ValueConfig.inputs``), so that what the items' meaning adds stays measurable:

- ``"semantic"`` (the default): the items' semantics beside the backbone. The user's side is the mean
  embedding of the history items (and with ``ValueConfig.user = "mean+last"`` the latest item's
  embedding beside it); the prefix's side is the centroid of the catalog items below
  y_<=l (the catalog-wide version of Eq. 7's prefix embedding; a full SID's centroid is its item's
  embedding). An MLP reads both, their product and cosine, the depth, and the parent's backbone state
  (a projection initialised to zero: the head starts from the semantics and learns what the backbone
  adds). In the paper V_phi sits on an LLM that knows the items through their text; here the
  embeddings are that knowledge (real data: the loader's title embeddings).
- ``"backbone"``: the paper's literal shape on a backbone that knows only item ids: a projection of the
  backbone states, the head's own code embeddings, one transformer block over the prompt's and the
  prefix's positions, and an MLP regressor (plus a two-tower user-item term). On the toy's
  popularity-trained backbone it ranks prefixes barely better than chance (README, "The value").

The head reads the backbone *detached*: the value loss trains the head only. TD training lives in
``rl/value_learning.py``; the value functions VED can use (this head, the world's oracle, log pi, a
no-learning cosine) in ``vstar_toy/values.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ValueConfig
from ..seeding import seeded
from ..world.catalog import Catalog
from .base import Context, SIDPolicy, State
from .tiny import Block


class ValueHead(nn.Module):
    """V_phi of prefixes y_<=l, l = 1 .. L. Two entry points, one computation (``_values``):

    - ``head(parents, codes)``: the children parents + code of decoding states (what VED evaluates);
    - ``head.of_candidates(policy, queries, sids)``: every prefix of finished candidates (TD, Fig. 3).
    """

    name = "learned"

    def __init__(self, catalog: Catalog, d_backbone: int, cfg: ValueConfig | None = None):
        super().__init__()
        cfg = cfg or ValueConfig()
        self.cfg = cfg
        self.catalog = catalog
        self.levels = catalog.levels
        self.k_max = max(catalog.codebook_sizes)
        with seeded(cfg.seed):  # the initial weights: the same for a seed, the caller's stream untouched
            self._layers(catalog, d_backbone, cfg)

    def _layers(self, catalog: Catalog, d_backbone: int, cfg: ValueConfig) -> None:
        d = cfg.hidden
        self.proj = nn.Linear(d_backbone, d)  # the parent's backbone state
        if cfg.inputs == "semantic":  # the catalog's embeddings, trie and node centroids, on the head's device
            self.register_buffer("item_emb", torch.as_tensor(catalog.embeddings), persistent=False)
            self.register_buffer("child", torch.as_tensor(catalog.child), persistent=False)
            self.register_buffer("centroid", torch.as_tensor(catalog.node_centroids), persistent=False)
            n_in = 3 * catalog.embeddings.shape[1] + 2 + self.levels  # u, c, u * c, cos, |c|, one-hot depth
            if cfg.user == "mean+last":
                n_in += 2 * catalog.embeddings.shape[1] + 1  # the latest item: e, e * c, cos
                self.last_scale = nn.Parameter(torch.zeros(self.levels))  # a per-depth term in cos(e_last, c)
            self.inp = nn.Linear(n_in, d)
            nn.init.zeros_(self.proj.weight)  # start from the semantics; learn what the backbone adds
            self.mlp = nn.Sequential(nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
            self.cos_scale = nn.Parameter(torch.zeros(self.levels))  # a per-depth affine term in cos(u, c)
            self.cos_bias = nn.Parameter(torch.zeros(self.levels))
        else:
            self.code = nn.Embedding(self.levels * self.k_max, d)  # the head's own embedding of (level, code)
            self.pos = nn.Embedding(self.levels + 1, d)  # 0: a prompt position; l: prefix position l
            self.block = Block(d, 4 if d % 4 == 0 else 1, 0.0)
            self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
            # a two-tower term: <item(z), user(mean prompt)>, the user-item interaction an MLP finds slowly
            self.user = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))
            self.item = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))

    @classmethod
    def for_policy(cls, policy: SIDPolicy, cfg: ValueConfig | None = None) -> ValueHead:
        return cls(policy.catalog, policy.hidden_size, cfg).to(policy.device)

    # -- entry points ------------------------------------------------------------------------------
    def forward(self, parents: State, codes: torch.Tensor, prefix_logp: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) V of the children y_<=l = parents' prefix + ``codes`` (N,); parents below depth L. The
        signature of ``values.ValueFn`` (``prefix_logp`` is not read): a head is a value function."""
        rows = torch.arange(len(parents), device=parents.depth.device)
        tokens = parents.tokens.clone()
        tokens[rows, parents.depth] = codes.to(tokens.device)
        before = parents.hidden[:, : self.levels]  # states that predicted y_1 .. y_L; row l-1 is the parent's
        return self._values(before, tokens, parents.query, parents.context, parents.depth + 1)

    def of_candidates(self, policy: SIDPolicy, queries, sids: torch.Tensor, context: Context | None = None
                      ) -> torch.Tensor:
        """(B, C, L) V of every prefix y_<=1 .. y_<=L of candidates ``sids`` (B, C, L) of ``queries``
        (anything with ``histories``; ``context``: the policy's encoding of them, if the caller has it);
        padding candidates get values that callers mask. The backbone runs without gradients; the head's
        parameters get them."""
        b, c, L = sids.shape
        with torch.no_grad():
            # (B, C, L, d): the states of [start, y_1 .. y_{L-1}], which predicted y_1 .. y_L
            prompts = queries.histories if context is None else context
            before, ctx = policy.candidate_hidden(prompts, sids.clamp_min(0))
        query = torch.arange(b, device=before.device).repeat_interleave(c)
        tokens = sids.to(before.device).clamp_min(0).reshape(b * c, L)
        return self._values(before.reshape(b * c, L, -1), tokens, query, ctx, None).reshape(b, c, L)

    def bind(self, queries) -> ValueHead:
        """The value function VED calls for ``queries``: the head itself, which reads each query's
        history from the states' context."""
        return self

    # -- the computation -----------------------------------------------------------------------------
    def _values(self, before, tokens, query, ctx: Context, depth):
        """before (N, L, d): the backbone states that predicted y_1 .. y_L; tokens (N, L): the prefix
        codes (-1 beyond it); query (N,): each row's context in ``ctx``; depth (N,) l to read one
        prefix per row -> (N,), or None for all L prefixes -> (N, L)."""
        if self.cfg.inputs == "semantic":
            return self._semantic(before, tokens, query, ctx, depth)
        return self._backbone(before, tokens, query, ctx, depth)

    def _semantic(self, before, tokens, query, ctx, depth):
        nodes = self.catalog.prefix_nodes(tokens, child=self.child)  # (N, L)
        if depth is not None:  # one prefix per row: read only its level
            rows = torch.arange(len(tokens), device=tokens.device)
            return self._semantic_at(before[rows, depth - 1], nodes[rows, depth - 1], query, ctx, depth)
        n, L = tokens.shape
        levels = torch.arange(1, L + 1, device=tokens.device).repeat(n)
        out = self._semantic_at(before.reshape(n * L, -1), nodes.reshape(-1), query.repeat_interleave(L), ctx, levels)
        return out.reshape(n, L)

    def _semantic_at(self, h_parent, node, query, ctx, depth):
        """(N,) values from the parent's backbone state (N, d), the prefix's trie node (N,), the
        row's context and the depth l (N,)."""
        history = self.catalog.history_centroid(ctx.items.to(self.item_emb.device), emb=self.item_emb)  # (B, D)
        user = F.normalize(history, dim=-1)[query]  # the history's mean embedding, per row (N, D)
        c = self.centroid[node]  # (N, D)
        cn = F.normalize(c, dim=-1)
        cos = (user * cn).sum(-1, keepdim=True)
        parts = [user, cn, user * cn, cos, c.norm(dim=-1, keepdim=True), F.one_hot(depth - 1, self.levels).float()]
        li = depth - 1
        extra = 0.0
        if self.cfg.user == "mean+last":  # the latest history item (histories are left-padded: the last column)
            last = F.normalize(self.item_emb[ctx.items[:, -1].to(self.item_emb.device).clamp_min(0)], dim=-1)[query]
            cos_last = (last * cn).sum(-1, keepdim=True)
            parts += [last, last * cn, cos_last]
            extra = self.last_scale[li] * cos_last.squeeze(-1)
        z = self.inp(torch.cat(parts, -1)) + self.proj(h_parent.detach().float())
        return self.mlp(z).squeeze(-1) + self.cos_scale[li] * cos.squeeze(-1) + self.cos_bias[li] + extra

    def _backbone(self, before, tokens, query, ctx, depth):
        n, L = tokens.shape
        # the prompt: projected states, keys and values; a pooled user vector for the two-tower term
        xc = self.proj(ctx.hidden.detach().float()) + self.pos.weight[0]
        _, k_c, v_c = self.block.heads(xc)
        m = ctx.mask[..., None].float()
        user = self.user((xc * m).sum(1) / m.sum(1).clamp_min(1.0))  # (B, d)
        # the prefix: position l carries the state that predicted y_l and the head's embedding of y_l
        lv = torch.arange(L, device=tokens.device)
        code = torch.where(tokens[..., None] >= 0, self.code(lv * self.k_max + tokens.clamp_min(0)), 0.0)
        x = self.proj(before.detach().float()) + self.pos.weight[1 : L + 1] + code
        q, k, v = self.block.heads(x)
        keys, vals = torch.cat([k_c[query], k], 2), torch.cat([v_c[query], v], 2)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        if depth is None:
            mask = torch.cat([ctx.mask[query][:, None, :].expand(n, L, -1), causal[None].expand(n, -1, -1)], -1)
            att = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask[:, None])
            return self._readout(self.block.finish(x, att), user[query][:, None])
        rows = torch.arange(n, device=x.device)
        mask = torch.cat([ctx.mask[query], causal[depth - 1]], -1)[:, None, None, :]  # (N, 1, 1, T + L)
        q1 = q[rows, :, depth - 1][:, :, None]  # (N, h, 1, dh)
        att = F.scaled_dot_product_attention(q1, keys, vals, attn_mask=mask)
        return self._readout(self.block.finish(x[rows, depth - 1][:, None], att), user[query][:, None]).squeeze(-1)

    def _readout(self, z: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(N, P, d) block outputs and (N, 1, d) user vectors -> (N, P) values."""
        two_tower = (self.item(z) * user).sum(-1) / z.shape[-1] ** 0.5
        return self.mlp(z).squeeze(-1) + two_tower


__all__ = ["ValueHead"]
