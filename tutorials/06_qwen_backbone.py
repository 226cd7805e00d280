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
# # 06 · A Qwen backbone behind the same Policy
#
# The paper's policy is an LLM, Qwen2.5-1.5B, whose vocabulary is extended with one token per SID
# code, fine-tuned on the logs and then trained by RL (Sec. 5.1). The toolkit's decoders and losses
# never see a model: they talk to a *policy* through `start`, `step`, `logprobs` and a `cost`
# counter (docs/design.md, section 2). `policy/qwen.py` puts a Hugging Face `Qwen2ForCausalLM` behind those
# calls, so beam search, VED (Eq. 11-14), the TD value head (Eq. 9) and GRPO / Sibling-GRPO
# (Eq. 2, Eq. 19) run on it unchanged. On a CPU we use `tiny-qwen`: the Qwen2 architecture (RMSNorm,
# rotary positions, grouped-query attention, SwiGLU) at hidden size 64 and 2 layers. This notebook:
#
# 1. adds the SID tokens to the backbone's vocabulary and writes a prompt in them;
# 2. SFT-trains the backbone and its value head with the same code as the tiny transformer;
# 3. decodes with beam search and VED, side by side with the tiny transformer;
# 4. checks our constrained beam search against Hugging Face `generate`;
# 5. takes one joint GRPO + Sibling-GRPO step, each prompt encoded once for all its candidates;
# 6. says what changes on a GPU, and on several.

# %%
import copy
import dataclasses
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from vstar_toy import plots
from vstar_toy.config import preset
from vstar_toy.decoding import beam_search
from vstar_toy.evaluate import evaluate
from vstar_toy.pipeline import build_world, sft_policy, value_model
from vstar_toy.policy.qwen import BACKBONES, QwenPolicy, sid_token_names
from vstar_toy.rl.advantages import grpo_advantages
from vstar_toy.rl.losses import loss_kwargs, policy_loss
from vstar_toy.rl.train import training_state
from vstar_toy.world.rewards import rewards

torch.set_num_threads(1)  # a model this small gains nothing from threads on a shared CPU
# "tiny" by default: on a CPU, SFT of even a tiny Qwen2 on the 2,000-item cpu_demo world takes minutes.
# Set VSTAR_TOY_TUTORIAL_PRESET=cpu_demo on a GPU machine for the bigger world.
PRESET = os.environ.get("VSTAR_TOY_TUTORIAL_PRESET", "tiny")
cfg = preset(PRESET)
world = build_world(cfg.world)
C, L = cfg.decode.n_candidates, world.catalog.levels

# %% [markdown]
# ## 1. SID tokens in the vocabulary
#
# Every (level, code) pair becomes one new token, `<a_12>` for code 12 of level 1, `<b_3>` for code 3
# of level 2, and so on; `<sid>` separates items and starts generation. The embedding matrix (and
# the LM head, tied or not) grows by that many rows. With a real checkpoint the ids come from its
# tokenizer; `tiny-qwen` has none, so they are appended after its 256-token vocabulary. A user's
# history is the prompt, `<sid>` + L codes per item, and the item to recommend is generated after one
# more `<sid>`. Weights here are random (`from_backbone` downloads nothing), drawn with the policy seed.

# %%
fresh = QwenPolicy.from_backbone(world.catalog, "tiny-qwen", device="cpu", seed=cfg.policy.seed)
names = sid_token_names(world.catalog.codebook_sizes)
base = BACKBONES["tiny-qwen"]["vocab_size"]
rows = fresh.model.get_input_embeddings().weight.shape[0]
print(f"tiny-qwen: {base} tokens + {len(names)} SID tokens (1 + {' + '.join(map(str, world.catalog.codebook_sizes))})"
      f" = {rows} embedding rows; {sum(p.numel() for p in fresh.parameters()):,} parameters")
shown = [0, 1, 2, 1 + world.catalog.codebook_sizes[0], len(names) - 1]
pd.DataFrame({"token": [names[i] for i in shown], "backbone id": [int(fresh.hf_token[1 + i]) for i in shown]})

