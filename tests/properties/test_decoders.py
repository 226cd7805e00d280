"""Properties of the policy and the decoders over small random worlds, then oracles.

Properties (any world, any policy): no decoder returns an invalid or duplicate SID, spends more than
its budget, or misreports its cost or its log-probs; ``step`` on a batch equals ``step`` row by row;
the KV-cached path equals a full re-encode.

Oracles (small catalogs, brute force): constrained beam search equals a level-wise reference and, at a
width that keeps every prefix, the global top-B by log pi(y|x); VED with lambda = beta = 0 and the
value replaced by the prefix log-prob is a likelihood search; sampling at temperature -> 0 returns the
top-|C| SIDs of the per-step tempered distribution.

Policies are random-init TinyPolicies whose output head is re-drawn with std 1 (``sharpen``): the
default init (std 0.02) makes every child almost equally likely, so near-ties would decide the
rankings; a sharp head makes them well separated, as a trained policy's are.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vstar_toy.config import DecodeConfig, PolicyConfig, ValueConfig, WorldConfig, presets
from vstar_toy.decoding import beam_search, budget_tokens, decode, sample, ved_decode
from vstar_toy.decoding.tree import merge_sets
from vstar_toy.decoding.ved import warm_start_cost
from vstar_toy.policy.base import CountingPolicy
from vstar_toy.policy.contract import check_step_batch_equals_rows, step_rows
from vstar_toy.policy.tiny import TinyPolicy
from vstar_toy.policy.value import ValueHead
from vstar_toy.values import OracleValue, likelihood_value
from vstar_toy.world import Queries, World

SETTINGS = settings(max_examples=15, deadline=None)
ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Worlds, policies and queries
# ---------------------------------------------------------------------------------------------


@functools.cache
def world_of(cfg: WorldConfig) -> World:
    """Worlds are deterministic in their (frozen, hashable) config: build each once."""
    return World.build(cfg)


def make_policy(world: World, seed: int, sharpen: float = 1.0) -> TinyPolicy:
    """A random-init tiny policy; ``sharpen`` > 0 re-draws the output head with that std."""
    policy = TinyPolicy(world.catalog, PolicyConfig(d_model=16, n_layers=1, n_heads=2, seed=seed))
    if sharpen > 0:
        with torch.no_grad():
            policy.head.weight.normal_(0.0, sharpen, generator=torch.Generator().manual_seed(seed))
    return policy.eval()


def make_value_head(policy: TinyPolicy, seed: int) -> ValueHead:
    return ValueHead.for_policy(policy, ValueConfig(hidden=8, seed=seed)).eval()


class Case:
    """One drawn setting: a world, a policy on it and a batch of contexts (B, H), -1 left-padded.
    (A plain class, so that hypothesis prints the short ``__repr__`` of a failing case.)"""

    def __init__(self, world: World, policy: TinyPolicy, histories: np.ndarray, seed: int, users=None):
        self.world, self.policy, self.histories, self.seed = world, policy, histories, seed
        self.users = np.zeros(len(histories), dtype=int) if users is None else np.asarray(users)

    @property
    def queries(self) -> Queries:
        """The drawn histories as queries of the drawn users (their tastes give the oracle value)."""
        return Queries(self.users, self.histories, self.world.targets[self.users])

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        cfg = self.world.config
        return (f"Case(world=WorldConfig(n_items={cfg.n_items}, levels={cfg.levels}, "
                f"codebook_sizes={cfg.codebook_sizes}, n_clusters={cfg.n_clusters}, n_users={cfg.n_users}, "
                f"history_len={cfg.history_len}, seed={cfg.seed}), policy_seed={self.seed}, "
                f"histories={self.histories.tolist()})")

    @property
    def catalog(self):
        return self.world.catalog

    @property
    def levels(self) -> int:
        return self.world.catalog.levels


@st.composite
def small_world_configs(draw, max_items: int = 48) -> WorldConfig:
    """A tiny world: L in {2, 3}, 2-6 codes per level (product >= 16), 16 .. max_items items."""
    levels = draw(st.sampled_from([2, 3]))
    if levels == 2:
        k1 = draw(st.integers(4, 6))
        sizes = (k1, draw(st.integers(max(2, math.ceil(16 / k1)), 6)))
    else:
        k1, k2 = draw(st.integers(2, 4)), draw(st.integers(2, 4))
        sizes = (k1, k2, draw(st.integers(max(2, math.ceil(16 / (k1 * k2))), 5)))
    n_items = draw(st.integers(16, min(math.prod(sizes), max_items)))
    return WorldConfig(
        n_items=n_items, levels=levels, codebook_sizes=sizes, n_clusters=draw(st.integers(2, 4)),
        n_users=40, history_len=draw(st.integers(3, 5)), seed=draw(st.integers(0, 3)),
    )


@st.composite
def cases(draw, max_items: int = 48, max_queries: int = 4, pad: bool = True) -> Case:
    """A world, a sharpened random policy and 1 .. max_queries user histories, some left-padded."""
    world = world_of(draw(small_world_configs(max_items)))
    seed = draw(st.integers(0, 3))
    users = draw(st.lists(st.integers(0, len(world.histories) - 1), min_size=1, max_size=max_queries))
    hist = world.histories[users].copy()
    if pad:
        for row in range(len(hist)):
            hist[row, : draw(st.integers(0, hist.shape[1] - 1))] = -1
    return Case(world, make_policy(world, seed), hist, seed, users)


def pinned_case(cfg: WorldConfig, policy_seed: int, histories: list[list[int]]) -> Case:
    """A case written out, for ``@example``: what a failing ``Case`` prints rebuilds it."""
    world = world_of(cfg)
    return Case(world, make_policy(world, policy_seed), np.array(histories), policy_seed)


def all_token_logp(policy: TinyPolicy, histories: np.ndarray) -> np.ndarray:
    """(B, N, L) log pi(y_l | x, y_<l) of every catalog SID, by ``policy.logprobs`` (full re-encode)."""
    sids = policy.catalog.sids
    stacked = np.broadcast_to(sids, (len(histories),) + sids.shape).copy()
    with torch.no_grad():
        return policy.logprobs(histories, torch.as_tensor(stacked)).double().numpy()


def prefix_logp(catalog, token_logp: np.ndarray) -> dict[tuple, float]:
    """{prefix: log pi(y_<=l | x)} of every catalog prefix (l = 1 .. L), from one query's (N, L)."""
    cum = token_logp.cumsum(-1)
    out = {}
    for i, sid in enumerate(catalog.sids.tolist()):
        for lvl in range(1, len(sid) + 1):
            out.setdefault(tuple(sid[:lvl]), float(cum[i, lvl - 1]))
    return out


