# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The SID tree and the mismatch knob
#
# V-STAR starts from one observation (paper, Sec. 3.2): the probability a generative recommender gives
# a Semantic-ID prefix and the reward of the items below that prefix need not agree. The policy is
# trained on logs, and logs record what the old system *exposed* as much as what users *liked*. Beam
# search then follows probability, and the rest of the paper is about what that costs.
#
# This notebook builds the toolkit's synthetic world, where the truth is known, and looks at:
#
# 1. the catalog and its SID tree (items named by `L` codes, computed from their embeddings);
# 2. popularity (exposure) over the tree, and one user's true reward over the same tree;
# 3. the knob `mismatch = m` that moves the logs from the user's taste (m = 0) to popularity (m = 1),
#    and the Spearman rho between a prefix's logged probability and its true reward, per level.
#
# Every number comes from `vstar_toy`; every picture from `vstar_toy.plots`.

# %%
import dataclasses
import os

import numpy as np
import pandas as pd

from vstar_toy import plots
from vstar_toy.config import preset
from vstar_toy.pipeline import build_world

PRESET = os.environ.get("VSTAR_TOY_TUTORIAL_PRESET", "cpu_demo")  # the test suite runs every tutorial on "tiny"
cfg = preset(PRESET)
world = build_world(cfg.world)
pd.Series(world.summary(), name=PRESET).to_frame()

# %% [markdown]
# ## 1. Items and their Semantic IDs
#
# Each item has an embedding `e(i)` drawn from a mixture of clusters inside clusters. Its SID is
# computed from that embedding by residual k-means (RQ-KMeans): level 1 quantises the embedding,
# level 2 what level 1 left over, and so on (`world/catalog.py`). Two items that share a prefix are
# therefore semantically close, and the trie of all SIDs (`catalog.child`) is the space every decoder
# walks: a decoder can only emit a token that continues its prefix to a real item.
#
# The table shows a few items with their codes; `children_per_level` in the summary above is the
# trie's mean branching at depth 0, 1, 2.

# %%
cat = world.catalog
pd.DataFrame({"item": np.arange(8), "SID": ["-".join(map(str, s)) for s in cat.sids[:8]]})

# %% [markdown]
# How semantic is a prefix? For every level, the mean cosine between an item's embedding and the
# mean embedding of the items that share its prefix. Deeper prefixes hold fewer, closer items, so the
# number climbs with the level.

# %%
emb = cat.embeddings
rows = []
for level in range(1, cat.levels + 1):
    centre = np.stack([cat.prefix_mean(emb[:, d], level) for d in range(emb.shape[1])], -1)  # (prefixes, D)
    node = cat.node_of(cat.sids[:, :level])  # each item's prefix node
    index = np.searchsorted(cat.nodes_at(level), node)
    unit = centre / np.linalg.norm(centre, axis=1, keepdims=True)
    rows.append({"level": level, "prefixes": len(centre), "mean cos(e(i), prefix centre)":
                 float((emb * unit[index]).sum(1).mean())})
pd.DataFrame(rows)

# %% [markdown]
# ## 2. Exposure and taste on the tree
#
# The icicle below has one row per level; each box is a prefix, as wide as the number of items below
# it (items are sorted by SID, so a branch is a contiguous stretch). The top panel is coloured by
# popularity: a Zipf law over level-1 branches times a Zipf law inside each branch, drawn at random
# and independent of anyone's taste. Popularity is exposure, not merit.
#
# The bottom panel is one test user's **true reward** `a(u, i) = cos(u, e(i))`, averaged over the
# items below each prefix. Red outlines mark the user's history (the context `x` of the query), the
# black outline the ground-truth next item `y*`. The history sits in the branches this user likes;
# popular branches and liked branches are different places.

# %%
user = int(world.queries("test", n=1).users[0])
history = world.histories[user][world.histories[user] >= 0]
target = int(world.targets[user])
fig = plots.world_tree(world, user=user)

