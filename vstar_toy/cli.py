"""`vstar-toy`: the command line. Each command is a thin shell around library calls.

    vstar-toy world   --mismatch 0.9 --json       the world and its measured mismatch
    vstar-toy sft     --out runs/sft              supervised policy -> checkpoint
    vstar-toy value   --policy runs/sft           V_phi by TD on the policy's candidates
    vstar-toy decode  --decoder ved --json        decode the test split and score it
    vstar-toy train   --decoder ved --objective joint --out runs/vstar
                                                  the self-evolving RL loop (Sec. 4.4)
    vstar-toy reproduce --quick --out runs/reproduce --json
                                                  the paper's claims, verdicts and report.md
    vstar-toy why     --out runs/why              why the learning half fails, and the update that pays
    vstar-toy baselines --data amazon18-office    popular, content-NN, transitions, SFT: what to beat
    vstar-toy demo    --out runs/demo             the whole story in a few minutes

``--data amazon18-office`` (or a MiniOneRec-format directory) runs sft, value, decode, train and
reproduce on real data instead of the synthetic world.

Errors in what you typed (a bad config value, a checkpoint from another world, a budget below the
minimum) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .config import PRESETS, UPDATES, VALUE_DECODERS, Config, preset
from .files import check_output_dir

# numpy's BLAS (OpenBLAS) starts threads of its own beside torch's OpenMP threads, and on 2 cores the two
# pools spin against each other: the demo's training took 55 s with one BLAS thread and 66-69 s with the
# default (README, "Speed"). numpy's matrices here are small. Set before numpy loads; a user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Commands import the library (torch, pandas, matplotlib) in their bodies, so that `--help` and a bad
# option answer at once.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="V-STAR toolkit: value-guided decoding and Sibling-GRPO over SID prefix trees.")

Preset = Annotated[str, typer.Option("--preset", help=f"a named preset: {', '.join(PRESETS)}")]
Mismatch = Annotated[float | None, typer.Option(help="the world's mismatch knob m in [0, 1] (overrides the preset)")]
Seed = Annotated[int | None, typer.Option(help="the world's seed (overrides the preset)")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object and nothing else on stdout (progress "
                                                 "and notes still go to stderr)")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bars or notes on stderr")]
PolicyDir = Annotated[Path | None, typer.Option("--policy", help="a checkpoint from `vstar-toy sft` (default: cached)")]
Backbone = Annotated[str | None, typer.Option(
    "--backbone", help="a Qwen2 backbone instead of the tiny transformer: tiny-qwen, qwen2.5-0.5b, qwen2.5-1.5b "
    "(random weights from the config) or a local checkpoint path")]
Data = Annotated[str | None, typer.Option(
    "--data", help="real data instead of the synthetic world: amazon18-office or a MiniOneRec directory")]


def make_config(preset_name: str, mismatch: float | None = None, seed: int | None = None) -> Config:
    """The preset with the world options the user gave laid over it (``Config.overlay``)."""
    return preset(preset_name).overlay(world={"mismatch": mismatch, "seed": seed})


def load(preset_name: str, mismatch: float | None, seed: int | None, data: str | None):
    """(config, world): the synthetic world of the preset, or the real data set ``data``."""
    from .pipeline import build_world, load_data
    cfg = make_config(preset_name, mismatch, seed)
    if data is None:
        return cfg, build_world(cfg.world)
    if mismatch is not None or seed is not None:
        raise ValueError("--mismatch and --seed shape the synthetic world; they do not apply with --data")
    return cfg.for_real_data(), load_data(data)


def say_to(quiet: bool):
    """Progress and notes go to stderr, so that --json output on stdout stays clean."""
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


# ----------------------------------------------------------------------------------------------
@app.command()
def world(preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None, as_json: AsJson = False,
          quiet: Quiet = False,
          plot: Annotated[Path | None, typer.Option(help="save the SID-tree picture in this folder")] = None):
    """Build the synthetic world and print its summary (items, SIDs, branching, measured mismatch)."""
    from .pipeline import build_world
    if plot is not None:
        check_output_dir(plot, "--plot")
    cfg = make_config(preset_name, mismatch, seed)
    w = build_world(cfg.world)
    summary = w.summary()
    if as_json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
        print("\nspearman_exposure_reward: per level, rho between the logs' log-probability of a prefix and its "
              "true reward.\nNear 1 = likelihood ranks prefixes as reward does; near 0 = it does not (mismatch).")
    if plot is not None:
        from . import plots

        plot.mkdir(parents=True, exist_ok=True)
        plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), plot / "sid_tree.png")
        say_to(quiet)(f"saved {plot / 'sid_tree.png'}")


@app.command()
def sft(out: Annotated[Path, typer.Option(help="checkpoint directory to write")],
        preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None, data: Data = None,
        backbone: Backbone = None, epochs: Annotated[int | None, typer.Option(help="maximum SFT epochs")] = None,
        quiet: bool = False):
    """Supervised next-item training on the logs; writes a checkpoint that `--policy DIR` loads."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from . import checkpoint
    from .files import run_lock
    from .pipeline import make_policy
    from .rl.sft import train_sft

    cfg, w = load(preset_name, mismatch, seed, data)
    if epochs is not None:
        cfg = cfg.replace(sft={"epochs": epochs})
    policy = make_policy(w, cfg, backbone)
    log = train_sft(policy, w, cfg.sft, progress=not quiet)
    with run_lock(out):
        checkpoint.save(out, w, policy, extra={"sft_log": log, "preset": preset_name})
    if w.valid_seen:
        print(f"saved {out}: {len(log)} epochs, the last kept (the validation rows are training windows here)")
    else:
        best = max(r["valid_hr@10"] for r in log)
        print(f"saved {out}: {len(log)} epochs, best validation HR@10 = {best:.4f}")


