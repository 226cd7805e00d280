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
# # 02 · Beam search prunes the branches that matter
#
# The paper's first failure of likelihood-driven decoding (Sec. 1 and 3.2) is *insufficient
# exploration*: "high-reward items in low-probability branches are prematurely pruned and rarely
# sampled". This notebook trains (or loads) the SFT policy on the logs of notebook 01 and watches
# constrained beam search build its candidate set `C(x) = D(pi_theta, x)` (Eq. 1):
#
# 1. one user's beam-search tree, with the children it scored and dropped;
# 2. what the search costs, in backbone forward tokens (the paper's budget unit, Sec. 5.5);
# 3. at which level the ground truth `y*`, and the user's best item, leave the beam;
# 4. what a wider beam buys, and how well `log pi` ranks prefixes by reward (Fig. 3's protocol).

# %%
import os

import numpy as np
import pandas as pd

from vstar_toy import plots
from vstar_toy.config import preset
from vstar_toy.decoding import beam_search, budget_tokens
from vstar_toy.evaluate import evaluate, value_quality
from vstar_toy.pipeline import build_world, sft_policy
from vstar_toy.values import LikelihoodValue

PRESET = os.environ.get("VSTAR_TOY_TUTORIAL_PRESET", "cpu_demo")  # the test suite runs every tutorial on "tiny"
cfg = preset(PRESET)
world = build_world(cfg.world)
# the first call trains the SFT policy on the logs (minutes on cpu_demo) and caches it on disk
policy = sft_policy(world, cfg, progress=False)
C, L = cfg.decode.n_candidates, world.catalog.levels
print(f"{world.name}: |C| = {C} candidates per query, SIDs of L = {L} codes")

# %% [markdown]
# ## 1. One user's beam
#
# Beam search keeps, at every level, the `B = |C|` prefixes with the highest `log pi(y_<=l | x)`,
# restricted to prefixes that lead to a real item. The picture is the tree it built for one test user:
# node size is the prefix's probability under the policy, colour its log-probability, grey crosses
# are children that were scored and pruned. The red path leads to `y*`: where it stops, the ground
# truth fell off the beam. Below it, the candidates with their true reward `a(u, y)` (which the policy
# never sees).

# %%
q = world.queries("test", n=1)
user, target = int(q.users[0]), int(q.targets[0])
cands = beam_search(policy, q.histories, C)
target_sid = "-".join(map(str, world.catalog.sids[target]))
fig = plots.decoding_tree(cands.tree.to_frame(0), L, target_sid=target_sid, color="logp",
                          title=f"beam search for user {user} (red: the path to y* = {target_sid})")
items = cands.items[0].numpy()
pd.DataFrame({
    "SID": ["-".join(map(str, s)) for s in cands.sids[0].numpy()],
    "log pi(y|x)": cands.logp[0].numpy().round(3),
    "true reward": world.affinity([user], items[None])[0].round(3),
    "is y*": items == target,
})

# %% [markdown]
# ## 2. The budget
#
# Decoding cost is counted in backbone forward tokens (Cost in Eq. 10): the start token, then one
# forward per kept beam at levels 1 .. L-1 (the last level's children are scored from their
# parents' cached log-probabilities and never forwarded). For `L` levels that is
# `1 + (L - 1) * B`, the paper's 1x budget; `budget_tokens` gives `kx`.

# %%
pd.DataFrame({
    "spent (cost_tokens)": cands.cost_tokens,
    "1x budget": [budget_tokens(L, C, 1.0)],
    "1 + (L - 1) * B": [1 + (L - 1) * C],
    "nodes kept": [int((~cands.tree.pruned).sum())],
    "children pruned": [int(cands.tree.pruned.sum())],
})

# %% [markdown]
# ## 3. Where the truth leaves the beam
#
# Over many test users at once (the decoders are batched over queries), the share of users whose
# `y*` prefix is still among the kept nodes at each level; and the same for each user's **best item**
# (the item of highest true reward in the whole catalog). While a level has no more prefixes than
# beams, everything survives (in the presets, `|C|` equals the number of level-1 codes, so level 1
# keeps every branch); from the first level with more candidates than beams, the beam chooses by
# `log pi`, and whatever it drops there no later level can recover. The shares fall with every
# level; how fast, and whether the best item falls faster than `y*`, depends on how much of the
# users' taste the policy learned from logs that also follow popularity.

# %%
queries = world.queries("test", n=200)
beams = beam_search(policy, queries.histories, C)
tree = beams.tree
best = world.affinity(queries.users).argmax(1)
rows = []
for name, items in (("y*", queries.targets), ("best item", best)):
    sids = world.catalog.sids[items]  # (B, L)
    for level in range(1, L + 1):
        kept = (~tree.pruned) & (tree.depth == level)
        on_path = kept & (tree.sid[:, :level] == sids[tree.query, :level]).all(1)
        survived = np.bincount(tree.query[on_path], minlength=len(queries)) > 0
        rows.append({"item": name, "level": level, "share of users whose prefix is kept": survived.mean()})
survival = pd.DataFrame(rows).pivot(index="level", columns="item", values="share of users whose prefix is kept")
survival.round(3)

# %% [markdown]
# ## 4. A wider beam, and how well log pi ranks prefixes
#
# At `k`x the budget the beam widens to `B' = (budget - 1) / (L - 1)` and returns its best `|C|`
# (Fig. 4's comparison). `evaluate` decodes the test users and reports accuracy (HR@K, NDCG@K),
# `reachability` (is `y*` anywhere in `C(x)`), `max_reward` (the best true reward in the set, Table 6)
# and `div` (Div(C), Sec. 5.5: 0 when all candidates share every token, 1 when they all differ at
# level 1). A wider beam reaches more, but it spends its extra tokens on the same likely branches.

# %%
rows = []
for budget_x in (1.0, 2.0, 4.0):
    dcfg = cfg.replace(decode={"decoder": "beam", "budget_x": budget_x}).decode  # the preset's, at this budget
    metrics, _ = evaluate(world, policy, queries, dcfg)
    rows.append({"decoder": f"beam {budget_x:g}x", **metrics})
beam_table = pd.DataFrame(rows)
fig = plots.bar_table(beam_table, ["reachability", "max_reward", "div", "ndcg@10"], by="decoder",
                      title="beam search at 1x, 2x and 4x the budget")
beam_table[["decoder", "hr@10", "ndcg@10", "reachability", "max_reward", "div", "mean_cost_tokens"]].round(4)

# %% [markdown]
# Last, the measurement behind Fig. 3: sample 32 candidates per validation user at temperature 1.5,
# and per level compute Spearman's rho between a prefix's `log pi` and its reward (the mean true reward
# of the sampled candidates that share it). Compare with notebook 01's rho between the *logs* and the
# reward: SFT has learned the logs, mismatch included. Notebook 03 trains a value model whose ranking
# should do better, and lets it steer the search.

# %%
rho = value_quality(world, policy, world.queries("valid", n=200), {"logp": LikelihoodValue()})
pd.DataFrame({"level": range(1, L + 1), "rho(log pi, reward)": np.round(rho["logp"], 3),
              "rho(logs, reward), the world": np.round(world.spearman_exposure_reward(), 3)})
