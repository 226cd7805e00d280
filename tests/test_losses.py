"""GRPO (Eq. 2) and Sibling-GRPO (Eq. 15-19) losses against the paper's formulas written out by hand.

Two kinds of oracle: small candidate trees whose gradients are worked out in the comments, and a
plain Python loop over parents and child nodes (Eq. 15-19 line by line) that the vectorised losses
must match on random trees, value and autograd gradient with respect to the per-token log-probs.
Then the identities of the joint loss, the edge cases (padding, a parent with one child, equal
rewards), and the policy side: ``TinyPolicy.logprobs`` (one prompt encoding shared by all its
candidates) against ``naive_logprobs`` (the prompt re-encoded for every candidate).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vstar_toy.config import PolicyConfig, presets
from vstar_toy.decoding import beam_search
from vstar_toy.pipeline import build_world
from vstar_toy.policy.tiny import TinyPolicy, naive_logprobs
from vstar_toy.rl.advantages import grpo_advantages, sibling_node_advantages
from vstar_toy.rl.losses import grpo_loss, kl_penalty, policy_loss, sibling_loss

EPS = 1e-6  # epsilon of Eq. 2 and Eq. 18
CLIP = 0.2  # PPO clip epsilon


# ----------------------------------------------------------------------------------------------
# the oracle: Eq. 2 and Eq. 15-19 as loops over Python lists


def surrogate(logp: float, old: float, a: float, clip_eps: float) -> tuple[float, float]:
    """PPO surrogate min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(logp - old), and its
    derivative with respect to logp: rho A while the unclipped branch is the minimum, 0 otherwise."""
    rho = math.exp(logp - old)
    if clip_eps <= 0:
        return rho * a, rho * a
    clipped = min(max(rho, 1 - clip_eps), 1 + clip_eps)
    if rho * a <= clipped * a:  # inside the clip range the two branches are equal: the gradient is rho A
        return rho * a, rho * a
    return clipped * a, 0.0


def mean_std(xs: list[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation dividing by n - ddof (0 for n <= ddof): ddof = 0 the population
    std, 1 the sample std (both conventions of rl/advantages.py)."""
    mu = sum(xs) / len(xs)
    return mu, (math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - ddof)) if len(xs) > ddof else 0.0)


def sibling_oracle(sids, rewards, valid, logp, old, clip_eps=CLIP, eps=EPS, ddof=0, norm="candidates"):
    """-J_sib of Eq. 19 averaged over queries, and its gradient with respect to ``logp`` (B, C, L).

    The token v under parent h is one node of the tree however many candidates pass through it; its
    log-prob is read from the first of them (lowest index), so the gradient lands there. Each query's
    sum is divided by |C(x)| (``norm = "candidates"``, Eq. 19 as written) or |C(x)| * L (``"tokens"``).
    """
    sids, rewards, valid, logp, old = (t.tolist() for t in (sids, rewards, valid, logp, old))
    B, C, L = len(sids), len(sids[0]), len(sids[0][0])
    grad = [[[0.0] * L for _ in range(C)] for _ in range(B)]
    loss = 0.0
    for b in range(B):
        cands = [i for i in range(C) if valid[b][i]]
        per_query = len(cands) * (L if norm == "tokens" else 1)
        j_sib = 0.0
        for depth in range(1, L + 1):
            # Eq. 15: the sibling group G(h) of every parent prefix h at depth - 1
            groups: dict[tuple, list[int]] = {}
            for i in cands:
                groups.setdefault(tuple(sids[b][i][: depth - 1]), []).append(i)
            for members in groups.values():
                # Eq. 16-17: the child nodes v in S(h), each with G(h, v) and its mean reward R-bar
                nodes: dict[int, list[int]] = {}
                for i in members:
                    nodes.setdefault(sids[b][i][depth - 1], []).append(i)
                r_bar = {v: sum(rewards[b][i] for i in g) / len(g) for v, g in nodes.items()}
                mu_h, sigma_h = mean_std(list(r_bar.values()), ddof)
                for v, g in nodes.items():
                    a_node = (r_bar[v] - mu_h) / (sigma_h + eps)  # Eq. 18
                    i = min(g)
                    s, ds = surrogate(logp[b][i][depth - 1], old[b][i][depth - 1], a_node, clip_eps)
                    j_sib += s / per_query  # Eq. 19: (1 / |C(x)|) sum_l sum_h sum_v A_node rho
                    grad[b][i][depth - 1] = -ds / per_query / B
        loss -= j_sib / B
    return loss, torch.tensor(grad, dtype=torch.float64)