ValueInputs = Annotated[str | None, typer.Option(
    "--value-inputs", help="what V_phi reads besides the backbone: semantic (the items' embeddings; default) or "
    "backbone (the backbone's states only)")]
ValueUser = Annotated[str | None, typer.Option(
    "--value-user", help="how the semantic V_phi sees the user: mean (of the history's embeddings) or mean+last "
    "(and the latest item's)")]


@app.command()
def value(policy: PolicyDir = None, preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
          data: Data = None, steps: Annotated[int | None, typer.Option(help="TD steps")] = None,
          value_inputs: ValueInputs = None, value_user: ValueUser = None,
          queries: Annotated[int, typer.Option(help="validation users of the Spearman measurement")] = 256,
          as_json: AsJson = False, quiet: Quiet = False):
    """Pre-train the value head V_phi by TD (Eq. 9) and measure it (Fig. 3's protocol on validation users):
    per level, the Spearman rho with the true prefix reward of V_phi, of log pi, of the world's oracle
    (synthetic worlds) and of a no-learning cosine baseline. With --policy the head is trained on that
    checkpoint and saved beside it; without, the cached SFT policy and value head are used (trained once)."""
    from . import checkpoint
    from .evaluate import scorers, value_quality
    from .pipeline import sft_policy, value_cache_dir, value_model
    from .rl.value_learning import pretrain_value

    if policy is not None:
        check_output_dir(policy, "--policy")  # the head is saved there
    cfg, w = load(preset_name, mismatch, seed, data)
    if steps is not None:
        cfg = cfg.replace(value={"pretrain_steps": steps})
    cfg = cfg.overlay(value={"inputs": value_inputs, "user": value_user})
    say = say_to(quiet)
    if policy is not None:
        pol = checkpoint.load_policy(policy, w)
        t0 = time.perf_counter()
        head, _ = pretrain_value(pol, w, cfg.value, progress=not quiet)
        seconds, trained = time.perf_counter() - t0, True
        meta = checkpoint.read_meta(policy)
        checkpoint.save(policy, w, pol, head, extra={k: v for k, v in meta.items() if k.endswith("_log")})
    else:
        pol = sft_policy(w, cfg, None, progress=not quiet, say=say)
        trained = not (value_cache_dir(w, pol, cfg) / "meta.json").exists()  # else the cached head is read
        t0 = time.perf_counter()
        head = value_model(w, pol, cfg, None, progress=not quiet, say=say)
        seconds = time.perf_counter() - t0
    rho = value_quality(w, pol, w.queries("valid", n=queries), scorers(w, head))
    out = {"world": w.name, "embedding": w.embedding, "inputs": cfg.value.inputs, "user": cfg.value.user,
           "pretrain_steps": cfg.value.pretrain_steps,
           "trained": trained, "seconds": round(seconds, 1), "queries": queries,
           "spearman": {k: [round(x, 4) for x in v] for k, v in rho.items()}}
    if as_json:
        print(json.dumps(out))
        return
    print(f"V_phi ({cfg.value.inputs} inputs) on {w.name}: {'trained' if trained else 'loaded'} in {seconds:.1f} s")
    print(f"Spearman rho with the true prefix reward, per level ({queries} validation users, Fig. 3's protocol):")
    for name, r in out["spearman"].items():
        print(f"  {name:<8} {r}")


