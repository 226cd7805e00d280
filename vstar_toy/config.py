"""Configuration: frozen dataclasses, one per stage, validated on construction.

Every field carries a docstring with its paper symbol (where there is one), its valid range and
where the default comes from. A bad value raises one ``ConfigError`` (a ``ValueError``) that names the
field, the value and the valid range, e.g.::

    >>> WorldConfig(mismatch=1.5)
    Traceback (most recent call last):
    ...
    vstar_toy.config.ConfigError: WorldConfig.mismatch = 1.5 is invalid: expected a number in [0, 1]

A field that names one of a few options has a ``Literal`` type: its choices are declared there once
(``choices``), checked on construction and offered by the command line. Named presets at the bottom
(``presets.cpu_demo()``, ``presets.paper()`` ...) bundle the stages
into one :class:`Config` and say in one line why their values are what they are.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args, get_origin, get_type_hints

# ----------------------------------------------------------------------------------------------
# validation helpers


class ConfigError(ValueError):
    """A field's value outside its range: the message names the class, the field, the value and what was
    expected; the command line reads ``field`` to name the flag the user typed."""

    def __init__(self, cls: type, field: str, value: object, expected: str) -> None:
        super().__init__(f"{cls.__name__}.{field} = {value!r} is invalid: expected {expected}")
        self.cls, self.field, self.value, self.expected = cls, field, value, expected


def _fail(obj: object, name: str, expected: str) -> None:
    raise ConfigError(type(obj), name, getattr(obj, name), expected)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_at_least(obj: object, name: str, lo: int) -> None:
    v = getattr(obj, name)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
        _fail(obj, name, f"an integer >= {lo}")


def _number_in(obj: object, name: str, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    v = getattr(obj, name)
    ok = _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        _fail(obj, name, f"a number in {lb}{lo:g}, {hi:g}{rb}")


@functools.cache
def choices(cls: type) -> dict[str, tuple[str, ...]]:
    """The fields of the config class ``cls`` that name one of a few options (a ``Literal`` type), with
    their options: the one place a field's choices are declared (the command line offers them too).

    >>> choices(DecodeConfig)["priority"]
    ('G', 'V', 'H')
    """
    return {name: get_args(t) for name, t in get_type_hints(cls).items() if get_origin(t) is Literal}


def _check_choices(obj: object) -> None:
    for name, options in choices(type(obj)).items():
        if getattr(obj, name) not in options:
            _fail(obj, name, f"one of {', '.join(options)}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the config class ``cls``, whitespace joined into one paragraph:
    the one place a knob is documented, read by the command line's ``--help`` and the explorer's knobs.
    (Python keeps no attribute docstrings at run time; they are read from the class's source.)

    >>> field_docs(WorldConfig)["levels"]
    'SID length L (paper Sec. 3.1), >= 1. Default 3 as in the paper (Sec. 5.1).'
    """
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