def grpo_oracle(rewards, valid, logp, old, clip_eps=CLIP, eps=EPS, ddof=0):
    """-J_GRPO: the advantage of Eq. 2 on every token, averaged over the valid tokens of the batch."""
    rewards, valid, logp, old = (t.tolist() for t in (rewards, valid, logp, old))
    B, C, L = len(logp), len(logp[0]), len(logp[0][0])
    n_tokens = L * sum(sum(row) for row in valid)
    grad = [[[0.0] * L for _ in range(C)] for _ in range(B)]
    loss = 0.0
    for b in range(B):
        cands = [i for i in range(C) if valid[b][i]]
        mu, sigma = mean_std([rewards[b][i] for i in cands], ddof)
        for i in cands:
            a = (rewards[b][i] - mu) / (sigma + eps)  # Eq. 2
            for t in range(L):
                s, ds = surrogate(logp[b][i][t], old[b][i][t], a, clip_eps)
                loss -= s / n_tokens
                grad[b][i][t] = -ds / n_tokens
    return loss, torch.tensor(grad, dtype=torch.float64)


def random_batch(seed: int, B: int = 3, C: int = 7, codes=(2, 3, 2), n_pad: int = 2):
    """Random candidate trees: B queries, C distinct SIDs each out of prod(codes) paths (many shared
    prefixes), normal rewards, ``n_pad`` padding candidates per batch, and log-probs that are equal
    on a shared prefix (as a policy's are), with old log-probs that put rho on both sides of the clip.
    """
    g = torch.Generator().manual_seed(seed)
    paths = torch.cartesian_prod(*[torch.arange(k) for k in codes])  # (P, L)
    sids = torch.stack([paths[torch.randperm(len(paths), generator=g)[:C]] for _ in range(B)])  # (B, C, L)
    rewards = torch.randn(B, C, generator=g, dtype=torch.float64)
    valid = torch.ones(B, C, dtype=torch.bool)
    valid.view(-1)[torch.randperm(B * C, generator=g)[:n_pad]] = False
    logp = torch.empty(B, C, len(codes), dtype=torch.float64)
    old = torch.empty_like(logp)
    table: dict[tuple, tuple[float, float]] = {}
    for b in range(B):
        for i in range(C):
            for t in range(len(codes)):
                key = (b, *sids[b, i, : t + 1].tolist())
                if key not in table:
                    lp = -3.0 * torch.rand(1, generator=g).item() - 0.05
                    shift = 0.7 * torch.rand(1, generator=g).item() - 0.35  # log rho in [-0.35, 0.35]
                    table[key] = (lp, lp - shift)
                logp[b, i, t], old[b, i, t] = table[key]
    return sids, rewards, valid, logp.requires_grad_(True), old


