"""One function per claim of docs/design.md, section 5. Each takes a ``Runner`` and returns a DataFrame: one
row per (arm, metric) with the mean over seeds and its 95% interval. ``df.attrs`` carries the two
verdicts, their metrics, the paired comparisons behind them, and the per-seed values.

**Two verdicts per claim, both fixed here before any run.** The *paper* verdict judges the claim on the
paper's own metric (HR / NDCG of the held-out next item, Div, Spearman). The *truth* verdict judges it on
a measure of the true reward (the oracle affinity in the synthetic world, the semantic reward on real
data) that the effect in question actually moves: the mean true reward of the test candidates for
training claims (what RL raises), MaxReward for decoding claims (the best item the decoder reached,
Table 6's measure). HR@10 counts one item among |C| per user: with ~1,000 test users one hit is worth
0.001, and a training effect is often smaller than that, while every candidate carries a true reward.

The same presets and settings serve every claim; nothing is tuned to reach a verdict. In the
synthetic world, claims 2, 5, 7 and 8 also carry an arm whose VED is guided by the world's oracle value
(``vstar_toy.values.OracleValue``). It is reported, never part of a verdict: it tells whether a verdict
is limited by the value (the oracle arm wins where the learned one does not) or by the search (neither
wins).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..config import BEAM_1X, UPDATES
from ..evaluate import scorers, value_quality
from ..metrics import mean_ci
from ..rl import columns
from .runner import BEAM_GRPO, SFT, VSTAR, VSTAR_PLUS, Arm, Pretrained, Runner
from .stats import FAILS, HOLDS, UNSURE, Comparison, compare, not_worse, verdict_of

RANKING = ("hr@3", "hr@5", "hr@10", "ndcg@3", "ndcg@5", "ndcg@10")
TRUTH = ("mean_reward", "top1_reward", "max_reward", "reachability")


def _frame(claim: int, title: str, per_seed: dict[str, dict[str, list[float]]],
           judge: Callable[[str], list[Comparison]], paper: str, truth: str, note: str = "",
           factors: dict[str, dict[str, object]] | None = None) -> pd.DataFrame:
    """The claim's table, with both verdicts: ``judge(metric)`` lists the paired comparisons that make the
    claim on ``metric``; the paper verdict runs it on ``paper``, the truth verdict on ``truth``. ``factors``:
    what each arm varies (e.g. ``{"VED 2x": {"trained_with": "VED", "budget_x": 2.0}}``), as columns of its
    rows, so that a figure reads them rather than the arm's display name."""
    rows = []
    for arm, metrics in per_seed.items():
        for metric, vals in metrics.items():
            mean, low, high = mean_ci(vals)
            rows.append({"claim": claim, "arm": arm, **(factors or {}).get(arm, {}), "metric": metric, "mean": mean,
                         "ci_low": low, "ci_high": high, "n_seeds": len(vals)})
    comps, comps_truth = judge(paper), judge(truth)
    verdict, verdict_truth = verdict_of(comps), verdict_of(comps_truth)
    df = pd.DataFrame(rows)
    df["verdict"] = verdict
    df["verdict_truth"] = verdict_truth
    values = {m: {arm: float(np.mean(v[m])) for arm, v in per_seed.items() if m in v} for m in (paper, truth)}
    df.attrs.update(claim=claim, title=title, verdict=verdict, verdict_truth=verdict_truth, metric=paper,
                    metric_truth=truth, comparisons=comps, comparisons_truth=comps_truth, per_seed=per_seed,
                    note=note, values=values[paper], values_truth=values[truth])
    return df


def _collect(runner: Runner, arms: dict[str, Callable[[int], dict]], metrics) -> dict[str, dict[str, list[float]]]:
    """per_seed[arm][metric] = [value for each seed]; ``metrics`` None: every metric the arm returns."""
    out: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
    for seed in range(runner.settings.seeds):
        for arm, fn in arms.items():
            res = fn(seed)
            for m in (res if metrics is None else metrics):
                out[arm].setdefault(m, []).append(float(res[m]))
    return out


def _pair(per_seed, a: str, b: str, metric: str, test=compare) -> Comparison:
    """One paired comparison "a > b" on ``metric`` (``test``: ``compare`` or ``not_worse``)."""
    return Comparison.of(a, b, metric, per_seed[a][metric], per_seed[b][metric], test)


