"""V-STAR inside TRL's GRPOTrainer (``vstar_toy/integrations/trl_grpo.py``), on CPU with the tiny Qwen2 config and a
local tokenizer of SID tokens: the per-token advantages against the toolkit's loss, TRL's loss on one fixed batch
against ``losses.policy_loss``, and three training steps that move the weights and still decode valid items."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl", reason="the optional extra `trl` (pip install -e '.[trl]') is not installed")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in trl 1.16: a known warning
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from vstar_toy.config import Config, RLConfig, presets  # noqa: E402
from vstar_toy.decoding import beam_search  # noqa: E402
from vstar_toy.integrations.trl_grpo import (  # noqa: E402
    histories_of,
    sid_prompts,
    sid_tokenizer,
    token_advantages,
    vstar_trainer,
    wrap_model,
)
from vstar_toy.pipeline import build_world  # noqa: E402
from vstar_toy.policy.qwen import BACKBONES  # noqa: E402
from vstar_toy.rl.losses import loss_kwargs, policy_loss  # noqa: E402

G = 4  # completions per prompt


@pytest.fixture(scope="module")
def world():
    return build_world(presets.tiny().world)


def tiny_config(rl: RLConfig, steps: int, prompts: int) -> Config:
    """The tiny preset with beam search's G candidates and ``rl`` over ``steps`` steps of ``prompts`` prompts."""
    base = presets.tiny()
    return dataclasses.replace(base, decode=base.decode.beam_at_1x(G),
                               rl=dataclasses.replace(rl, steps=steps, batch_queries=prompts))


def make(world, tmp_path, rl: RLConfig, steps: int = 1, prompts: int = 4, **args):
    """(trainer, policy, rollout) on a fresh tiny Qwen2 with random weights."""
    tok = sid_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**BACKBONES["tiny-qwen"]), attn_implementation="sdpa")
    return vstar_trainer(world, model, tok, tiny_config(rl, steps, prompts), out=str(tmp_path / "trl"), n_users=32,
                         **args)


# -- the advantages -------------------------------------------------------------------------------


def _groups(seed: int, b: int = 3, levels: int = 3):
    gen = torch.Generator().manual_seed(seed)
    sids = torch.randint(0, 2, (b * G, levels), generator=gen)  # few codes: siblings share prefixes
    rewards = torch.rand(b * G, generator=gen)
    valid = torch.rand(b * G, generator=gen) > 0.15
    return sids, rewards, valid


@pytest.mark.parametrize("objective", ["grpo", "sibling", "joint"])
@pytest.mark.parametrize("norm", ["tokens", "candidates"])
@pytest.mark.parametrize("seed", range(3))
def test_token_advantages_are_the_gradient_of_the_toolkits_loss(objective, norm, seed):
    """On a first pass (every ratio 1), TRL's token-mean loss -sum(A * ratio) / N_tokens and the toolkit's
    policy_loss have the same gradient in the log-probs exactly when the per-token advantages are right:
    d policy_loss / d logp = -A / N_tokens, for GRPO, Sibling-GRPO (a node counted once) and joint, under
    both sibling normalisations. (Needs every group full: TRL averages over all valid tokens, the toolkit's
    Sibling-GRPO over each query's own |C(x)| L.)"""
    sids, rewards, _ = _groups(seed)
    valid = torch.ones(len(rewards), dtype=torch.bool)
    rl = RLConfig(objective=objective, sibling_norm=norm, grpo_weight=0.7, sibling_weight=1.3, kl_coef=0.0)
    adv = token_advantages(sids, rewards, G, rl, valid)
    b, L = len(rewards) // G, sids.shape[1]
    logp = torch.zeros(b, G, L, requires_grad=True)
    loss, _ = policy_loss(objective, logp, logp.detach(), logp.detach(), sids.reshape(b, G, L),
                          rewards.reshape(b, G), valid.reshape(b, G), **loss_kwargs(rl))
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad.reshape(-1, L), -adv / (len(rewards) * L), rtol=1e-5, atol=1e-7)


def test_padding_completions_get_no_advantage_and_no_say(world):
    sids, rewards, valid = _groups(7)
    rl = RLConfig(objective="joint")
    adv = token_advantages(sids, rewards, G, rl, valid)
    assert (adv[~valid] == 0).all()
    rewards2 = rewards.clone()
    rewards2[~valid] = 1e6  # a padding completion's reward changes nothing
    torch.testing.assert_close(token_advantages(sids, rewards2, G, rl, valid), adv)


def test_negatives_dropped_outside_the_own_set():
    sids, rewards, _ = _groups(3)
    own = torch.zeros(sids.shape, dtype=torch.bool)  # nothing is the policy's own: every negative goes
    adv = token_advantages(sids, rewards, G, RLConfig(objective="joint", negatives="drop"), own=own)
    assert (adv >= 0).all() and (adv > 0).any()


def test_topr_tapers_unlikely_negatives_and_needs_the_log_probs():
    sids, rewards, _ = _groups(5)
    rl = RLConfig(objective="grpo", negatives="topr")
    with pytest.raises(ValueError, match="token_logp"):
        token_advantages(sids, rewards, G, rl)
    likely = token_advantages(sids, rewards, G, rl, token_logp=torch.zeros(sids.shape))  # all alike: weight 1
    torch.testing.assert_close(likely, token_advantages(sids, rewards, G, RLConfig(objective="grpo")))
    unlikely = torch.zeros(sids.shape)
    unlikely[::G] = -20.0  # the first candidate of each group: pi renormalised on the group ~ 0
    tapered = token_advantages(sids, rewards, G, rl, token_logp=unlikely)
    first = likely[::G]
    assert torch.all(torch.where(first < 0, tapered[::G].abs() < first.abs(), tapered[::G] == first))