def decode_options(cfg: Config, world, say, **given) -> Config:
    """``cfg`` with the decoding options the user gave laid over the preset's (``Config.overlay``),
    checked against the world before anything is trained. When only |C| was given and the preset's b0
    is not below it, b0 follows (VED needs b0 < |C|), and the note says so."""
    if given.get("n_candidates") is not None and given.get("warm_beam") is None:
        if cfg.decode.warm_beam >= given["n_candidates"]:
            given["warm_beam"] = max(1, given["n_candidates"] - 1)
            say(f"note: --warm-beam lowered to {given['warm_beam']} (VED's b0 must be below --candidates)")
    cfg = cfg.overlay(decode=given)
    if cfg.decode.n_candidates > world.catalog.n_items:
        raise ValueError(f"--candidates = {cfg.decode.n_candidates} is invalid: the catalog of {world.name} holds "
                         f"{world.catalog.n_items} items")
    return cfg


def named_update(name: str | None) -> dict:
    """The RLConfig fields of the named update ``name`` (``config.UPDATES``); none when not given."""
    if name is None:
        return {}
    if name not in UPDATES:
        raise ValueError(f"--update {name!r} is invalid: expected one of {', '.join(UPDATES)}")
    return UPDATES[name]


def test_split(world, queries: int | None):
    """The first ``queries`` test users (all of them when None), refusing a count the split cannot give."""
    n_split = world.size("test")
    if queries is not None and not 1 <= queries <= n_split:
        raise ValueError(f"--queries = {queries} is invalid: expected 1 .. {n_split} (the test users of {world.name})")
    return world.queries("test", n=queries)


@app.command()
def decode(decoder: Annotated[str, typer.Option(help="beam, topk, temperature, ved or reranked (the public "
                                                "code's value-reranked top-b tree)")] = "ved",
           value_kind: Annotated[str, typer.Option("--value", help="what VED ranks prefixes by: learned (V_phi), "
                                                   "oracle (the world's true prefix value; synthetic worlds only), "
                                                   "logp or cosine")] = "learned",
           value_inputs: ValueInputs = None, value_user: ValueUser = None,
           candidates: Annotated[int | None, typer.Option(help="|C|, candidates per query (default: the preset's)")]
           = None,
           budget_x: Annotated[float | None, typer.Option(
               help="budget multiplier k: 1 + k (L-1) |C| forward tokens (default: the preset's, 1)")] = None,
           warm_beam: Annotated[int | None, typer.Option(help="VED's warm-start beam b0 (default: the preset's)")]
           = None,
           priority: Annotated[str | None, typer.Option(help="VED expansion rule: G, V or H (Table 3)")] = None,
           rerank_width: Annotated[int | None, typer.Option(
               help="b of the reranked decoder (default: the widest tree within the budget)")] = None,
           rank: Annotated[str | None, typer.Option(
               help="how ved and reranked rank their set: value (the paper) or logp (default: the preset's; "
                    "logp on real data)")] = None,
           queries: Annotated[int | None, typer.Option(help="test users to decode (default: all)")] = None,
           policy: PolicyDir = None, preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
           data: Data = None, backbone: Backbone = None, as_json: AsJson = False, quiet: Quiet = False):
    """Decode the test split with one decoder and print accuracy, the true reward of the candidates,
    diversity, reachability and the budget spent."""
    from .evaluate import evaluate
    from .pipeline import sft_policy, value_model
    from .values import make_value

    cfg, w = load(preset_name, mismatch, seed, data)
    say = say_to(quiet)
    cfg = decode_options(cfg, w, say, decoder=decoder, n_candidates=candidates, budget_x=budget_x,
                         warm_beam=warm_beam, priority=priority, rerank_width=rerank_width, rank=rank
                         ).overlay(value={"inputs": value_inputs, "user": value_user})
    test = test_split(w, queries)
    guided = decoder in VALUE_DECODERS
    scorer = make_value(value_kind, w, head=None) if guided and value_kind != "learned" else None
    pol = sft_policy(w, cfg, policy, progress=not quiet, say=say, backbone=backbone)
    if guided and value_kind == "learned":
        scorer = value_model(w, pol, cfg, policy, progress=not quiet, say=say)
    metrics, _ = evaluate(w, pol, test, cfg.decode, scorer)
    metrics["decoder"] = decoder
    metrics["n_candidates"] = cfg.decode.n_candidates
    if guided:
        metrics["value"] = value_kind
    metrics["world"] = w.name
    metrics["embedding"] = w.embedding
    if as_json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:<18} {v:.4f}" if isinstance(v, float) else f"{k:<18} {v}")