def _chain(per_seed, arms: list[str], metric: str) -> list[Comparison]:
    """Paired comparisons arms[0] > arms[1] > ... on ``metric``."""
    return [_pair(per_seed, a, b, metric) for a, b in zip(arms, arms[1:])]


def _with_oracle(runner: Runner, arms: dict, name: str, fn: Callable[[int], dict], in_quick: bool = True) -> dict:
    """``arms`` plus the oracle-guided arm ``name`` where the world has a truth (not on real data), and
    under ``--quick`` only when ``in_quick`` (its 15-minute budget keeps the oracle arm of claim 2)."""
    if runner.world_loader is not None or (runner.settings.quick and not in_quick):
        return arms
    return {**arms, name: fn}


# ----------------------------------------------------------------------------------------------
def claim_1(runner: Runner) -> pd.DataFrame:
    """Table 1: V-STAR (VED + joint loss) > beam search + GRPO > SFT (test users, every policy decoded by
    beam search, so that only training differs). Paper: NDCG@10. Truth: the candidates' mean true reward.
    The same policies decoded by VED are reported beside them."""
    policies = {"SFT": SFT, "beam+GRPO": BEAM_GRPO, "V-STAR": VSTAR, "V-STAR+": VSTAR_PLUS}
    arms = {name: (lambda s, k=key: runner.score(k, s, BEAM_1X)) for name, key in policies.items()}
    # reported outside the verdict: the same policies decoded by VED, to see whether a training effect
    # depends on the decoder it is tested with
    arms |= {f"{name}, VED-decoded": (lambda s, k=key: runner.score(k, s, {"decoder": "ved"}))
             for name, key in policies.items()}
    per_seed = _collect(runner, arms, RANKING + TRUTH)

    def judge(m):
        plus = [_pair(per_seed, "V-STAR+", b, m).aside() for b in ("beam+GRPO", "V-STAR")]
        return _chain(per_seed, ["V-STAR", "beam+GRPO", "SFT"], m) + plus

    return _frame(1, "Table 1: V-STAR > beam+GRPO > SFT", per_seed, judge, "ndcg@10", "mean_reward",
                  note="the 'VED-decoded' arms test the same policies with VED instead of beam search; V-STAR+ is "
                       "the corrected update of claim 9 (config.UPDATES['vstar+']); neither is part of a verdict")


def claim_2(runner: Runner) -> pd.DataFrame:
    """Table 2: on one trained policy (V-STAR's), decoding with VED > beam search > top-K at 1x. Paper:
    NDCG@10. Truth: MaxReward."""
    arms = {name: (lambda s, d=d: runner.score(VSTAR, s, {"decoder": d}))
            for name, d in [("VED", "ved"), ("beam", "beam"), ("top-K", "topk")]}
    arms = _with_oracle(runner, arms, "VED (oracle value)",
                        lambda s: runner.score(VSTAR, s, {"decoder": "ved"}, value="oracle"))
    per_seed = _collect(runner, arms, ("ndcg@10", "hr@10") + TRUTH)
    return _frame(2, "Table 2: decoding VED > beam > top-K", per_seed,
                  lambda m: _chain(per_seed, ["VED", "beam", "top-K"], m), "ndcg@10", "max_reward")


def claim_3(runner: Runner) -> pd.DataFrame:
    """Table 3: the expansion rule G = V + lambda H beats V only and H only (VED on V-STAR's policy).
    Paper: NDCG@10. Truth: MaxReward."""
    arms = {f"{rule}": (lambda s, r=rule: runner.score(VSTAR, s, {"decoder": "ved", "priority": r}))
            for rule in ("G", "V", "H")}
    per_seed = _collect(runner, arms, ("ndcg@10", "hr@10") + TRUTH)
    return _frame(3, "Table 3: G beats V-only and H-only", per_seed,
                  lambda m: [_pair(per_seed, "G", b, m) for b in ("V", "H")], "ndcg@10", "max_reward")


