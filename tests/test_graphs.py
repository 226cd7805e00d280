"""Captured steps (``vstar_toy.policy.graphs.StepGraphs``) in their CPU rehearsal: a key runs eagerly, is captured
at its second call and replayed after; a step that reads the host or sizes a tensor by its values is refused at
capture, as a CUDA capture refuses it; a replay counts as one launch. The Qwen decoders on graphs are tested in
tests/test_qwen.py."""

import pytest
import torch

from vstar_toy.dispatch import Counts
from vstar_toy.policy.graphs import StepGraphs

CPU = torch.device("cpu")


def test_a_key_runs_eagerly_then_is_captured_then_replayed_on_new_inputs():
    g = StepGraphs(CPU, rehearse=True)
    calls = []

    def step(x, y):
        calls.append(1)
        return x * 2, [x + y]

    outs = [g.run("k", step, torch.tensor([float(i)]), torch.tensor([10.0])) for i in range(4)]
    assert [o[0].item() for o in outs] == [0, 2, 4, 6] and [o[1][0].item() for o in outs] == [10, 11, 12, 13]
    assert (g.eager, g.captures, g.replays) == (1, 1, 3)
    outs[2][0].fill_(-1)  # a caller's copy: the next replay neither reads nor overwrites it
    assert g.run("k", step, torch.tensor([5.0]), torch.tensor([0.0]))[0].item() == 10 and outs[2][0].item() == -1
    assert g.run("other", step, torch.tensor([1.0]), torch.tensor([0.0]))[0].item() == 2  # another key: eager
    assert g.eager == 2


def test_a_replay_is_one_launch_to_the_counters():
    g = StepGraphs(CPU, rehearse=True)
    x = torch.ones(3)
    for _ in range(2):
        g.run("k", lambda t: (t + 1).exp().sum(), x)
    with Counts() as c:
        g.run("k", lambda t: (t + 1).exp().sum(), x)
    assert c.by_op["graph_replay"] == 1 and not {"add", "exp", "sum"} & set(c.by_op), dict(c.by_op)


@pytest.mark.parametrize("step, says", [(lambda x: x * x.sum().item(), "read the host"),
                                        (lambda x: x[x > 0], "shapes by values")])
def test_a_step_a_graph_cannot_hold_is_refused_at_capture(step, says):
    g = StepGraphs(CPU, rehearse=True)
    g.run("k", step, torch.arange(3.0))  # the first call is eager: nothing refused yet
    with pytest.raises(RuntimeError, match=says):
        g.run("k", step, torch.arange(3.0))


def test_a_replay_that_runs_other_operators_than_its_capture_is_refused():
    """A step whose Python reads state that changed after the capture (here a flag) would, on CUDA, replay what
    was captured: the rehearsal refuses it instead of quietly following the new state."""
    g = StepGraphs(CPU, rehearse=True)
    state = {"double": False}

    def step(x):
        return x * 2 if state["double"] else x + 0

    for _ in range(2):
        g.run("k", step, torch.ones(1))
    state["double"] = True
    with pytest.raises(RuntimeError, match="other operators than its capture"):
        g.run("k", step, torch.ones(1))


def test_the_least_recently_used_graph_goes_first_and_stale_ones_are_forgotten():
    g = StepGraphs(CPU, rehearse=True, most=2)
    for key in ("a", "b", "a", "c"):  # a and b captured at their second call; c run once
        for _ in range(2):
            g.run(key, torch.neg, torch.ones(1))
    assert list(g.graphs) == ["a", "c"]
    g.forget(lambda key: key == "a")
    assert list(g.graphs) == ["c"] and "a" not in g.seen


def test_graphs_without_cuda_must_be_asked_to_rehearse():
    with pytest.raises(ValueError, match="rehearse=True"):
        StepGraphs(CPU)