@app.command()
def train(out: Annotated[Path, typer.Option(help="run directory: metrics.csv, checkpoints; an existing run resumes")],
          decoder: Annotated[str, typer.Option(help="candidates from beam (GRPO baseline) or ved (V-STAR)")] = "ved",
          objective: Annotated[str, typer.Option(help="grpo, sibling or joint (Eq. 2, Eq. 19, their sum)")] = "joint",
          steps: Annotated[int | None, typer.Option(help="policy updates (default: the preset's)")] = None,
          budget_x: Annotated[float | None, typer.Option(help="training-time decoding budget multiplier")] = None,
          candidates: Annotated[int | None, typer.Option(help="|C| per training query (default: the preset's)")]
          = None,
          lr: Annotated[float | None, typer.Option(help="the policy's learning rate (default: the preset's)")] = None,
          kl_coef: Annotated[float | None, typer.Option(help="weight of the KL to the SFT policy")] = None,
          lam: Annotated[float | None, typer.Option(help="lambda of G = V + lambda H (Eq. 11)")] = None,
          beta: Annotated[float | None, typer.Option(help="beta of VED's UCB (Eq. 13)")] = None,
          inner_epochs: Annotated[int | None, typer.Option(help="policy-gradient passes per decoded batch")] = None,
          batch_queries: Annotated[int | None, typer.Option(help="training users per step")] = None,
          reward: Annotated[str | None, typer.Option(help="hit, semantic, affinity (the oracle) or minionerec (the "
                                                         "paper's public code)")] = None,
          update: Annotated[str | None, typer.Option(
              help="a named update: paper (Eq. 2 and 19 as written) or vstar+ (the corrected V-STAR of claim 9); "
                   "--baseline, --negatives and --group override its parts")] = None,
          baseline: Annotated[str | None, typer.Option(
              help="the group advantage's baseline: group (Eq. 2) or beam (the mean reward of the policy's own "
                   "beam set)")] = None,
          negatives: Annotated[str | None, typer.Option(
              help="negative advantages of candidates the policy would not decode itself: keep, drop or topr")] = None,
          group: Annotated[str | None, typer.Option(
              help="the candidate group: decoder, or mix (half beam search, half --decoder)")] = None,
          kl_estimator: Annotated[str | None, typer.Option(help="the KL estimate: k3, k1 or k2")] = None,
          rerank_width: Annotated[int | None, typer.Option(
              help="b of the reranked decoder (default: the widest tree within the budget)")] = None,
          queries: Annotated[int | None, typer.Option(help="test users scored at the end, by beam search "
                                                      "(default: all)")] = None,
          policy: PolicyDir = None, preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
          data: Data = None, backbone: Backbone = None,
          restart: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
          as_json: AsJson = False, quiet: Quiet = False):
    """The self-evolving loop (Sec. 4.4) from the SFT policy: decode -> reward -> value TD -> policy update.
    Writes OUT/metrics.csv (one row per step), checkpoints, and OUT/final (a `--policy` checkpoint).
    Under `torchrun --nproc_per_node N -m vstar_toy.cli train ...` the batch is sharded over N processes
    (DDP; nccl on GPUs, gloo on CPU) and rank 0 writes and prints."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    import contextlib
    import copy

    from .evaluate import evaluate
    from .files import run_lock
    from .pipeline import sft_policy, value_model
    from .rl import distributed
    from .rl.train import train as run_training

    distributed.init_from_env()
    try:
        main = distributed.is_main()
        with run_lock(out) if main else contextlib.nullcontext():  # refused at once if another process writes it
            cfg, w = load(preset_name, mismatch, seed, data)
            quiet = quiet or not main
            say = say_to(quiet)
            cfg = decode_options(cfg, w, say, decoder=decoder, budget_x=budget_x, n_candidates=candidates, lam=lam,
                                 beta=beta, rerank_width=rerank_width)
            cfg = cfg.overlay(rl=named_update(update))
            cfg = cfg.overlay(rl=dict(objective=objective, steps=steps, lr=lr, kl_coef=kl_coef,
                                      inner_epochs=inner_epochs, batch_queries=batch_queries, reward=reward,
                                      baseline=baseline, negatives=negatives, group=group,
                                      kl_estimator=kl_estimator))
            test = test_split(w, queries)
            with distributed.main_first():  # rank 0 trains and caches the SFT policy; the others load it
                pol = copy.deepcopy(sft_policy(w, cfg, policy, progress=not quiet, say=say, backbone=backbone))
                head = copy.deepcopy(value_model(w, pol, cfg, policy, progress=not quiet, say=say))
            start_metrics = evaluate(w, pol, test, cfg.decode.beam_at_1x())[0] if main else None
            res = run_training(w, pol, cfg, head, run_dir=out, progress=not quiet, say=say, resume=not restart)
            if main:
                _train_summary(w, res, cfg, out, start_metrics, test, preset_name, as_json)
    finally:
        distributed.shutdown()


def _train_summary(w, res, cfg, out: Path, start_metrics: dict, test, preset_name: str, as_json: bool) -> None:
    from . import checkpoint
    from .evaluate import evaluate
    decoder, objective = cfg.decode.decoder, cfg.rl.objective
    checkpoint.save(out / "final", w, res.policy, res.value_head,
                    extra={"preset": preset_name, "decoder": decoder, "objective": objective, "steps": cfg.rl.steps})
    end_metrics, _ = evaluate(w, res.policy, test, cfg.decode.beam_at_1x())
    log = res.log
    first, last = log.head(max(1, len(log) // 5)), log.tail(max(1, len(log) // 5))
    diag = ("zero_var_share", "sibling_signal_share", "loss_kl", "grad_norm", "entropy_l1", "adv_spread_global",
            "adv_spread_sibling", "value_loss")
    measures = ("mean_reward", "top1_reward", "max_reward", "reachability", "hr@10", "ndcg@10")
    summary = {"run": str(out), "world": w.name, "decoder": decoder, "objective": objective, "steps": len(log),
               "reward_first": float(first["reward"].mean()), "reward_last": float(last["reward"].mean()),
               **{k: float(log[k].mean()) for k in diag if k in log},
               **{f"test_{k}_sft": start_metrics[k] for k in measures},
               **{f"test_{k}": end_metrics[k] for k in measures + ("hr@3", "hr@5", "ndcg@3", "ndcg@5")}}
    if as_json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:<20} {v:.4f}" if isinstance(v, float) else f"{k:<20} {v}")
        print(f"per-step metrics in {out / 'metrics.csv'}; the trained policy in {out / 'final'} (use --policy)")


@app.command()
def reproduce(out: Annotated[Path, typer.Option(help="report.md, CSVs and figures go here")] = Path("runs/reproduce"),
              claims: Annotated[str | None, typer.Option(
                  help="comma-separated claim numbers (docs/design.md, section 5; default: every claim, 1-10; "
                       "with --quick 1-9, the horizon study 10 being `vstar-toy horizon --quick`; without the "
                       "mismatch sweeps 8 and 10 on --data)")] = None,
              seeds: Annotated[int | None, typer.Option(
                  help="seeds per arm (confidence intervals need >= 2; default 3)")] = None,
              quick: Annotated[bool, typer.Option(help="smaller world, shorter training: <= 15 min on 2 cores")] =
              False,
              test_queries: Annotated[int | None, typer.Option(
                  help="test users scored per seed (default 0: the whole test split)")] = None,
              preset_name: Preset = "cpu_demo", data: Data = None, backbone: Backbone = None,
              as_json: AsJson = False, quiet: Quiet = False):
    """Reproduce the paper's claims: mean and 95% interval over seeds, a verdict per claim, report.md."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .experiments import Settings
    from .experiments import reproduce as run_claims
    from .experiments.claims import CLAIMS
    from .pipeline import load_data

    sweeps = (8, 10)  # the claims that sweep the synthetic world's mismatch knob
    try:
        ids = [c for c in CLAIMS if (c not in sweeps or data is None) and (c != 10 or not quick)] if claims is None \
            else [int(c) for c in claims.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"claims = {claims!r} is invalid: expected comma-separated integers such as 1,2,5") from None
    loader = (lambda: load_data(data)) if data is not None else None
    if data is not None and any(c in ids for c in sweeps):
        raise ValueError("claims 8 and 10 sweep the synthetic world's mismatch knob; leave them out with --data")
    settings = Settings.make(quick=quick, test_queries=test_queries, **({} if seeds is None else {"seeds": seeds}))
    summary = run_claims(ids, preset(preset_name), settings, out, progress=not quiet,
                         say=say_to(quiet), world_loader=loader, label=data or "", backbone=backbone)
    if as_json:
        print(json.dumps(summary))
    else:
        for c in summary["claims"]:
            vals = ", ".join(f"{k}: {v:.4f}" for k, v in c["values_truth"].items() if v is not None)
            print(f"claim {c['id']}: paper ({c['metric']}) {c['verdict']:<14} truth ({c['metric_truth']}) "
                  f"{c['verdict_truth']:<14} {vals}")
        print(f"report: {summary['report']}")


