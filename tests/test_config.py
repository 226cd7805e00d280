"""Configs: every field rejects a bad value with a message naming Class.field, the value and the
valid range; presets construct; the bundle checks that its stages agree."""

import dataclasses
import math

import pytest

from vstar_toy.config import (
    PRESETS,
    Config,
    DecodeConfig,
    PolicyConfig,
    RLConfig,
    SeqRecConfig,
    SFTConfig,
    ValueConfig,
    WorldConfig,
    preset,
    presets,
)

STAGES = (WorldConfig, PolicyConfig, SFTConfig, ValueConfig, DecodeConfig, RLConfig, SeqRecConfig)

# (class, field, bad value, a fragment of the expected range the message must give)
BAD = [
    (WorldConfig, "n_items", 15, "an integer >= 16"),
    (WorldConfig, "levels", 0, "an integer >= 1"),
    (WorldConfig, "codebook_sizes", (16, 16), "a tuple of 3 integers in [2, 4096]"),
    (WorldConfig, "codebook_sizes", (16, 16, 1), "a tuple of 3 integers in [2, 4096]"),
    (WorldConfig, "codebook_sizes", [16, 16, 16], "a tuple of 3 integers in [2, 4096]"),
    (WorldConfig, "codebook_sizes", (2, 2, 2), "a product of codes >= n_items = 2000"),
    (WorldConfig, "embed_dim", 1, "an integer >= 2"),
    (WorldConfig, "n_clusters", 0, "an integer >= 1"),
    (WorldConfig, "n_subclusters", 0, "an integer >= 1"),
    (WorldConfig, "cluster_spread", 0.0, "a number in (0, 10]"),
    (WorldConfig, "item_spread", 11.0, "a number in (0, 10]"),
    (WorldConfig, "n_users", 9, "an integer >= 10"),
    (WorldConfig, "history_len", 0, "an integer >= 1"),
    (WorldConfig, "logged_per_user", 0, "an integer >= 1"),
    (WorldConfig, "history_len", 10_000, "an integer in [1, n_items"),
    (WorldConfig, "mismatch", 1.5, "a number in [0, 1]"),
    (WorldConfig, "mismatch", math.nan, "a number in [0, 1]"),
    (WorldConfig, "mismatch", "0.5", "a number in [0, 1]"),
    (WorldConfig, "zipf_exponent", -0.1, "a number in [0, 5]"),
    (WorldConfig, "temperature", 0.0, "a number in (0, 10]"),
    (WorldConfig, "taste_noise", -1.0, "a number in [0, 10]"),
    (WorldConfig, "val_frac", 0.5, "a number in [0, 0.5)"),
    (WorldConfig, "test_frac", 0.0, "a number in (0, 0.5)"),
    (WorldConfig, "seed", -1, "an integer >= 0"),
    (WorldConfig, "seed", True, "an integer >= 0"),
    (PolicyConfig, "d_model", 4, "an integer >= 8"),
    (PolicyConfig, "n_layers", 0, "an integer >= 1"),
    (PolicyConfig, "n_heads", 0, "an integer >= 1"),
    (PolicyConfig, "n_heads", 3, "a divisor of d_model = 64"),
    (PolicyConfig, "dropout", 0.9, "a number in [0, 0.9)"),
    (PolicyConfig, "seed", 1.5, "an integer >= 0"),
    (SFTConfig, "epochs", 0, "an integer >= 1"),
    (SFTConfig, "batch_size", 0, "an integer >= 1"),
    (SFTConfig, "lr", 0.0, "a number in (0, 1]"),
    (SFTConfig, "weight_decay", 2.0, "a number in [0, 1]"),
    (SFTConfig, "patience", 0, "an integer >= 1"),
    (SFTConfig, "eval_queries", 0, "an integer >= 1"),
    (SFTConfig, "seed", -1, "an integer >= 0"),
    (SFTConfig, "schedule", "linear", "one of constant, cosine"),
    (SFTConfig, "warmup_steps", -1, "an integer >= 0"),
    (SFTConfig, "align_weight", -0.5, "a number in [0, 10]"),
    (SeqRecConfig, "kind", "bert4rec", "one of sasrec, gru4rec"),
    (SeqRecConfig, "d_model", 4, "an integer >= 8"),
    (SeqRecConfig, "n_layers", 0, "an integer >= 1"),
    (SeqRecConfig, "n_heads", 0, "an integer >= 1"),
    (SeqRecConfig, "n_heads", 3, "a divisor of d_model = 64"),
    (SeqRecConfig, "dropout", 0.9, "a number in [0, 0.9)"),
    (SeqRecConfig, "lr", 0.0, "a number in (0, 1]"),
    (SeqRecConfig, "weight_decay", 2.0, "a number in [0, 1]"),
    (SeqRecConfig, "batch_size", 0, "an integer >= 1"),
    (SeqRecConfig, "epochs", 0, "an integer >= 1"),
    (SeqRecConfig, "patience", 0, "an integer >= 1"),
    (SeqRecConfig, "eval_queries", -1, "an integer >= 0"),
    (SeqRecConfig, "seed", -1, "an integer >= 0"),
    (ValueConfig, "inputs", "text", "one of semantic, backbone"),
    (ValueConfig, "hidden", 3, "an integer >= 4"),
    (ValueConfig, "gamma", 0.0, "a number in (0, 1]"),
    (ValueConfig, "gamma", 1.01, "a number in (0, 1]"),
    (ValueConfig, "step_weights", (1.0, 0.5, 0.3), "positive, non-decreasing"),
    (ValueConfig, "step_weights", (0.0, 0.5, 1.0), "positive, non-decreasing"),
    (ValueConfig, "step_weights", (), "positive, non-decreasing"),
    (ValueConfig, "step_weights", [0.3, 0.5, 1.0], "a tuple of positive"),
    (ValueConfig, "lr", 2.0, "a number in (0, 1]"),
    (ValueConfig, "pretrain_steps", -1, "an integer >= 0"),
    (ValueConfig, "pretrain_queries", 0, "an integer >= 1"),
    (ValueConfig, "pretrain_candidates", 1, "an integer >= 2"),
    (ValueConfig, "seed", -1, "an integer >= 0"),
    (DecodeConfig, "decoder", "greedy", "one of beam, topk, temperature, ved"),
    (DecodeConfig, "n_candidates", 0, "an integer >= 1"),
    (DecodeConfig, "budget_x", 0.5, "a number in [1, 16]"),
    (DecodeConfig, "warm_beam", 0, "an integer >= 1"),
    (DecodeConfig, "warm_beam", 16, "an integer in [1, n_candidates) = [1, 16)"),
    (DecodeConfig, "lam", -0.1, "a number in [0, 1e+06]"),
    (DecodeConfig, "beta", -1.0, "a number in [0, 1e+06]"),
    (DecodeConfig, "priority", "Q", "one of G, V, H"),
    (DecodeConfig, "root_gate", "ajar", "one of open, closed"),
    (DecodeConfig, "shapes", "ragged", "one of exact, fixed"),
    (DecodeConfig, "rank", "hr", "one of value, logp"),
    (DecodeConfig, "top_k", 0, "an integer >= 1"),
    (DecodeConfig, "temperature", 0.0, "a number in (0, 100]"),
    (DecodeConfig, "seed", -1, "an integer >= 0"),
    (RLConfig, "steps", 0, "an integer >= 1"),
    (RLConfig, "batch_queries", 0, "an integer >= 1"),
    (RLConfig, "objective", "ppo", "one of grpo, sibling, joint"),
    (RLConfig, "grpo_weight", -1.0, "a number in [0, 1e+06]"),
    (RLConfig, "sibling_weight", math.inf, "a number in [0, 1e+06]"),
    (RLConfig, "reward", "ndcg", "one of hit, semantic, affinity, minionerec"),
    (RLConfig, "lr", 0.0, "a number in (0, 1]"),
    (RLConfig, "kl_coef", -1e-3, "a number in [0, 1e+06]"),
    (RLConfig, "clip_eps", 1.5, "a number in [0, 1]"),
    (RLConfig, "adv_eps", 0.0, "a number in (0, 1]"),
    (RLConfig, "adv_ddof", 2, "0 (population std) or 1 (sample std)"),
    (RLConfig, "sibling_norm", "nodes", "one of tokens, candidates"),
    (RLConfig, "inner_epochs", 0, "an integer >= 1"),
    (RLConfig, "warmup_steps", -1, "an integer >= 0"),
    (RLConfig, "optimizer", "sgd", "one of adam, adamw"),
    (RLConfig, "max_grad_norm", 0.0, "a number in (0, 1e+06]"),
    (RLConfig, "value_updates", -1, "an integer >= 0"),
    (RLConfig, "eval_every", 0, "an integer >= 1"),
    (RLConfig, "eval_queries", 0, "an integer >= 1"),
    (RLConfig, "seed", -1, "an integer >= 0"),
    (RLConfig, "baseline", "median", "one of group, beam"),
    (RLConfig, "negatives", "clip", "one of keep, drop, topr"),
    (RLConfig, "group", "both", "one of decoder, mix"),
    (RLConfig, "kl_estimator", "k4", "one of k3, k1, k2"),
    (RLConfig, "baseline_shift", -0.1, "a number in [0, 1]"),
    (RLConfig, "distill", "clone", "one of none, best, awr"),
    (RLConfig, "distill_weight", -1.0, "a number in [0, 1e+06]"),
    (RLConfig, "awr_tau", 0.0, "a number in (0, 100]"),
    (RLConfig, "critic", "td", "one of none, value"),
    (RLConfig, "plateau_evals", -1, "an integer >= 0"),
    (RLConfig, "plateau_gain", 2.0, "a number in [0, 1]"),
    (RLConfig, "plateau_from", -1, "an integer >= 0"),
    (DecodeConfig, "rerank_width", 0, "an integer >= 1"),
    (ValueConfig, "user", "last", "one of mean, mean+last"),
    (PolicyConfig, "item_text", 1, "True or False"),
]


