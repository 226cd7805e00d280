"""The training log's columns, declared once: one row per step in a run's ``metrics.csv`` (``train.py``), written
by ``diagnostics.py`` and the loop, read by the command line's summary (``run.py``), the report, the claims,
the recipe, the demo, the explorer and ``plots.training_curves`` through these names. README, "Training
diagnostics", says how to read them.

Columns of a family (per level, per marked code) are named by the functions at the bottom. Validation
columns (``VALID_*``, ``RHO``, ``TRANSFER``) are filled every ``RLConfig.eval_every`` steps, NaN between.
"""

from __future__ import annotations

STEP = "step"
"""The step, from 1."""
SECONDS = "seconds"
"""Wall-clock seconds of the step (evaluation included)."""
LR = "lr"
"""The policy's learning rate at the step (after warm-up)."""

# -- the group the update sees (``diagnostics.diagnostics``) ------------------------------------------------
REWARD = "reward"
"""Mean of the reward R(x, y) the learner sees, over the candidates."""
REWARD_STD = "reward_std"
"""Mean over groups of the reward's standard deviation within a group."""
ZERO_VAR_SHARE = "zero_var_share"
"""Share of GRPO groups whose candidates all got the same reward: no gradient from Eq. 2."""
SIBLING_SIGNAL_SHARE = "sibling_signal_share"
"""Share of sibling groups (parents, any depth) whose child nodes differ in score: a term in Eq. 19."""
ADV_SPREAD_GLOBAL = "adv_spread_global"
"""Within-parent spread of node advantages under GRPO's global normalisation."""
ADV_SPREAD_SIBLING = "adv_spread_sibling"
"""The same spread under Sibling-GRPO's normalisation (Eq. 18)."""
TRUE_REWARD = "true_reward"
"""Mean true reward of the candidates (the truth, never what the learner sees)."""
MAX_TRUE_REWARD = "max_true_reward"
"""Mean over queries of the best candidate's true reward."""
HIT = "hit"
"""Share of queries whose group holds the logged next item."""
EXPANSION_TOKENS = "expansion_tokens"
"""VED's value-guided spend, forward tokens per query."""
BEAM_OVERLAP = "beam_overlap"
"""Share of the policy's own beam-search set that is inside the group."""

# -- the update --------------------------------------------------------------------------------------------
def loss(term: str) -> str:
    """One term of the objective as ``losses.policy_loss`` reports it: "grpo", "sibling", "kl", "distill"."""
    return f"loss_{term}"


LOSS_KL = loss("kl")
"""The KL term to the frozen SFT reference (``RLConfig.kl_estimator``); ``loss("grpo")``, ``loss("sibling")``
... the objective's other terms (``losses.policy_loss``)."""
GRAD_NORM = "grad_norm"
"""The policy's gradient norm before clipping, mean over inner epochs."""
VALUE_LOSS = "value_loss"
"""The value head's TD loss (Eq. 9); NaN without a head."""

# -- validation, every eval_every steps (``diagnostics.evaluate_policy``) ------------------------------------
VALID_HR10 = "valid_hr@10"
"""Validation HR@10 of the policy's beam-search candidates."""
VALID_NDCG10 = "valid_ndcg@10"
"""Validation NDCG@10 of the same."""
VALID_MEAN_REWARD = "valid_mean_reward"
"""Validation mean true reward of the same: what the horizon rule and the recipe judge by."""
VALID_VED_MEAN_REWARD = "valid_ved_mean_reward"
"""The same users decoded by VED: what the search finds on the policy now."""
TRANSFER = "transfer"
"""The share of VED's lead at SFT that training has carried into the policy (``horizon.transfer``)."""


SFT_TOP = "sft_top"
"""A marked code of ``mass``, ``moved``, ``pushed``: the SFT policy's most likely level-1 code."""
ORACLE_BEST = "oracle_best"
"""A marked code: the user's best item's (by true affinity; on real data the logged next item)."""


def entropy(level: int | str) -> str:
    """The policy's mean entropy over level ``level``'s codes at the decoded prefixes (1-based level)."""
    return f"entropy_l{level}"


def rho(scorer: str, level: int | str) -> str:
    """Spearman at ``level`` of ``scorer`` ("value", "logp", "oracle", "cosine") with the true prefix reward."""
    return f"rho_{scorer}_l{level}"


def mass(marked: str, level: int = 1) -> str:
    """pi of the ``marked`` code (``SFT_TOP``, ``ORACLE_BEST``) before the update; below level 1,
    pi(y*_l | x, y*_<l) along the best item's path."""
    return f"p_{marked}" if level == 1 else f"p_{marked}_l{level}"


def moved(marked: str, level: int = 1) -> str:
    """How much probability the update moved onto the marked code (``mass``)."""
    return f"dp_{marked}" if level == 1 else f"dp_{marked}_l{level}"


def pushed(marked: str) -> str:
    """The group's signed advantage mass on the marked level-1 branch, divided by |C(x)|."""
    return f"adv_{marked}"