@app.command()
def why(out: Annotated[Path, typer.Option(help="report.md, claim_9.csv and the runs go here")] = Path("runs/why"),
        seeds: Annotated[int | None, typer.Option(help="seeds per arm (confidence intervals need >= 2; default 3)")]
        = None,
        quick: Annotated[bool, typer.Option(help="the smaller world of reproduce --quick, three arms")] = False,
        test_queries: Annotated[int | None, typer.Option(
            help="test users scored per seed (default 0: the whole test split)")] = None,
        preset_name: Preset = "cpu_demo", data: Data = None, as_json: AsJson = False, quiet: Quiet = False):
    """Why training on VED's candidates does not make a better policy for beam search, and which update
    does (claim 9, `experiments/claims.py: claim_9`): every update option against beam search + GRPO and
    V-STAR as written, at the recipe's learning rate and at 3e-4, tested by beam search and by VED."""
    reproduce(out=out, claims="9", seeds=seeds, quick=quick, test_queries=test_queries, preset_name=preset_name,
              data=data, backbone=None, as_json=as_json, quiet=quiet)


@app.command()
def horizon(out: Annotated[Path, typer.Option(help="report.md, claim_10.csv and the runs go here")] =
            Path("runs/horizon"),
            seeds: Annotated[int | None, typer.Option(help="seeds per arm (default 3)")] = None,
            quick: Annotated[bool, typer.Option(help="the smaller world of reproduce --quick, three arms, 60 steps "
                                                     "at most")] = False,
            test_queries: Annotated[int | None, typer.Option(
                help="test users scored per seed (default 0: the whole test split)")] = None,
            preset_name: Preset = "cpu_demo", as_json: AsJson = False, quiet: Quiet = False):
    """The learning half over a real horizon (claim 10, `experiments/claims.py: claim_10`): at m = 0.5 and 0.9,
    each update trained until its validation curve is flat, tested by beam search, with the share of VED's
    lead that training carried into the policy (transfer) and what RL does to the ranked list (HR@1..50).
    A run cut off resumes its finished and interrupted runs from `OUT/runs`."""
    reproduce(out=out, claims="10", seeds=seeds, quick=quick, test_queries=test_queries, preset_name=preset_name,
              data=None, backbone=None, as_json=as_json, quiet=quiet)


