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
# # 04 · Advantage compression, and sibling-relative advantages
#
# The paper's second failure (Sec. 1 and 3.2) is *advantage compression*: likelihood decoding fills
# the candidate set with siblings, near-duplicates under a few likely prefixes, whose rewards sit in
# a narrow band; GRPO's group normalisation (Eq. 2) is then set by the spread *between* branches, and
# the differences *among* siblings, the decisions that actually matter, become small. Sibling-GRPO
# (Sec. 4.3) compares each node only with its siblings (Eq. 15-18).
#
# This notebook works with `vstar_toy.rl.advantages`, pure functions over reward and SID tensors:
#
# 1. GRPO advantages and what Eq. 4 does and does not bound;
# 2. sibling groups, node scores and node advantages on a small hand-made set, drawn on its tree;
# 3. the within-parent contrast, GRPO against Sibling-GRPO, on the sets beam search and VED decode.

# %%
import dataclasses
import os

import numpy as np
import pandas as pd
import torch

from vstar_toy import plots
from vstar_toy.config import preset
from vstar_toy.decoding import decode
from vstar_toy.metrics import diversity
from vstar_toy.pipeline import build_world, sft_policy, value_model
from vstar_toy.rl.advantages import (
    advantage_bounds,
    grpo_advantages,
    reward_range,
    sibling_contrast,
    sibling_node_advantages,
    sibling_node_scores,
    sibling_node_sets,
)
from vstar_toy.world.rewards import rewards as reward_of

PRESET = os.environ.get("VSTAR_TOY_TUTORIAL_PRESET", "cpu_demo")  # the test suite runs every tutorial on "tiny"

# %% [markdown]
# ## 1. GRPO and the bounds of Eq. 4
#
# GRPO scores each of a query's candidates against the group: `A = (R - mu_R) / (sigma_R + eps)`
# (Eq. 2). sigma is the sample standard deviation (Bessel's correction) and eps = 1e-4 by default, as
# in TRL and the paper's public code; `ddof=0` gives the population sigma (`rl/advantages.py` says
# why the default). The paper bounds it by the reward range
# `Delta_R` (Eq. 3): `|A| <= Delta_R / (sigma_R + eps) <= Delta_R / eps` (Eq. 4).
#
# Take a hand-made set of 8 candidates: two level-1 branches of near-identical siblings (rewards
# within 0.05), and one branch holding an outlier pair far apart. The table shows what Eq. 4 allows
# and what happens. `Delta_R / eps` is astronomically loose. The realised `max |A|` never exceeds
# Samuelson's bound (`|R - mu| <= s (n - 1) / sqrt(n)` for the sample sigma s; `sigma sqrt(n - 1)` for
# the population one), and `sigma_A = sigma_R / (sigma_R + eps)` is 1 up to `eps`, *whatever the
# rewards*: group standardisation never shrinks the advantages' overall scale.

# %%
sids = torch.tensor([[[0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 3], [1, 2, 0], [1, 2, 1], [3, 0, 0], [3, 0, 1]]])
rewards = torch.tensor([[0.80, 0.82, 0.81, 0.79, 0.20, 0.25, 0.90, 0.10]])
a_grpo = grpo_advantages(rewards)
bounds = {k: float(v[0]) for k, v in advantage_bounds(rewards).items()}
fig = plots.advantage_bounds_bars(bounds, title="Eq. 4 and Samuelson's bound against the realised advantages")
pd.Series({"Delta_R (Eq. 3)": float(reward_range(rewards)[0]), **bounds}).round(4).to_frame("value")

# %% [markdown]
# So where is the compression? Look at the two siblings `0-0-1` (reward 0.80) and `0-0-2` (0.82):
# their GRPO advantages differ by `0.02 / sigma_R`, and `sigma_R` is set by the outlier branch. The
# signal that should teach the policy to pick `2` over `1` after the prefix `0-0` is a small
# difference between two nearly equal numbers.

# %%
pd.DataFrame({"SID": ["-".join(map(str, s)) for s in sids[0].tolist()], "reward": rewards[0].numpy(),
              "A GRPO (Eq. 2)": a_grpo[0].numpy().round(3)})

# %% [markdown]
# ## 2. Sibling groups and node advantages (Eq. 15-18)
#
# Sibling-GRPO reads the candidate set as a tree. For a parent prefix `h` at depth `l - 1`, the
# sibling group `G(h)` is the candidates that share `h` (Eq. 15), and `S(h)` the distinct next tokens
# they take (Eq. 16). A child node `(h, v)` scores the mean reward of the candidates through it
# (`R-bar`, Eq. 17), and its advantage compares it with its siblings only:
# `A_node = (R-bar(h, v) - mu_h) / (sigma_h + eps)` (Eq. 18), with `mu_h`, `sigma_h` over the
# distinct children of `h`. A parent with one child gives 0: there is no choice to learn there.
#
# The parents at depth 2 of our set, with their sibling sets:

# %%
for parent in sibling_node_sets(sids, 3)[0]:
    print(parent)