@pytest.mark.parametrize(
    "cls, name, bad, expected", BAD, ids=[f"{c.__name__}.{f}={v!r}" for c, f, v, _ in BAD]
)
def test_bad_field_raises_naming_field_value_and_range(cls, name, bad, expected):
    with pytest.raises(ValueError) as err:
        cls(**{name: bad})
    msg = str(err.value)
    assert msg.startswith(f"{cls.__name__}.{name} = {bad!r} is invalid: expected "), msg
    assert expected in msg, msg


def test_every_field_of_every_stage_is_tested():
    covered = {(c, f) for c, f, _, _ in BAD}
    every = {(c, f.name) for c in STAGES for f in dataclasses.fields(c)}
    assert every - covered == set()


def test_val_plus_test_frac_leaves_training_users():
    with pytest.raises(ValueError, match=r"WorldConfig\.test_frac = 0\.45 .*val_frac \+ test_frac < 0\.9"):
        WorldConfig(val_frac=0.45, test_frac=0.45)


@pytest.mark.parametrize(
    "cls, kw",
    [
        (WorldConfig, dict(mismatch=0.0)),
        (WorldConfig, dict(mismatch=1.0)),
        (WorldConfig, dict(val_frac=0.0)),
        (WorldConfig, dict(n_items=16, codebook_sizes=(2, 2, 4))),
        (WorldConfig, dict(levels=2, codebook_sizes=(64, 64))),
        (PolicyConfig, dict(dropout=0.0, d_model=8, n_heads=8)),
        (ValueConfig, dict(gamma=1.0, step_weights=(1.0, 1.0, 1.0))),
        (DecodeConfig, dict(budget_x=16.0, warm_beam=15)),
        (RLConfig, dict(clip_eps=0.0, value_updates=0)),
    ],
)
def test_boundary_values_are_accepted(cls, kw):
    cfg = cls(**kw)
    assert all(getattr(cfg, k) == v for k, v in kw.items())


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorldConfig().mismatch = 0.9