@app.command()
def baselines(data: Data = None, preset_name: Preset = "cpu_demo", mismatch: Mismatch = None, seed: Seed = None,
              policy: PolicyDir = None, queries: Annotated[int | None, typer.Option(help="test users (default: all)")]
              = None, as_json: AsJson = False, quiet: Quiet = False):
    """Baselines on the test split (most popular, the latest item's content nearest neighbours, item-to-item
    transitions, SASRec and GRU4Rec trained on the same windows) beside the SFT policy by beam search: HR@K
    and NDCG@K with 95% intervals over users (vstar_toy/baselines.py). What a trained policy should beat."""
    from .baselines import KS, baselines_table
    from .pipeline import sft_policy

    cfg, w = load(preset_name, mismatch, seed, data)
    test = test_split(w, queries)
    pol = sft_policy(w, cfg, policy, progress=not quiet, say=say_to(quiet))
    table = baselines_table(w, test, pol, cfg.decode, progress=not quiet)
    if as_json:
        print(json.dumps({"world": w.name, "embedding": w.embedding, "queries": len(test),
                          "rows": table.to_dict(orient="records")}, default=float))
        return
    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS] + ["SFT - it, hr@10", "SFT - it, ndcg@10"]
    print(f"{w.name}, {len(test)} test users; item embeddings: {w.embedding}")
    print(table[["baseline", *cols]].round(4).to_string(index=False))
    print("'SFT - it': the SFT policy's score minus the baseline's, paired by user (its 95% interval in --json)")