def claim_4(runner: Runner) -> pd.DataFrame:
    """Table 4: with candidates from VED, joint > Sibling-GRPO > GRPO (test: beam search). Paper: NDCG@10.
    Truth: the candidates' mean true reward."""
    objectives = [("joint", "joint"), ("Sibling-GRPO", "sibling"), ("GRPO", "grpo")]
    arms = {name: (lambda s, o=obj: runner.score(Arm("ved", o), s, BEAM_1X)) for name, obj in objectives}
    if not runner.settings.quick:  # the same three with the corrected update (claim 9), reported beside
        arms |= {f"{name}+": (lambda s, o=obj: runner.score(Arm("ved", o).where(**UPDATES["vstar+"]), s, BEAM_1X))
                 for name, obj in objectives}
    per_seed = _collect(runner, arms, ("ndcg@10", "hr@10") + TRUTH)

    def judge(m):
        plus = [c.aside() for c in _chain(per_seed, ["joint+", "Sibling-GRPO+", "GRPO+"], m)] \
            if "joint+" in per_seed else []
        return _chain(per_seed, ["joint", "Sibling-GRPO", "GRPO"], m) + plus

    return _frame(4, "Table 4: joint > Sibling-GRPO > GRPO", per_seed, judge, "ndcg@10", "mean_reward",
                  note="the '+' arms train with the corrected update of claim 9 (reported, not part of a verdict)")


def claim_5(runner: Runner) -> pd.DataFrame:
    """Table 6: at |C| = 64, VED's candidate sets are more diverse and hold a better best item than
    beam search's (top-K beside them). On V-STAR's policy. Paper: Div(C) and MaxReward both (the table's
    two columns). Truth: MaxReward alone, the half of the claim about reward."""
    arms = {name: (lambda s, d=d: runner.score(VSTAR, s, {"decoder": d, "n_candidates": 64}))
            for name, d in [("VED", "ved"), ("beam", "beam"), ("top-K", "topk")]}
    arms = _with_oracle(runner, arms, "VED (oracle value)",
                        lambda s: runner.score(VSTAR, s, {"decoder": "ved", "n_candidates": 64}, value="oracle"),
                        in_quick=False)  # VED at |C| = 64 costs 14 s per seed
    per_seed = _collect(runner, arms, ("div",) + TRUTH)

    def judge(metric):
        return [_pair(per_seed, "VED", "beam", m) for m in (("div", "max_reward") if metric == "div" else (metric,))]

    return _frame(5, "Table 6: VED has higher Div and MaxReward than beam at |C| = 64", per_seed, judge, "div",
                  "max_reward", note="the paper verdict needs both Div and MaxReward; the truth verdict MaxReward")


def claim_6(runner: Runner) -> pd.DataFrame:
    """Fig. 3: 64 temperature-1.5 samples per query; per level, Spearman of V and of log pi with the
    prefix reward. V > log pi at every level (V-STAR's model), and on log pi V-STAR > beam+GRPO > SFT
    (mean over levels). The prefix reward is the true one, so the paper's measure is already a truth
    measure: both verdicts are the same comparisons. The world's oracle and the no-learning cosine are
    reported beside V, outside the verdicts."""
    levels = runner.base.world.levels

    def rho(key):
        def fn(seed):
            w = runner.world(seed)
            if key == SFT:
                policy, head = runner.sft(seed), runner.value(seed)
            else:
                policy, head = runner.trained(seed, key)
            q = runner.test_queries(seed).take(slice(0, 200))
            r = value_quality(w, policy, q, {**scorers(w), "value": head}, n_candidates=64, seed=seed)
            out = {f"{k}_l{i + 1}": r[k][i] for k in r for i in range(levels)}
            out["logp_mean"] = float(np.mean(r["logp"]))
            return out
        return fn

    kinds = ("logp", "value", "cosine") + (("oracle",) if runner.world_loader is None else ())
    metrics = [f"{k}_l{i + 1}" for k in kinds for i in range(levels)] + ["logp_mean"]
    per_seed = _collect(runner, {"SFT": rho(SFT), "beam+GRPO": rho(BEAM_GRPO), "V-STAR": rho(VSTAR)}, metrics)
    for arm in ("SFT", "beam+GRPO"):  # the value head is V-STAR's; the oracle and cosine are reported once
        for k in kinds[1:]:
            for i in range(levels):
                per_seed[arm].pop(f"{k}_l{i + 1}")

    def judge(metric):
        comps = [Comparison.of(f"V-STAR value_l{i + 1}", f"V-STAR logp_l{i + 1}", "spearman",
                               per_seed["V-STAR"][f"value_l{i + 1}"], per_seed["V-STAR"][f"logp_l{i + 1}"])
                 for i in range(levels)]
        return comps + _chain(per_seed, ["V-STAR", "beam+GRPO", "SFT"], "logp_mean")

    return _frame(6, "Fig. 3: Spearman(V, R) > Spearman(log pi, R); V-STAR > beam+GRPO > SFT on log pi",
                  per_seed, judge, "logp_mean", "logp_mean",
                  note="Spearman against the true prefix reward: the paper's measure is the truth measure")


