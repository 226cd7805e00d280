"""Advantages page: one candidate set's rewards -> GRPO advantages (Eq. 2) against Sibling-GRPO node
advantages (Eq. 15-18), the bounds of Eq. 4 and Samuelson's, and the sibling contrast (docs/design.md, section 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from vstar_toy import plots
from vstar_toy.config import RLConfig, field_docs
from vstar_toy.rl import advantages as adv

from . import advantages_data
from .common import Settings, show, show_source, what_to_look_at

SIGMAS = {1: "sample (Bessel; TRL, the paper's code)", 0: "population"}
SOURCES = {"toy: sibling-heavy set with an outlier": None, "VED candidates": "VED", "beam search candidates": "beam"}
"""The candidate sets the page offers, by label: the toy set, or a decoder's set for the sidebar user."""
REWARDS = {"affinity": "true reward a(u, y) (oracle)", "semantic": "semantic: cos(e(y), e(y*))",
           "hit": "hit: 1 if y = y*", "minionerec": "MiniOneRec: hit, else a rank penalty"}
# A hand-made set: two clusters of near-identical siblings (rewards within 0.05 of each other) and one
# outlier pair far apart, so that the global sigma is set by the spread *between* branches.
TOY = pd.DataFrame({
    "sid": ["0-0-1", "0-0-2", "0-1-0", "0-1-3", "1-2-0", "1-2-1", "3-0-0", "3-0-1"],
    "reward": [0.80, 0.82, 0.81, 0.79, 0.20, 0.25, 0.90, 0.10],
})
EPS = (1e-6, 1e-4, 1e-2, 0.1, 1.0)


def parse_set(df: pd.DataFrame) -> tuple[list[tuple[int, ...]], list[float], list[str]]:
    """SIDs and rewards from the editor's rows; rows that are not 'a-b-c' integers of one common length,
    or whose reward is not a finite number, are skipped and named."""
    sids, rewards, skipped = [], [], []
    for i, (s, r) in enumerate(zip(df["sid"], df["reward"])):
        try:
            toks = tuple(int(t) for t in str(s).strip().split("-"))
            ok = all(t >= 0 for t in toks) and np.isfinite(float(r)) and (not sids or len(toks) == len(sids[0]))
        except (TypeError, ValueError):
            ok = False
        if ok:
            sids.append(toks)
            rewards.append(float(r))
        else:
            skipped.append(f"row {i} ({s!r}, {r!r})")
    return sids, rewards, skipped


def advantages_ui(settings: Settings) -> tuple[pd.DataFrame, float, int]:
    source = st.selectbox("candidate set", list(SOURCES), key="adv_source",
                          help="decoded sets are the sidebar user's |C| candidates at the 1x budget")
    decoder = SOURCES[source]
    toy = decoder is None
    kind = st.selectbox("reward R(x, y)", list(REWARDS), format_func=REWARDS.get, key="adv_reward", disabled=toy)
    eps = st.select_slider("epsilon (Eq. 2 and 18)", EPS, value=adv.EPS, key="adv_eps")
    ddof = st.radio("sigma", [1, 0], format_func=SIGMAS.get, horizontal=True, key="adv_ddof",
                    help=field_docs(RLConfig)["adv_ddof"])
    if toy:
        base = TOY
    else:
        base = advantages_data.decoded_rewards(settings.preset, settings.user, decoder, kind)
    st.caption("Edit the rewards (or the SIDs, as code-code-code), add or delete rows: everything below follows.")
    edited = st.data_editor(base, num_rows="dynamic", key=f"rewards:{settings.preset}:{settings.user}:{source}:{kind}",
                            column_config={"sid": st.column_config.TextColumn("SID"),
                                           "reward": st.column_config.NumberColumn("reward R(x, y)", format="%.4f")})
    return edited, float(eps), int(ddof)