def valid_sets(cands, b: int) -> tuple[set, np.ndarray]:
    """(set of SID tuples, their log-probs) of query b's valid candidates."""
    ok = cands.valid[b].numpy()
    return {tuple(s) for s in cands.sids[b][ok].tolist()}, cands.logp[b][ok].double().numpy()


# ---------------------------------------------------------------------------------------------
# Every decoder: valid, distinct, within budget, honest about cost and log-probs
# ---------------------------------------------------------------------------------------------


def run_decoder(name: str, case: Case, n_candidates: int, budget_x: float, data, policy=None) -> object:
    """Run decoder ``name`` (with ``policy``, by default the case's); VED gets a random value head and a
    random (legal) configuration."""
    policy, hist = policy or case.policy, case.histories
    if name == "beam":
        return beam_search(policy, hist, n_candidates, budget_x)
    if name == "topk":
        return sample(policy, hist, n_candidates, data.draw(st.floats(0.05, 3.0)), data.draw(st.integers(1, 4)),
                      case.seed)
    if name == "temperature":
        return sample(policy, hist, n_candidates, data.draw(st.floats(0.05, 3.0)), None, case.seed)
    if name == "reranked":
        value = make_value_head(policy, case.seed) if data.draw(st.booleans()) else OracleValue(case.world)
        cfg = DecodeConfig(decoder="reranked", n_candidates=n_candidates, budget_x=budget_x, warm_beam=1)
        return decode(policy, hist, cfg, value.bind(case.queries))
    cfg = DecodeConfig(
        decoder="ved", n_candidates=n_candidates, budget_x=budget_x,
        warm_beam=data.draw(st.integers(1, n_candidates - 1)), lam=data.draw(st.floats(0.0, 1.0)),
        beta=data.draw(st.floats(0.0, 1.0)), priority=data.draw(st.sampled_from(["G", "V", "H"])),
        root_gate=data.draw(st.sampled_from(["open", "closed"])),
        seed=case.seed,
    )
    value = make_value_head(policy, case.seed) if data.draw(st.booleans()) else OracleValue(case.world)
    return decode(policy, hist, cfg, value.bind(case.queries))


