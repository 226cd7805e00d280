"""World page: the SID tree, popularity against one user's true reward, and the mismatch knob (Sec. 3.2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from vstar_toy import plots
from vstar_toy.config import WorldConfig, field_docs
from vstar_toy.world import Catalog, World

from . import data, world_data
from .common import Settings, show, show_source, what_to_look_at

LAYOUTS = {"icicle": plots.sid_icicle, "sunburst": plots.sid_sunburst, "treemap": plots.sid_treemap}
COLOURS = {
    "popularity": ("log popularity (exposure)", "magma"),
    "true reward": ("mean true reward a(u, i) below the prefix", "viridis"),
    "logged probability": ("log P_log(prefix | u): the logs SFT imitates", "cividis"),
}
GRID = tuple(np.round(np.linspace(0, 1, 11), 2).tolist())


@dataclass(frozen=True)
class WorldView:
    mismatch: float
    layout: str
    colour: str
    depth: int


def world_ui(settings: Settings) -> WorldView:
    cfg = data.config(settings.preset).world
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    mismatch = c1.slider("mismatch m", 0.0, 1.0, float(cfg.mismatch), 0.05, key="mismatch",
                         help=field_docs(WorldConfig)["mismatch"])
    layout = c2.radio("layout", list(LAYOUTS), horizontal=True, key="layout")
    colour = c3.selectbox("colour by", list(COLOURS), index=1, key="colour")
    depth = c4.slider("levels shown", 1, cfg.levels, cfg.levels, key="depth")
    return WorldView(mismatch, layout, colour, depth)


def page(settings: Settings) -> None:
    st.header("World: the SID tree and the mismatch knob")
    what_to_look_at(
        "Each box is a SID prefix, as wide as the number of items below it. Coloured by *popularity*, it "
        "shows what the logs expose; coloured by *true reward*, what this user would like. The red outlines "
        "are the user's history, the black one the ground truth y*. Move the **mismatch** slider: at m = 0 the "
        "logs follow the user's taste, and the *logged probability* colouring looks like the true-reward one; "
        "towards m = 1 it looks like popularity, and the Spearman rho between a prefix's logged probability and "
        "its true reward drops at every level (Sec. 3.2). SFT learns these logs, so beam search inherits the bias."
    )
    view = world_ui(settings)
    world = data.world_at(settings.preset, view.mismatch)
    rho = world_data.spearman_at(settings.preset, view.mismatch)
    cols = st.columns(len(rho) + 1)
    for lvl, (col, r) in enumerate(zip(cols, rho), start=1):
        col.metric(f"Spearman rho, level {lvl}", f"{r:.3f}")
    cols[-1].metric("items / levels", f"{world.catalog.n_items} / {world.catalog.levels}")

    left, right = st.columns([3, 2])
    with left:
        label, cmap = COLOURS[view.colour]
        values = world_data.node_colours(settings.preset, view.mismatch, settings.user, view.colour)
        hist = world.histories[settings.user]
        fig = LAYOUTS[view.layout](world, values, cmap=cmap, label=label, highlight=hist[hist >= 0],
                                   target=int(world.targets[settings.user]), max_level=view.depth)
        fig.axes[0].set_title(f"{view.layout} of the SID tree, coloured by {view.colour} (user {settings.user})")
        show(fig)
    with right:
        show(plots.mismatch_curve(world_data.mismatch_table(settings.preset, GRID), mark=view.mismatch))
    st.subheader(f"User {settings.user}: history and ground truth")
    st.caption("reward rank 1 = the item this user likes most in the whole catalog; the logged log-probability "
               "moves with m, the true reward does not")
    st.dataframe(world_data.user_items(settings.preset, view.mismatch, settings.user), hide_index=True)
    show_source(settings, [World.build, World.spearman_exposure_reward, World.logged_logprobs, plots.node_popularity,
                           Catalog.node_mean, Catalog.node_logsumexp, LAYOUTS[view.layout], plots.mismatch_curve])