# %%
q1 = world.queries("test", n=1)
tokens, _, _, mask, _ = fresh.item_tokens(torch.as_tensor(q1.histories))  # our ids: 1 = <sid>, 2.. = codes
prompt = "".join(names[t - 1] for t in tokens[0][mask[0]].tolist()) + "<sid>"
print(f"user {int(q1.users[0])}'s prompt ({int(mask.sum()) + 1} tokens):\n{prompt}")
print("backbone ids:", fresh.hf_token[tokens[0][mask[0]]].tolist()[:12], "...")

# %% [markdown]
# ## 2. SFT and the value head, unchanged
#
# `pipeline.sft_policy(..., backbone="tiny-qwen")` builds the policy above and trains it with
# `rl/sft.py`, the next-item likelihood the tiny transformer is trained with (restricted to valid
# children; early stopping on validation HR@10), then caches it under a key that adds the backbone.
# `value_model` pre-trains `V_phi` by TD (Eq. 9) on this policy's candidates: the head reads the
# backbone's hidden states (64 wide here, 1,536 for Qwen2.5-1.5B), detached. The tiny transformer of
# notebooks 01-04 is loaded beside it for comparison.

# %%
qwen = sft_policy(world, cfg, progress=False, backbone="tiny-qwen")
qwen_head = value_model(world, qwen, cfg, progress=False)
tiny = sft_policy(world, cfg, progress=False)
tiny_head = value_model(world, tiny, cfg, progress=False)
pd.DataFrame({"policy": ["tiny transformer", "tiny-qwen"],
              "parameters": [sum(p.numel() for p in m.parameters()) for m in (tiny, qwen)],
              "hidden size": [tiny.hidden_size, qwen.hidden_size],
              "value head parameters": [sum(p.numel() for p in h.parameters()) for h in (tiny_head, qwen_head)]})

# %% [markdown]
# ## 3. The same decoders
#
# Beam search and VED at the 1x budget on both policies, the same test users. Both backbones charge
# the same `Cost` (Sec. 4.2): one forward token per start token and per expanded node; the prompt
# prefill is counted apart (`prefill_tokens`, Sec. 5.5). Which policy ranks better depends on how
# well each learned this small world; what matters here is that every decoder returns valid,
# distinct SIDs within its budget on either (tests/test_qwen.py checks it for all four decoders).

# %%
queries = world.queries("test", n=200)
rows = []
for name, pol, head in (("tiny", tiny, tiny_head), ("tiny-qwen", qwen, qwen_head)):
    for decoder in ("beam", "ved"):
        dcfg = dataclasses.replace(cfg.decode, decoder=decoder, budget_x=1.0)
        metrics, _ = evaluate(world, pol, queries, dcfg, head)
        rows.append({"decoder": f"{name} {decoder}", **metrics})
compare = pd.DataFrame(rows)
fig = plots.bar_table(compare, ["hr@10", "reachability", "max_reward", "div"], by="decoder",
                      title="the tiny transformer and tiny-qwen under the same decoders (1x budget)")
compare[["decoder", "hr@10", "ndcg@10", "reachability", "max_reward", "div", "mean_cost_tokens", "budget_tokens",
         "seconds"]].round(4)

# %% [markdown]
# ## 4. Beam search against Hugging Face `generate`
#
# `generate(num_beams=B, prefix_allowed_tokens_fn=...)` is constrained beam search the standard way:
# at every step it masks all tokens but the valid next codes and ranks beams by their summed
# log-softmax over the *whole* vocabulary (with `length_penalty=0`; all SIDs have L tokens). Our
# `beam_search` with `normalize="vocab"` uses those same scores, but encodes each prompt once and
# steps the beams of all queries in one backbone call from a KV cache of its own. Below, the SFT
# weights wrapped with `normalize="vocab"` (the same model, the same token ids): the sets must match
# for every user, and the scores to float precision. (Training uses `"valid"`, a softmax over the valid
# children only: the policy the decoders sample from, reading just the K_l rows of the LM head. SFT
# under `"valid"` never pushes the backbone's other tokens down, which is why the whole-vocabulary
# scores below are so low: the same logits, normalised over every token instead of a few valid codes.)

# %%
vocab = QwenPolicy(world.catalog, qwen.model, normalize="vocab", token_ids=qwen.hf_token.tolist(),
                   backbone=qwen.backbone)
q = world.queries("test", n=16)
hf_sids, hf_scores = vocab.hf_beam_search(q.histories, C)
with torch.no_grad():
    ours = beam_search(vocab, q.histories, C)