@app.command()
def recipe(out: Annotated[Path, typer.Option(help="runs, recipe.csv and recipe.md go here")] = Path("runs/recipe"),
           steps: Annotated[int | None, typer.Option(help="policy updates per run (default 60)")] = None,
           preset_name: Preset = "cpu_demo", as_json: AsJson = False, quiet: Quiet = False):
    """How the RL recipe was chosen: a learning rate x inner epochs grid, then warm-up and the joint loss's
    normalisation, for beam+GRPO and V-STAR, judged on the validation split only (experiments/recipe.py)."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .experiments.recipe import recipe_sweep

    table, chosen = recipe_sweep(preset(preset_name), out, progress=not quiet, say=say_to(quiet),
                                 **({} if steps is None else {"steps": steps}))
    if as_json:
        print(json.dumps({"chosen": chosen, "runs": table.to_dict(orient="records")}, default=float))
    else:
        print(table.round(4).to_string(index=False))
        print(f"chosen: {chosen}; table in {out / 'recipe.md'}")


# ----------------------------------------------------------------------------------------------
@app.command()
def demo(out: Annotated[Path, typer.Option(help="where the tables and figures go")] = Path("runs/demo"),
         preset_name: Preset = "high_mismatch",
         queries: Annotated[int | None, typer.Option(help="test users decoded (default: all)")] = None,
         rl_steps: Annotated[int, typer.Option(help="policy updates per training run in step 5")] = 40):
    """The whole story in a few minutes: the world and its mismatch knob, SFT, the value model, beam
    search against VED at the same budget, and a short GRPO (beam) against V-STAR (VED + joint) training."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .files import run_lock

    with run_lock(out):  # one demo writes a folder at a time
        _demo(out, preset_name, queries, rl_steps)


def _demo(out: Path, preset_name: str, queries: int | None, rl_steps: int) -> dict[str, float]:
    """The demo's five steps; returns the seconds each took, also written to ``stages.csv``."""
    import numpy as np
    import pandas as pd

    from .evaluate import scorers, value_quality
    from .pipeline import build_world, sft_policy, value_model

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:  # the seconds since the previous lap
        seconds[stage] = time.perf_counter() - t0 - sum(seconds.values())

    cfg = preset(preset_name)
    print(f"[1/5] The world ({preset_name}): items with Semantic IDs, users with hidden tastes.")
    w = build_world(cfg.world)
    _demo_world(w, cfg, out)
    lap("world")
    print("[2/5] SFT: the policy learns the logs (which follow popularity as much as taste).")
    pol = sft_policy(w, cfg, None, progress=True)
    lap("SFT")
    print("[3/5] The value model V_phi (Sec. 4.1): TD on dense semantic returns.")
    head = value_model(w, pol, cfg, None, progress=True)
    rho = value_quality(w, pol, w.queries("valid", n=200), scorers(w, head))
    print("      Spearman with the true prefix reward, per level (the oracle is the world's truth):")
    for name, r in rho.items():
        print(f"        {name:<8} {np.round(r, 3).tolist()}")
    lap("value")
    print("[4/5] Decoding the test users at the same budget (1x = 1 + 2|C| forward tokens):")
    q = test_split(w, queries)
    _demo_decoding(w, pol, head, q, cfg, out)
    lap("decoding")
    print(f"[5/5] Training from the SFT policy for {rl_steps} steps (Sec. 4.4): beam search + GRPO "
          "against V-STAR (VED + GRPO + Sibling-GRPO), as written and corrected (V-STAR+).")
    _demo_training(w, pol, head, q, cfg, rl_steps, out)
    lap("training")
    pd.DataFrame({"stage": list(seconds), "seconds": list(seconds.values())}).to_csv(out / "stages.csv", index=False)
    print(f"done in {sum(seconds.values()):.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"); tables and figures in {out}/")
    return seconds


def _demo_world(w, cfg: Config, out: Path) -> None:
    """Step 1: the world's size, its SID tree for one user, and the mismatch knob's curve."""
    from . import plots

    s = w.summary()
    print(f"      {s['items']} items, SIDs of {s['levels']} codes {s['codebook_sizes']}, {s['users']} users; "
          f"mismatch m = {s['mismatch']}")
    plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), out / "sid_tree.png")
    knob = w.mismatch_table()  # only the logging distribution depends on m: the same catalog, tastes, truth
    plots.save(plots.mismatch_curve(knob, mark=cfg.world.mismatch), out / "mismatch_knob.png")
    knob.to_csv(out / "mismatch_knob.csv", index=False)
    print("      rho(logged log-prob, true reward) per level as m grows:")
    print(knob.pivot(index="mismatch", columns="level", values="spearman").round(3).to_string())
    print(f"      -> {out / 'sid_tree.png'}, {out / 'mismatch_knob.png'}")