def autograd(loss_fn, logp: torch.Tensor, *args, **kw):
    """The loss and d loss / d logp."""
    loss = loss_fn(logp, *args, **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad


# ----------------------------------------------------------------------------------------------
# worked examples: one query, four 3-level SIDs
#
#                 root
#            0 /        \ 1
#        {y0,y1,y2}     {y3}            rewards R = (1, 3, 2, 0)
#        0 /    \ 1       | 0
#     {y0,y1}   {y2}     {y3}
#     0 / \ 1    | 0      | 0
#     y0   y1    y2       y3

HAND_SIDS = torch.tensor([[[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]])
HAND_R = torch.tensor([[1.0, 3.0, 2.0, 0.0]], dtype=torch.float64)
HAND_VALID = torch.ones(1, 4, dtype=torch.bool)


def test_sibling_gradient_worked_by_hand():
    """Eq. 17-19 on the tree above, with two importance ratios away from 1.

    Depth 1, parent root: R-bar(0) = (1 + 3 + 2) / 3 = 2, R-bar(1) = 0; mu = 1, sigma = 1, so
    A_node = +a and -a with a = 1 / (1 + eps).
    Depth 2: parent (0,) has R-bar(0) = 2 and R-bar(1) = 2: sigma = 0, both A_node = 0; parent (1,)
    has one child: 0.
    Depth 3: parent (0, 0): R-bar(0) = 1, R-bar(1) = 3 -> -a, +a; parents (0, 1), (1, 0): one child.
    Ratios: rho = 1.1 on token y_1 = 0 (within the clip), rho = 0.7 on y_1 = 1 (below 1 - 0.2 with
    A < 0: the pessimistic clip takes 0.8 * A, a constant), 1 elsewhere.
    -J_sib = -(1/4) (1.1 a - 0.8 a + 0 + 0 - a + a) = -0.075 a; the gradient (node -> its first
    candidate): d/d logp[y0, 1] = -1.1 a / 4, d/d logp[y3, 1] = 0 (clipped),
    d/d logp[y0, 3] = +a / 4, d/d logp[y1, 3] = -a / 4, and 0 on every other token.
    """
    a = 1 / (1 + EPS)
    logp = torch.full((1, 4, 3), -1.0, dtype=torch.float64, requires_grad=True)
    old = logp.detach().clone()
    old[0, :3, 0] -= math.log(1.1)  # the node y_1 = 0, shared by y0, y1, y2
    old[0, 3, 0] -= math.log(0.7)
    loss, grad = autograd(sibling_loss, logp, old, HAND_SIDS, HAND_R, HAND_VALID, CLIP, EPS, 0, "candidates")
    expected = torch.zeros(1, 4, 3, dtype=torch.float64)
    expected[0, 0, 0] = -1.1 * a / 4
    expected[0, 0, 2] = a / 4
    expected[0, 1, 2] = -a / 4
    torch.testing.assert_close(loss, torch.tensor(-0.075 * a, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    # the same numbers from the loop oracle
    ref_loss, ref_grad = sibling_oracle(HAND_SIDS, HAND_R, HAND_VALID, logp.detach(), old)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)
    # the default reading divides by |C| * L = 12 instead of |C| = 4: the same direction, a third of it
    loss_t, grad_t = autograd(sibling_loss, logp, old, HAND_SIDS, HAND_R, HAND_VALID, CLIP, EPS, 0)
    torch.testing.assert_close(loss_t, loss / 3, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_t, grad / 3, rtol=1e-12, atol=1e-15)


def test_grpo_gradient_worked_by_hand():
    """Eq. 2 on the same rewards: mu = 1.5, sigma = sqrt(1.25) (population), so
    A = (-0.5, 1.5, 0.5, -1.5) / (sqrt(1.25) + eps) on each of the 3 tokens of its candidate; at
    rho = 1 the loss is -sum(A) * 3 / 12 = 0 and d/d logp[i, t] = -A_i / 12 (12 valid tokens)."""
    adv = torch.tensor([-0.5, 1.5, 0.5, -1.5], dtype=torch.float64) / (math.sqrt(1.25) + EPS)
    logp = torch.full((1, 4, 3), -1.0, dtype=torch.float64, requires_grad=True)
    loss, grad = autograd(grpo_loss, logp, logp.detach(), HAND_R, HAND_VALID, CLIP, EPS, 0)
    torch.testing.assert_close(grpo_advantages(HAND_R, EPS, ddof=0), adv[None])
    assert abs(loss.item()) < 1e-15
    torch.testing.assert_close(grad, (-adv / 12)[None, :, None].expand(1, 4, 3), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# the vectorised losses against the loop oracle on random trees


@pytest.mark.parametrize("ddof, norm", [(0, "candidates"), (1, "candidates"), (0, "tokens"), (1, "tokens")])
@pytest.mark.parametrize("clip_eps", [CLIP, 0.0])
@pytest.mark.parametrize("seed", range(6))
def test_sibling_loss_matches_the_loop_oracle(seed, clip_eps, ddof, norm):
    sids, rewards, valid, logp, old = random_batch(seed)
    loss, grad = autograd(sibling_loss, logp, old, sids, rewards, valid, clip_eps, EPS, ddof, norm)
    ref_loss, ref_grad = sibling_oracle(sids, rewards, valid, logp.detach(), old, clip_eps, EPS, ddof, norm)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("clip_eps", [CLIP, 0.0])
@pytest.mark.parametrize("seed", range(6))
def test_grpo_loss_matches_the_loop_oracle(seed, clip_eps, ddof):
    _, rewards, valid, logp, old = random_batch(seed)
    loss, grad = autograd(grpo_loss, logp, old, rewards, valid, clip_eps, EPS, ddof)
    ref_loss, ref_grad = grpo_oracle(rewards, valid, logp.detach(), old, clip_eps, EPS, ddof)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_tokens_normalisation_weighs_the_two_terms_alike():
    """The reading of Eq. 19 (losses.py): with every candidate its own node at every level and node
    advantages equal to the GRPO advantages, the sibling term equals the GRPO term per token under the
    default ``tokens`` normalisation, and L times it under Eq. 19's literal 1 / |C(x)|."""
    sids = torch.tensor([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]])  # distinct at level 1, alone below
    rewards = torch.tensor([[0.1, 0.7, -0.4, 0.9]], dtype=torch.float64)
    valid = torch.ones(1, 4, dtype=torch.bool)
    logp = torch.full((1, 4, 3), -0.5, dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.tensor([0.1, -0.05, 0.02, 0.0], dtype=torch.float64)[None, :, None]
    # only level 1 has siblings, so only its token carries a sibling advantage: make GRPO see only it too
    only_first = old.clone()
    only_first[..., 1:] = logp.detach()[..., 1:]
    g = grpo_loss(logp[..., :1], only_first[..., :1], rewards, valid, 0.0)  # per token over |C| * 1 tokens
    s_tok = sibling_loss(logp, only_first, sids, rewards, valid, 0.0, norm="tokens")
    s_cand = sibling_loss(logp, only_first, sids, rewards, valid, 0.0, norm="candidates")
    torch.testing.assert_close(s_tok * 3, g, rtol=1e-12, atol=1e-15)  # 1 of L = 3 levels carries the signal
    torch.testing.assert_close(s_cand, 3 * s_tok, rtol=1e-12, atol=1e-15)


def test_the_random_trees_exercise_every_case():
    """The oracle tests above mean something: their trees hold shared nodes, parents with one and
    with several children, and ratios clipped on both sides."""
    sids, rewards, valid, logp, old = random_batch(0)
    adv, first = sibling_node_advantages(sids, rewards, EPS, valid)
    assert (valid[..., None] & ~first).any()  # a node that several candidates pass through
    assert ((adv == 0) & valid[..., None]).any() and (adv != 0).any()
    rho = (logp.detach() - old).exp()
    assert (rho > 1 + CLIP).any() and (rho < 1 - CLIP).any() and ((rho - 1).abs() < CLIP).any()


# ----------------------------------------------------------------------------------------------
# the joint loss and the KL term


def test_joint_loss_is_the_weighted_sum_of_its_parts():
    sids, rewards, valid, logp, old = random_batch(11)
    ref = old - 0.3 * torch.rand(old.shape, generator=torch.Generator().manual_seed(1), dtype=old.dtype)
    w_g, w_s, kl_coef = 0.7, 1.9, 0.05
    loss, parts = policy_loss("joint", logp, old, ref, sids, rewards, valid, grpo_weight=w_g, sibling_weight=w_s,
                              kl_coef=kl_coef, clip_eps=CLIP, eps=EPS)
    g = grpo_loss(logp, old, rewards, valid, CLIP, EPS)
    s = sibling_loss(logp, old, sids, rewards, valid, CLIP, EPS)
    kl = kl_penalty(logp, ref, valid)
    assert torch.equal(loss, w_g * g + w_s * s + kl_coef * kl)
    assert parts == {"loss_grpo": g.item(), "loss_sibling": s.item(), "loss_kl": kl.item()}
    (grad,) = torch.autograd.grad(loss, logp)
    grads = [torch.autograd.grad(t, logp)[0] for t in (g, s, kl)]
    torch.testing.assert_close(grad, w_g * grads[0] + w_s * grads[1] + kl_coef * grads[2], rtol=1e-12, atol=1e-15)
    # a single objective takes no weight; kl_coef = 0 drops the KL part
    only, only_parts = policy_loss("sibling", logp, old, ref, sids, rewards, valid, grpo_weight=w_g,
                                   sibling_weight=w_s, kl_coef=0.0, clip_eps=CLIP, eps=EPS)
    assert torch.equal(only, s) and set(only_parts) == {"loss_sibling"}
    with pytest.raises(ValueError, match="objective"):
        policy_loss("ppo", logp, old, ref, sids, rewards, valid)


def test_kl_penalty_is_the_mean_k3_over_valid_tokens():
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi_theta, averaged over the valid tokens."""
    _, _, valid, logp, old = random_batch(5)
    d = (old - logp.detach())[valid]  # (n_valid, L)
    expected = (d.exp() - d - 1).mean()
    torch.testing.assert_close(kl_penalty(logp, old, valid), expected, rtol=1e-12, atol=0.0)
    assert kl_penalty(logp, logp.detach(), valid).item() == 0.0


# ----------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("objective", ["grpo", "sibling", "joint"])
def test_padding_contributes_nothing(objective):
    """Two padding candidates join the hand tree: one on y0's own path (if it were counted it would
    change R-bar and carry y0's nodes), one with -1 codes; both with NaN rewards and non-finite
    log-probs (what a clamped -1 SID that is no item gets from a policy). Loss and gradient on the
    real candidates are those of the tree without them, and the padding gets gradient exactly 0."""
    logp0 = torch.linspace(-2.0, -0.5, 12, dtype=torch.float64).reshape(1, 4, 3)
    old0 = logp0 - 0.05
    ref0 = logp0 + 0.1
    kw = dict(grpo_weight=0.5, sibling_weight=2.0, kl_coef=0.1, clip_eps=CLIP, eps=EPS)
    base = logp0.clone().requires_grad_(True)
    loss0, _ = policy_loss(objective, base, old0, ref0, HAND_SIDS, HAND_R, HAND_VALID, **kw)
    (grad0,) = torch.autograd.grad(loss0, base)

    order = [4, 0, 1, 5, 2, 3]  # padding first (index 0) and in the middle (index 3)
    sids = torch.cat([HAND_SIDS, torch.tensor([[[0, 0, 0], [-1, -1, -1]]])], 1)[:, order]
    rewards = torch.cat([HAND_R, torch.tensor([[math.nan, math.nan]], dtype=torch.float64)], 1)[:, order]
    valid = torch.tensor([[False, True, True, False, True, True]])
    junk = torch.tensor([[[-math.inf, math.nan, -math.inf], [math.nan, -math.inf, 0.0]]], dtype=torch.float64)
    logp = torch.cat([logp0, junk], 1)[:, order].requires_grad_(True)
    old, ref = (torch.cat([t, junk.flip(1)], 1)[:, order] for t in (old0, ref0))
    loss, _ = policy_loss(objective, logp, old, ref, sids, rewards, valid, **kw)
    (grad,) = torch.autograd.grad(loss, logp)

    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, loss0, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad[:, valid[0]], grad0, rtol=1e-14, atol=1e-15)
    assert torch.equal(grad[:, ~valid[0]], torch.zeros(1, 2, 3, dtype=torch.float64))


def test_a_parent_with_one_child_gives_no_sibling_term():
    """Four candidates under the same prefix (2, 0): the root and (2,) have a single child each, so
    levels 1 and 2 carry no term whatever their ratios, and -J_sib is the leaf term alone:
    -(1/(4 * 3)) sum_v A_node(v) rho(v) (|C| * L = 12 tokens), with A_node the standardised leaf rewards."""
    sids = torch.tensor([[[2, 0, 0], [2, 0, 1], [2, 0, 2], [2, 0, 3]]])
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25]], dtype=torch.float64)
    valid = torch.ones(1, 4, dtype=torch.bool)
    logp = torch.tensor([[[-0.1, -0.2, -1.0], [-0.1, -0.2, -2.0], [-0.1, -0.2, -1.5], [-0.1, -0.2, -0.7]]],
                        dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.tensor([0.3, -0.25, 0.1], dtype=torch.float64)  # rho = e^0.3, e^-0.25, e^0.1
    adv, _ = sibling_node_advantages(sids, rewards, EPS, valid)
    assert torch.equal(adv[..., :2], torch.zeros(1, 4, 2, dtype=torch.float64))
    loss, grad = autograd(sibling_loss, logp, old, sids, rewards, valid, 0.0, EPS)
    leaf_adv = grpo_advantages(rewards, EPS)[0]  # the leaves are the only siblings: Eq. 18 is Eq. 2 here
    rho_leaf = math.exp(0.1)
    assert loss.item() == pytest.approx(-(leaf_adv * rho_leaf).sum().item() / 12, rel=1e-12, abs=1e-15)
    assert torch.equal(grad[..., :2], torch.zeros(1, 4, 2, dtype=torch.float64))
    torch.testing.assert_close(grad[0, :, 2], -leaf_adv * rho_leaf / 12, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_equal_rewards_give_zero_advantage_and_zero_gradient(seed):
    """All rewards 0.3 (not a binary fraction, so a naive mean would leave residues): every advantage,
    every loss and every gradient is exactly 0, ratios and clipping notwithstanding."""
    sids, rewards, valid, logp, old = random_batch(seed, n_pad=0)
    rewards = torch.full_like(rewards, 0.3)
    assert torch.equal(grpo_advantages(rewards, EPS), torch.zeros_like(rewards))
    assert torch.equal(sibling_node_advantages(sids, rewards, EPS)[0], torch.zeros_like(logp))
    for fn, args in ((grpo_loss, (old, rewards, valid)), (sibling_loss, (old, sids, rewards, valid))):
        loss, grad = autograd(fn, logp, *args, CLIP, EPS)
        assert loss.item() == 0.0
        assert torch.equal(grad, torch.zeros_like(grad))


# ----------------------------------------------------------------------------------------------
# the policy side: one prompt encoding shared by all candidates == re-encoding it for each


@pytest.mark.parametrize("item_text", [False, True])
def test_shared_context_logprobs_equal_naive_reencoding(item_text):
    """``TinyPolicy.logprobs`` encodes each prompt once and lets its candidates attend to the cache;
    ``naive_logprobs`` runs one causal pass over [prompt, candidate] per candidate. Same log-probs,
    and the same gradient of a GRPO + Sibling-GRPO + KL loss with respect to every parameter
    (relative error < 1e-5 per parameter tensor, in float32). Also with the history items' text added to
    their tokens (``PolicyConfig.item_text``)."""
    world = build_world(presets.tiny().world)
    policy = TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=2, n_heads=2, item_text=item_text))
    torch.manual_seed(0)
    with torch.no_grad():  # weights far from the near-uniform init, so attention patterns matter
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hist = world.queries("train", n=5, seed=3).histories.copy()
    hist[1, :2] = -1  # shorter, left-padded prompts
    hist[3, :4] = -1
    with torch.no_grad():
        cands = beam_search(policy.eval(), hist, 6)
    sids = cands.sids.clone()
    sids[2, 4:] = -1  # padding candidates
    valid = (sids >= 0).all(-1)
    rewards = torch.randn(valid.shape, generator=torch.Generator().manual_seed(0))

    def grads_of(logprobs_fn):
        new = logprobs_fn(policy, hist, sids)
        old = new.detach() + 0.05 * torch.randn(new.shape, generator=torch.Generator().manual_seed(1))
        loss, _ = policy_loss("joint", new, old, old - 0.1, sids, rewards, valid, kl_coef=0.1)
        return new, torch.autograd.grad(loss, list(policy.parameters()))

    shared, g_shared = grads_of(lambda pol, h, s: pol.logprobs(h, s))
    naive, g_naive = grads_of(naive_logprobs)
    assert torch.isfinite(shared).all() and (shared[valid] <= 0).all()
    torch.testing.assert_close(shared, naive, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(policy.named_parameters(), g_shared, g_naive):
        rel = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        assert rel < 1e-5, f"{name}: relative gradient error {rel:.2e}"


# ----------------------------------------------------------------------------------------------
# the alignment task: an item's SID given its title alone (SFTConfig.align_weight)


def test_a_title_context_reads_the_title_and_hides_the_codes():
    world = build_world(presets.tiny().world)
    policy = TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=2, n_heads=2, item_text=True))
    items = torch.tensor([0, 1, 2])
    sids = torch.as_tensor(world.catalog.sids)[items]
    with torch.no_grad():
        before = policy.logprobs(policy.encode_titles(items), sids)
        policy.tok_emb.weight[2:].add_(1.0)  # every code token's embedding: a leak of the item's codes would show
        codes_moved = policy.encode_titles(items).hidden
        policy.tok_emb.weight[2:].sub_(1.0)
        same = policy.encode_titles(items).hidden
        other = policy.encode_titles(torch.tensor([3, 4, 5])).hidden  # other titles
    assert before.shape == (3, world.catalog.levels) and torch.isfinite(before).all()
    torch.testing.assert_close(codes_moved, same)
    assert not torch.allclose(other, same)
    with pytest.raises(ValueError, match="item_text"):
        TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=2, n_heads=2)).encode_titles(items)


def test_sft_with_the_alignment_task_learns_sids_from_titles():
    from vstar_toy.config import SFTConfig
    from vstar_toy.rl.sft import target_nll, train_sft

    world = dataclasses.replace(build_world(presets.tiny().world), valid_seen=True)  # every epoch runs, no choice
    items = torch.arange(world.catalog.n_items)
    sids = torch.as_tensor(world.catalog.sids)
    nll = {}
    for weight in (0.0, 1.0):  # 32 optimiser steps each
        policy = TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=2, n_heads=2, item_text=True))
        train_sft(policy, world, SFTConfig(epochs=4, batch_size=32, align_weight=weight), progress=False)
        with torch.no_grad():
            nll[weight] = float(target_nll(policy, policy.encode_titles(items), sids))
    assert nll[1.0] < 0.85 * nll[0.0], nll  # measured: 1.27 against 1.60 nats per token
    with pytest.raises(ValueError, match="item_text = True"):
        train_sft(TinyPolicy(world.catalog, PolicyConfig(d_model=32, n_layers=2, n_heads=2)), world,
                  SFTConfig(epochs=1, align_weight=1.0), progress=False)