same = [{tuple(s) for s in ours.sids[b].tolist()} == {tuple(s) for s in hf_sids[b].tolist()} for b in range(len(q))]
gap = (ours.logp.sort(1, descending=True).values - hf_scores.sort(1, descending=True).values).abs().max()
print(f"same candidate set as generate for {sum(same)} of {len(q)} users; largest score difference {float(gap):.1e}")
assert all(same) and gap < 1e-4
order = hf_scores[0].argsort(descending=True)
pd.DataFrame({"generate: SID": ["-".join(map(str, s)) for s in hf_sids[0][order].tolist()],
              "generate: score": hf_scores[0][order].numpy().round(4),
              "ours: SID": ["-".join(map(str, s)) for s in ours.sids[0].tolist()],
              "ours: log pi(y|x)": ours.logp[0].numpy().round(4)})

# %% [markdown]
# ## 5. One joint GRPO + Sibling-GRPO step
#
# The RL step of Sec. 4.4 on 8 training users: beam search gives `C` candidates each, the learner's
# reward scores them, and the joint loss is GRPO's (Eq. 2: one advantage per candidate, on all its
# tokens) plus Sibling-GRPO's (Eq. 19: one advantage per node, against its siblings), plus the KL to
# the SFT reference. It needs `log pi(y_l | x, y_<l)` for all `C x L` tokens with gradients.
# `logprobs` encodes each prompt once and lets all `C` candidates attend to that one cache; the
# naive way (`reference_logprobs`, the stock Hugging Face forward) re-encodes the prompt for every
# candidate. Same numbers, same gradients (tests/test_qwen.py), `C` times fewer prompt tokens.

# %%
student = copy.deepcopy(qwen)  # the cached SFT policy stays as it is
qt = world.queries("train", n=8, seed=0)
with torch.no_grad():
    cands = beam_search(student, qt.histories, C)
r = torch.as_tensor(rewards(world, cfg.rl.reward, qt.users, qt.targets, cands.items.numpy(), cands.logp.numpy()),
                    dtype=torch.float32)
sids = cands.sids.clamp_min(0)
student.train()
seconds = {}
for way, fn in (("shared prompt", student.logprobs), ("re-encoded per candidate", student.reference_logprobs)):
    t0 = time.perf_counter()
    for _ in range(3):
        student.zero_grad()
        fn(qt.histories, sids).sum().backward()
    seconds[way] = (time.perf_counter() - t0) / 3
logp = student.logprobs(qt.histories, sids)  # (B, C, L), with gradients
with torch.no_grad():
    naive = student.reference_logprobs(qt.histories, sids)
    ref = qwen.logprobs(qt.histories, sids)  # the frozen SFT reference of the KL term
print(f"largest difference between the two ways: {float((logp.detach() - naive).abs().max()):.1e}")

prompt_tokens = (qt.histories >= 0).sum(1).mean() * (L + 1)
tokens = {"shared prompt": prompt_tokens + C * L, "re-encoded per candidate": C * (prompt_tokens + L)}
fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
axes[0].barh(list(tokens), list(tokens.values()), color=["tab:green", "tab:grey"])
axes[0].set_xlabel("backbone tokens per query (forward and backward)")
axes[1].barh(list(seconds), [1e3 * s for s in seconds.values()], color=["tab:green", "tab:grey"])
axes[1].set_xlabel(f"ms per forward + backward, {len(qt)} queries x {C} candidates")
axes[1].set_yticks([])
fig.suptitle(f"log-probs for the loss: the prompt ({prompt_tokens:.0f} tokens) encoded once, or {C} times")
fig.tight_layout()

# %% [markdown]
# The step itself, with the optimiser, warm-up and gradient clipping that `train()` sets up
# (`training_state`, from `cfg.rl`). On the first pass over a batch the importance ratio
# is 1 and the advantages have mean 0, so the loss *value* is about 0 and says nothing; its gradient is
# what moves the policy. Below, how each candidate's `log pi(y|x)` moved against its GRPO advantage:
# up for candidates better than their group, down for worse ones; the sibling term adds per-node
# pushes that the plot's x-axis does not show.

