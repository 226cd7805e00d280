"""The World page's cached library calls: the mismatch measured over the knob, node colours, one user's items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from vstar_toy import plots
from vstar_toy.world import sid_str

from .data import load_world, world_at


@st.cache_data(show_spinner="Measuring the mismatch...")
def spearman_at(preset_name: str, mismatch: float) -> list[float]:
    """Per level, Spearman rho between a prefix's logged log-probability and its true reward."""
    return world_at(preset_name, mismatch).spearman_exposure_reward()


@st.cache_data(show_spinner="Measuring the mismatch over the knob's range...")
def mismatch_table(preset_name: str, grid: tuple[float, ...]) -> pd.DataFrame:
    """Columns mismatch, level, spearman: the curve of ``plots.mismatch_curve`` (``World.mismatch_table``)."""
    return load_world(preset_name).mismatch_table(grid)


@st.cache_data(show_spinner=False)
def node_colours(preset_name: str, mismatch: float, user: int, colour: str) -> np.ndarray:
    """One value per trie node: log popularity, the user's mean true reward, or the logs' mass."""
    w = world_at(preset_name, mismatch)
    if colour == "popularity":
        return plots.node_popularity(w)
    if colour == "true reward":
        return w.catalog.node_mean(w.affinity([user])[0])
    return w.catalog.node_logsumexp(w.logged_logprobs([user])[0])


@st.cache_data(show_spinner=False)
def user_items(preset_name: str, mismatch: float, user: int) -> pd.DataFrame:
    """The user's history and ground truth, with their SIDs, true reward and logged log-probability."""
    w = world_at(preset_name, mismatch)
    hist = w.histories[user][w.histories[user] >= 0]
    items = np.concatenate([hist, [w.targets[user]]])
    aff = w.affinity([user])[0]
    logp = w.logged_logprobs([user])[0]
    rank = (-aff).argsort().argsort()
    return pd.DataFrame({
        "role": ["history"] * len(hist) + ["ground truth y*"],
        "item": items,
        "SID": [sid_str(s) for s in w.catalog.sids[items]],
        "true reward a(u, i)": aff[items].round(3),
        "reward rank (of N)": rank[items] + 1,
        "log P_log(i | u)": logp[items].round(2),
    })
