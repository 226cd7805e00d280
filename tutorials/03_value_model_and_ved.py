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
# # 03 · A value model, and decoding guided by it (VED)
#
# If `log pi` ranks prefixes badly (notebook 02), rank them by something else: an estimate of the
# reward still reachable below them. Sec. 4.1 of the paper learns such a prefix value `V_phi(s_l)`
# (Eq. 5) from dense, semantic step returns (Eq. 6-8) by temporal-difference learning (Eq. 9).
# Sec. 4.2 spends a fixed decoding budget where the value is high *and* the next step is uncertain:
# the priority `G = V + lambda * H` (Eq. 11-12), a UCB walk down the tree (Eq. 13) and expansion
# gated by the depth's mean priority (Eq. 14). This notebook:
#
# 1. computes the dense step returns and TD targets for one candidate set;
# 2. measures how well `V` ranks prefixes by reward, against `log pi`, the world's oracle and a
#    no-learning baseline (Fig. 3's protocol);
# 3. runs VED for one user and shows where its budget went;
# 4. compares VED with beam search at the same budget, guided by the oracle, by the learned head and by
#    a head that reads only the backbone: is a verdict limited by the value or by the search?
# 5. compares the budgets (Fig. 4, Table 2) and the expansion rules of Table 3.

# %%
import dataclasses
import os

import pandas as pd
import torch

from vstar_toy import plots
from vstar_toy.config import preset
from vstar_toy.decoding import decode
from vstar_toy.decoding.sampling import sample
from vstar_toy.evaluate import evaluate, scorers, value_quality
from vstar_toy.pipeline import build_world, sft_policy, value_model
from vstar_toy.rl.value_learning import td_targets
from vstar_toy.values import OracleValue
from vstar_toy.world.rewards import step_returns

PRESET = os.environ.get("VSTAR_TOY_TUTORIAL_PRESET", "cpu_demo")  # the test suite runs every tutorial on "tiny"
cfg = preset(PRESET)
world = build_world(cfg.world)
policy = sft_policy(world, cfg, progress=False)
# the first call pre-trains V_phi by TD on the SFT policy's sampled candidates and caches it on disk
head = value_model(world, policy, cfg, progress=False)
oracle = OracleValue(world)  # the world's truth: the mean true reward of the items below a prefix
C, L = cfg.decode.n_candidates, world.catalog.levels

# %% [markdown]
# ## 1. Dense semantic returns and TD targets
#
# A reward only at the end of a SID says little about its prefixes. Eq. 6-8 give every prefix its
# own return: group the sampled candidates by prefix (the bucket `C(x; y_<=l)`, Eq. 6), average their
# item embeddings (Eq. 7), and score the prefix `r_l = w_l` if it is on the ground truth's path, else
# `-w_l * (1 - cos(e_bar, e(y*)))` (Eq. 8). The TD target of Eq. 9 is `r_l + gamma * V(s_{l+1})`
# below the last level and `r_L` at it. Below: 8 candidates sampled for one user at temperature 1.5
# (what pre-training samples), their returns per level, the head's values, and the targets.

# %%
q1 = world.queries("test", n=1)
cands = sample(policy, q1.histories, 8, temperature=1.5, seed=0)
emb = torch.as_tensor(world.catalog.embeddings)
target_sids = torch.as_tensor(world.catalog.sids[q1.targets])  # (1, L)
r = step_returns(cands.sids.clamp_min(0), emb[cands.items.clamp_min(0)], target_sids, emb[torch.as_tensor(q1.targets)],
                 cfg.value.step_weights, cands.valid)  # (1, 8, L)
with torch.no_grad():
    v = head.of_candidates(policy, q1, cands.sids)  # (1, 8, L)
