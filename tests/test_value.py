"""The value head: its fast paths equal its plain ones, and TD training learns."""

from __future__ import annotations

import torch

from vstar_toy.config import PolicyConfig, ValueConfig, presets
from vstar_toy.decoding import beam_search
from vstar_toy.pipeline import build_world
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.policy.value import ValueHead, candidate_values, td_targets


def setup():
    world = build_world(presets.tiny().world)
    policy = TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=1, n_heads=2)).eval()
    head = ValueHead.for_policy(policy, ValueConfig(hidden=16)).eval()
    return world, policy, head


def test_reading_one_depth_equals_reading_all_positions():
    world, policy, head = setup()
    hist = world.queries("test", n=5).histories
    state = policy.start(hist)
    state = policy.step(state, state.logp.argmax(1))
    ctx = head.context_kv(policy.context.hidden, policy.context.mask)
    full = head.values(state.hidden, state.tokens, ctx, state.query)
    one = head.values(state.hidden, state.tokens, ctx, state.query, state.depth)
    torch.testing.assert_close(one, full[torch.arange(5), state.depth], rtol=1e-5, atol=1e-6)


def test_values_during_decoding_equal_the_values_of_finished_candidates():
    """VED's incremental V(s_l) (cached prompt keys) equals V recomputed from the final SIDs."""
    world, policy, head = setup()
    hist = world.queries("test", n=4).histories
    cands = beam_search(policy, hist, 4)
    sids = cands.sids.clamp_min(0)
    v_batch = candidate_values(policy, head, hist, sids)  # (B, C, L)
    state = policy.start(hist)
    state = state.index(torch.arange(4).repeat_interleave(4))
    for lvl in range(world.catalog.levels):
        state = policy.step(state, sids.reshape(16, -1)[:, lvl])
        with torch.no_grad():
            v_inc = head.of_states(state, policy.context)
        torch.testing.assert_close(v_inc, v_batch[..., lvl].reshape(-1), rtol=1e-4, atol=1e-5)


def test_td_targets_bootstrap_from_the_next_level_only():
    r = torch.tensor([[0.1, 0.2, 0.3]])
    v = torch.tensor([[5.0, 7.0, 11.0]], requires_grad=True)
    y = td_targets(r, v, 0.9)
    torch.testing.assert_close(y, torch.tensor([[0.1 + 0.9 * 7.0, 0.2 + 0.9 * 11.0, 0.3]]))
    assert not y.requires_grad
