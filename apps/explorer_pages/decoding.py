"""Decoding page: beam search and VED side by side for one user under one budget (Sec. 4.2, Fig. 4)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from vstar_toy import metrics, plots
from vstar_toy.config import PRIORITIES, DecodeConfig, field_docs
from vstar_toy.decoding import beam_search, budget_tokens, ved_decode
from vstar_toy.decoding.ved import priority
from vstar_toy.policy.value import ValueHead
from vstar_toy.values import OracleValue

from . import data, decoding_data
from .common import Settings, show, show_source, what_to_look_at

COLOURS = {"value": "V (the value VED uses)", "logp": "log pi(prefix | x)", "true_reward": "true reward (oracle)",
           "entropy": "H (Eq. 12)", "priority": "G (Eq. 11)", "visits": "visits N(s)"}


@dataclass(frozen=True)
class DecodeView:
    budget_x: float
    warm_beam: int
    lam: float
    beta: float
    priority: str
    colour: str
    value: str


VALUES = {"learned": "V_phi (learned by TD)", "oracle": "the world's oracle (true mean reward below the prefix)"}


def decoding_ui(settings: Settings) -> DecodeView:
    d = data.config(settings.preset).decode
    c1, c2 = st.columns([3, 2])
    doc = field_docs(DecodeConfig)  # the knobs' help: the config fields' own docs
    budget_x = c1.slider("budget (multiples of beam search's 1x = 1 + (L-1)|C| forward tokens)", 1.0, 4.0, 1.0, 0.5,
                         key="budget_x", help=doc["budget_x"])
    colour = c2.selectbox("colour nodes by", list(COLOURS), format_func=COLOURS.get, key="tree_colour")
    value = st.radio("VED ranks prefixes by", list(VALUES), format_func=VALUES.get, horizontal=True, key="value",
                     help="The oracle shows what VED does with a perfect value: the gap to it is the value's, not "
                          "the search's.")
    with st.expander("VED's knobs"):
        k1, k2, k3, k4 = st.columns(4)
        warm_beam = k1.slider("warm-start beam b0", 1, d.n_candidates - 1, d.warm_beam, key="warm_beam",
                              help=doc["warm_beam"])
        lam = k2.slider("lambda (Eq. 11)", 0.0, 1.0, float(d.lam), 0.05, key="lam", help=doc["lam"])
        beta = k3.slider("beta (Eq. 13)", 0.0, 1.0, float(d.beta), 0.05, key="beta", help=doc["beta"])
        rule = k4.radio("priority rule (Table 3)", PRIORITIES, index=PRIORITIES.index(d.priority), horizontal=True,
                        key="priority", help=doc["priority"])
    return DecodeView(budget_x, warm_beam, lam, beta, rule, colour, value)


def page(settings: Settings) -> None:
    st.header("Decoding: beam search against VED at the same budget")
    what_to_look_at(
        "Both trees decode the same user's next item with the same number of backbone forward tokens. Node size "
        "is the policy's probability pi of the prefix, colour its value V (grey crosses: children beam search "
        "scored and pruned; hollow: no V). The **red path** leads to the ground truth y*. Beam search spends the "
        "whole budget keeping the |C| most likely prefixes per level; VED spends a small warm start (a narrow beam "
        "of width b0) and then expands, one child at a time, the prefixes whose priority G = V + lambda H "
        "(Eq. 11) is above their depth's mean (Eq. 14). Both score leaves for free from their parents (hollow "
        "leaves: no forward was spent on them). Raise the budget: beam search can only widen, VED deepens where "
        "V is high. Switch VED to the oracle value to see what a perfect value would find with the same search."
    )
    view = decoding_ui(settings)
    res = decoding_data.decode_user(settings.preset, settings.user, view.budget_x, view.warm_beam, view.lam, view.beta,
                           view.priority, view.value)
    world = data.load_world(settings.preset)
    levels = world.catalog.levels
    budget = budget_tokens(levels, res.n_candidates, view.budget_x)
    st.caption(f"|C| = {res.n_candidates} candidates, budget B = {budget} forward tokens per query; "
               f"ground truth y* = {res.target_sid}")
    if res.error:
        st.warning(f"VED cannot run here: {res.error}")
    cols = st.columns(2)
    for col, name in zip(cols, ["beam search", "VED"]):
        with col:
            st.subheader(name)
            if name not in res.trees:
                st.write("(no tree: see the warning above)")
                continue
            show(plots.decoding_tree(res.trees[name], levels, target_sid=res.target_sid, color=view.colour,
                                     title=f"{name}: size = pi, colour = {COLOURS[view.colour]}"))
            st.dataframe(res.candidates[name], hide_index=True)
    st.subheader("Where the budget went")
    left, right = st.columns([2, 3])
    with left:
        show(plots.budget_split(res.summary))
    with right:
        st.dataframe(res.summary.set_index("decoder").round(3).T.astype(str))
    st.subheader("Is it the value or the search?")
    st.caption("How well each value ranks prefixes by their true reward: Spearman's rho per level (Fig. 3's "
               "protocol, 100 validation users). VED can only beat beam search where its value is above log pi; "
               "the oracle is the world's truth, and the gap to it is the learned value's.")
    st.dataframe(decoding_data.value_quality_table(settings.preset).round(3), hide_index=True)
    st.caption("Models: the preset's SFT policy and value head V_phi (vstar_toy.pipeline; trained once, then "
               "read from the disk cache).")
    show_source(settings, [beam_search, ved_decode, priority, ValueHead, OracleValue, metrics.diversity,
                           plots.decoding_tree, plots.budget_split])