# ----------------------------------------------------------------------------------------------
# the synthetic world (docs/design.md, section 3)


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic SID-tree world: catalog, users, exposure bias. Defaults: docs/design.md, section 3."""

    n_items: int = 2000
    """Number of catalog items, >= 16. Default ~2,000 so that a CPU decodes it in milliseconds."""
    levels: int = 3
    """SID length L (paper Sec. 3.1), >= 1. Default 3 as in the paper (Sec. 5.1)."""
    codebook_sizes: tuple[int, ...] = (16, 16, 16)
    """Codes per level K_l, one per level, each in [2, 4096]. 16 on CPU; the paper's RQ-VAE uses 256."""
    embed_dim: int = 16
    """Dimension of item embeddings e(i) and user tastes u, >= 2."""
    n_clusters: int = 12
    """Top-level components of the hierarchical Gaussian mixture, >= 1."""
    n_subclusters: int = 4
    """Sub-components per top-level component, >= 1."""
    cluster_spread: float = 0.35
    """Std of sub-cluster centres around their cluster centre (unit-norm centres), in (0, 10]."""
    item_spread: float = 0.2
    """Std of item embeddings around their sub-cluster centre, in (0, 10]."""
    n_users: int = 4000
    """Number of users, >= 10; split by user into train / validation / test. 4,000 at the default
    fractions: 2,400 train, 400 validation and 1,200 test users, so that one test hit is worth less
    than 0.001 HR."""
    history_len: int = 10
    """Logged history length per user, >= 1 (MiniOneRec keeps up to 10 earlier items)."""
    logged_per_user: int = 8
    """Logged next items per user, >= 1: the (history -> next item) pairs SFT learns from."""
    mismatch: float = 0.5
    """The probability-reward mismatch knob m, in [0, 1]: logged next items follow
    log P_log(i|u) = (1 - m) * a(u, i) / tau + m * log pop(i) + const. 0: logs follow true affinity;
    near 1: logs follow popularity (Sec. 3.2)."""
    zipf_exponent: float = 1.2
    """Zipf exponent s of popularity over level-1 branches and over items within a branch, in [0, 5]."""
    temperature: float = 0.1
    """Affinity temperature tau of the softmax that draws the ground-truth next item, in (0, 10]."""
    taste_noise: float = 0.5
    """Std of a user's taste around the item cluster it is drawn from, in [0, 10]."""
    val_frac: float = 0.1
    """Share of users held out for validation, in [0, 0.5)."""
    test_frac: float = 0.3
    """Share of users held out for test, in (0, 0.5)."""
    seed: int = 0
    """Seed of everything in the world, >= 0. Same seed, same world bit for bit."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "n_items", 16)
        _int_at_least(self, "levels", 1)
        cs = self.codebook_sizes
        if not (
            isinstance(cs, tuple)
            and len(cs) == self.levels
            and all(isinstance(k, int) and 2 <= k <= 4096 for k in cs)
        ):
            _fail(self, "codebook_sizes", f"a tuple of {self.levels} integers in [2, 4096] (one per level)")
        if math.prod(cs) < self.n_items:
            _fail(self, "codebook_sizes", f"a product of codes >= n_items = {self.n_items}")
        _int_at_least(self, "embed_dim", 2)
        _int_at_least(self, "n_clusters", 1)
        _int_at_least(self, "n_subclusters", 1)
        _number_in(self, "cluster_spread", 0, 10, lo_open=True)
        _number_in(self, "item_spread", 0, 10, lo_open=True)
        _int_at_least(self, "n_users", 10)
        _int_at_least(self, "history_len", 1)
        _int_at_least(self, "logged_per_user", 1)
        if self.history_len > self.n_items:
            _fail(self, "history_len", f"an integer in [1, n_items = {self.n_items}] (histories hold distinct items)")
        _number_in(self, "mismatch", 0, 1)
        _number_in(self, "zipf_exponent", 0, 5)
        _number_in(self, "temperature", 0, 10, lo_open=True)
        _number_in(self, "taste_noise", 0, 10)
        _number_in(self, "val_frac", 0, 0.5, hi_open=True)
        _number_in(self, "test_frac", 0, 0.5, lo_open=True, hi_open=True)
        if self.val_frac + self.test_frac >= 0.9:
            _fail(self, "test_frac", "val_frac + test_frac < 0.9 (training users are needed)")
        _int_at_least(self, "seed", 0)


# ----------------------------------------------------------------------------------------------
# the policy and its training


@dataclass(frozen=True)
class PolicyConfig:
    """The tiny causal transformer over SID tokens (policy/tiny.py), nanoGPT-shaped."""

    d_model: int = 64
    """Hidden width, >= 8 and divisible by n_heads. Small enough for SFT in about a minute on 2 cores."""
    n_layers: int = 2
    """Transformer blocks, >= 1."""
    n_heads: int = 4
    """Attention heads, >= 1."""
    dropout: float = 0.0
    """Dropout in [0, 0.9); 0 keeps SFT fast. Its draws are seeded (per SFT epoch, per RL step:
    ``seeding.seeded``), so a run is the same for a seed either way."""
    item_text: bool = False
    """Add each history item's text embedding (the catalog's, frozen, through a learned projection) to
    its SID tokens: the toy's version of an LLM that reads the items' titles in the prompt. False: the
    policy knows items by their SID tokens only. Chosen on validation users (README, "Amazon Office")."""
    seed: int = 0
    """Seed of the initial weights, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "d_model", 8)
        _int_at_least(self, "n_layers", 1)
        _int_at_least(self, "n_heads", 1)
        if self.d_model % self.n_heads:
            _fail(self, "n_heads", f"a divisor of d_model = {self.d_model}")
        _number_in(self, "dropout", 0, 0.9, hi_open=True)
        if not isinstance(self.item_text, bool):
            _fail(self, "item_text", "True or False")
        _int_at_least(self, "seed", 0)


SFTSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class SFTConfig:
    """Supervised next-item training on the logged histories (rl/sft.py)."""

    epochs: int = 20
    """Maximum passes over the training pairs, >= 1; early stopping may end sooner."""
    batch_size: int = 128
    """Users per optimiser step, >= 1."""
    lr: float = 3e-3
    """AdamW learning rate, in (0, 1]."""
    weight_decay: float = 0.01
    """AdamW weight decay, in [0, 1]."""
    patience: int = 4
    """Epochs without a better validation HR@10 before stopping, >= 1."""
    eval_queries: int = 300
    """Validation users scored per epoch (HR@10 by beam search), >= 1."""
    schedule: SFTSchedule = "constant"
    """The learning rate over training: "constant", or "cosine" (decayed to 0 by the last
    step of ``epochs``, Loshchilov & Hutter 2017), each after ``warmup_steps`` of linear warm-up."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0 to ``lr``, >= 0."""
    align_weight: float = 0.0
    """Weight of the title-to-SID alignment task, in [0, 10]; 0 turns it off. Each optimiser step adds this
    times the NLL of ``batch_size`` catalog items' SIDs, each given its title alone
    (``TinyPolicy.encode_titles``): the item alignment of MiniOneRec and LC-Rec (Zheng et al. 2024). Needs a
    policy that reads item text (``PolicyConfig.item_text``)."""
    seed: int = 0
    """Seed of batching order, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _number_in(self, "align_weight", 0, 10)
        _int_at_least(self, "warmup_steps", 0)
        _int_at_least(self, "epochs", 1)
        _int_at_least(self, "batch_size", 1)
        _number_in(self, "lr", 0, 1, lo_open=True)
        _number_in(self, "weight_decay", 0, 1)
        _int_at_least(self, "patience", 1)
        _int_at_least(self, "eval_queries", 1)
        _int_at_least(self, "seed", 0)


SeqRecKind = Literal["sasrec", "gru4rec"]


@dataclass(frozen=True)
class SeqRecConfig:
    """A sequential recommender over item ids, the baseline a generative policy is measured against
    (``seqrec.py``): trained on the world's training windows with a softmax over the whole catalog, chosen
    epoch by validation HR@10."""

    kind: SeqRecKind = "sasrec"
    """"sasrec" (Kang & McAuley 2018: causal self-attention over the history) or "gru4rec" (Hidasi et al.
    2016: a GRU over the history)."""
    d_model: int = 64
    """Item embedding and hidden width, >= 8 (divisible by n_heads for SASRec)."""
    n_layers: int = 2
    """Self-attention blocks (SASRec) or GRU layers (GRU4Rec), >= 1."""
    n_heads: int = 1
    """Attention heads (SASRec), >= 1. The SASRec paper uses one."""
    dropout: float = 0.3
    """Dropout on embeddings and inside the blocks, in [0, 0.9). SASRec used 0.2-0.5 by data set size."""
    lr: float = 1e-3
    """Adam learning rate, in (0, 1] (both papers' setting)."""
    weight_decay: float = 0.0
    """Adam's L2 penalty, in [0, 1]."""
    batch_size: int = 256
    """Training windows per step, >= 1."""
    epochs: int = 200
    """Maximum passes over the training windows, >= 1; early stopping ends sooner."""
    patience: int = 10
    """Epochs without a better validation HR@10 before stopping, >= 1."""
    eval_queries: int = 0
    """Validation users scored per epoch, >= 0 (0: all of them; ranking the catalog is cheap)."""
    seed: int = 0
    """Seed of the initial weights, the batch order and dropout, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "d_model", 8)
        _int_at_least(self, "n_layers", 1)
        _int_at_least(self, "n_heads", 1)
        if self.kind == "sasrec" and self.d_model % self.n_heads:
            _fail(self, "n_heads", f"a divisor of d_model = {self.d_model}")
        _number_in(self, "dropout", 0, 0.9, hi_open=True)
        _number_in(self, "lr", 0, 1, lo_open=True)
        _number_in(self, "weight_decay", 0, 1)
        _int_at_least(self, "batch_size", 1)
        _int_at_least(self, "epochs", 1)
        _int_at_least(self, "patience", 1)
        _int_at_least(self, "eval_queries", 0)
        _int_at_least(self, "seed", 0)


SEQREC_TESTED: dict[str, dict] = {"sasrec": {"epochs": 183}, "gru4rec": {"lr": 3e-3, "epochs": 18}}
"""SASRec's and GRU4Rec's settings where no epoch can be chosen (``World.valid_seen``: the validation rows are
training windows), chosen on Office's 4,866 validation rows (docs/results/office_validation/choices.md, "The
policy"): the variant with the best validation HR@10, run for the epochs its validation run kept."""


ValueInputs = Literal["semantic", "backbone"]
ValueUser = Literal["mean", "mean+last"]


@dataclass(frozen=True)
class ValueConfig:
    """The value head V_phi and its TD training (Sec. 4.1, Eq. 5-9)."""

    inputs: ValueInputs = "semantic"
    """What V_phi reads besides the parent's backbone state (policy/value.py): "semantic" (the items'
    embeddings: the history's mean and the centroid of the items under the prefix; the toy's stand-in
    for an LLM that knows items by their text) or "backbone" (the backbone's states and the head's own
    code embeddings only, the paper's literal head on an id-only backbone; kept to measure the gap)."""
    user: ValueUser = "mean"
    """How the semantic head sees the user: "mean" (the mean embedding of the history's items) or
    "mean+last" (and, beside it, the latest history item's embedding with its own cosine to the prefix:
    on real data, whose histories are ordered, the latest item says more about the next one than the
    mean does; a synthetic world's histories are unordered draws of one taste). Chosen on validation
    users (README, "Amazon Office")."""
    hidden: int = 64
    """Width of the head's hidden layers, >= 4."""
    gamma: float = 0.99
    """Discount gamma of Eq. 5 and Eq. 9, in (0, 1]. Paper Sec. 5.1: 0.99."""
    step_weights: tuple[float, ...] = (0.3, 0.5, 1.0)
    """Level weights w_l of the dense returns (Eq. 8), positive and non-decreasing, one per level.
    Paper Sec. 5.1: [0.3, 0.5, 1.0]."""
    lr: float = 3e-3
    """Adam learning rate of the value head, in (0, 1]."""
    pretrain_steps: int = 150
    """TD steps on SFT-policy candidates before RL (`vstar-toy value`), >= 0. 150: the semantic head's
    rank correlation with the true prefix reward levels off near 100 on the default worlds (README)."""
    pretrain_queries: int = 64
    """Training users per pre-training step, >= 1."""
    pretrain_candidates: int = 16
    """Candidates sampled per query (temperature 1.5) to build the prefix buckets of Eq. 6, >= 2.
    16 = |C| of training (Sec. 5.1); 32 learned no better and cost twice the time."""
    seed: int = 0
    """Seed of the head's initial weights and of its training batches, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "hidden", 4)
        _number_in(self, "gamma", 0, 1, lo_open=True)
        w = self.step_weights
        if not (
            isinstance(w, tuple)
            and len(w) >= 1
            and all(_is_number(x) and x > 0 for x in w)
            and all(a <= b for a, b in zip(w, w[1:]))
        ):
            _fail(self, "step_weights", "a tuple of positive, non-decreasing numbers (one per level)")
        _number_in(self, "lr", 0, 1, lo_open=True)
        _int_at_least(self, "pretrain_steps", 0)
        _int_at_least(self, "pretrain_queries", 1)
        _int_at_least(self, "pretrain_candidates", 2)
        _int_at_least(self, "seed", 0)


Priority = Literal["G", "V", "H"]
PRIORITIES = get_args(Priority)
RootGate = Literal["open", "closed"]
Decoder = Literal["beam", "topk", "temperature", "ved", "reranked"]
DECODER_NAMES = get_args(Decoder)
"""The decoders a ``DecodeConfig`` may name; ``vstar_toy.decoding.DECODERS`` registers one function for each
(and checks that it does)."""
VALUE_DECODERS = ("ved", "reranked")  # the decoders that rank prefixes by a value
Rank = Literal["value", "logp"]
Shapes = Literal["exact", "fixed"]
BACKBONE_NAMES = ("tiny-qwen", "qwen2.5-0.5b", "qwen2.5-1.5b")
"""The Qwen2 architectures a policy can be built on by name (``policy.qwen.BACKBONES`` holds their configs, and
checks that it holds these)."""
ValueKind = Literal["learned", "oracle", "logp", "cosine"]
VALUE_KINDS = get_args(ValueKind)
"""What a value decoder ranks prefixes by (``values.make_value``): V_phi, the world's true prefix value, log pi or
the cosine of the history to the prefix's items."""


@dataclass(frozen=True)
class DecodeConfig:
    """Candidate construction: beam search, sampling and VED (Sec. 4.2)."""

    decoder: Decoder = "ved"
    """Which decoder builds C(x): one of beam, topk, temperature, ved, reranked (the paper's public
    code's reading of VED: a top-b tree reranked by the value, ``decoding/reranked.py``)."""
    n_candidates: int = 16
    """|C(x)|, the candidates per query, >= 1. Paper Sec. 5.1: 16 during training."""
    budget_x: float = 1.0
    """Budget multiplier k, in [1, 16]: B = 1 + round(k * (L - 1) * |C|) backbone forward tokens per
    query (Sec. 5.5: 1x = 1 + 2|C| for L = 3, what a beam of width |C| spends; 2x = 1 + 4|C|)."""
    warm_beam: int = 8
    """b0, the warm-start beam width of VED, in [1, |C|). Paper Sec. 5.1: 8."""
    lam: float = 0.1
    """lambda, the entropy weight of the priority G = V + lambda * H (Eq. 11), >= 0. Paper: 0.1."""
    beta: float = 0.1
    """beta, the UCB exploration weight (Eq. 13), >= 0. Not given in the paper; 0.1 here."""
    priority: Priority = "G"
    """Expansion rule (Table 3): G = V + lambda*H, V only, or H only."""
    root_gate: RootGate = "open"
    """VED's gate at the root, which Eq. 14 leaves open (the root is alone at depth 0): "open" lets
    every walk add a level-1 branch while the root has unexpanded codes (the literal reading);
    "closed" keeps the warm start's level-1 branches and spends the expansions below them."""
    rank: Rank = "value"
    """How a value decoder (ved, reranked) ranks the |C| candidates it selected by value, the order that
    HR@K and NDCG@K read: "value" (the paper's value-aware extraction: by V) or "logp" (by log pi(y|x),
    as beam search ranks). The set is the same either way. On real data, ranking by log pi is what
    validation users chose (docs/results/office_validation)."""
    shapes: Shapes = "exact"
    """How VED's iterations are shaped (``decoding/ved.py``): "exact" forwards the nodes that fire and reads the
    host once per iteration to learn how many; "fixed" forwards L rows per query every iteration, the unused
    masked, reads the host twice per search and repeats the same shapes (what a CUDA graph can capture), at L
    times the expansion's forward rows. The same candidate sets, costs and tree."""
    rerank_width: int | None = None
    """b of the reranked decoder: children kept per node, >= 1; its tree costs 1 + b + ... + b^(L-1)
    forward tokens, which must fit the budget. None: the widest b that fits (5 at 1x for |C| = 16 and
    L = 3; the public code's b = 8 needs budget_x >= 2.25)."""
    top_k: int = 4
    """K of top-K sampling (per-step candidates), >= 1."""
    temperature: float = 1.0
    """Softmax temperature of the sampling decoders, in (0, 100]."""
    seed: int = 0
    """Seed of the sampling decoders and of VED's child sampling, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "n_candidates", 1)
        _number_in(self, "budget_x", 1, 16)
        if self.decoder in ("topk", "temperature") and self.budget_x != 1:
            _fail(self, "budget_x", f"1 for the {self.decoder} decoder, which draws |C| samples at the 1x budget "
                                    "(beam and ved spend larger budgets)")
        _int_at_least(self, "warm_beam", 1)
        if self.warm_beam >= max(self.n_candidates, 2):
            _fail(self, "warm_beam", f"an integer in [1, n_candidates) = [1, {self.n_candidates})")
        _number_in(self, "lam", 0, 1e6)
        _number_in(self, "beta", 0, 1e6)
        if self.rerank_width is not None:
            _int_at_least(self, "rerank_width", 1)
        _int_at_least(self, "top_k", 1)
        _number_in(self, "temperature", 0, 100, lo_open=True)
        _int_at_least(self, "seed", 0)

    def beam_at_1x(self, n_candidates: int | None = None) -> DecodeConfig:
        """These settings with beam search at the 1x budget (``BEAM_1X``): how every policy is tested; with
        ``n_candidates``, that many beams (and VED's warm-up beam narrowed below it where it must be).

        >>> DecodeConfig().beam_at_1x(4).warm_beam
        3
        """
        return dataclasses.replace(self if n_candidates is None else self.with_candidates(n_candidates), **BEAM_1X)

    def with_candidates(self, n_candidates: int) -> DecodeConfig:
        """These settings with |C| = ``n_candidates``, VED's warm-up beam b0 narrowed below it where it must be
        (b0 < |C|).

        >>> DecodeConfig().with_candidates(4).warm_beam
        3
        """
        return dataclasses.replace(self, n_candidates=n_candidates,
                                   warm_beam=min(self.warm_beam, max(1, n_candidates - 1)))

    def ved_at_1x(self) -> DecodeConfig:
        """These settings with VED at the 1x budget (``VED_1X``): what the search finds on a policy, the
        numerator of ``rl/horizon.py: transfer``."""
        return dataclasses.replace(self, **VED_1X)


BEAM_1X = {"decoder": "beam", "budget_x": 1.0}
"""How every trained policy is tested, in training's evaluations, the CLI's summaries and the experiments:
beam search at 1x, 1 + (L-1)|C| forward tokens, with the preset's |C| (what a deployed policy would do)."""
VED_1X = {"decoder": "ved", "budget_x": 1.0}
"""What training's evaluations measure the search by: VED at the 1x budget with the preset's |C| and b0."""


Objective = Literal["grpo", "sibling", "joint"]
OBJECTIVES = get_args(Objective)
SiblingNorm = Literal["tokens", "candidates"]
SIBLING_NORMS = get_args(SiblingNorm)
Optimizer = Literal["adam", "adamw"]
Reward = Literal["hit", "semantic", "affinity", "minionerec"]
REWARDS = get_args(Reward)
Baseline = Literal["group", "beam"]
Negatives = Literal["keep", "drop", "topr"]
Distill = Literal["none", "best", "awr"]
Critic = Literal["none", "value"]
Group = Literal["decoder", "mix"]
KLEstimator = Literal["k3", "k1", "k2"]
KL_ESTIMATORS = get_args(KLEstimator)
UPDATES: dict[str, dict[str, str]] = {
    "paper": {"baseline": "group", "negatives": "keep", "group": "decoder"},
    "vstar+": {"baseline": "group", "negatives": "drop", "group": "decoder"},
}
"""Named update estimators (``RLConfig.baseline``, ``negatives``, ``group``), laid over a config by
``vstar-toy train --update NAME``: "paper" is Eq. 2 and Eq. 19 as written (the defaults); "vstar+" is the
corrected V-STAR, the arm that claim 9 chose on validation users (docs/results/why): a candidate, or a
node, that the policy would not decode itself keeps its positive advantage and loses its negative one."""


@dataclass(frozen=True)
class RLConfig:
    """The self-evolving loop (Sec. 4.4): decode -> reward -> value TD -> policy update."""

    steps: int = 60
    """Policy updates, >= 1."""
    batch_queries: int = 64
    """Training users per step, >= 1. Paper: 64 per GPU."""
    objective: Objective = "joint"
    """grpo (Eq. 2), sibling (Eq. 19), or joint = grpo_weight * GRPO + sibling_weight * Sibling-GRPO."""
    grpo_weight: float = 1.0
    """Weight of the GRPO term in the joint objective, >= 0."""
    sibling_weight: float = 1.0
    """Weight of the Sibling-GRPO term in the joint objective, >= 0."""
    reward: Reward = "semantic"
    """R(x, y): hit, semantic (cos to e(y*)), affinity (the oracle), or minionerec (the paper's public
    code: 1 for the hit, else minus a rank penalty, so most groups carry no gradient)."""
    baseline: Baseline = "group"
    """b(x) in the group advantage A = (R - b(x)) / (sigma_R + eps): "group", the group's mean reward
    (Eq. 2 as written); or "beam", the policy's own expected reward for the query, estimated by the
    learner's mean reward of the policy's beam-search set at 1x (a greedy/beam baseline as in ReMax,
    arXiv 2310.10505). "beam" costs one more beam search per training query (1 + (L-1)|C| forward
    tokens, no gradient; shared with ``negatives`` and the diagnostics) and equals Eq. 2 when the
    group is that beam set. Sibling-GRPO keeps its own baseline, the parent's mean (Eq. 18)."""
    negatives: Negatives = "keep"
    """What happens to negative advantages (Eq. 2 and Eq. 18) of candidates the policy would not have
    decoded itself: "keep" (as written); "drop" (set to 0 unless the candidate, or for a node its
    prefix, is in the policy's own beam-search set at 1x); or "topr" (tapered off-policy REINFORCE,
    arXiv 2503.14286: negatives weighted by min(1, pi/mu), positives unchanged, with the group as the
    behaviour distribution: mu = 1/|group|, pi renormalised on the group, i.e. the query's candidates
    for Eq. 2 and a parent's child nodes for Eq. 18)."""
    baseline_shift: float = 0.0
    """delta, lowered from GRPO's baseline (the group mean, or the beam baseline): A = (R - b(x) + delta) /
    (sigma_R + eps), in [0, 1] reward units. AsymRE (arXiv 2506.20520): off the policy's own samples a
    baseline below the expected reward learns better, the principled form of dropping negatives
    (``updates.shifted_baseline``). 0: Eq. 2. Sibling-GRPO keeps its parents' means."""
    critic: Critic = "none"
    """The value as a critic in GRPO's term: "none" (one advantage per candidate, Eq. 2); "value", a baseline
    per depth: the token y_l (l >= 2) is credited with R(x, y) minus V_phi of its prefix y_<l, so that a
    token is rewarded for what it adds beyond the state it was chosen in (actor-critic's state baseline,
    Sutton et al. 2000; VinePPO's per-step advantages, arXiv 2410.01679). V_phi learns the dense step
    returns of Eq. 8, not R, so per depth and group it is mapped onto R's scale by least squares
    (``updates.critic_advantages``); level 1, where every candidate shares the root, keeps the group's
    baseline. Needs a value head. Sibling-GRPO keeps its parents' means."""
    distill: Distill = "none"
    """Search distillation, a maximum-likelihood term added to the objective (``losses.distill_loss``):
    "none"; "best", imitate each group's candidate of highest learner reward (expert iteration, Anthony
    et al. 2017; AlphaZero's policy target); "awr", every candidate weighted by softmax(A / tau) of Eq. 2's
    advantage (advantage-weighted regression, Peng et al. 2019). It composes with any ``objective``."""
    distill_weight: float = 1.0
    """Weight of the distillation term, >= 0 (the policy-gradient terms keep their own weights)."""
    awr_tau: float = 1.0
    """tau of "awr" distillation, in (0, 100]: small picks the best candidates, large weighs all alike."""
    group: Group = "decoder"
    """The candidate group the update sees: "decoder" (the |C| candidates of ``DecodeConfig.decoder``)
    or "mix" (|C|/2 by beam search and |C|/2 by the decoder, each at its own 1x budget, duplicates
    removed and the set padded), so that one group contrasts the policy's own region with the
    value's (the mixing of on- and off-policy outputs of LUFFY, arXiv 2504.14945)."""
    lr: float = 1e-4
    """Learning rate of the policy, in (0, 1]. 1e-4: chosen on validation users for beam+GRPO and V-STAR as
    written (experiments/recipe.py, docs/results/recipe); the paper's 1e-5 is for a 1.5B backbone. With the
    corrected update (``vstar+``) the recipe picks 3e-4, which is not the default: at 3e-4 V-STAR as written
    diverges on a seed and four verdicts of claims 1-8 move (docs/results/claims_lr3e-4/comparison.md)."""
    kl_coef: float = 1e-3
    """KL coefficient to the frozen SFT reference, >= 0. Paper Sec. 5.1: 1e-3."""
    kl_estimator: KLEstimator = "k3"
    """The per-token estimate of KL(pi_theta || pi_ref) (Schulman, "Approximating KL divergence"):
    "k3" = exp(d) - d - 1 (unbiased, never negative; TRL's GRPO and DeepSeekMath), "k1" = -d
    (unbiased, can be negative), "k2" = d^2 / 2 (biased, low variance), with d = log pi_ref - log pi_theta."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon, in [0, 1]; 0 turns clipping off."""
    adv_eps: float = 1e-4
    """epsilon of Eq. 2 and Eq. 18, in (0, 1]. 1e-4 as in TRL and the paper's public code: under a
    continuous reward a smaller eps turns chance near-ties into full-strength advantages (rl/advantages.py)."""
    adv_ddof: int = 1
    """The standard deviation of Eq. 2 and Eq. 18: 1 = sample std (Bessel's correction; TRL and the
    paper's public code use it), 0 = population std."""
    sibling_norm: SiblingNorm = "tokens"
    """How the Sibling-GRPO node sum of Eq. 19 is averaged per query: "tokens" (/ |C(x)| L, the count
    GRPO averages over, so the joint loss weighs both terms alike) or "candidates" (/ |C(x)|, Eq. 19 as
    written: up to L times GRPO's weight). rl/losses.py explains."""
    inner_epochs: int = 1
    """Policy gradient passes over each decoded batch, >= 1. The importance ratio is 1 on the first
    pass, so the PPO clip only acts from the second; a second pass lowered the recipe's criterion at
    the chosen learning rate (V-STAR drifted away from the SFT policy: KL x4), so 1."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps (from lr / (warmup_steps + 1)), >= 0."""
    optimizer: Optimizer = "adam"
    """The policy's optimiser: adam or adamw (weight decay 0.01)."""
    max_grad_norm: float = 1.0
    """Gradient clipping of the policy update (global L2 norm), > 0."""
    value_updates: int = 1
    """Value TD updates per step, >= 0."""
    eval_every: int = 10
    """Validation every this many steps, >= 1: the policy's beam-search candidates (HR@10, NDCG@10, mean
    true reward), the same users decoded by VED (what the search finds now), and ``transfer``."""
    eval_queries: int = 256
    """Validation users per evaluation, >= 1."""
    plateau_evals: int = 0
    """The horizon rule (``rl/horizon.py: flat``), >= 0: stop before ``steps`` once the best validation
    mean true reward of the last ``plateau_evals`` evaluations is no more than ``plateau_gain`` above the
    best before them. 0: always run ``steps`` (then the maximum horizon)."""
    plateau_gain: float = 0.0
    """What counts as a gain for ``plateau_evals``, in [0, 1] (the validation mean true reward's units)."""
    plateau_from: int = 0
    """A floor under the horizon rule, >= 0: no run stops before this step, however flat its curve. Claim 10
    (README) found runs trained on VED's groups at m = 0.9 flat near SFT for ~200 steps before they took off;
    a rule without a floor stopped half of them there. 0: the rule acts from the first evaluations."""
    seed: int = 0
    """Seed of batches and decoding, >= 0."""

    def __post_init__(self) -> None:
        _check_choices(self)
        _int_at_least(self, "steps", 1)
        _int_at_least(self, "batch_queries", 1)
        _number_in(self, "grpo_weight", 0, 1e6)
        _number_in(self, "sibling_weight", 0, 1e6)
        _number_in(self, "baseline_shift", 0, 1)
        if self.critic != "none" and self.objective == "sibling":
            _fail(self, "critic", "'none' with objective 'sibling' (the critic shapes GRPO's term; Sibling-GRPO "
                                  "keeps its parents' means)")
        _number_in(self, "distill_weight", 0, 1e6)
        _number_in(self, "awr_tau", 0, 100, lo_open=True)
        _number_in(self, "lr", 0, 1, lo_open=True)
        _number_in(self, "kl_coef", 0, 1e6)
        _number_in(self, "clip_eps", 0, 1)
        _number_in(self, "adv_eps", 0, 1, lo_open=True)
        if self.adv_ddof not in (0, 1) or isinstance(self.adv_ddof, bool):
            _fail(self, "adv_ddof", "0 (population std) or 1 (sample std)")
        _int_at_least(self, "inner_epochs", 1)
        _int_at_least(self, "warmup_steps", 0)
        _number_in(self, "max_grad_norm", 0, 1e6, lo_open=True)
        _int_at_least(self, "value_updates", 0)
        _int_at_least(self, "eval_every", 1)
        _int_at_least(self, "eval_queries", 1)
        _int_at_least(self, "plateau_evals", 0)
        _number_in(self, "plateau_gain", 0, 1)
        _int_at_least(self, "plateau_from", 0)
        _int_at_least(self, "seed", 0)


# ----------------------------------------------------------------------------------------------
# bundles and presets


@dataclass(frozen=True)
class Config:
    """One experiment's settings: every stage's config in one place."""

    world: WorldConfig = field(default_factory=WorldConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def __post_init__(self) -> None:
        if len(self.value.step_weights) != self.world.levels:
            raise ConfigError(ValueConfig, "step_weights", self.value.step_weights,
                              f"one weight per SID level (WorldConfig.levels = {self.world.levels})")

    def replace(self, **stages: dict) -> Config:
        """Copy with some fields changed, stage by stage: ``cfg.replace(world={"mismatch": 0.9})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **kw) for name, kw in stages.items()}
        return dataclasses.replace(self, **changed)

    def for_real_data(self) -> Config:
        """This config with the choices made for real data on its validation rows (``REAL_DATA``): how
        the value sees the user, whether the policy reads the items' text, its dropout and SFT schedule, and
        how value decoders rank. Real histories are ordered and real items have titles; a synthetic world's
        histories are unordered draws of one taste, and its policy is meant to know items by their ids alone,
        so the presets leave these off."""
        return self.replace(**REAL_DATA)

    def overlay(self, **stages: dict) -> Config:
        """``replace`` with the fields given as None left as they are: how the command line, the
        explorer and the experiments lay the options a user gave over a preset (an option not given
        is None), so that a preset's values are never replaced by some other default.

        >>> presets.tiny().overlay(decode={"n_candidates": None, "budget_x": 2.0}).decode.n_candidates
        8
        """
        return self.replace(**{name: {k: v for k, v in kw.items() if v is not None} for name, kw in stages.items()})


REAL_DATA: dict[str, dict] = {"value": {"user": "mean+last"}, "policy": {"item_text": True, "dropout": 0.1},
                               "decode": {"rank": "logp"},
                               "sft": {"schedule": "cosine", "warmup_steps": 100, "epochs": 8, "eval_queries": 1000}}
"""The stages' fields that ``Config.for_real_data`` sets, chosen on Office's 4,866 validation rows
(docs/results/office_validation/choices.md): the value that also sees the latest item ranked prefixes better at
every level and found more next items by VED; the policy that reads the items' text had the higher NDCG@10
(and HR@10: +0.011 [+0.002, +0.019] with the SFT below); VED's set ranked by log pi had NDCG@10 0.091 against
0.068 ranked by V. SFT with dropout 0.1 and a cosine rate (warm-up 100 steps) reaching 0 after 8 epochs, the
last epoch kept: HR@10 0.156 against 0.129 for the earlier dropout 0, constant 3e-3 and early stopping on 300
rows; width 128, 4 layers, dropout 0.2, lr 1e-3, batches of 64, or 6, 12, 16 epochs were not better."""


class presets:  # noqa: N801  (a namespace of named constructors, read as `presets.paper()`)
    """Named settings. Each says in one line why its values are what they are."""

    @staticmethod
    def cpu_demo() -> Config:
        """The default: a 2,000-item world at mismatch 0.5 that runs end to end in minutes on 2 cores."""
        return Config()

    @staticmethod
    def paper() -> Config:
        """The paper's scale for the GPU path (Sec. 5.1): 256 codes per level over a 3,500-item catalog
        (the size of its Amazon data sets), |C| = 16, b0 = 8, lambda = 0.1, gamma = 0.99, w = [0.3, 0.5,
        1.0], KL 1e-3, 64 users per step. Meant for `--backbone qwen2.5-1.5b`; on a CPU it runs, slowly."""
        return Config(
            world=WorldConfig(n_items=3500, codebook_sizes=(256, 256, 256), embed_dim=32, n_clusters=24),
            decode=DecodeConfig(n_candidates=16, warm_beam=8, lam=0.1),
            value=ValueConfig(gamma=0.99, step_weights=(0.3, 0.5, 1.0)),
            rl=RLConfig(kl_coef=1e-3, batch_queries=64),
        )

    @staticmethod
    def high_mismatch() -> Config:
        """Logs that mostly follow popularity (m = 0.9): where beam search should prune the most."""
        return Config(world=WorldConfig(mismatch=0.9))

    @staticmethod
    def no_mismatch() -> Config:
        """Logs that follow true affinity (m = 0): likelihood and reward agree; VED should gain nothing."""
        return Config(world=WorldConfig(mismatch=0.0))

    @staticmethod
    def tiny() -> Config:
        """A 200-item, 2-level-deep-enough world for tests: everything runs in seconds."""
        return Config(
            world=WorldConfig(
                n_items=200, codebook_sizes=(8, 8, 8), n_clusters=4, n_subclusters=3, n_users=300,
                history_len=6, test_frac=0.1,
            ),
            policy=PolicyConfig(d_model=32, n_layers=1, n_heads=2),
            sft=SFTConfig(epochs=4, eval_queries=64),
            value=ValueConfig(pretrain_steps=10, pretrain_queries=16, pretrain_candidates=8, hidden=16),
            decode=DecodeConfig(n_candidates=8, warm_beam=4),
            rl=RLConfig(steps=4, batch_queries=16, eval_every=2, eval_queries=32),
        )


PRESETS: dict[str, Callable[[], Config]] = {
    "cpu_demo": presets.cpu_demo,
    "paper": presets.paper,
    "high_mismatch": presets.high_mismatch,
    "no_mismatch": presets.no_mismatch,
    "tiny": presets.tiny,
}


def preset(name: str) -> Config:
    """The preset called ``name``; a clear error naming the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset = {name!r} is invalid: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()
