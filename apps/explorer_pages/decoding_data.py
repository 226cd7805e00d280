"""The Decoding page's cached library calls: beam search and VED for one user, and how each value ranks prefixes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
import torch

from vstar_toy import metrics
from vstar_toy.decoding import beam_search, decode
from vstar_toy.evaluate import scorers, value_quality
from vstar_toy.values import make_value
from vstar_toy.world import World, sid_str
from vstar_toy.world.rewards import rewards as reward_fn

from .data import config, load_models


def _tree_frame(world: World, cands, user: int, prefix_values: dict[str, float] | None) -> pd.DataFrame:
    """One query's PrefixTree as a DataFrame, plus the oracle's mean true reward below each prefix
    and (for beam search, whose nodes VED never scored) V_phi of the prefixes of its candidates."""
    tree = cands.tree.for_query(0)
    df = tree.to_frame()
    cat_node = np.zeros(len(tree), dtype=np.int64)
    for d in range(1, world.catalog.levels + 1):
        at = tree.depth == d
        cat_node[at] = world.catalog.node_of(tree.sid[at, :d])
    df["true_reward"] = world.catalog.node_mean(world.affinity([user])[0])[cat_node]
    if prefix_values is not None:
        df["value"] = df["value"].fillna(df["sid"].map(prefix_values))
    return df


def _candidate_table(world, cands, values: torch.Tensor, user: int, target: int) -> pd.DataFrame:
    c = cands.valid[0].numpy()
    items = cands.items[0].numpy()[c]
    return pd.DataFrame({
        "rank": np.arange(1, c.sum() + 1),
        "SID": [sid_str(s) for s in cands.sids[0].numpy()[c]],
        "item": items,
        "log pi(y|x)": cands.logp[0].numpy()[c].round(3),
        "V(y)": values[0, :, -1].numpy()[c].round(3),
        "true reward": world.affinity([user], items[None])[0].round(3),
        "is y*": items == target,
    })


@dataclass(frozen=True)
class UserDecoding:
    """Beam search and VED for one user, as the Decoding page shows them."""

    target_sid: str
    """The ground truth y*'s SID ("3-0-7")."""
    n_candidates: int
    """|C|, the preset's."""
    trees: dict[str, pd.DataFrame]
    """Per decoder, its search tree, one row per node (``PrefixTree.to_frame`` plus the true reward)."""
    candidates: dict[str, pd.DataFrame]
    """Per decoder, its candidates in rank order: SID, item, log pi, V, true reward, whether y*."""
    summary: pd.DataFrame
    """One row per decoder: the budget split and the set measures of ``metrics.summarize``."""
    error: str | None
    """The library's message when VED cannot run at this budget (then only beam search is shown)."""


@st.cache_data(show_spinner="Decoding with beam search and VED...")
def decode_user(preset_name: str, user: int, budget_x: float, warm_beam: int, lam: float, beta: float,
                priority: str, value_kind: str = "learned") -> UserDecoding:
    """Beam search and VED for one user at the same budget (the preset's |C|), VED guided by the value
    ``value_kind`` (learned V_phi, or the world's oracle: ``vstar_toy.values``)."""
    m = load_models(preset_name)
    w, cfg = m.world, config(preset_name)
    row = int(np.flatnonzero(w.queries("test").users == user)[0])
    q = w.queries("test").take([row])
    n_cand = cfg.decode.n_candidates
    dcfg = cfg.overlay(decode=dict(decoder="ved", budget_x=budget_x, warm_beam=warm_beam, lam=lam, beta=beta,
                                   priority=priority)).decode
    sets, error = {}, None
    value = make_value(value_kind, w, m.head)
    with torch.no_grad():
        sets["beam search"] = beam_search(m.policy, q.histories, n_cand, budget_x)
        try:
            sets["VED"] = decode(m.policy, q.histories, dcfg, value.bind(q))
        except ValueError as e:
            error = str(e)
        values = {k: value.of_candidates(m.policy, q, c.sids) for k, c in sets.items()}
    trees, candidates, rows = {}, {}, []
    for name, c in sets.items():
        # V of every prefix of the candidates, keyed by its SID string (fills beam search's tree)
        pv = {sid_str(s[: lvl + 1]): float(values[name][0, i, lvl])
              for i, s in enumerate(c.sids[0].numpy()) if c.valid[0, i] for lvl in range(w.catalog.levels)}
        trees[name] = _tree_frame(w, c, user, pv if name == "beam search" else None)
        candidates[name] = _candidate_table(w, c, values[name], user, int(q.targets[0]))
        r = reward_fn(w, "affinity", q.users, q.targets, c.items.numpy())
        measured = metrics.summarize(c.items.numpy(), q.targets, c.sids.numpy(), r, c.valid.numpy())  # as evaluate
        rows.append({
            "decoder": name,
            "budget_tokens": int(c.budget_tokens),
            "cost_tokens": int(c.cost_tokens[0]),
            "warmup_tokens": int(c.warmup_tokens[0]),
            "expansion_tokens": int(c.expansion_tokens[0]),
            "y* reached": bool(measured["reachability"]),
            "max true reward": measured["max_reward"],
            "mean true reward": measured["mean_reward"],
            "Div(C)": measured["div"],
            "nodes in tree": int((~trees[name]["pruned"]).sum()),
            "pruned children": int(trees[name]["pruned"].sum()),
        })
    return UserDecoding(sid_str(w.catalog.sids[q.targets[0]]), n_cand, trees, candidates, pd.DataFrame(rows), error)


@st.cache_data(show_spinner="Measuring how each value ranks prefixes...")
def value_quality_table(preset_name: str) -> pd.DataFrame:
    """Per level, Spearman's rho with the true prefix reward of V_phi, log pi, the world's oracle and
    the no-learning cosine (Fig. 3's protocol on 100 validation users; ``evaluate.value_quality``)."""
    m = load_models(preset_name)
    rho = value_quality(m.world, m.policy, m.world.queries("valid", n=100), scorers(m.world, m.head))
    return pd.DataFrame([{"value": name, **{f"level {lvl + 1}": r for lvl, r in enumerate(v)}}
                         for name, v in rho.items()])