def _demo_decoding(w, pol, head, q, cfg: Config, out: Path) -> None:
    """Step 4: beam search, top-K and VED at 1x (and beam search and VED at 2x) on the test users, with
    the two trees of the first user drawn."""
    import pandas as pd

    from . import plots
    from .evaluate import evaluate
    from .world import sid_str

    tsid = sid_str(w.catalog.sids[q.targets[0]])
    table = []
    for name, decoder, budget_x in [("beam", "beam", 1.0), ("topk", "topk", 1.0), ("ved", "ved", 1.0),
                                    ("ved 2x", "ved", 2.0), ("beam 2x", "beam", 2.0)]:
        dcfg = cfg.replace(decode={"decoder": decoder, "budget_x": budget_x}).decode
        m, sets = evaluate(w, pol, q, dcfg, head)
        keys = ("max_reward", "mean_reward", "reachability", "hr@10", "ndcg@10", "div", "mean_cost_tokens",
                "expansion_tokens")
        table.append({"decoder": name, **{k: m[k] for k in keys}})
        if name in ("ved", "beam"):
            title = ("VED's tree for one test user (red: the ground-truth path)" if name == "ved" else
                     "Beam search's tree for the same user (x: pruned)")
            plots.save(plots.decoding_tree(sets[0].tree.to_frame(0), w.catalog.levels, target_sid=tsid,
                                           color="value" if name == "ved" else "logp", title=title),
                       out / f"{name}_tree.png")
    df = pd.DataFrame(table)
    df.to_csv(out / "decoding.csv", index=False)
    print(df.round(4).to_string(index=False))


def _demo_training(w, pol, head, q, cfg: Config, rl_steps: int, out: Path) -> None:
    """Step 5: beam search + GRPO, V-STAR and V-STAR+ trained from the SFT policy, each tested by beam search."""
    import copy

    import pandas as pd

    from . import plots
    from .rl.train import train as run_training

    logs, scores = {}, [{"policy": "SFT", **_test_row(w, pol, q, cfg)}]
    arms = [("beam+GRPO", "beam", "grpo", "paper"), ("V-STAR", "ved", "joint", "paper"),
            ("V-STAR+", "ved", "joint", "vstar+")]
    for name, decoder, objective, update in arms:
        rcfg = cfg.replace(decode={"decoder": decoder},
                           rl={"objective": objective, "steps": rl_steps, **UPDATES[update]})
        res = run_training(w, copy.deepcopy(pol), rcfg, copy.deepcopy(head), run_dir=out / "runs" / name,
                           progress=True)  # an interrupted demo resumes its runs
        logs[name] = res.log
        scores.append({"policy": name, **_test_row(w, res.policy, q, cfg),
                       "train_reward_last10": float(res.log["reward"].tail(10).mean()),
                       "adv_spread_global": float(res.log["adv_spread_global"].mean()),
                       "adv_on_best": float(res.log["adv_oracle_best"].mean()),
                       "moved_to_best": float(res.log["dp_oracle_best"].sum())})
    plots.save(plots.training_curves(logs), out / "training.png")
    trained = pd.DataFrame(scores)
    trained.to_csv(out / "training.csv", index=False)
    print("      test users, every policy decoded by beam search (one seed: see `vstar-toy reproduce` for intervals):")
    print(trained.round(4).to_string(index=False))
    print("      V-STAR and V-STAR+ train on the same VED candidates. Eq. 2 measures each against the group's mean;\n"
          "      inside VED's concentrated group, which the policy would mostly not decode itself, that leaves little\n"
          "      advantage on the branch of the user's best item (adv_on_best) and moves little probability onto it\n"
          "      (moved_to_best, level 1). V-STAR+ keeps the positive advantage of a candidate outside the policy's\n"
          "      own beam set and drops its negative one (README, 'Why the learning half failed').")


def _test_row(world, policy, queries, cfg: Config) -> dict:
    from .evaluate import evaluate
    m, _ = evaluate(world, policy, queries, cfg.decode.beam_at_1x())
    return {k: m[k] for k in ("mean_reward", "max_reward", "hr@10", "ndcg@10")}


def main() -> None:
    try:
        app()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