def page(settings: Settings) -> None:
    st.header("Advantages: GRPO against Sibling-GRPO on one candidate set")
    what_to_look_at(
        "Left, GRPO (Eq. 2) gives every candidate one advantage, normalised by the whole set's sigma; right, "
        "Sibling-GRPO (Eq. 18) gives every *node* an advantage normalised among its siblings (the children of "
        "the same parent, Eq. 15-16). In the toy set, 0-0-1 and 0-0-2 differ by 0.02 in reward: GRPO turns "
        "that into a tiny difference of advantages, because the outlier pair 3-0-0 / 3-0-1 sets sigma; "
        "Sibling-GRPO gives them a full-size -a and +a. Below, Eq. 4's bound Delta/eps is astronomically loose, the "
        "realised |A| never exceeds Samuelson's bound, and sigma_A is about 1 whatever the rewards: what collapses "
        "is the *within-parent contrast* (the 'global' number), not the advantages' scale. The other side: two "
        "siblings always get -a and +a (1 with the population sigma, 0.71 with the sample sigma), however small "
        "their difference (0-0 vs 0-1); only epsilon sets a floor. Edit the rewards."
    )
    left, right = st.columns([2, 3])
    with left:
        table, eps, ddof = advantages_ui(settings)
    sids, rewards, skipped = parse_set(table)
    if skipped:
        st.warning("Skipped " + "; ".join(skipped) + ": a SID is integers joined by '-', all of one length, "
                   "and a reward is a finite number.")
    if not sids:
        st.error("No candidate left: add a row with a SID such as 0-1-2 and a reward.")
        return
    rep = advantages_data.advantage_report(tuple(sids), tuple(rewards), eps, ddof)
    b, c = rep["bounds"], rep["contrast"]
    with right:
        m = st.columns(3)
        m[0].metric("candidates n", len(sids))
        m[1].metric("Delta_R (Eq. 3)", f"{rep['range']:.3g}", help="the reward range max R - min R")
        m[2].metric("max |A|", f"{b['max_abs_A']:.3g}", help="the largest GRPO advantage (Eq. 2) in absolute value")
        m = st.columns(3)
        m[0].metric("Samuelson's bound", f"{b['samuelson']:.3g}",
                    help="on |A|: sqrt(n - 1) with the population sigma, (n - 1) / sqrt(n) with the sample sigma")
        m[1].metric("contrast, GRPO", f"{c['global']:.3g}",
                    help="mean over parents with >= 2 children of the std, over their children, of R-bar / "
                         "sigma_R: how far apart GRPO's scale puts siblings")
        m[2].metric("contrast, Sibling-GRPO", f"{c['sibling']:.3g}",
                    help="the same std of A_node (Eq. 18): sigma_h / (sigma_h + eps), about 1")
        show(plots.advantage_bounds_bars(b, title="How big can |A| be? (Eq. 4 against Samuelson)"))
    s = np.array(sids)
    grpo_on_tree = np.full(s.shape, np.nan)
    grpo_on_tree[:, -1] = rep["grpo"]  # GRPO has no node-level signal: one A per sequence, drawn at its leaf
    vmax = float(np.nanmax(np.abs(np.concatenate([rep["grpo"], rep["node"].ravel()])))) or 1.0
    leaf_text = [f"{r:.2f}" for r in rewards]
    left, right = st.columns(2)
    with left:
        show(plots.candidate_tree(s, grpo_on_tree, title="GRPO: A(x, y) per candidate (Eq. 2)", label="advantage",
                                  leaf_text=leaf_text, vmax=vmax))
    with right:
        show(plots.candidate_tree(s, rep["node"], title="Sibling-GRPO: A_node per node (Eq. 18)", label="advantage",
                                  leaf_text=leaf_text, vmax=vmax))
    st.caption("Numbers under the leaves are the rewards; hollow nodes have no advantage of their own. "
               f"{c['n_parents']:.0f} parents have two or more children.")
    st.subheader("Per candidate")
    st.dataframe(rep["table"].round(4), hide_index=True)
    st.dataframe(pd.DataFrame({"bound or realised value (advantage_bounds)": list(b), "value": list(b.values())}),
                 hide_index=True)
    show_source(settings, [adv.grpo_advantages, adv.reward_range, adv.advantage_bounds, adv.sibling_groups,
                           adv.sibling_node_scores, adv.sibling_node_advantages, adv.sibling_contrast,
                           plots.candidate_tree])