# %% [markdown]
# The same tree as a sunburst (level 1 in the centre) and as a treemap (area = items), coloured by
# the user's true reward. Pick whichever makes the branches easiest to compare; the explorer
# (`make app`, World page) offers all three.

# %%
reward_per_node = world.catalog.node_mean(world.affinity([user])[0])
fig = plots.sid_sunburst(world, reward_per_node, label="mean true reward", highlight=history, target=target)
fig = plots.sid_treemap(world, reward_per_node, label="mean true reward", highlight=history, target=target,
                        max_level=2)

# %% [markdown]
# ## 3. The logs, and the mismatch knob
#
# SFT learns from logged (history -> next item) pairs. In this world the logged next items follow
#
# `log P_log(i | u) = (1 - m) * a(u, i) / tau + m * log pop(i) + const`
#
# so `m` slides the logs from the user's taste to popularity (`world/users.py`). Below, the same user's
# logged probability mass per prefix (log-sum-exp of `P_log` over the items below) at `m = 0` and
# `m = 1`. At `m = 0` it is a sharpened copy of the true-reward picture above; at `m = 1` it is the
# popularity picture, whatever the user likes. A policy that imitates the logs inherits this.

# %%
def world_at(m: float):
    return build_world(dataclasses.replace(cfg.world, mismatch=m))


for m in (0.0, 1.0):
    logged = world_at(m).catalog.node_logsumexp(world_at(m).logged_logprobs([user])[0])
    fig = plots.sid_icicle(world, logged, cmap="cividis", label="log P_log(prefix | u)", highlight=history,
                           target=target)
    fig.axes[0].set_title(f"m = {m:g}: where the logs put user {user}'s next item")

# %% [markdown]
# The paper's "probability-reward mismatch" is this disagreement, measured. For each level, take every
# prefix of that level, rank the prefixes by logged probability and by mean true reward, and compute
# Spearman's rho between the two rankings; average over users
# (`World.spearman_exposure_reward`). Near 1, likelihood ranks prefixes as reward does and a
# likelihood search is a reward search; near 0, it does not.
#
# Away from `m = 0` the curve falls at every level, down to about 0 at `m = 1`, where the logs ignore
# taste. Near `m = 0` it is flat, and on a small world it can even rise a little: a prefix's logged
# mass is a *soft maximum* over its items (with the sharp `tau` of this world), its reward a *mean*,
# and the `(1 - m)` factor that flattens the logits at small `m` makes the soft maximum a little more
# like a mean. The experiments of the later notebooks run at the preset's `m` (the dashed line).

# %%
grid = np.round(np.linspace(0, 1, 6), 2)
knob = pd.DataFrame([{"mismatch": m, "level": lvl + 1, "spearman": rho}
                     for m in grid for lvl, rho in enumerate(world_at(float(m)).spearman_exposure_reward())])
fig = plots.mismatch_curve(knob, mark=cfg.world.mismatch)
knob.pivot(index="mismatch", columns="level", values="spearman").round(3)

# %% [markdown]
# ## 4. What a likelihood search would see
#
# For our user, the level-1 branches ranked by the logs' probability and by true reward, at the
# preset's `m`. A likelihood search ranks prefixes like the first column (once the policy has learned
# the logs), and wherever it has to choose, it keeps the top of that ranking and drops the rest for
# good (notebook 02). The branches the user likes most may sit well down the first column.

# %%
level1 = cat.nodes_at(1)
table = pd.DataFrame({
    "branch": cat.token[level1],
    "log P_log(branch | u)": cat.prefix_logsumexp(world.logged_logprobs([user])[0], 1).round(2),
    "mean true reward": cat.prefix_mean(world.affinity([user])[0], 1).round(3),
    "items": cat.hi[level1] - cat.lo[level1],
})
table["rank by logs"] = table["log P_log(branch | u)"].rank(ascending=False).astype(int)
table["rank by reward"] = table["mean true reward"].rank(ascending=False).astype(int)
table.sort_values("rank by logs")

# %% [markdown]
# **Next:** notebook 02 trains the SFT policy on these logs and watches beam search prune the
# branches that matter.