def claim_7(runner: Runner) -> pd.DataFrame:
    """Fig. 4: RL with candidates from VED or from (widened) beam search at matched training-time
    budgets kx = 1 + k (L-1) |C| tokens; test metrics by beam search. VED > beam at every budget, and
    VED at 1x matches beam at the largest budget. Paper: NDCG@10. Truth: the candidates' mean true reward."""
    budgets = runner.settings.budgets
    arms = {}
    for k in budgets:
        arms[f"VED {k:g}x"] = lambda s, k=k: runner.score(Arm("ved", "joint", k), s, BEAM_1X)
        arms[f"beam {k:g}x"] = lambda s, k=k: runner.score(Arm("beam", "joint", k), s, BEAM_1X)
        if not runner.settings.quick:  # the corrected update of claim 9, reported beside
            arms[f"VED+ {k:g}x"] = lambda s, k=k: runner.score(Arm("ved", "joint", k).where(**UPDATES["vstar+"]),
                                                              s, BEAM_1X)
        if not runner.settings.quick:  # --quick leaves the oracle arms out, to stay within its 15 minutes
            arms = _with_oracle(runner, arms, f"VED+oracle {k:g}x",
                                lambda s, k=k: runner.score(Arm("ved", "joint", k, "oracle"), s, BEAM_1X))
    trained_with = ("VED", "beam", "VED+", "VED+oracle")
    factors = {f"{t} {k:g}x": {"trained_with": t, "budget_x": k} for k in budgets for t in trained_with}
    per_seed = _collect(runner, arms, ("ndcg@10", "hr@10") + TRUTH)
    top = budgets[-1]

    def judge(metric):
        comps = [_pair(per_seed, f"VED {k:g}x", f"beam {k:g}x", metric) for k in budgets]
        plus = [_pair(per_seed, f"VED+ {k:g}x", f"beam {k:g}x", metric).aside()
                for k in budgets if f"VED+ {k:g}x" in per_seed]
        return comps + [_pair(per_seed, "VED 1x", f"beam {top:g}x", metric, not_worse).labelled(f"{metric} (not worse)")
                        ] + plus

    return _frame(7, "Fig. 4: VED beats beam at matched budgets; VED 1x matches beam at the top budget", per_seed,
                  judge, "ndcg@10", "mean_reward",
                  note="both arms train with the joint loss, so only the candidate construction differs; the 'VED+' "
                       "arms train with the corrected update of claim 9 (reported, not part of a verdict)",
                  factors=factors)


def claim_8(runner: Runner) -> pd.DataFrame:
    """Beyond the paper: the VED gain over beam search (SFT policy, 1x) grows with the mismatch knob and
    vanishes at m = 0. Truth: MaxReward of the true reward; "paper" (the paper's accuracy metric): NDCG@10."""
    if runner.world_loader is not None:
        raise ValueError("claim 8 sweeps the synthetic world's mismatch knob; it does not apply to real data")
    mismatches = (0.0, 0.5, 0.9)
    measures = ("max_reward", "ndcg@10", "reachability", "mean_reward")
    with_oracle = not runner.settings.quick  # --quick: within its 15 minutes, the learned value only

    def gain(m):
        def fn(seed):
            ved = runner.score(SFT, seed, {"decoder": "ved"}, mismatch=m)
            beam = runner.score(SFT, seed, BEAM_1X, mismatch=m)
            out = {k: ved[k] - beam[k] for k in measures}
            if with_oracle:
                oracle = runner.score(SFT, seed, {"decoder": "ved"}, mismatch=m, value="oracle")
                out |= {f"oracle {k}": oracle[k] - beam[k] for k in measures}
            return out
        return fn

    per_seed = _collect(runner, {f"m={m}": gain(m) for m in mismatches},
                        measures + (tuple(f"oracle {k}" for k in measures) if with_oracle else ()))

    def judge(metric):
        comps = _chain(per_seed, [f"m={m}" for m in reversed(mismatches)], metric)
        at0 = mean_ci(per_seed["m=0.0"][metric])
        vanish = UNSURE if np.isnan(at0[1]) else (HOLDS if at0[1] <= 0 <= at0[2] else FAILS)  # 0 inside the CI
        return comps + [Comparison("gain at m=0", "0", f"{metric} (vanishes)", at0[0], at0[1], at0[2],
                                   (at0[2] - at0[1]) / 2, vanish)]

    return _frame(8, "Beyond the paper: the VED gain grows with mismatch and vanishes at m = 0", per_seed, judge,
                  "ndcg@10", "max_reward",
                  note="values are VED minus beam search on the same SFT policy" + (
                      "; the 'oracle' metrics guide VED by the world's oracle value instead of V_phi (reported, not "
                      "part of a verdict)" if with_oracle else "; --quick leaves out the oracle arm"),
                  factors={f"m={m}": {"mismatch": m} for m in mismatches})


