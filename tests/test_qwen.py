"""QwenPolicy (policy/qwen.py) on the ``tiny-qwen`` config, on a CPU, in float32.

Oracles: the KV-cached ``start``/``step`` path equals the stock Hugging Face forward over the whole
prompt + prefix; our constrained beam search (normalize="vocab") returns the candidate sets of
``generate(num_beams, prefix_allowed_tokens_fn)``; shared-prompt gradients equal those of re-encoding
the prompt per candidate. Properties: every decoder stays valid, distinct and within budget on the
Qwen policy. Smoke: a joint-loss step moves the parameters; ``train`` runs on it; ``benchmarks/gpu.py
--tiny`` runs. Plumbing: checkpoints round-trip a Qwen policy (a local backbone reloads without its
directory), and ``pipeline`` SFT-trains, caches and reloads one, keeping the tiny policy's cache keys.

Policies are random-init with the SID rows of the LM head re-drawn with std 0.5 (``sharpen``): code
logits of std ~4, so that rankings are not decided by near-ties (as in tests/properties/test_decoders.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from vstar_toy import checkpoint, pipeline  # noqa: E402
from vstar_toy.config import DecodeConfig, ValueConfig, presets  # noqa: E402
from vstar_toy.decoding import beam_search, budget_tokens, decode  # noqa: E402
from vstar_toy.pipeline import build_world  # noqa: E402
from vstar_toy.policy.base import CountingPolicy  # noqa: E402
from vstar_toy.policy.contract import check_step_batch_equals_rows, step_rows  # noqa: E402
from vstar_toy.policy.qwen import BACKBONES, QwenPolicy, _query_major  # noqa: E402
from vstar_toy.policy.tiny import TinyPolicy  # noqa: E402
from vstar_toy.policy.value import ValueHead  # noqa: E402
from vstar_toy.rl.losses import policy_loss  # noqa: E402
from vstar_toy.rl.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads stall on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world():
    """The tiny preset's world: 200 items, SIDs of 3 levels x 8 codes."""
    return build_world(presets.tiny().world)


@pytest.fixture(scope="module")
def histories(world) -> np.ndarray:
    """Six test-user histories, three of them left-padded by different amounts."""
    hist = world.queries("test", n=6).histories.copy()
    hist[0, :2] = -1
    hist[2, :4] = -1
    hist[5, :1] = -1
    return hist


def make_policy(world, normalize: str = "valid", seed: int = 0, dtype=torch.float32) -> QwenPolicy:
    policy = QwenPolicy.from_backbone(world.catalog, "tiny-qwen", dtype=dtype, device="cpu", normalize=normalize,
                                      seed=seed)
    return policy.sharpen(0.5, seed)


def random_sids(world, b: int, c: int, seed: int = 0) -> torch.Tensor:
    items = np.random.default_rng(seed).integers(0, world.catalog.n_items, (b, c))
    return torch.as_tensor(world.catalog.sids[items])  # (B, C, L)


def hf_hidden(policy: QwenPolicy, histories, sids: torch.Tensor) -> torch.Tensor:
    """(B, C, L+1, d) hidden states of [<sid>, y_1 .. y_L] by the Hugging Face forward on the whole sequence."""
    b, c, L = sids.shape
    prompt, mask = policy._prompt_ids(histories)
    flat = sids.reshape(b * c, L)
    ids = torch.cat([prompt.repeat_interleave(c, 0), policy.hf_token[policy.code_token(torch.arange(L), flat)]], 1)
    am = torch.cat([mask.repeat_interleave(c, 0), torch.ones_like(flat)], 1)
    out = policy.model.model(input_ids=ids, attention_mask=am, position_ids=(am.cumsum(1) - 1).clamp_min(0),
                             use_cache=False)
    return out.last_hidden_state[:, -(L + 1):].reshape(b, c, L + 1, -1)