# -- presets and the bundle --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_construct(name):
    cfg = preset(name)
    assert isinstance(cfg, Config)
    assert len(cfg.value.step_weights) == cfg.world.levels


def test_named_presets_say_what_they_set():
    assert presets.high_mismatch().world.mismatch == 0.9
    assert presets.no_mismatch().world.mismatch == 0.0
    p = presets.paper()
    assert p.world.codebook_sizes == (256, 256, 256) and p != presets.cpu_demo()  # its name promises the scale
    assert (p.decode.n_candidates, p.decode.warm_beam, p.decode.lam) == (16, 8, 0.1)
    assert (p.value.gamma, p.value.step_weights, p.rl.kl_coef) == (0.99, (0.3, 0.5, 1.0), 1e-3)
    default = presets.cpu_demo().world
    assert default.n_users * default.test_frac >= 1000  # one test hit is worth less than 0.001 HR


def test_overlay_keeps_what_was_not_given():
    cfg = presets.tiny().overlay(decode={"n_candidates": None, "budget_x": 2.0, "priority": None})
    assert (cfg.decode.n_candidates, cfg.decode.budget_x, cfg.decode.priority) == (8, 2.0, "G")


def test_samplers_refuse_a_budget_they_cannot_spend():
    for decoder in ("topk", "temperature"):
        with pytest.raises(ValueError, match=rf"budget_x = 2\.0 is invalid: expected 1 for the {decoder} decoder"):
            DecodeConfig(decoder=decoder, budget_x=2.0)
    assert DecodeConfig(decoder="beam", budget_x=2.0).budget_x == 2.0


def test_the_config_accepts_exactly_the_registered_decoders():
    from vstar_toy.decoding import DECODERS

    for name in DECODERS:
        assert DecodeConfig(decoder=name).decoder == name
    with pytest.raises(ValueError, match="decoder = 'greedy' is invalid: expected one of " + ", ".join(DECODERS)):
        DecodeConfig(decoder="greedy")


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="'nope'") as err:
        preset("nope")
    for name in PRESETS:
        assert name in str(err.value)


def test_step_weights_must_match_levels():
    with pytest.raises(
        ValueError, match=r"ValueConfig\.step_weights = \(1\.0, 1\.0\).*WorldConfig\.levels = 3"
    ):
        Config(value=ValueConfig(step_weights=(1.0, 1.0)))
    two = Config(
        world=WorldConfig(levels=2, codebook_sizes=(64, 64)), value=ValueConfig(step_weights=(0.5, 1.0))
    )
    assert two.world.levels == 2


def test_replace_validates_the_changed_stage():
    cfg = Config().replace(world={"mismatch": 0.9}, rl={"objective": "grpo"})
    assert (cfg.world.mismatch, cfg.rl.objective) == (0.9, "grpo")
    with pytest.raises(ValueError, match=r"WorldConfig\.mismatch = 2"):
        Config().replace(world={"mismatch": 2})