def why_arms(runner: Runner) -> dict[str, Arm]:
    """Claim 9's arms, fixed before any run: beam search + GRPO, V-STAR as written, and V-STAR with one
    change each (``RLConfig``'s update options, the learner's reward, the candidate decoder), and the two
    changes that answer the two causes named in issue 20 together (the beam baseline against the group
    mean inside a concentrated set; dropped negatives against the squeezing of unlikely items). "true
    reward" lets the learner see the oracle affinity (synthetic worlds only): it tells the reward from the
    estimator, and is never chosen as the corrected arm. "public decoder" is the paper's public code's
    value-reranked top-8 tree, at the budget its 73 tokens need (2.25x for |C| = 16, L = 3)."""
    from ..decoding.reranked import tree_cost

    levels, n = runner.base.world.levels, runner.base.decode.n_candidates
    public_x = max(1.0, (tree_cost(8, levels) - 1) / ((levels - 1) * n))
    arms = {"beam+GRPO": BEAM_GRPO, "V-STAR": VSTAR,
            "negatives dropped": VSTAR.where(negatives="drop"), "TOPR": VSTAR.where(negatives="topr"),
            "beam baseline": VSTAR.where(baseline="beam"),
            "beam baseline, negatives dropped": VSTAR.where(baseline="beam", negatives="drop"),
            "mixed group": VSTAR.where(group="mix"),
            "paper reward": VSTAR.where(reward="minionerec"),
            "public decoder": Arm("reranked", "joint", public_x, decode=(("rerank_width", 8),))}
    if runner.world_loader is None:
        arms["true reward"] = VSTAR.where(reward="affinity")
    if runner.settings.quick:  # within the 15 minutes: the two arms of claim 1 and the winner of the full run
        arms = {k: arms[k] for k in ("beam+GRPO", "V-STAR", *QUICK_WHY)}
    return arms


QUICK_WHY = ("negatives dropped",)  # the arm the full run chose on validation (docs/results/why); --quick keeps it
WHY_LRS = (None, 3e-4)  # the recipe's learning rate (RLConfig.lr) and the larger one where V-STAR fell below SFT
WHY_MEASURES = ("mean_reward", "ndcg@10", "hr@10", "max_reward")
WHY_MARKED = (columns.SFT_TOP, columns.ORACLE_BEST)  # the level-1 codes whose mass claim 9 follows
WHY_MEANS = (columns.BEAM_OVERLAP, columns.LOSS_KL)


def _why_seed(runner: Runner, arm: Arm, seed: int) -> dict:
    """One trained arm of claim 9 on one seed: test users by beam search (the verdicts) and by VED,
    validation users by beam search (the choice of the corrected arm), and its training diagnostics: the
    level-1 mass on the SFT top code and on the user's best code at the last step, the mass each moved
    over the run (sum of the per-step shifts), and means of the rest."""
    out = {k: v for k, v in runner.score(arm, seed, BEAM_1X).items() if k in WHY_MEASURES}
    out |= {f"VED {k}": v for k, v in runner.score(arm, seed, {"decoder": "ved"}).items() if k in WHY_MEASURES}
    out["valid mean_reward"] = runner.score(arm, seed, BEAM_1X, split="valid")["mean_reward"]
    log = runner.train_logs[(arm, None)][seed]
    for code in WHY_MARKED:
        out[f"last {columns.mass(code)}"] = float(log[columns.mass(code)].iloc[-1])
        out[f"moved {code}"] = float(log[columns.moved(code)].sum())
        out[f"mean {columns.pushed(code)}"] = float(log[columns.pushed(code)].mean())
    out |= {f"mean {col}": float(log[col].mean()) for col in WHY_MEANS}
    return out