@pytest.mark.parametrize("field, value", [("baseline", "beam"), ("critic", "value"), ("distill", "best"),
                                          ("group", "mix")])
def test_updates_outside_trls_loss_are_refused(field, value):
    sids, rewards, _ = _groups(0)
    with pytest.raises(ValueError, match=f"{field}"):
        token_advantages(sids, rewards, G, RLConfig(**{field: value}))


def test_prompts_read_back_to_the_histories(world):
    tok = sid_tokenizer()
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**BACKBONES["tiny-qwen"]))
    policy = wrap_model(world, model, tok)
    ds = sid_prompts(world, policy, tok, "test", n=8)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ds["prompt"]]
    h = world.histories.shape[1]
    np.testing.assert_array_equal(histories_of(policy, ids, h), world.queries("test", n=8).histories)


# -- TRL's loss against the toolkit's ---------------------------------------------------------------


@pytest.mark.parametrize("objective, clip", [("grpo", 0.2), ("sibling", 0.2), ("joint", 0.0)])
def test_trls_loss_equals_the_toolkits_on_one_batch(world, tmp_path, objective, clip):
    """Settings where they must agree (``trl_config``): token ratios clipped at clip_eps (TRL's epsilon), the
    token-mean normalisation ("bnpo"), k3 KL without TRL's bias correction, beta = kl_coef; the log-probs TRL
    computes (softmax over the vocabulary) fed to both; old log-probs perturbed so that ratios are not 1 and,
    for grpo and sibling, clipping acts. Joint is compared with clipping off: TRL clips the sum of the two
    advantages, the toolkit each term."""
    rl = RLConfig(objective=objective, clip_eps=clip, kl_coef=1e-2, sibling_weight=0.5)
    trainer, policy, rollout = make(world, tmp_path, rl)
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(G)]
    batch = trainer._generate_and_score_completions(rows)
    trainer.beta = rl.kl_coef  # TRL builds no reference model for a model without a path; the batch carries one
    trainer.current_gradient_accumulation_steps = 1  # what trainer.train() sets before a step
    model = trainer.model
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    L = batch["completion_ids"].shape[1]
    logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, L)
    gen = torch.Generator().manual_seed(1)
    batch["old_per_token_logps"] = (logp + 0.4 * torch.randn(logp.shape, generator=gen)).detach()
    batch["ref_per_token_logps"] = (logp + 0.3 * torch.randn(logp.shape, generator=gen)).detach()
    trl_loss = trainer._compute_loss(model, batch)
    b = len(rows) // G
    sids = rollout.last.sids.reshape(b, G, L)
    rewards = trainer._gathered_rewards[:, 0].reshape(b, G)
    valid = rollout.last.valid.reshape(b, G)
    assert valid.all()  # beam search on the tiny catalog fills every group
    ours, _ = policy_loss(objective, logp.reshape(b, G, L), batch["old_per_token_logps"].reshape(b, G, L),
                          batch["ref_per_token_logps"].reshape(b, G, L), sids, rewards, valid, **loss_kwargs(rl))
    if clip > 0:
        assert float(trainer._metrics["train"]["clip_ratio/region_mean"][-1]) > 0, "clipping should act here"
    torch.testing.assert_close(trl_loss, ours, rtol=1e-5, atol=1e-6)


# -- training ----------------------------------------------------------------------------------------


def test_three_steps_change_the_weights_and_still_decode_valid_distinct_items(world, tmp_path):
    rl = RLConfig(objective="joint", lr=1e-3, negatives="drop")
    trainer, policy, _ = make(world, tmp_path, rl, steps=3)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3]
    q = world.queries("test", n=16)
    with torch.no_grad():
        cands = beam_search(policy.eval(), q.histories, 8, 1.0)
    items = cands.items.numpy()
    assert cands.valid.all() and (items >= 0).all()
    assert all(len(set(row)) == len(row) for row in items.tolist())


def test_two_cpu_processes_under_accelerate_launch_with_a_group_across_them(tmp_path):
    """Two processes of 6 rows, groups of 4: each step's middle group has 2 rows on each process. Both decode
    it, each keeps its own 2 candidates (4 distinct in all), and the advantages come from the whole gathered
    group (Eq. 2's mean over 4: the group's advantages sum to 0, its halves in general do not); DDP keeps the
    weights equal. `accelerate launch --multi_gpu` on a machine without a GPU starts CPU processes on gloo."""
    script = Path(__file__).with_name("trl_two_processes.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--mixed_precision", "no", "--main_process_port", "0", str(script), str(tmp_path / "out")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(launch, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    for first, second in zip(ranks[0]["seen"], ranks[1]["seen"]):  # the same step on the two processes
        assert first["shape"] == second["shape"] == [6, 3]  # per token, this process's rows
        users = first["users"] + second["users"]
        assert [len(set(users[i:i + 4])) for i in (0, 4, 8)] == [1, 1, 1]  # three whole groups of 4
        assert set(first["users"]) & set(second["users"]) == {users[4]}  # the middle one spans the processes
        middle = first["completions"][4:] + second["completions"][:2]
        assert len({tuple(c) for c in middle}) == 4, "each process keeps its own candidates of the group"
        adv = first["advantages"][4:] + second["advantages"][:2]
        assert abs(sum(adv)) < 1e-4 and abs(sum(adv[:2])) > 1e-3
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
