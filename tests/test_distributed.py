"""Data-parallel RL (rl/distributed.py) on two CPU processes with the gloo backend.

Oracle: a few steps of ``train`` on 2 processes, each decoding and scoring half of the same global batch,
apply the gradients of one process trained on the whole batch, and end with its parameters (policy and
value head); both ranks end bit-identical, and the logged metrics are the global batch's. The beam
decoder makes the candidates deterministic, so the only differences left are float summation orders:
gradients agree to a relative 1e-5 at the first step. Parameters are compared against how far training
moved them, not element by element: Adam divides each gradient coordinate by its own scale, so where
the true gradient is zero (key biases: softmax ignores a shift) it turns rounding noise into steps.

The two ranks are started by ``distributed.spawn_local`` with the environment torchrun would set (RANK,
WORLD_SIZE; a file rendezvous instead of a port, which a busy machine could take between choosing and
binding it), then go through ``init_from_env`` as the CLI does under torchrun.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from vstar_toy.config import preset
from vstar_toy.pipeline import build_world
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.policy.value import ValueHead
from vstar_toy.rl import distributed
from vstar_toy.rl.train import train

WORLD_SIZE = 2
LOGGED = ["reward", "reward_std", "zero_var_share", "sibling_signal_share", "true_reward", "max_true_reward", "hit",
          "adv_spread_global", "adv_spread_sibling", "value_loss", "loss_grpo", "loss_sibling", "loss_kl"]


def config():
    """The tiny preset, beam decoder, 3 steps of 2 inner epochs (the second pass has ratios != 1) and
    one TD step each, evaluated only at the end: 16 queries a step, 8 per rank."""
    return preset("tiny").replace(decode={"decoder": "beam"},
                                  rl={"steps": 3, "inner_epochs": 2, "eval_every": 100, "eval_queries": 16})


def run(run_dir) -> dict:
    """Train a fresh tiny policy and value head (seeded by the config): their parameters, the log, and
    the gradients of every update, flattened, in order (per step: the value head's TD step, then the
    policy's inner epochs), as the optimisers see them: after DDP's all-reduce and the value head's
    averaging; the policy's before clipping to norm 1 (active here), which would hide a scale error."""
    cfg = config()
    world = build_world(cfg.world)
    policy = TinyPolicy(world.catalog, cfg.policy)
    head = ValueHead.for_policy(policy, cfg.value)
    grads: list[torch.Tensor] = []
    policy_params = {id(p) for p in policy.parameters()}

    def record_value(opt, args, kwargs):  # after the step: the value head's pre-step averaging has run
        params = [p for g in opt.param_groups for p in g["params"]]
        if id(params[0]) not in policy_params:
            grads.append(torch.cat([p.grad.flatten() for p in params]).clone())

    def record_policy(params, max_norm, *args, **kwargs):
        params = list(params)
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        return clip(params, max_norm, *args, **kwargs)

    handle = register_optimizer_step_post_hook(record_value)
    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = record_policy
    try:
        res = train(world, policy, cfg, head, run_dir=run_dir, progress=False, say=lambda msg: None)
    finally:
        handle.remove()
        torch.nn.utils.clip_grad_norm_ = clip
    return {"policy": res.policy.state_dict(), "value": res.value_head.state_dict(), "log": res.log, "grads": grads}


def _worker(rank: int, out: str) -> None:
    """One rank: torchrun's environment, ``init_from_env``, ``train``; saves its parameters and log."""
    torch.set_num_threads(1)
    assert distributed.init_from_env() == (rank, WORLD_SIZE)
    try:
        result = run(os.path.join(out, f"run{rank}"))  # each rank is given its own dir: only rank 0's is written
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of the 2 ranks saved: [{policy, value, log}] by rank, and the output directory."""
    out = tmp_path_factory.mktemp("ddp")
    distributed.spawn_local(_worker, WORLD_SIZE, (str(out),))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)], out


@pytest.fixture(scope="module")
def one_process():
    """The same training in this process, on the whole batch of 16 queries."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(None)
    finally:
        torch.set_num_threads(n)


def flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for v in state.values()])


def test_both_ranks_end_with_identical_parameters(two_ranks):
    (r0, r1), _ = two_ranks
    for name in ("policy", "value"):
        assert r0[name].keys() == r1[name].keys()
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), f"{name}.{k} differs between ranks"
    assert all(torch.equal(a, b) for a, b in zip(r0["grads"], r1["grads"]))


def test_two_ranks_apply_the_gradients_of_one_process(two_ranks, one_process):
    """The mean of the shard gradients is the full-batch gradient: not twice it (a sum), nor half."""
    (r0, _), _ = two_ranks
    steps = config().rl.steps
    assert len(r0["grads"]) == len(one_process["grads"]) == steps * (1 + config().rl.inner_epochs)
    for i, (ddp, one) in enumerate(zip(r0["grads"], one_process["grads"])):
        tol = 1e-5 if i < 2 else 1e-4  # the first TD and policy gradients are taken at identical parameters
        assert float((ddp - one).norm() / one.norm()) < tol, f"update {i}"


def test_two_ranks_end_with_the_parameters_of_one_process(two_ranks, one_process):
    (r0, _), _ = two_ranks
    cfg = config()
    world = build_world(cfg.world)
    fresh = TinyPolicy(world.catalog, cfg.policy)
    start = {"policy": fresh.state_dict(), "value": ValueHead.for_policy(fresh, cfg.value).state_dict()}
    for name in ("policy", "value"):
        moved = float((flat(one_process[name]) - flat(start[name])).norm())
        assert moved > 0.05, f"{name} barely trained"
        assert float((flat(r0[name]) - flat(one_process[name])).norm()) < 1e-3 * moved, name


def test_logged_metrics_are_the_global_batch_ones(two_ranks, one_process):
    (r0, r1), _ = two_ranks
    pd.testing.assert_frame_equal(r0["log"][LOGGED], r1["log"][LOGGED], check_exact=True)
    pd.testing.assert_frame_equal(r0["log"][LOGGED], one_process["log"][LOGGED], rtol=1e-4, atol=1e-6)
    assert "valid_hr@10" in r0["log"] and "valid_hr@10" not in r1["log"]  # validation on rank 0 only


def test_only_rank_0_writes_the_run_directory(two_ranks):
    _, out = two_ranks
    assert {p.name for p in (out / "run0").iterdir()} >= {"config.json", "reference.pt", "metrics.csv", "state.pt"}
    assert not (out / "run1").exists()


def test_one_process_and_uneven_batches():
    assert distributed.init_from_env() == (0, 1)  # no WORLD_SIZE: nothing initialised
    assert distributed.rank_and_size() == (0, 1) and distributed.is_main()
    world = build_world(config().world)
    q = world.queries("train", n=5)
    assert distributed.shard(q) is q
    assert distributed.check_batch(16, 2) == 8
    with pytest.raises(ValueError, match="rl.batch_queries = 15 is invalid with 2 processes.*divisible"):
        distributed.check_batch(15, 2)
    with pytest.raises(RuntimeError, match="init_from_env"):
        distributed.wrap(TinyPolicy(world.catalog, config().policy))
    row = {"step": 1, "reward": 0.5}
    assert distributed.mean_scalars(row) is row