def claim_9(runner: Runner) -> pd.DataFrame:
    """Beyond the paper: why training on VED's candidates does not make a better policy for beam search,
    and an update that makes it pay. Every arm of ``why_arms`` at the recipe's learning rate and at 3e-4,
    tested by beam search (and reported by VED). Each arm is compared with beam+GRPO and with V-STAR as
    written at the same learning rate. The verdict: the value-guided arm with the best validation mean
    true reward (chosen on validation users; never "true reward") against beam+GRPO at its own best
    validation learning rate. Paper: NDCG@10. Truth: the candidates' mean true reward."""
    arms, factors = {}, {}  # factors: each arm's update and learning rate, the columns of its rows
    for lr in WHY_LRS[:1] if runner.settings.quick else WHY_LRS:
        at = runner.base.rl.lr if lr is None else lr
        for name, arm in why_arms(runner).items():
            key = arm if lr is None else arm.where(lr=lr)
            arms[f"{name} @ {at:g}"] = lambda s, k=key: _why_seed(runner, k, s)
            factors[f"{name} @ {at:g}"] = {"update": name, "lr": f"{at:g}"}
    per_seed = _collect(runner, arms, None)
    valid = {arm: float(np.mean(m["valid mean_reward"])) for arm, m in per_seed.items()}
    beam_best = max((a for a in valid if factors[a]["update"] == "beam+GRPO"), key=valid.get)
    guided = [a for a in valid if factors[a]["update"] not in ("beam+GRPO", "true reward")]
    chosen = max(guided, key=valid.get)

    def judge(metric):
        lrs = sorted({f["lr"] for f in factors.values()})
        comps = [_pair(per_seed, chosen, beam_best, metric).labelled(f"{metric} (chosen on validation)")]
        for lr in lrs:
            for arm in per_seed:
                name, at = factors[arm]["update"], factors[arm]["lr"]
                if at == lr and name != "beam+GRPO":
                    comps.append(_pair(per_seed, arm, f"beam+GRPO @ {lr}", metric).aside())
                    if name != "V-STAR":
                        comps.append(_pair(per_seed, arm, f"V-STAR @ {lr}", metric).aside())
        return comps

    df = _frame(9, "Beyond the paper: why the learning half fails, and an update that pays", per_seed, judge,
                "ndcg@10", "mean_reward",
                note=f"chosen on validation users: {chosen} (validation mean true reward {valid[chosen]:.4f}) against "
                     f"{beam_best} ({valid[beam_best]:.4f}); the verdict is that comparison, the others are reported "
                     "(verdict in parentheses)", factors=factors)
    df.attrs.update(chosen=chosen, beam_best=beam_best, valid=valid)
    return df


# ----------------------------------------------------------------------------------------------
# claim 10: the learning half over a real horizon (issue 29)

HORIZON_MISMATCH = (0.5, 0.9)  # where the search should matter some, and most
HORIZON = {"steps": 1000, "eval_every": 20, "plateau_evals": 5, "plateau_gain": 0.005, "plateau_from": 300}
"""Every arm's run: at most 1,000 steps, validated every 20; from step 300 on, it stops once 5 evaluations
(100 steps) bring no gain of 0.005 in validation mean true reward over the best before them
(``rl/horizon.py: flat``). The first study ran to 400 without the floor: the rule stopped half the
value-guided runs at m = 0.9 at steps 120-220, before they took off, and every run that had taken off was
still rising at 400. The second capped at 600, where every m = 0.9 run that learned was still rising by
0.01-0.02 per 100 steps; the cap moved to 1,000 and the runs resumed (README, claim 10)."""
QUICK_HORIZON = {"steps": 60, "eval_every": 10, "plateau_evals": 3, "plateau_gain": 0.005}
ASYMRE_DELTA = 0.1  # delta of the shifted baseline, fixed before the run: about half a group's reward spread
HORIZON_MEASURES = ("mean_reward", "ndcg@10", "hr@10")
SHARPENING_KS = (1, 10, 50)
HORIZON_LATE = ("value critic", "AsymRE, item text")
"""Arms added after the study had started (their results reported, outside the choice on validation, which
stays the one fixed before the run)."""
ITEM_TEXT = (("item_text", True),)
"""A policy that reads what the value reads: each history item's embedding beside its SID tokens
(``PolicyConfig.item_text``), from its own SFT policy and value head."""


