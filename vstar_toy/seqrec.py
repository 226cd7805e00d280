"""Sequential recommenders over item ids: SASRec and GRU4Rec, the baselines a generative policy must beat.

Both read a left-padded history of item ids (-1 padding, as ``World.histories``) and score every catalog
item by the dot product of a user state with the item's embedding (one embedding table for input and
output, as both papers do):

===========  ==============================================================================================
model        the user state
===========  ==============================================================================================
SASRec       Kang & McAuley 2018, "Self-Attentive Sequential Recommendation": item + learned position
             embeddings, ``n_layers`` causal self-attention blocks (layer norm before attention and the
             point-wise feed-forward of width d, residuals, dropout), the last position's output
GRU4Rec      Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural Networks": item
             embeddings through an ``n_layers`` GRU, its state after the latest item
===========  ==============================================================================================

Training (``fit``) differs from the papers' in one documented way: the loss is the cross-entropy of the
next item over the whole catalog (RecBole's ``loss_type="CE"``), which Klenitskiy & Vasilev (RecSys 2023)
found to make SASRec stronger than its original one-negative binary loss; the windows are the world's
training pairs (``World.train_histories`` -> ``train_targets``), the same the SFT policy learns from, and
the epoch kept is the one with the best validation HR@10 (a fixed number of epochs where the validation rows
are training windows: ``tested_config``). Ranking (``recommend``) excludes the history's
items, as every baseline of ``baselines.py`` does.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import SEQREC_TESTED, SeqRecConfig
from .ranking import top_k, unseen_scores
from .seeding import seeded
from .world import Queries, World


class SASRec(nn.Module):
    """Causal self-attention over the history (Kang & McAuley 2018, Sec. III)."""

    def __init__(self, n_items: int, history_len: int, cfg: SeqRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)  # row 0: padding; item i at i + 1
        self.positions = nn.Embedding(history_len, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        block = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, dim_feedforward=cfg.d_model,
                                           dropout=cfg.dropout, activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(history_len), persistent=False)

    def state(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, d): the user state after the latest item of each (B, H) left-padded history."""
        real = (histories >= 0).unsqueeze(-1)
        x = self.items(histories + 1) * self.items.embedding_dim**0.5 + self.positions.weight
        x = self.dropout(x) * real  # padding positions carry zeros (the paper's timeline mask)
        x = self.blocks(x, mask=self.causal, is_causal=True) * real
        return self.norm(x[:, -1])


class GRU4Rec(nn.Module):
    """A GRU over the history (Hidasi et al. 2016, Sec. 3)."""

    def __init__(self, n_items: int, history_len: int, cfg: SeqRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.d_model, cfg.d_model, cfg.n_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)

    def state(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, d): the GRU's state after the latest item (the padding before the first item is skipped)."""
        lengths = (histories >= 0).sum(1).clamp_min(1)
        h = histories.shape[1]  # right-pad: row b rolled by its length, real items first
        right = histories.gather(1, (torch.arange(h) - lengths[:, None]) % h)
        x = self.dropout(self.items(right + 1))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed)
        return last[-1]


MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def scores(model: nn.Module, histories: np.ndarray) -> torch.Tensor:
    """(B, N) the score of every catalog item for each history (higher: recommended first)."""
    return model.state(torch.as_tensor(histories, dtype=torch.long)) @ model.items.weight[1:].T