y = td_targets(r, v, cfg.value.gamma)
table = pd.DataFrame({"SID": ["-".join(map(str, s)) for s in cands.sids[0].tolist()]})
for name, x in (("r", r), ("V", v), ("TD target", y)):
    for lvl in range(L):
        table[f"{name}_{lvl + 1}"] = x[0, :, lvl].numpy().round(3)
print(f"y* = {'-'.join(map(str, world.catalog.sids[q1.targets[0]]))}, step weights w = {cfg.value.step_weights}")
table.round(3)

# %% [markdown]
# ## 2. Does V rank prefixes better than log pi?
#
# Fig. 3's protocol (`value_quality`): sample 32 candidates per validation user at temperature 1.5;
# per level, Spearman's rho between a prefix's score and its reward (the mean true reward of the
# sampled candidates that share it). Four scorers (`vstar_toy/values.py`):
#
# - `learned`: V_phi. It reads the items' semantic embeddings (the history's mean, the centroid of the
#   catalog items below the prefix) beside the backbone's state, as the paper's LLM knows items by
#   their text (`policy/value.py`);
# - `logp`: the policy's likelihood, what beam search ranks by;
# - `oracle`: the world's truth, the mean true reward of the catalog items below the prefix. Not 1
#   above the last level: the protocol's prefix reward is a mean over the *sampled* candidates;
# - `cosine`: no learning at all, the cosine of the two centroids V_phi reads. How far `learned` is
#   above it is what TD learned.

# %%
rho = value_quality(world, policy, world.queries("valid", n=200), scorers(world, head))
levels = [f"level {lvl}" for lvl in range(1, L + 1)]
rho_table = pd.DataFrame([{"score": name, **dict(zip(levels, r))} for name, r in rho.items()])
fig = plots.bar_table(rho_table, levels, by="score", title="Spearman rho with the prefix reward (Fig. 3)")
rho_table.round(3)

# %% [markdown]
# ## 3. VED for one user
#
# VED (`decoding/ved.py`) under a budget of `B` forward tokens:
#
# 1. *warm start*: a likelihood beam of width `b0 < |C|` down to depth `L - 1`, every node forwarded once
#    (cost `1 + (L - 1) * b0`, like a beam of width `b0`), so each has `pi`, `V`, `H` and `G`; the leaves
#    below are scored from their parents' states, for free, as beam search scores its leaves;
# 2. *selection*: walk from the root to a leaf of the tree by the UCB score of Eq. 13;
# 3. *gated expansion*: every node on that path whose priority is at least its depth's mean (Eq. 14)
#    adds one child, sampled from its unexpanded children in proportion to `pi` (one forward token);
# 4. *backpropagation*: visit counts go up along the path; repeat until the budget is spent, then
#    return the `|C|` leaves of highest `V`.
#
# `ved_decode` in `decoding/ved.py` is that recipe, one function per stage; `decoding/ved_reference.py`
# is the same algorithm for one query in plain Python, to read first.
#
# The tree below is coloured by `V`; node size is `pi`; the red path leads to `y*`. Compare it with
# notebook 02's beam: VED's tree is narrower at the top and deeper where `V` is high. The bars show
# the split of the budget between the warm start and the value-guided expansions at 1x and 2x.

# %%
q = world.queries("test", n=1)
target_sid = "-".join(map(str, world.catalog.sids[q.targets[0]]))
split = []
for budget_x in (1.0, 2.0):
    ved = decode(policy, q.histories, dataclasses.replace(cfg.decode, decoder="ved", budget_x=budget_x),
                 head.bind(q))
    split.append({"decoder": f"VED {budget_x:g}x", "warmup_tokens": int(ved.warmup_tokens[0]),
                  "expansion_tokens": int(ved.expansion_tokens[0]), "budget_tokens": ved.budget_tokens})
fig = plots.decoding_tree(ved.tree.to_frame(0), L, target_sid=target_sid, color="value",
                          title=f"VED at 2x for user {int(q.users[0])} (colour: V; red: the path to y*)")