def horizon_arms(runner: Runner) -> dict[str, Arm]:
    """Claim 10's arms, fixed before any run, each trained to the horizon (``HORIZON``): beam search + GRPO,
    V-STAR as written and corrected (V-STAR+), V-STAR on a group half beam search's and half VED's (claim 9's
    mixed group), and three updates meant to make the search's finds stick, each on VED's candidates with
    the joint loss: AsymRE's shifted baseline, distillation of each group's best candidate (expert
    iteration), and advantage-weighted distillation of the whole group (AWR). Added later (``HORIZON_LATE``):
    the value as a critic, a baseline per depth from V_phi in GRPO's term (``RLConfig.critic``); AsymRE from a
    policy that reads the items' embeddings (``ITEM_TEXT``), which starts from its own SFT policy and value.
    ``--quick``: beam+GRPO, V-STAR+ and the best-candidate distillation, to a shorter horizon. A preset with
    fewer RL steps than the settings run (``tiny``, for tests) keeps its own steps and validation interval."""
    stop = QUICK_HORIZON if runner.settings.quick else HORIZON
    if runner.base.rl.steps < runner.settings.rl_steps:  # a test preset (tiny) keeps its few steps
        stop = {**stop, "steps": runner.base.rl.steps, "eval_every": runner.base.rl.eval_every, "plateau_evals": 1}
    arms = {"beam+GRPO": BEAM_GRPO, "V-STAR": VSTAR, "V-STAR+": VSTAR_PLUS,
            "AsymRE": VSTAR.where(baseline_shift=ASYMRE_DELTA), "distill best": VSTAR.where(distill="best"),
            "AWR": VSTAR.where(distill="awr"), "mixed group": VSTAR.where(group="mix"),
            "value critic": VSTAR.where(critic="value"),
            "AsymRE, item text": VSTAR.where(baseline_shift=ASYMRE_DELTA).reading(**dict(ITEM_TEXT))}
    if runner.settings.quick:
        arms = {k: arms[k] for k in ("beam+GRPO", "V-STAR+", "distill best")}
    return {name: arm.where(**stop) for name, arm in arms.items()}


def _horizon_seed(runner: Runner, arm, seed: int, m: float) -> dict:
    """One arm (or a ``Pretrained`` policy) on one seed at mismatch ``m``: test users decoded by beam search (the
    verdicts) and by VED (what the search finds on the policy now); the sharpening measures of a width-50 beam
    (``metrics.sharpening``); the validation mean true reward (the choice); the steps it trained."""
    from ..evaluate import evaluate
    from ..metrics import sharpening

    beam = runner.score(arm, seed, BEAM_1X, mismatch=m)
    out = {k: beam[k] for k in HORIZON_MEASURES}
    out["VED mean_reward"] = runner.score(arm, seed, {"decoder": "ved"}, mismatch=m)["mean_reward"]
    out["valid mean_reward"] = runner.score(arm, seed, BEAM_1X, mismatch=m, split="valid")["mean_reward"]
    sft = isinstance(arm, Pretrained)
    policy = runner.sft(seed, m, arm.policy) if sft else runner.trained(seed, arm, mismatch=m)[0]
    cfg = runner.config(seed, m, decode={**BEAM_1X, "n_candidates": max(SHARPENING_KS)}).decode
    world, q = runner.world(seed, m), runner.test_queries(seed, m)
    _, sets = evaluate(world, policy, q, cfg)
    items = np.concatenate([c.items.numpy() for c in sets])
    r = np.take_along_axis(world.affinity(q.users), np.maximum(items, 0), 1)  # the true reward of each candidate
    out |= sharpening(items, q.targets, r, items >= 0, SHARPENING_KS)
    out["steps"] = 0.0 if sft else float(len(runner.train_logs[(arm, m)][seed]))
    return out