@SETTINGS
@given(
    cases(),
    st.sampled_from(["beam", "topk", "temperature", "ved", "reranked"]),
    st.integers(3, 12),
    st.sampled_from([1.0, 2.0, 4.0]),
    st.data(),
)
def test_decoders_return_valid_distinct_sids_within_budget(case, decoder, n_candidates, budget_x, data):
    n_candidates = min(n_candidates, case.catalog.n_items)
    counted = CountingPolicy(case.policy)
    cands = run_decoder(decoder, case, n_candidates, budget_x, data, counted)
    q, c, L = cands.sids.shape
    assert (q, c, L) == (len(case.histories), n_candidates, case.levels)
    valid = cands.valid.numpy()
    sids, items = cands.sids.numpy(), cands.items.numpy()
    # valid rows: SIDs in the catalog, item ids that match them
    case.catalog.check_valid(sids[valid])
    assert (items[valid] >= 0).all()
    np.testing.assert_array_equal(case.catalog.item_of(sids[valid]), items[valid])
    # no duplicate within a query
    for b in range(q):
        assert len({tuple(s) for s in sids[b][valid[b]].tolist()}) == int(valid[b].sum())
    # the budget, per query, and what the policy was asked to compute
    assert (cands.cost_tokens <= cands.budget_tokens).all(), (cands.cost_tokens, cands.budget_tokens)
    assert counted.tokens == int(cands.cost_tokens.sum())
    assert counted.prefill_tokens == cands.prefill_tokens > 0
    np.testing.assert_array_equal(cands.warmup_tokens + cands.expansion_tokens, cands.cost_tokens)
    # the reported log pi(y|x) (the importance ratios' pi_old) is the policy's
    if valid.any():
        with torch.no_grad():
            tok = case.policy.logprobs(case.histories, cands.sids.clamp_min(0)).double().numpy()
        np.testing.assert_allclose(cands.token_logp.double().numpy()[valid], tok[valid], atol=1e-4)
        np.testing.assert_allclose(cands.logp.double().numpy()[valid], tok.sum(-1)[valid], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Constrained beam search against brute force
# ---------------------------------------------------------------------------------------------


def levelwise_beam_reference(catalog, logp: dict[tuple, float], width: int) -> tuple[list[tuple], float]:
    """Beam search written the obvious way for one query: at each level, every valid child of every
    kept prefix, scored by its exact prefix log-prob, the top ``width`` kept. Returns the final beams
    (best first) and the smallest score gap at any level's cut (to tell a real difference from a tie)."""
    kept, margin = [()], math.inf
    for lvl in range(catalog.levels):
        parents = set(kept)
        children = {tuple(s[: lvl + 1]) for s in catalog.sids.tolist() if tuple(s[:lvl]) in parents}
        children = sorted(children, key=lambda p: -logp[p])
        if len(children) > width:
            margin = min(margin, logp[children[width - 1]] - logp[children[width]])
        kept = children[:width]
    return kept, margin


@SETTINGS
@given(cases(), st.integers(1, 12), st.sampled_from([1.0, 2.0, 3.0]))
def test_beam_search_equals_levelwise_reference(case, n_candidates, budget_x):
    n_candidates = min(n_candidates, case.catalog.n_items)
    L = case.levels
    width = n_candidates if L == 1 else max(n_candidates, (budget_tokens(L, n_candidates, budget_x) - 1) // (L - 1))
    cands = beam_search(case.policy, case.histories, n_candidates, budget_x)
    token_lp = all_token_logp(case.policy, case.histories)
    for b in range(len(case.histories)):
        logp = prefix_logp(case.catalog, token_lp[b])
        kept, margin = levelwise_beam_reference(case.catalog, logp, width)
        want = kept[:n_candidates]
        got, got_lp = valid_sets(cands, b)
        if margin > 1e-4:  # a near-tie at a cut may fall either way in float32, and change all below it
            assert got == set(want)
            np.testing.assert_allclose(np.sort(got_lp)[::-1], [logp[p] for p in want], atol=ATOL)


@SETTINGS
@given(cases(max_items=40), st.data())
def test_wide_beam_returns_the_global_top_b(case, data):
    """Width >= the number of prefixes at every level below L: beam search is exhaustive there, so it
    returns exactly the top-B SIDs by log pi(y|x) over the whole catalog."""
    cat = case.catalog
    widest = max(len(cat.nodes_at(lvl)) for lvl in range(1, cat.levels))
    width = data.draw(st.integers(widest, cat.n_items))
    cands = beam_search(case.policy, case.histories, width)
    full = all_token_logp(case.policy, case.histories).sum(-1)  # (B, N)
    for b in range(len(case.histories)):
        order = np.argsort(-full[b], kind="stable")
        got, got_lp = valid_sets(cands, b)
        assert len(got) == width
        tie = width < cat.n_items and full[b, order[width - 1]] - full[b, order[width]] <= 1e-4
        if not tie:
            assert got == {tuple(s) for s in cat.sids[order[:width]].tolist()}
        np.testing.assert_allclose(np.sort(got_lp)[::-1], full[b, order[:width]], atol=1e-4 if tie else ATOL)


# ---------------------------------------------------------------------------------------------
# The policy: batched step == row-by-row step; KV cache == full re-encode
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(cases(), st.data())
def test_step_on_a_batch_equals_step_row_by_row(case, data):
    # rows of mixed queries and depths, each reached by stepping one row at a time from its root
    picks = [(data.draw(st.integers(0, len(case.histories) - 1)), data.draw(st.integers(0, case.catalog.n_items - 1)),
              data.draw(st.integers(0, case.levels - 1))) for _ in range(data.draw(st.integers(1, 8)))]
    batch, codes = step_rows(case.policy, case.histories, picks)
    order = np.asarray(data.draw(st.permutations(range(len(picks)))))  # and the order of rows does not matter
    check_step_batch_equals_rows(case.policy, batch, codes, ATOL, order)


@SETTINGS
@given(cases(), st.data())
def test_kv_cached_path_equals_full_reencode(case, data):
    policy, cat = case.policy, case.catalog
    b = len(case.histories)
    # C candidate SIDs per query, walked token by token through start + step
    c = data.draw(st.integers(1, 5))
    items = np.array([[data.draw(st.integers(0, cat.n_items - 1)) for _ in range(c)] for _ in range(b)])
    sids = torch.as_tensor(cat.sids[items])  # (B, C, L)
    flat = sids.reshape(b * c, -1)
    state = policy.start(case.histories).index(torch.arange(b).repeat_interleave(c))
    cached = []
    for lvl in range(case.levels):
        cached.append(state.logp.gather(1, flat[:, lvl : lvl + 1]).squeeze(1))
        state = policy.step(state, flat[:, lvl])
    cached = torch.stack(cached, 1).reshape(b, c, -1)
    with torch.no_grad():
        full = policy.logprobs(case.histories, sids)
        hidden = policy.candidate_hidden(case.histories, sids, with_last=True)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # (B, C, L+1, d)
    torch.testing.assert_close(cached, full, rtol=0, atol=ATOL)
    # the hidden states the value head reads are the same on both paths
    torch.testing.assert_close(state.hidden.reshape(hidden.shape), hidden, rtol=0, atol=ATOL)


@SETTINGS
@given(cases(pad=False), st.integers(1, 4))
def test_left_padding_does_not_change_the_logprobs(case, extra):
    """Slots count real items only and padding keys are masked: -1 columns in front change nothing."""
    padded = np.concatenate([np.full((len(case.histories), extra), -1), case.histories], 1)
    sids = torch.as_tensor(case.catalog.sids[: min(6, case.catalog.n_items)])[None].expand(len(padded), -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(case.policy.logprobs(padded, sids), case.policy.logprobs(case.histories, sids),
                                   rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# VED: it searches at 1x, keeps its budget, and with V = log pi it is a likelihood search
# ---------------------------------------------------------------------------------------------


@functools.cache
def tiny_world() -> World:
    """The `tiny` preset's world (200 items, 8 codes per level): big enough that the warm start is
    cheaper than the 1x budget at the paper's |C| = 16, b0 = 8 (25 < 33 forward tokens)."""
    return world_of(presets.tiny().world)


def test_ved_spends_tokens_on_expansion_at_1x_and_keeps_every_budget():
    world = tiny_world()
    hist = world.queries("test", n=32).histories
    for seed in range(3):
        policy = make_policy(world, seed, sharpen=0.0)
        head = make_value_head(policy, seed)
        for budget_x in (1.0, 2.0, 4.0):
            cfg = DecodeConfig(decoder="ved", n_candidates=16, warm_beam=8, budget_x=budget_x, seed=seed)
            counted = CountingPolicy(policy)
            cands = decode(counted, hist, cfg, head)
            budget = budget_tokens(world.catalog.levels, 16, budget_x)
            assert cands.budget_tokens == budget
            assert (cands.cost_tokens <= budget).all()
            assert counted.tokens == int(cands.cost_tokens.sum())
            assert (cands.warmup_tokens <= warm_start_cost(world.catalog.levels, 8)).all()
            assert (cands.expansion_tokens > 0).all(), (budget_x, cands.expansion_tokens)
            assert bool(cands.valid.all())


# Found by hypothesis: "3" is the second most likely first code but "3-0" the most likely SID. With
# beta = 0 selection always descends "0" -> "0-1"; once "0" is fully expanded nothing on that path can
# grow, the search stalls with 12 of 21 tokens unspent, and "3" never gets a child.
PINNED_LIKELIHOOD = pinned_case(WorldConfig(n_items=16, levels=2, codebook_sizes=(4, 4), n_clusters=2, n_users=40,
                                            history_len=3, seed=0), 0, [[13, 9, 8]])


@SETTINGS
@given(cases(max_items=24, max_queries=3), st.integers(2, 8), st.integers(1, 7))
@example(PINNED_LIKELIHOOD, 2, 1)
def test_ved_with_likelihood_value_is_a_likelihood_search(case, n_candidates, warm_beam):
    """lambda = beta = 0, V(s) = log pi(y_<=l | x), and a budget that can evaluate every node of the
    catalog's trie: VED's candidates are the global top-|C| SIDs by log pi(y|x)."""
    cat = case.catalog
    n_candidates = min(n_candidates, cat.n_items)
    cfg = DecodeConfig(n_candidates=n_candidates, warm_beam=min(warm_beam, n_candidates - 1), lam=0.0, beta=0.0,
                       seed=case.seed)
    budget = max(cat.n_nodes, warm_start_cost(cat.levels, cfg.warm_beam) + 1)
    cands = ved_decode(case.policy, case.histories, likelihood_value, cfg, budget=budget)
    full = all_token_logp(case.policy, case.histories).sum(-1)
    for b in range(len(case.histories)):
        order = np.argsort(-full[b], kind="stable")
        got, got_lp = valid_sets(cands, b)
        if full[b, order[n_candidates - 1]] - full[b, order[n_candidates]] > 1e-4:
            assert got == {tuple(s) for s in cat.sids[order[:n_candidates]].tolist()}, (
                f"query {b}: VED spent {cands.cost_tokens[b]} of {budget} tokens "
                f"({cands.expansion_tokens[b]} on expansion), returned log-probs {np.round(got_lp, 3).tolist()}, "
                f"the top-{n_candidates} are {np.round(full[b, order[:n_candidates]], 3).tolist()}"
            )


# ---------------------------------------------------------------------------------------------
# Sampling: distinct, and at temperature -> 0 the top of the tempered distribution
# ---------------------------------------------------------------------------------------------


def tempered_logq(catalog, token_logp: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """(N,) log q(y | x) of every catalog SID for one query, q tempered (and top-K cut) step by step:
    q(y_l | x, y_<l) = softmax over the valid children c of log pi(c | x, y_<l) / T."""
    children: dict[tuple, dict[int, float]] = {}
    for i, sid in enumerate(catalog.sids.tolist()):
        for lvl, code in enumerate(sid):
            children.setdefault(tuple(sid[:lvl]), {})[code] = token_logp[i, lvl]
    out = np.zeros(catalog.n_items)
    for i, sid in enumerate(catalog.sids.tolist()):
        for lvl, code in enumerate(sid):
            lp = np.array(list(children[tuple(sid[:lvl])].values())) / temperature
            mine = children[tuple(sid[:lvl])][code] / temperature
            if top_k is not None and top_k < len(lp):
                kth = np.sort(lp)[::-1][top_k - 1]
                if mine < kth:
                    out[i] = -np.inf
                lp = lp[lp >= kth]
            out[i] += mine - np.logaddexp.reduce(lp)
    return out


# Found by hypothesis: 4 valid first codes, |C| = 5. A beam wider than the valid children must not keep
# invalid ones.
PINNED_NARROW = pinned_case(WorldConfig(n_items=16, levels=2, codebook_sizes=(4, 5), n_clusters=2, n_users=40,
                                        history_len=3, seed=0), 0, [[1, 13, 7]])


@SETTINGS
@given(cases(max_items=32), st.integers(1, 8), st.one_of(st.none(), st.integers(1, 3)), st.integers(0, 3))
@example(PINNED_NARROW, 5, None, 0)
def test_sampling_at_low_temperature_returns_the_top_of_the_tempered_distribution(case, n_candidates, top_k, seed):
    """Stochastic beam search draws |C| SIDs without replacement from q: as T -> 0 (Gumbel noise O(1)
    against log q gaps O(1/T)) the draw is the top-|C| of q. q is tempered *per step*, so for |C| > 1
    this is not beam search's top-|C| by the joint log pi(y|x); for |C| = 1 both are the greedy SID."""
    temperature = 1e-4
    n_candidates = min(n_candidates, case.catalog.n_items)
    cands = sample(case.policy, case.histories, n_candidates, temperature, top_k, seed)
    token_lp = all_token_logp(case.policy, case.histories)
    greedy = beam_search(case.policy, case.histories, 1)
    for b in range(len(case.histories)):
        logq = tempered_logq(case.catalog, token_lp[b], temperature, top_k)
        order = np.argsort(-logq, kind="stable")
        n_support = int(np.isfinite(logq).sum())
        got, _ = valid_sets(cands, b)
        assert len(got) == int(cands.valid[b].sum()), "sampled candidates must be distinct"
        assert len(got) == min(n_candidates, n_support)
        m = len(got)
        if m == n_support or logq[order[m - 1]] - logq[order[m]] > 40:
            assert got == {tuple(s) for s in case.catalog.sids[order[:m]].tolist()}
            if n_candidates == 1:  # the mode of q at T -> 0 is the greedy SID, beam search of width 1
                assert got == valid_sets(greedy, b)[0]


# ---------------------------------------------------------------------------------------------
# The public code's reranked top-b tree against brute force
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(cases(max_items=40, max_queries=3), st.integers(1, 12), st.integers(1, 4))
def test_reranked_equals_the_top_b_tree_ranked_by_the_parents_value(case, n_candidates, width):
    """Written the obvious way for one query: every node above the leaves keeps its ``width`` most likely
    children; the leaves are ranked by the oracle value of their parent, then by log pi; the best
    |C| are returned, at a cost of one token per node above the leaves."""
    n_candidates = min(n_candidates, case.catalog.n_items)
    cat, L = case.catalog, case.levels
    need = sum(width**lvl for lvl in range(L))
    budget_x = max(1.0, (need - 1) / ((L - 1) * n_candidates))
    cfg = DecodeConfig(decoder="reranked", n_candidates=n_candidates, budget_x=budget_x, warm_beam=1,
                       rerank_width=width)
    oracle = OracleValue(case.world)
    cands = decode(case.policy, case.histories, cfg, oracle.bind(case.queries))
    token_lp = all_token_logp(case.policy, case.histories)
    table = oracle.table(case.queries).numpy()
    for b in range(len(case.histories)):
        logp = prefix_logp(cat, token_lp[b])
        level, forwards = [()], 0
        for lvl in range(L):
            nxt = []
            for parent in level:
                kids = sorted({tuple(s[: lvl + 1]) for s in cat.sids.tolist() if tuple(s[:lvl]) == parent},
                              key=lambda p: -logp[p])
                nxt += kids[:width]
            forwards += len(level)  # each node above the leaves is forwarded once
            level = nxt
        value = {leaf: table[b, cat.node_of(np.array([leaf[:-1]]))[0]] for leaf in level}
        ranked = sorted(level, key=lambda leaf: (-value[leaf], -logp[leaf]))
        got = [tuple(s) for s, ok in zip(cands.sids[b].tolist(), cands.valid[b].tolist()) if ok]
        want = ranked[:n_candidates]
        keys = [(round(float(value[x]), 5), round(logp[x], 4)) for x in ranked]
        if len(set(keys)) == len(keys):  # no float near-ties in the ranking
            assert got == want
        assert int(cands.cost_tokens[b]) == forwards <= cands.budget_tokens


@SETTINGS
@given(cases(max_items=40), st.integers(2, 10), st.data())
def test_a_mixed_group_holds_the_first_set_then_the_new_items_of_the_second(case, n_candidates, data):
    """``RLConfig.group = "mix"``: beam search's candidates first, then VED's that are not among them,
    no duplicates, padded to |C|; the start token counted once."""
    n_candidates = min(n_candidates, case.catalog.n_items)
    half = n_candidates // 2
    first = beam_search(case.policy, case.histories, n_candidates - half)
    second = beam_search(case.policy, case.histories, max(half, 1), data.draw(st.sampled_from([1.0, 3.0])))
    mixed = merge_sets(first, second, n_candidates)
    assert mixed.sids.shape[1] == n_candidates
    for b in range(len(case.histories)):
        got = [tuple(s) for s, ok in zip(mixed.sids[b].tolist(), mixed.valid[b].tolist()) if ok]
        a = [tuple(s) for s, ok in zip(first.sids[b].tolist(), first.valid[b].tolist()) if ok]
        extra = [s for s, ok in zip(second.sids[b].tolist(), second.valid[b].tolist()) if ok and tuple(s) not in a]
        assert got == (a + [tuple(s) for s in extra])[:n_candidates]
        assert not mixed.valid[b, len(got):].any()
    np.testing.assert_array_equal(mixed.cost_tokens, first.cost_tokens + second.cost_tokens - 1)


@SETTINGS
@given(cases(max_items=40), st.integers(3, 10), st.sampled_from(["ved", "reranked"]))
def test_ranking_by_log_pi_reorders_the_same_set(case, n_candidates, decoder):
    """``DecodeConfig.rank = "logp"``: the value decoder's set, its cost and its log-probs are unchanged;
    only the order is, most likely first."""
    n_candidates = min(n_candidates, case.catalog.n_items)
    value = OracleValue(case.world).bind(case.queries)
    cfg = DecodeConfig(decoder=decoder, n_candidates=n_candidates, warm_beam=max(1, n_candidates // 2),
                       seed=case.seed)
    by_value = decode(case.policy, case.histories, cfg, value)
    by_logp = decode(case.policy, case.histories, dataclasses.replace(cfg, rank="logp"), value)
    np.testing.assert_array_equal(by_value.cost_tokens, by_logp.cost_tokens)
    for b in range(len(case.histories)):
        a, lp_a = valid_sets(by_value, b)
        c, lp_c = valid_sets(by_logp, b)
        assert a == c
        got = by_logp.logp[b][by_logp.valid[b]].numpy()
        assert (np.diff(got) <= 1e-6).all()  # most likely first
        assert not by_logp.valid[b, int(by_logp.valid[b].sum()):].any()  # padding last