fig = plots.budget_split(pd.DataFrame(split))
pd.DataFrame(split)

# %% [markdown]
# ## 4. Is it the value or the search? VED with three values, at beam search's budget
#
# The same search (VED at 1x), the same users, three values: the world's oracle (what a perfect value
# would do), the learned head, and a head of the same training that reads only the backbone's states
# (`ValueConfig.inputs = "backbone"`, the paper's head on a backbone that knows items only by their
# ids). Beam search beside them. If VED with the oracle beats beam search, the search can use a good
# value; the gap between the oracle and a learned head is the value's.

# %%
queries = world.queries("test", n=200)
backbone_head = value_model(world, policy, cfg.replace(value={"inputs": "backbone"}), progress=False)
arms = {"beam search": (dataclasses.replace(cfg.decode, decoder="beam"), None),
        "VED + oracle value": (dataclasses.replace(cfg.decode, decoder="ved"), oracle),
        "VED + learned V_phi": (dataclasses.replace(cfg.decode, decoder="ved"), head),
        "VED + backbone-only V_phi": (dataclasses.replace(cfg.decode, decoder="ved"), backbone_head)}
rows = []
for name, (dcfg, value) in arms.items():
    metrics, _ = evaluate(world, policy, queries, dcfg, value)
    rows.append({"decoder": name, **metrics})
sides = pd.DataFrame(rows)
fig = plots.bar_table(sides, ["max_reward", "reachability", "div"], by="decoder",
                      title="one search, three values (1x budget)")
sides[["decoder", "max_reward", "reachability", "div", "ndcg@10", "hr@10", "mean_cost_tokens", "expansion_tokens"]
      ].round(4)

# %% [markdown]
# ## 5. Budgets, and the expansion rule
#
# Fig. 4 and Table 2 of the paper compare decoders on one policy at matched forward-token budgets.
# `evaluate` decodes the same test users with each, and reports accuracy (HR@K, NDCG@K), whether `y*`
# is in the set (`reachability`), the best true reward in it (`max_reward`) and Div(C). Beam search
# can only widen; VED spends the extra tokens where `V` is high.

# %%
rows = []
for budget_x in (1.0, 2.0):
    for decoder in ("beam", "ved"):
        dcfg = dataclasses.replace(cfg.decode, decoder=decoder, budget_x=budget_x)
        metrics, _ = evaluate(world, policy, queries, dcfg, head)
        rows.append({"decoder": f"{decoder} {budget_x:g}x", **metrics})
compare = pd.DataFrame(rows)
fig = plots.bar_table(compare, ["reachability", "max_reward", "div", "ndcg@10"], by="decoder",
                      title="beam search vs VED at matched budgets")
compare[["decoder", "hr@10", "ndcg@10", "reachability", "max_reward", "div", "mean_cost_tokens",
         "expansion_tokens"]].round(4)

# %% [markdown]
# Table 3 of the paper ablates the expansion rule: the priority `G = V + lambda * H` against `V`
# alone and the entropy `H` alone. `V` alone goes where the reward seems to be; `H` alone goes where
# the policy hesitates, whatever the reward; `G` asks for both. Same users, same 2x budget (the `G`
# row is the "ved 2x" run above).

# %%
columns = ["hr@10", "ndcg@10", "reachability", "max_reward", "div"]
rows = [{"priority": "G", **compare.set_index("decoder").loc["ved 2x", columns].to_dict()}]
for rule in ("V", "H"):
    dcfg = dataclasses.replace(cfg.decode, decoder="ved", budget_x=2.0, priority=rule)
    metrics, _ = evaluate(world, policy, queries, dcfg, head)
    rows.append({"priority": rule, **{k: metrics[k] for k in columns}})
pd.DataFrame(rows).round(4)

# %% [markdown]
# **Next:** notebook 04 looks at what the candidate sets do to the RL signal: advantage compression,
# and Sibling-GRPO's answer to it.