def claim_10(runner: Runner) -> pd.DataFrame:
    """Beyond the paper: the learning half over a real horizon. At m = 0.5 and 0.9, every arm of
    ``horizon_arms`` trains until its validation curve is flat (``HORIZON``), tested by beam search; its
    transfer is the share of VED's lead over beam search on the SFT policy that the trained policy, decoded by
    beam search, took in (``rl/horizon.py: transfer``, on the same test users). The verdict, at each m: the
    value-guided arm with the best validation mean true reward (chosen on validation users, among the arms
    fixed before the run) against beam+GRPO. Paper: NDCG@10. Truth: the candidates' mean true reward."""
    from ..rl.horizon import transfer

    if runner.world_loader is not None:
        raise ValueError("claim 10 sweeps the mismatch knob, which exists only in the synthetic world")
    labels: dict[tuple[str, float], str] = {}  # (arm name, m) -> its row label
    per_seed, chosen, curves = {}, {}, {}
    for m in HORIZON_MISMATCH:
        arms, reading = horizon_arms(runner), Pretrained(ITEM_TEXT)
        named = {"SFT": SFT, **({"SFT, item text": reading} if any(a.pretrained == reading for a in arms.values())
                                else {}), **arms}
        here = {name: f"{name} @ m={m:g}" for name in named}
        start_of = {p: here[name] for name, p in named.items() if isinstance(p, Pretrained)}  # an SFT's row
        labels |= {(name, m): label for name, label in here.items()}
        ps = _collect(runner, {here[name]: (lambda s, a=arm, m=m: _horizon_seed(runner, a, s, m))
                               for name, arm in named.items()}, None)
        for name, arm in named.items():  # on the same test users as its SFT policy's two numbers of the same seed
            sft = ps[start_of[arm if isinstance(arm, Pretrained) else arm.pretrained]]
            ps[here[name]]["transfer"] = [transfer(now, b, v) for now, b, v in zip(
                ps[here[name]]["mean_reward"], sft["mean_reward"], sft["VED mean_reward"])]
        per_seed |= ps
        guided = [here[n] for n, arm in named.items()
                  if isinstance(arm, Arm) and n not in ("beam+GRPO", *HORIZON_LATE)]
        chosen[m] = max(guided, key=lambda a: float(np.mean(ps[a]["valid mean_reward"])))
        curves[m] = {name: runner.train_logs[(arm, m)] for name, arm in named.items() if isinstance(arm, Arm)}
    late = [name for name in HORIZON_LATE if name in named]

    def judge(metric):
        comps = []
        for m in HORIZON_MISMATCH:
            beam = labels[("beam+GRPO", m)]
            comps.append(_pair(per_seed, chosen[m], beam, metric).labelled(f"{metric} (chosen on validation)"))
            comps += [_pair(per_seed, label, beam, metric).aside() for (name, at), label in labels.items()
                      if at == m and name not in ("SFT", "SFT, item text", "beam+GRPO") and label != chosen[m]]
        return comps

    df = _frame(10, "Beyond the paper: the learning half over a real horizon", per_seed, judge, "ndcg@10",
                "mean_reward",
                note="chosen on validation users: " + "; ".join(f"m = {m:g}: {chosen[m]}" for m in HORIZON_MISMATCH)
                     + (f" (among the arms fixed before the run; {', '.join(late)} added later, reported only)"
                        if late else "")
                     + ". Each run stops where its validation curve is flat (experiments/claims.py: HORIZON); "
                       "transfer = (beam-decoded mean true reward - the SFT policy's) / (the SFT policy's "
                       "VED-decoded - its beam-decoded), on the same test users, each arm against the SFT policy it "
                       "started from")
    df.attrs.update(chosen=chosen, curves=curves)
    return df


CLAIMS: dict[int, Callable[[Runner], pd.DataFrame]] = {
    1: claim_1, 2: claim_2, 3: claim_3, 4: claim_4, 5: claim_5, 6: claim_6, 7: claim_7, 8: claim_8, 9: claim_9,
    10: claim_10,
}

__all__ = ["CLAIMS", "FAILS", "HOLDS", "UNSURE"] + [f"claim_{i}" for i in CLAIMS]