def recommend(model: nn.Module, histories: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """(B, k) the top-k items for each history, its own items excluded, ties by item id."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([top_k(scores(model, histories[s : s + batch]).numpy(), histories[s : s + batch], k)
                               for s in range(0, len(histories), batch)])


def target_ranks(model: nn.Module, histories: np.ndarray, targets: np.ndarray, batch: int = 1024) -> np.ndarray:
    """(B,) each target's 0-based place in ``recommend``'s order (its own history's items excluded, ties by
    item id), without sorting the catalog: the items scored above it, plus those tied with a smaller id. A
    target inside its history is never recommended: N. ``rank < k`` is HR@k."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(histories), batch):
            h, t = histories[s : s + batch], targets[s : s + batch]
            sc = unseen_scores(scores(model, h).numpy(), h)
            mine = sc[np.arange(len(t)), t][:, None]
            ids = np.arange(sc.shape[1])[None]
            rank = (sc > mine).sum(1) + ((sc == mine) & (ids < t[:, None])).sum(1)
            out.append(np.where(np.isneginf(mine[:, 0]), sc.shape[1], rank))
    return np.concatenate(out)


def _windows(world: World) -> tuple[np.ndarray, np.ndarray]:
    """(histories (S, H), next items (S,)): every (history, logged next item) training pair."""
    t = world.train_targets
    rows = np.repeat(np.arange(len(t)), t.shape[1])
    nxt = t.reshape(-1)
    return world.train_histories[rows[nxt >= 0]], nxt[nxt >= 0]


def fit(world: World, cfg: SeqRecConfig | None = None, progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """(model, log): ``cfg.kind`` trained on ``world``'s training windows with Adam and the catalog-wide
    cross-entropy, keeping the epoch with the best validation HR@10 (one log row per epoch; a world without
    validation users, or whose validation rows are training pairs (``World.valid_seen``), keeps the last).
    Same seed, same model."""
    cfg = cfg or SeqRecConfig()
    hist, nxt = _windows(world)
    if len(nxt) == 0:
        raise ValueError(f"{world.name} has no training pairs")
    n_valid = world.size("valid")
    chosen = n_valid > 0 and not world.valid_seen  # else (none, or seen in training) every epoch runs, the last kept
    val = world.queries("valid", n=cfg.eval_queries or n_valid, seed=cfg.seed) if chosen else None
    with seeded(cfg.seed):
        model = MODELS[cfg.kind](world.catalog.n_items, hist.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    targets = torch.as_tensor(nxt, dtype=torch.long)
    best, best_state, bad, log = -1.0, None, 0, []
    bar = tqdm(range(cfg.epochs), desc=cfg.kind, disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(nxt), generator=gen)
        total = 0.0
        with seeded(cfg.seed, epoch):  # dropout's draws
            for s in range(0, len(nxt), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                loss = nn.functional.cross_entropy(scores(model, hist[idx.numpy()]), targets[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
        hr = float("nan") if val is None else float((target_ranks(model, val.histories, val.targets) < 10).mean())
        log.append({"epoch": epoch + 1, "loss": total / len(nxt), "valid_hr@10": hr})
        bar.set_postfix(loss=f"{total / len(nxt):.3f}", **({} if val is None else {"hr10": f"{hr:.3f}"}))
        if hr > best or val is None:
            best, best_state, bad = hr, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return model, log


def tested_config(kind: str, world: World, seed: int = 0) -> SeqRecConfig:
    """The settings ``kind`` is fitted with on ``world``: its defaults, the epoch chosen by validation HR@10; or,
    where the validation rows are training windows (``World.valid_seen``), the settings chosen on validation
    with the number of epochs that validation run kept (``config.SEQREC_TESTED``)."""
    return SeqRecConfig(kind=kind, seed=seed, **(SEQREC_TESTED[kind] if world.valid_seen else {}))


def ranker(kind: str):
    """A ``baselines.RANKERS`` entry: (world, queries, k) -> (B, k), ``kind`` fitted with ``tested_config``."""
    def rank(world: World, queries: Queries, k: int = 10, progress: bool = False) -> np.ndarray:
        model, _ = fit(world, tested_config(kind, world), progress=progress)
        return recommend(model, queries.histories, k)

    rank.__doc__ = f"(B, k) the top k items of {kind} trained on the world's windows (seqrec.fit)."
    return rank


__all__ = ["GRU4Rec", "MODELS", "SASRec", "fit", "ranker", "recommend", "scores", "target_ranks", "tested_config"]
