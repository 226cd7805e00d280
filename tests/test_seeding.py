"""Seeded initialisation without hidden state: a model built for a seed is the same every time, and
building it (or running an update with dropout) changes nothing the caller draws next."""

import pytest
import torch

from vstar_toy.config import PolicyConfig, ValueConfig, WorldConfig
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.policy.value import ValueHead
from vstar_toy.seeding import seeded
from vstar_toy.world import World


@pytest.fixture(scope="module")
def catalog():
    return World.build(WorldConfig(n_items=200, n_users=100)).catalog


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("build", [
    lambda cat, seed: TinyPolicy(cat, PolicyConfig(seed=seed, dropout=0.1)),
    lambda cat, seed: ValueHead(cat, 32, ValueConfig(seed=seed)),
    lambda cat, seed: ValueHead(cat, 32, ValueConfig(seed=seed, inputs="backbone")),
], ids=["tiny policy", "semantic value head", "backbone value head"])
def test_a_model_is_a_function_of_its_seed_and_leaves_the_callers_stream_alone(catalog, build):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = weights(build(catalog, 0))
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move
    b, c = weights(build(catalog, 0)), weights(build(catalog, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c) if x.is_floating_point() and x.abs().sum() > 0)


def test_seeded_draws_repeat_and_keys_mix():
    with seeded(5):
        one = torch.rand(4)
    with seeded(5):
        assert torch.equal(torch.rand(4), one)
    with seeded(5, 0):
        mixed = torch.rand(4)
    with seeded(5, 1):
        assert not torch.equal(torch.rand(4), mixed)
    with seeded(5, 0):
        assert torch.equal(torch.rand(4), mixed)


def test_dropout_under_seeded_repeats_and_the_stream_outside_continues():
    drop = torch.nn.Dropout(0.5).train()
    x = torch.ones(64)
    torch.manual_seed(0)
    outside = [torch.rand(2) for _ in range(2)]
    torch.manual_seed(0)
    first = torch.rand(2)
    with seeded(9):
        masked = drop(x)
    with seeded(9):
        assert torch.equal(drop(x), masked)
    assert torch.equal(first, outside[0]) and torch.equal(torch.rand(2), outside[1])


@pytest.mark.parametrize("keys", [(), (-1,), (1.5,)])
def test_seeded_refuses_keys_that_are_not_non_negative_integers(keys):
    with pytest.raises(ValueError, match="is invalid"):
        with seeded(*keys):
            pass