# %%
state = training_state(student, cfg)
loss, parts = policy_loss("joint", logp, logp.detach(), ref, cands.sids, r, cands.valid, **loss_kwargs(cfg.rl))
state.opt.zero_grad()
loss.backward()
grad_norm = float(torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.rl.max_grad_norm))  # before clipping
state.opt.step()
student.eval()
with torch.no_grad():
    moved = (student.logprobs(qt.histories, sids) - logp.detach()).sum(-1)  # (B, C): change of log pi(y|x)
adv = grpo_advantages(r, cfg.rl.adv_eps, cands.valid, cfg.rl.adv_ddof)
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.scatter(adv[cands.valid].numpy(), moved[cands.valid].numpy(), s=14)
ax.axhline(0, color="lightgrey", lw=0.8)
ax.set_xlabel("GRPO advantage A(x, y) (Eq. 2)")
ax.set_ylabel("change of log pi(y | x)")
ax.set_title("one joint step on tiny-qwen")
fig.tight_layout()
print(f"loss {float(loss.detach()):.1e}, gradient norm {grad_norm:.3f}, "
      f"corr(A, change of log pi) = {np.corrcoef(adv[cands.valid].numpy(), moved[cands.valid].numpy())[0, 1]:.2f}")

# %% [markdown]
# ## 6. What changes on a GPU
#
# Nothing in the calls above. `QwenPolicy.from_backbone(catalog, "qwen2.5-1.5b")` builds the paper's
# architecture (hidden 1,536, 28 layers, 12 query and 2 key/value heads, a 151,936-token vocabulary
# plus the SID tokens) with random weights, and a local checkpoint directory loads real weights and
# its tokenizer instead (nothing is downloaded). What changes is the arithmetic:
#
# - **bf16.** On a GPU the weights, activations and AdamW states are bf16 (`from_backbone`'s default;
#   there is no fp32 master copy); the restricted log-probabilities are taken in float32. Rounding can
#   flip near-ties, so `generate` and our beam search may disagree on a few users' sets.
# - **The LM head.** `"vocab"` normalisation costs the whole head per scored row (V x d, about 233M
#   multiply-adds for Qwen2.5-1.5B); `"valid"` reads the K_l rows of one level's codes, which is why
#   training and VED use it.
# - **Memory.** The loss needs `C x L` tokens with gradients per query; the shared prompt keeps that
#   to one prompt encoding, and `policy.checkpointing = True` recomputes each layer in backward.
#
# `benchmarks/gpu.py` measures these at the paper's scale: Qwen2.5-1.5B in bf16, 64 queries x 16
# beams, 128-token prompts (32 history items), a catalog of 4,000 items with SIDs of 3 levels x 256
# codes. It times `generate` (the baseline), our beam search with each normalisation, VED at the same
# budget, and one joint training step with shared and per-candidate prompts, and prints every ratio
# against the baseline of the same run, with the device:
#
# ```
# python benchmarks/gpu.py --profile   # full sizes, on a GPU: benchmarks/results/<gpu>-<date>.json and .md
# python benchmarks/gpu.py --tiny      # the same rows with tiny-qwen, on a CPU
# ```
#
# On one H200 (`benchmarks/results/nvidia-h200-2026-11-27.md`): `generate` 1.10 s per batch, our beam
# search 0.115-0.130 s (8.5-9.6x faster), VED at 1x 2.95x our beam search, and a joint training step
# with the shared prompt and layer checkpointing 0.36 s in 14.5 GiB (the naive one: 3.2 s, 37.8 GiB).
#
# **Several GPUs** (`rl/distributed.py`): `torchrun --nproc_per_node W` starts one process per GPU,
# each with the whole policy. Each step, all W draw the same `B = rl.batch_queries` training users and
# each decodes, rewards and scores its own `B / W`; DDP then averages the gradients in backward. The
# losses are means over queries (Eq. 19) or over valid tokens (Eq. 2 and the KL term), so with equal
# shares `(1/W) sum_r grad L_r = grad L`: the update is the one a single process would take on all
# `B` users, and every rank ends each step with the same weights. `tests/test_distributed.py` checks
# exactly that on two CPU processes (gloo backend), against one process on the whole batch. From the
# command line:
#
# ```
# torchrun --nproc_per_node 4 -m vstar_toy.cli train --backbone qwen2.5-1.5b --preset paper --out runs/ddp
# ```
#
# Only rank 0 writes the run directory, logs and evaluates; `B` must be divisible by `W`.
