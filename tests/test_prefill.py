"""One prefill, shared: every call that takes histories also takes their encoding (``SIDPolicy.encode``),
gives the same result with it, and refuses an encoding that would give another policy's numbers."""

from __future__ import annotations

import copy

import pytest
import torch

from vstar_toy.config import presets
from vstar_toy.decoding import decode
from vstar_toy.pipeline import build_world, sft_policy, value_model

QUIET = dict(progress=False, say=lambda msg: None)


@pytest.fixture(scope="module")
def tiny(model_cache):
    cfg = presets.tiny()
    world = build_world(cfg.world)
    policy = sft_policy(world, cfg, **QUIET)
    return cfg, world, policy, value_model(world, policy, cfg, **QUIET)


@pytest.mark.parametrize("decoder", ["beam", "topk", "ved", "reranked"])
def test_a_decoder_given_the_encoding_decodes_what_it_decodes_from_histories(tiny, decoder):
    cfg, world, policy, head = tiny
    q = world.queries("test", n=12)
    dcfg = cfg.replace(decode={"decoder": decoder}).decode
    with torch.no_grad():
        a = decode(policy, q.histories, dcfg, head.bind(q))
        b = decode(policy, policy.encode(q.histories), dcfg, head.bind(q))
    assert torch.equal(a.sids, b.sids) and torch.equal(a.logp, b.logp)
    assert (a.cost_tokens == b.cost_tokens).all()


def test_log_probs_and_values_given_the_encoding_equal_those_from_histories(tiny):
    cfg, world, policy, head = tiny
    q = world.queries("test", n=12)
    with torch.no_grad():
        context = policy.encode(q.histories)
        sids = decode(policy, context, cfg.decode, head.bind(q)).sids
        assert torch.equal(policy.logprobs(q.histories, sids), policy.logprobs(context, sids))
        assert torch.equal(head.of_candidates(policy, q, sids), head.of_candidates(policy, q, sids, context))


def test_an_encoding_of_another_policy_or_of_older_weights_is_refused(tiny):
    _, world, policy, _ = tiny
    q = world.queries("test", n=4)
    other = copy.deepcopy(policy)
    with torch.no_grad():
        context = policy.encode(q.histories)
        with pytest.raises(ValueError, match="another policy"):
            other.start(context)
        opt = torch.optim.SGD(other.parameters(), lr=0.1)
        theirs = other.encode(q.histories)
    other.logprobs(q.histories, torch.as_tensor(world.catalog.sids[q.targets])).sum().backward()
    opt.step()  # the weights change: an encoding made before is stale
    with torch.no_grad(), pytest.raises(ValueError, match="before its weights changed"):
        other.start(theirs)


def test_an_encoding_without_gradients_is_refused_where_gradients_are_recorded(tiny):
    _, world, policy, _ = tiny
    q = world.queries("test", n=4)
    sids = torch.as_tensor(world.catalog.sids[q.targets])
    learner = copy.deepcopy(policy)
    with torch.no_grad():
        context = learner.encode(q.histories)
    with pytest.raises(ValueError, match="without gradients"):
        learner.logprobs(context, sids)
    assert learner.logprobs(q.histories, sids).requires_grad
