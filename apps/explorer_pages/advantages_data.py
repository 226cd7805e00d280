"""The Advantages page's cached library calls: one user's decoded rewards and the advantages of a candidate set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st
import torch

from vstar_toy.decoding import decode
from vstar_toy.rl import advantages as adv
from vstar_toy.world import sid_str
from vstar_toy.world.rewards import rewards as reward_fn

from .data import config, load_models


@st.cache_data(show_spinner=False)
def decoded_rewards(preset_name: str, user: int, decoder: str, kind: str) -> pd.DataFrame:
    """Columns sid, reward: the user's candidates from ``decoder`` (beam search or VED, 1x budget,
    the preset's knobs) with rewards R(x, y) of ``kind`` (world.rewards)."""
    cfg = config(preset_name)
    m = load_models(preset_name)
    w = m.world
    row = int(np.flatnonzero(w.queries("test").users == user)[0])
    q = w.queries("test").take([row])
    dcfg = dataclasses.replace(cfg.decode, decoder="ved" if decoder == "VED" else "beam", budget_x=1.0)
    with torch.no_grad():
        c = decode(m.policy, q.histories, dcfg, m.head.bind(q))
    r = reward_fn(w, kind, q.users, q.targets, c.items.numpy(), c.logp.numpy())
    ok = c.valid[0].numpy()
    return pd.DataFrame({"sid": [sid_str(s) for s in c.sids[0].numpy()[ok]], "reward": r[0][ok].round(4)})


@st.cache_data(show_spinner=False)
def advantage_report(sids: tuple[tuple[int, ...], ...], rewards: tuple[float, ...], eps: float,
                     ddof: int = adv.DDOF) -> dict:
    """GRPO advantages (Eq. 2), node advantages (Eq. 18), the bounds (Eq. 4, Samuelson) and the
    sibling contrast of one candidate set (one query), with the standard deviation of ``ddof``."""
    s = torch.tensor([sids], dtype=torch.long)  # (1, C, L)
    r = torch.tensor([rewards], dtype=torch.float64)  # (1, C)
    a_grpo = adv.grpo_advantages(r, eps, ddof=ddof)
    a_node, first = adv.sibling_node_advantages(s, r, eps, ddof=ddof)
    scores = adv.sibling_node_scores(s, r)
    bounds = {k: float(v[0]) for k, v in adv.advantage_bounds(r, eps, ddof=ddof).items()}
    contrast = {k: float(v[0]) for k, v in adv.sibling_contrast(s, r, eps, ddof=ddof).items()}
    table = pd.DataFrame({"SID": [sid_str(x) for x in sids], "reward": rewards,
                          "A GRPO (Eq. 2)": a_grpo[0].numpy()})
    for lvl in range(s.shape[-1]):
        table[f"R-bar depth {lvl + 1} (Eq. 17)"] = scores[0, :, lvl].numpy()
    for lvl in range(s.shape[-1]):
        table[f"A_node depth {lvl + 1} (Eq. 18)"] = a_node[0, :, lvl].numpy()
    return {"table": table, "grpo": a_grpo[0].numpy(), "node": a_node[0].numpy(), "first": first[0].numpy(),
            "bounds": bounds, "contrast": contrast, "range": float(adv.reward_range(r)[0])}