def test_the_stacked_projections_follow_the_weights(world, histories):
    """q, k and v are one matrix product of the projections' weights stacked and kept between calls
    (``QwenPolicy._stacked_qkv``): an in-place change of a weight, as an optimiser's step makes, stacks them again."""
    policy = make_policy(world, "valid")
    sids = random_sids(world, len(histories), 3)
    with torch.no_grad():
        before = policy.logprobs(histories, sids)
        policy.model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)
        after = policy.logprobs(histories, sids)
        reference = policy.reference_logprobs(histories, sids)  # the Hugging Face forward on the new weights
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, rtol=ATOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# (a) the KV cache against a full re-encode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["valid", "level", "vocab"])
def test_kv_cached_start_step_equals_a_full_reencode(world, histories, normalize):
    policy = make_policy(world, normalize)
    b, c, L = len(histories), 5, world.catalog.levels
    sids = random_sids(world, b, c)
    flat = sids.reshape(b * c, L)
    rows = torch.arange(b).repeat_interleave(c)  # grouped by query: each prompt's rows as one block
    shuffled = torch.randperm(b * c, generator=torch.Generator().manual_seed(0))  # any order: gathered prompts
    assert _query_major(rows, b) == c and _query_major(rows[shuffled], b) is None
    assert _query_major(rows, b, block=c) == c and _query_major(rows, b, block=c + 1) is None  # taken on its word

    def walk(order):
        state = policy.start(histories).index(rows[order])
        state.block = c if torch.equal(order, torch.arange(b * c)) else None  # the caller's word: no host read
        out = []
        for lvl in range(L):
            out.append(state.logp.gather(1, flat[order, lvl : lvl + 1]).squeeze(1))
            state = policy.step(state, flat[order, lvl])
        return torch.stack(out, 1)[order.argsort()].reshape(b, c, L), state

    with torch.no_grad():
        cached, state = walk(torch.arange(b * c))
        gathered, _ = walk(shuffled)
        reference = policy.reference_logprobs(histories, sids)  # the HF forward, one sequence per candidate
        shared = policy.logprobs(histories, sids)  # each prompt encoded once
        ref_hidden = hf_hidden(policy, histories, sids)
        shared_hidden = policy.candidate_hidden(histories, sids, with_last=True)[0]
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(cached, reference, rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(gathered, reference, rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(shared, reference, rtol=ATOL, atol=ATOL)
    # the hidden states the value head reads, on all three paths
    torch.testing.assert_close(state.hidden.reshape(ref_hidden.shape), ref_hidden, rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(shared_hidden, ref_hidden, rtol=ATOL, atol=ATOL)
    # "valid" sums to one over the valid children, "level" at most one, "vocab" leaves mass on the
    # backbone's other tokens
    assert (state.logp.exp().sum(-1) == 0).all()  # depth L: nothing left to predict
    with torch.no_grad():
        total = policy.start(histories).logp.exp().sum(-1)
    if normalize == "vocab":
        assert (total < 1 - 1e-3).all()
    else:
        assert (total <= 1 + 1e-5).all()
        if normalize == "valid":
            torch.testing.assert_close(total, torch.ones_like(total))


def test_step_on_mixed_queries_and_depths_equals_step_row_by_row(world, histories):
    policy = make_policy(world)
    rng = np.random.default_rng(1)
    picks = [(q, int(rng.integers(world.catalog.n_items)), depth)
             for q, depth in [(0, 0), (3, 2), (2, 1), (0, 2), (5, 1), (1, 0)]]
    batch, codes = step_rows(policy, histories, picks)
    check_step_batch_equals_rows(policy, batch, codes, ATOL)


def test_decodes_sharing_a_context_share_its_cache_and_it_grows(world, histories):
    """A decode writes its tokens' keys and values into its Context's cache (``_DecodeCache``), which only ever
    gains columns: decodes that share a Context (a training step's decoders do) give what each gives alone, and
    a cache past its first room grows without moving what it holds."""
    policy = make_policy(world)
    with torch.no_grad():
        alone = beam_search(policy, histories, 4)
        ctx = policy.encode(histories)
        first = beam_search(policy, ctx, 4)
        room = ctx.cache.kv.shape[-2]
        for _ in range(room // 9 + 1):  # 9 columns per context each (start, 4 + 4 beams)
            again = beam_search(policy, ctx, 4)
    assert ctx.cache.kv.shape[-2] > room
    for out in (first, again):
        assert torch.equal(out.sids, alone.sids) and np.array_equal(out.cost_tokens, alone.cost_tokens)
        torch.testing.assert_close(out.logp, alone.logp, rtol=0, atol=ATOL)


def test_a_batch_decodes_what_each_query_decodes_alone(world, histories):
    """The decode cache holds every query's columns side by side: a batch gives each query the beams, costs and
    log-probs it gets alone, on its own cache. (VED's uneven rows per query are held to the same by the contract
    test above, row by row; VED's sampling keys depend on a query's row, so its sets are not compared here.)"""
    policy = make_policy(world)
    with torch.no_grad():
        together = beam_search(policy, histories, 6)
        alone = [beam_search(policy, histories[i : i + 1], 6) for i in range(len(histories))]
    assert torch.equal(together.sids, torch.cat([a.sids for a in alone]))
    assert np.array_equal(together.cost_tokens, np.concatenate([a.cost_tokens for a in alone]))
    torch.testing.assert_close(together.logp, torch.cat([a.logp for a in alone]), rtol=0, atol=ATOL)


GRAPHED = (DecodeConfig(decoder="beam", n_candidates=4, warm_beam=2),
           DecodeConfig(decoder="ved", n_candidates=4, warm_beam=2),
           DecodeConfig(decoder="ved", n_candidates=4, warm_beam=2, shapes="fixed"))


def decode_on_graphs(policy, head, histories, rounds: int = 4):
    """Each of ``GRAPHED``'s decoders ``rounds`` times on graphs (a shape's first call eager, its second captured,
    then replayed; the cache may grow once); the last round's outputs, and the replays of that round."""
    for _ in range(rounds):
        before = policy._graphs.replays
        outs = [decode(policy, histories, cfg, head) for cfg in GRAPHED]
    return outs, policy._graphs.replays - before


def assert_same_decodes(a, b, atol: float = 0.0):
    for x, y in zip(a, b):
        assert torch.equal(x.sids, y.sids.cpu()) and np.array_equal(x.cost_tokens, y.cost_tokens), x.decoder
        assert np.array_equal(x.tree.sid, y.tree.sid), x.decoder
        torch.testing.assert_close(x.logp, y.logp.cpu(), rtol=0, atol=atol)


def test_graph_replays_decode_what_eager_steps_decode(world, histories):
    """``use_cuda_graphs`` rehearsed on the CPU (the plan a GPU runs, less the capture of kernels): beam search and
    VED in both shapes give the eager steps' candidates, costs, trees and log-probs, the steps replayed; after an
    in-place change of the weights (an optimiser's step) the replays read the new weights."""
    policy = make_policy(world)
    head = ValueHead.for_policy(policy, ValueConfig()).eval()
    with torch.no_grad():
        eager = [decode(policy, histories, cfg, head) for cfg in GRAPHED]
        policy.use_cuda_graphs(rehearse=True)
        graphed, replays = decode_on_graphs(policy, head, histories)
        assert replays >= 3 * (world.catalog.levels + 1) and policy._graphs.captures > 0
        assert_same_decodes(eager, graphed)
        for p in policy.model.model.layers[0].parameters():
            p.mul_(1.5)
        moved, replays = decode_on_graphs(policy, head, histories, rounds=1)
        assert replays > 0
        policy.use_cuda_graphs(False)
        assert_same_decodes([decode(policy, histories, cfg, head) for cfg in GRAPHED], moved)
    assert not all(torch.equal(a.logp, b.logp) for a, b in zip(eager, moved))


def test_a_second_live_context_decodes_eagerly_beside_the_static_cache(world, histories):
    """With graphs, a batch shape's decode cache is lent to one Context at a time: a second Context of the same
    shape alive beside it decodes in a cache of its own (eagerly), and neither disturbs the other."""
    policy = make_policy(world)
    other = histories[::-1].copy()
    with torch.no_grad():
        want_a, want_b = beam_search(policy, histories, 4), beam_search(policy, other, 4)
        policy.use_cuda_graphs(rehearse=True)
        for _ in range(3):
            beam_search(policy, histories, 4)  # captured on the static cache
        a, b = policy.encode(histories), policy.encode(other)
        got_a = beam_search(policy, a, 4)
        got_b = beam_search(policy, b, 4)  # a still alive: b's cache is its own
        again_a = beam_search(policy, a, 4)  # a's columns untouched by b
    assert b.cache is not a.cache and a.cache is policy._static[next(iter(policy._static))]
    twin = copy.deepcopy(policy)  # a copy replays nothing on this policy's buffers: it starts without graphs
    assert twin._graphs is None and not twin._static and policy._graphs is not None
    for got, want in ((got_a, want_a), (got_b, want_b), (again_a, want_a)):
        assert torch.equal(got.sids, want.sids) and np.array_equal(got.cost_tokens, want.cost_tokens)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: captures CUDA graphs (the CPU rehearsal of the "
                    "same plan is test_graph_replays_decode_what_eager_steps_decode)")
def test_cuda_graph_replays_decode_what_eager_steps_decode_on_a_gpu(world, histories):
    """Item 3 of issue 34 on a GPU: the decoders on captured CUDA graphs give the eager GPU steps' candidate sets,
    costs and trees, log-probs within float32 rounding (TF32 off)."""
    policy = copy.deepcopy(make_policy(world)).to("cuda")
    head = ValueHead.for_policy(policy, ValueConfig()).eval().to("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            eager = [decode(policy, histories, cfg, head) for cfg in GRAPHED]
            policy.use_cuda_graphs()
            graphed, replays = decode_on_graphs(policy, head, histories)
        assert replays >= 3 * (world.catalog.levels + 1)
        assert_same_decodes(eager, graphed, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: decodes on a GPU against the same on the CPU")
def test_a_gpu_decodes_what_the_cpu_decodes(world, histories):
    """The decode cache, the stacked projections, the host-free beam levels and VED's tree on the device on a GPU:
    beam search and VED (exact and fixed shapes) give the CPU's candidate sets and costs (float32, TF32 off),
    log-probs within 1e-4 (issue 34)."""
    cpu = make_policy(world)
    head = ValueHead.for_policy(cpu, ValueConfig()).eval()
    gpu, gpu_head = copy.deepcopy(cpu).to("cuda"), copy.deepcopy(head).to("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            for cfg in (DecodeConfig(decoder="beam", n_candidates=4, warm_beam=2),
                        DecodeConfig(decoder="ved", n_candidates=4, warm_beam=2),
                        DecodeConfig(decoder="ved", n_candidates=4, warm_beam=2, shapes="fixed")):
                a, b = decode(cpu, histories, cfg, head), decode(gpu, histories, cfg, gpu_head)
                assert torch.equal(a.sids, b.sids.cpu()) and np.array_equal(a.cost_tokens, b.cost_tokens), cfg.decoder
                torch.testing.assert_close(a.logp, b.logp.cpu(), rtol=0, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_left_padding_changes_nothing(world, histories):
    policy = make_policy(world)
    sids = random_sids(world, len(histories), 4, seed=2)
    padded = np.concatenate([np.full((len(histories), 3), -1), histories], 1)
    with torch.no_grad():
        torch.testing.assert_close(policy.logprobs(padded, sids), policy.logprobs(histories, sids),
                                   rtol=ATOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# (b) our beam search against Hugging Face generate
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beams", [4, 8])
def test_beam_search_returns_the_sets_of_generate(world, histories, beams):
    """normalize="vocab" scores a SID by its summed log-softmax over the whole vocabulary, as ``generate``
    does (length_penalty 0: every SID has L tokens, so the sum ranks them)."""
    policy = make_policy(world, "vocab")
    assert (world.catalog.child[0] >= 0).sum() >= beams  # generate would keep -inf beams otherwise
    hf_sids, hf_scores = policy.hf_beam_search(histories, beams)
    with torch.no_grad():
        ours = beam_search(policy, histories, beams)
    for b in range(len(histories)):
        got = {tuple(s) for s in ours.sids[b][ours.valid[b]].tolist()}
        assert got == {tuple(s) for s in hf_sids[b].tolist()}, f"query {b}"
        torch.testing.assert_close(ours.logp[b].sort(descending=True).values, hf_scores[b].sort(descending=True).values,
                                   rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# (c) shared-prompt gradients against per-candidate re-encoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["valid", "vocab"])
def test_shared_prompt_gradients_equal_per_candidate_reencoding(world, histories, normalize):
    policy = make_policy(world, normalize)
    sids = random_sids(world, len(histories), 6, seed=3)
    weights = torch.randn(sids.shape, generator=torch.Generator().manual_seed(0))
    grads = []
    for logprobs in (policy.logprobs, policy.reference_logprobs):
        policy.zero_grad()
        (weights * logprobs(histories, sids)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    shared, naive = grads
    assert naive.norm() > 0
    assert float((shared - naive).norm() / naive.norm()) < 1e-5


def test_layer_checkpointing_gives_the_same_gradients(world, histories):
    policy = make_policy(world)
    sids = random_sids(world, len(histories), 3, seed=4)
    grads = []
    for ckpt in (False, True):
        policy.checkpointing = ckpt
        policy.zero_grad()
        policy.logprobs(histories, sids).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------
# (d) every decoder: valid, distinct, within budget, honest about cost and log-probs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["beam", "topk", "temperature", "ved"])
def test_decoders_stay_valid_and_within_budget(world, histories, decoder):
    policy = make_policy(world, "valid", seed=1)
    head = ValueHead.for_policy(policy, ValueConfig(hidden=16)).eval()
    cat = world.catalog
    for budget_x in (1.0, 2.0) if decoder in ("beam", "ved") else (1.0,):  # the samplers refuse other budgets
        cfg = DecodeConfig(decoder=decoder, n_candidates=8, warm_beam=4, budget_x=budget_x, top_k=3, seed=1)
        counted = CountingPolicy(policy)
        with torch.no_grad():
            cands = decode(counted, histories, cfg, head)
        sids, valid = cands.sids.numpy(), cands.valid.numpy()
        assert valid.all(), f"{decoder} returned fewer than 8 valid candidates"
        cat.check_valid(sids[valid])
        np.testing.assert_array_equal(cat.item_of(sids[valid]), cands.items.numpy()[valid])
        for b in range(len(histories)):
            assert len({tuple(s) for s in sids[b].tolist()}) == 8
        budget = budget_tokens(cat.levels, 8, budget_x if decoder in ("beam", "ved") else 1.0)
        assert cands.budget_tokens == budget
        assert (cands.cost_tokens <= budget).all()
        assert counted.tokens == int(cands.cost_tokens.sum())
        with torch.no_grad():
            tok = policy.logprobs(histories, cands.sids.clamp_min(0))
        torch.testing.assert_close(cands.token_logp, tok, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cands.logp, tok.sum(-1), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# (e) a joint-loss training step
# ---------------------------------------------------------------------------------------------


def test_a_joint_loss_step_moves_the_parameters(world, histories):
    policy = make_policy(world)
    with torch.no_grad():
        cands = beam_search(policy, histories, 8)
    rewards = torch.rand(cands.valid.shape, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in policy.parameters()]
    logp = policy.logprobs(histories, cands.sids.clamp_min(0))
    loss, parts = policy_loss("joint", logp, logp.detach(), logp.detach() - 0.1, cands.sids, rewards, cands.valid)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"loss_grpo", "loss_sibling", "loss_kl"}
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    opt.step()
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, policy.parameters())]
    assert sum(moved) >= len(moved) // 2
    head = policy.model.get_output_embeddings().weight
    assert not torch.equal(before[[i for i, p in enumerate(policy.parameters()) if p is head][0]][policy.hf_token[2:]],
                           head.detach()[policy.hf_token[2:]])


def test_forward_is_logprobs_for_ddp(world, histories):
    """DistributedDataParallel calls ``forward``: it must be ``logprobs``, gradients included."""
    policy = make_policy(world)
    sids = random_sids(world, len(histories), 3, seed=5)
    torch.testing.assert_close(policy(histories, sids), policy.logprobs(histories, sids), rtol=0, atol=0)


def test_the_training_loop_runs_on_a_qwen_policy(world):
    cfg = presets.tiny().replace(decode={"decoder": "ved"}, rl={"steps": 2, "batch_queries": 4, "eval_every": 100,
                                                                 "eval_queries": 8})
    policy = make_policy(world)
    head = ValueHead.for_policy(policy, cfg.value)
    before = [p.detach().clone() for p in policy.parameters()]
    res = train(world, policy, cfg, head, progress=False, say=lambda msg: None)
    assert len(res.log) == 2 and np.isfinite(res.log["loss_grpo"]).all() and np.isfinite(res.log["value_loss"]).all()
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))


# ---------------------------------------------------------------------------------------------
# construction: backbones, checkpoints, errors
# ---------------------------------------------------------------------------------------------


def test_sid_tokens_are_added_to_the_vocabulary(world):
    policy = make_policy(world)
    base = BACKBONES["tiny-qwen"]["vocab_size"]
    n_new = 1 + sum(world.catalog.codebook_sizes)
    assert policy.model.get_input_embeddings().weight.shape[0] == base + n_new
    assert policy.model.get_output_embeddings().weight.shape[0] == base + n_new
    assert policy.hf_token[1:].tolist() == list(range(base, base + n_new))
    assert policy.hidden_size == BACKBONES["tiny-qwen"]["hidden_size"]


def test_a_local_checkpoint_with_its_tokenizer(world, tmp_path, histories):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**BACKBONES["tiny-qwen"]))
    model.save_pretrained(tmp_path)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(250)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0").save_pretrained(tmp_path)
    policy = QwenPolicy.from_backbone(world.catalog, str(tmp_path), device="cpu")
    # the SID tokens come after the tokenizer's words, which had 6 spare embedding rows: the embeddings grew
    ids = policy.hf_token[1:].tolist()
    assert policy.tokenizer.convert_ids_to_tokens(ids[:3]) == ["<sid>", "<a_0>", "<a_1>"]
    assert ids[0] >= 250 and ids == list(range(ids[0], ids[0] + len(ids))) and policy.pad_id == 0
    assert policy.model.get_input_embeddings().weight.shape[0] == ids[-1] + 1 > 256
    up = policy.model.model.layers[0].mlp.up_proj.weight
    torch.testing.assert_close(up, model.model.layers[0].mlp.up_proj.weight)
    with torch.no_grad():
        assert torch.isfinite(policy.logprobs(histories, random_sids(world, len(histories), 2))).all()


def assert_same_policy(a: QwenPolicy, b: QwenPolicy, histories, world) -> None:
    assert torch.equal(a.hf_token, b.hf_token) and a.normalize == b.normalize and a.backbone == b.backbone
    sids = random_sids(world, len(histories), 4, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(a.logprobs(histories, sids), b.logprobs(histories, sids), rtol=0, atol=0)


def test_a_checkpoint_round_trips_a_qwen_policy_and_its_value_head(world, tmp_path, histories):
    policy = make_policy(world, "vocab")
    head = ValueHead.for_policy(policy, ValueConfig(hidden=16))
    checkpoint.save(tmp_path, world, policy, head)
    meta = checkpoint.read_meta(tmp_path)
    assert meta["policy_kind"] == "QwenPolicy" and meta["backbone"] == "tiny-qwen" and meta["dtype"] == "float32"
    loaded = checkpoint.load_policy(tmp_path, world, device="cpu")
    assert isinstance(loaded, QwenPolicy) and not loaded.training
    assert_same_policy(policy, loaded, histories, world)
    loaded_head = checkpoint.load_value(tmp_path, world, loaded)
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded_head.state_dict()[k])


def test_a_local_backbone_reloads_from_the_checkpoint_alone(world, tmp_path, histories):
    """The SID tokens' ids come from the backbone's tokenizer; the checkpoint keeps the ids, the
    resized config and the tokenizer, so the backbone's directory is not needed to reload it."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    src = tmp_path / "backbone"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**BACKBONES["tiny-qwen"])).save_pretrained(src)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(250)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0").save_pretrained(src)
    policy = QwenPolicy.from_backbone(world.catalog, str(src), device="cpu").sharpen(0.5)
    checkpoint.save(tmp_path / "ckpt", world, policy)
    shutil.rmtree(src)
    loaded = checkpoint.load_policy(tmp_path / "ckpt", world, device="cpu")
    assert loaded.tokenizer is not None and loaded.tokenizer.convert_ids_to_tokens(loaded.hf_token[1:3].tolist()) == [
        "<sid>", "<a_0>"]
    assert_same_policy(policy, loaded, histories, world)


def test_the_pipeline_trains_caches_and_reloads_a_backbone_policy(world, tmp_path, monkeypatch, histories):
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path))
    cfg = presets.tiny().replace(sft={"epochs": 1, "eval_queries": 8}, value={"pretrain_steps": 2})
    assert isinstance(pipeline.make_policy(world, cfg), TinyPolicy)
    said: list[str] = []
    policy = pipeline.sft_policy(world, cfg, progress=False, say=said.append, backbone="tiny-qwen")
    head = pipeline.value_model(world, policy, cfg, progress=False, say=said.append)
    assert isinstance(policy, QwenPolicy) and head.proj.in_features == BACKBONES["tiny-qwen"]["hidden_size"]
    again = pipeline.sft_policy(world, cfg, progress=False, say=said.append, backbone="tiny-qwen")
    head_again = pipeline.value_model(world, again, cfg, progress=False, say=said.append)
    (value_dir,) = tmp_path.glob("value-*")
    assert sorted(p.name for p in value_dir.iterdir()) == ["meta.json", "value.pt"]  # the head, not the policy again
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), head_again.state_dict().values()))
    assert ["training" in said[0], "pre-training" in said[1], "reusing" in said[2], "reusing" in said[3]] == [True] * 4
    assert_same_policy(policy, again, histories, world)
    # the tiny policy's keys are what they were before backbones: (world, policy config, SFT config)
    tiny_key = pipeline._key(pipeline._world_key(world), cfg.policy, cfg.sft)
    sft_dirs = list(tmp_path.glob("sft-*"))
    assert len(sft_dirs) == 1 and not sft_dirs[0].name.endswith(tiny_key)
    assert pipeline._key(pipeline._world_key(world), cfg.policy, cfg.sft, *pipeline._policy_parts(None)) == tiny_key
    with pytest.raises(ValueError, match="backbone = 'qwen2.5-0.5b' does not match .* backbone 'tiny-qwen'"):
        pipeline.sft_policy(world, cfg, next(tmp_path.glob("sft-*")), say=said.append, backbone="qwen2.5-0.5b")


def test_errors_name_the_value_and_what_is_valid(world):
    with pytest.raises(ValueError, match="backbone = 'qwen9'.*tiny-qwen"):
        QwenPolicy.from_backbone(world.catalog, "qwen9", device="cpu")
    with pytest.raises(ValueError, match="normalize = 'full'.*'vocab'"):
        QwenPolicy.from_backbone(world.catalog, "tiny-qwen", device="cpu", normalize="full")


# ---------------------------------------------------------------------------------------------
# the GPU benchmark's CPU smoke run
# ---------------------------------------------------------------------------------------------


def test_the_gpu_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "device: CPU" in proc.stdout
    rows = {r["measure"]: r for r in json.loads(out.read_text())["rows"]}
    assert not any(r["error"] for r in rows.values())
    assert rows["same set as generate (vocab beam)"]["value"] == 1.0
    assert rows["train step shared-prompt s"]["value"] > 0
    assert rows["  gradient cosine (naive, shared)"]["ok"]  # float32 on a CPU: equal up to rounding
    assert rows["  parameters identical on both ranks after the step"]["ok"]  # the two-process row ran (gloo)
    assert "| measure | result | target | verdict |" in out.with_suffix(".md").read_text()


def test_the_device_check_rehearses_on_a_cpu(tmp_path):
    """``benchmarks/gpu_check.sh``, the one call a session lent a GPU makes (issue 34), runs end to end here: without
    CUDA it says so, skips the GPU tests with their reason and rehearses the benchmark on the tiny backbone."""
    env = dict(os.environ, OUT=str(tmp_path), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no CUDA" in (tmp_path / "device.txt").read_text()
    assert "needs CUDA" in (tmp_path / "gpu-tests.txt").read_text()
    rows = {r["measure"]: r for r in json.loads((tmp_path / "cpu-rehearsal.json").read_text())["rows"]}
    assert not any(r["error"] for r in rows.values()) and rows["host reads per beam search"]["value"] == 1