# %% [markdown]
# Drawn on the tree: left, GRPO's advantage sits on each candidate as a whole (the same `A` for
# every token of the SID, so no node has a signal of its own); right, Sibling-GRPO's `A_node` on
# every node. The siblings `0-0-1` and `0-0-2` now get -0.7 and +0.7 (-+1 / sqrt(2) with the sample
# sigma; -1 and +1 with the population sigma), as clearly apart as the outliers `3-0-0` and `3-0-1`.
# Numbers under the leaves are the rewards.
#
# The price is visible too: with two children, Eq. 18 gives -0.7 and +0.7 *however small* the difference
# (the depth-2 nodes `0-0` and `0-1` differ by 0.01 in mean reward). Sibling normalisation cannot
# tell a real preference from noise; only `eps` sets a floor (differences well below `eps` give
# advantages near 0). The explorer's Advantages page (`make app`) lets you move `eps` and edit the
# rewards.

# %%
a_node, first = sibling_node_advantages(sids, rewards)
grpo_on_tree = np.full(sids.shape[1:], np.nan)
grpo_on_tree[:, -1] = a_grpo[0].numpy()
vmax = float(max(a_grpo.abs().max(), a_node.abs().max()))
leaf_text = [f"{x:.2f}" for x in rewards[0].tolist()]
fig = plots.candidate_tree(sids[0], grpo_on_tree, title="GRPO: A(x, y) per candidate (Eq. 2)", label="advantage",
                           leaf_text=leaf_text, vmax=vmax)
fig = plots.candidate_tree(sids[0], a_node[0], title="Sibling-GRPO: A_node per node (Eq. 18)", label="advantage",
                           leaf_text=leaf_text, vmax=vmax)
scores = sibling_node_scores(sids, rewards)
pd.DataFrame({"SID": ["-".join(map(str, s)) for s in sids[0].tolist()],
              **{f"R-bar depth {d + 1}": scores[0, :, d].numpy() for d in range(3)},
              **{f"A_node depth {d + 1}": a_node[0, :, d].numpy().round(3) for d in range(3)}})

# %% [markdown]
# One number for the whole effect, `sibling_contrast`: for every parent with at least two children,
# the standard deviation over its children of the node scores *on GRPO's scale* (`R-bar / sigma_R`,
# "global") and of the node advantages of Eq. 18 ("sibling", which is `sigma_h / (sigma_h + eps)`,
# about 1), averaged over parents. A small "global" number is compression: siblings that GRPO can
# barely tell apart.

# %%
{k: round(float(v[0]), 4) for k, v in sibling_contrast(sids, rewards).items()}

# %% [markdown]
# ## 3. On decoded candidate sets
#
# The same measurements on the sets the SFT policy actually produces for test users, with beam search
# and with VED at the 1x budget, rewarded by the world's true reward `a(u, y)`. Every function is
# batched over queries (shape `(B, C)` rewards, `(B, C, L)` SIDs, a `valid` mask for padding); the
# table shows means over users. `Div(C)` says how sibling-heavy the sets are (0: all candidates share
# every token). The paper predicts the smaller "global" contrast for the sibling-heavier sets (the
# lower Div(C)); the table says whether this world and this policy agree (the toolkit does not tune
# towards a verdict). The "sibling" contrast stays near 1 for both, because Eq. 18 rescales each
# parent's children by their own spread.

# %%
cfg = preset(PRESET)
world = build_world(cfg.world)
policy = sft_policy(world, cfg, progress=False)
head = value_model(world, policy, cfg, progress=False)
queries = world.queries("test", n=200)
rows = []
for decoder in ("beam", "ved"):
    with torch.no_grad():
        c = decode(policy, queries.histories, dataclasses.replace(cfg.decode, decoder=decoder, budget_x=1.0),
                   head.bind(queries))
    r = torch.as_tensor(reward_of(world, "affinity", queries.users, queries.targets, c.items.numpy()))
    contrast = sibling_contrast(c.sids, r, valid=c.valid)
    b = advantage_bounds(r, valid=c.valid)
    rows.append({
        "decoder": decoder,
        "Div(C)": np.nanmean(diversity(c.sids.numpy(), c.valid.numpy())),
        "sigma_R": float(r.std(1).mean()),
        "contrast, GRPO (global)": float(np.nanmean(contrast["global"].numpy())),
        "contrast, Sibling-GRPO": float(np.nanmean(contrast["sibling"].numpy())),
        "parents with >= 2 children": float(contrast["n_parents"].float().mean()),
        "max |A|": float(np.nanmean(b["max_abs_A"].numpy())),
        "Samuelson's bound": float(np.nanmean(b["samuelson"].numpy())),
    })
pd.DataFrame(rows).round(4)

# %% [markdown]
# What to take away: Eq. 4 is true but is not where the signal is lost (the advantages' scale is
# pinned near 1, and Samuelson bounds them far more tightly than `Delta_R / eps`). What likelihood
# decoding compresses is the contrast between siblings, measured by the "global" column; Sibling-GRPO
# restores it by construction, and VED changes which siblings are in the set in the first place.
# Notebook 05 (coming with the RL loop) puts both into training.
