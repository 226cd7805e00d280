"""`vstar-toy`: the command line. Each command is a thin shell around library calls.

    vstar-toy world | sft | value | decode | train      the pipeline, one stage at a time
    vstar-toy reproduce | why | horizon | recipe       the paper's claims, verdicts and report.md
    vstar-toy baselines | demo                         what to beat; the whole story in a few minutes

Every field of a config stage is an option of the commands that take the stage (``flags.py``: the field's
docstring is its help, ``--help`` lists them stage by stage); an option not given keeps the preset's value.
``--data amazon18-office`` (or a MiniOneRec directory) runs on real data instead of the synthetic world.
A mistake in what was typed is one line naming it and exit status 2, before any work (``flags.run_app``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from . import flags, show
from .files import check_output_dir
from .flags import AsJson, Backbone, Data, PolicyDir, Preset, Queries, Quiet, Seeds, TestQueries, Update, ValueKind

# numpy's BLAS threads spin against torch's on 2 cores (the demo's training: 55 s with one BLAS thread, 66-69 s
# without; README, "Speed"), and numpy's matrices here are small. Set before numpy loads; a user's setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Commands import the library (torch, pandas, matplotlib) in their bodies: `--help` and a bad option answer at once.

# click's plain help (rich_markup_mode=None): rich's panels took 0.45 s to draw train's ~100 options
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="V-STAR toolkit: value-guided decoding and Sibling-GRPO over SID prefix trees.")


@app.command()
@flags.stage_options("world")
def world(preset_name: Preset = "cpu_demo", as_json: AsJson = False, quiet: Quiet = False,
          plot: Annotated[Path | None, typer.Option(help="save the SID-tree picture in this folder")] = None, *, given):
    """Build the synthetic world and print its summary (items, SIDs, branching, measured mismatch)."""
    if plot is not None:
        check_output_dir(plot, "--plot")
    _, w = flags.load(preset_name, given, None)
    show.world(w.summary(), as_json)
    if plot is not None:
        from . import plots
        plot.mkdir(parents=True, exist_ok=True)
        plots.save(plots.world_tree(w, user=int(w.queries("test", n=1).users[0])), plot / "sid_tree.png")
        flags.say_to(quiet)(f"saved {plot / 'sid_tree.png'}")


@app.command()
@flags.stage_options("world", "sft", "policy")
def sft(out: Annotated[Path, typer.Option(help="checkpoint directory to write")], preset_name: Preset = "cpu_demo",
        data: Data = None, backbone: Backbone = None, quiet: Quiet = False, *, given):
    """Supervised next-item training on the logs; writes a checkpoint that `--policy DIR` loads."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from . import checkpoint
    from .files import run_lock
    from .pipeline import make_policy
    from .rl.sft import train_sft

    cfg, w = flags.load(preset_name, given, data, backbone)
    policy = make_policy(w, cfg, backbone)
    log = train_sft(policy, w, cfg.sft, progress=not quiet)
    with run_lock(out):
        checkpoint.save(out, w, policy, extra={"sft_log": log, "preset": preset_name})
    kept = "the last kept (the validation rows are training windows here)" if w.valid_seen else \
        f"best validation HR@10 = {max(r['valid_hr@10'] for r in log):.4f}"
    print(f"saved {out}: {len(log)} epochs, {kept}")


@app.command()
@flags.stage_options("world", "value", "policy", "sft", aliases={"value.pretrain_steps": "--steps"})
def value(policy: PolicyDir = None, preset_name: Preset = "cpu_demo", data: Data = None,
          queries: Annotated[int, typer.Option(min=1, help="validation users of the Spearman measurement")] = 256,
          as_json: AsJson = False, quiet: Quiet = False, *, given):
    """Pre-train the value head V_phi by TD (Eq. 9) and measure it (Fig. 3's protocol on validation users):
    per level, the Spearman rho with the true prefix reward of V_phi, of log pi, of the world's oracle
    (synthetic worlds) and of a no-learning cosine baseline. With --policy the head is trained on that
    checkpoint and saved beside it; without, the cached SFT policy and value head are used (trained once)."""
    from .evaluate import scorers, value_quality
    from .pipeline import trained_value

    cfg, w = flags.load(preset_name, given, data)
    pol, head, trained, seconds = trained_value(w, cfg, policy, progress=not quiet, say=flags.say_to(quiet))
    rho = value_quality(w, pol, w.queries("valid", n=queries), scorers(w, head))
    show.value({"world": w.name, "embedding": w.embedding, "inputs": cfg.value.inputs, "user": cfg.value.user,
                "pretrain_steps": cfg.value.pretrain_steps, "trained": trained, "seconds": round(seconds, 1),
                "queries": queries, "spearman": {k: [round(x, 4) for x in v] for k, v in rho.items()}}, as_json)


@app.command()
@flags.stage_options("world", "decode", "value", "policy", "sft")
def decode(value_kind: ValueKind = "learned", queries: Queries = None, policy: PolicyDir = None,
           preset_name: Preset = "cpu_demo", data: Data = None, backbone: Backbone = None, as_json: AsJson = False,
           quiet: Quiet = False, *, given):
    """Decode the test split with one decoder and print accuracy, the true reward of the candidates,
    diversity, reachability and the budget spent."""
    from .config import VALUE_DECODERS
    from .evaluate import evaluate
    from .pipeline import sft_policy, value_model
    from .values import make_value

    say = flags.say_to(quiet)
    cfg, w = flags.load(preset_name, given, data, backbone, say, decodes=True)
    test = flags.first_test_users(w, queries)
    guided = cfg.decode.decoder in VALUE_DECODERS
    scorer = make_value(value_kind, w, head=None) if guided and value_kind != "learned" else None
    pol = sft_policy(w, cfg, policy, progress=not quiet, say=say, backbone=backbone)
    if guided and value_kind == "learned":
        scorer = value_model(w, pol, cfg, policy, progress=not quiet, say=say)
    metrics, _ = evaluate(w, pol, test, cfg.decode, scorer)
    metrics.update(decoder=cfg.decode.decoder, n_candidates=cfg.decode.n_candidates,
                   **({"value": value_kind} if guided else {}), world=w.name, embedding=w.embedding)
    show.decode(metrics, as_json)


@app.command()
@flags.stage_options("world", "rl", "decode", "value", "policy", "sft")
def train(out: Annotated[Path, typer.Option(help="run directory: metrics.csv, checkpoints; an existing run resumes")],
          update: Update = None, queries: Queries = None, policy: PolicyDir = None, preset_name: Preset = "cpu_demo",
          data: Data = None, backbone: Backbone = None,
          restart: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
          as_json: AsJson = False, quiet: Quiet = False, *, given):
    """The self-evolving loop (Sec. 4.4) from the SFT policy: decode -> reward -> value TD -> policy update.
    Writes OUT/metrics.csv (one row per step), checkpoints, and OUT/final (a `--policy` checkpoint); prints
    the test users' scores by beam search before and after. Under `torchrun --nproc_per_node N -m
    vstar_toy.cli train ...` the batch is sharded over N processes (DDP; nccl on GPUs, gloo on CPU) and
    rank 0 writes and prints."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .config import UPDATES
    from .rl import distributed
    from .train_run import train_from_sft

    given = {**given, "rl": {**UPDATES.get(update, {}), **given["rl"]}}  # the named update, its parts overridden
    distributed.init_from_env()
    try:
        quiet = quiet or not distributed.is_main()
        cfg, w = flags.load(preset_name, given, data, backbone, flags.say_to(quiet), decodes=True)
        summary = train_from_sft(w, cfg, out, flags.first_test_users(w, queries), policy, backbone, restart,
                                      progress=not quiet, say=flags.say_to(quiet), extra={"preset": preset_name})
        if summary is not None:  # rank 0
            show.train(summary, as_json)
    finally:
        distributed.shutdown()


@app.command()
def reproduce(out: Annotated[Path, typer.Option(help="report.md, CSVs and figures go here")] = Path("runs/reproduce"),
              claims: Annotated[str | None, typer.Option(
                  help="comma-separated claim numbers (docs/design.md, section 5; default: every claim, 1-10; "
                       "with --quick 1-9, the horizon study 10 being `vstar-toy horizon --quick`; without the "
                       "mismatch sweeps 8 and 10 on --data)")] = None,
              seeds: Seeds = None,
              quick: Annotated[bool, typer.Option(help="smaller world, shorter training: <= 15 min on 2 cores")] =
              False, test_queries: TestQueries = None, preset_name: Preset = "cpu_demo", data: Data = None,
              backbone: Backbone = None, as_json: AsJson = False, quiet: Quiet = False):
    """Reproduce the paper's claims: mean and 95% interval over seeds, a verdict per claim, report.md."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .experiments import reproduce_named

    summary = reproduce_named(out, claims, preset_name, seeds, quick, test_queries, data, backbone,
                              progress=not quiet, say=flags.say_to(quiet))
    show.reproduce(summary, as_json)


@app.command()
def why(out: Annotated[Path, typer.Option(help="report.md, claim_9.csv and the runs go here")] = Path("runs/why"),
        seeds: Seeds = None,
        quick: Annotated[bool, typer.Option(help="the smaller world of reproduce --quick, three arms")] = False,
        test_queries: TestQueries = None, preset_name: Preset = "cpu_demo", data: Data = None, as_json: AsJson = False,
        quiet: Quiet = False):
    """Why training on VED's candidates does not make a better policy for beam search, and which update
    does (claim 9, `experiments/claims.py: claim_9`): every update option against beam search + GRPO and
    V-STAR as written, at the recipe's learning rate and at 3e-4, tested by beam search and by VED."""
    reproduce(out=out, claims="9", seeds=seeds, quick=quick, test_queries=test_queries, preset_name=preset_name,
              data=data, backbone=None, as_json=as_json, quiet=quiet)


@app.command()
def horizon(out: Annotated[Path, typer.Option(help="report.md, claim_10.csv and the runs go here")] =
            Path("runs/horizon"), seeds: Seeds = None,
            quick: Annotated[bool, typer.Option(help="the smaller world of reproduce --quick, three arms, 60 steps "
                                                     "at most")] = False,
            test_queries: TestQueries = None, preset_name: Preset = "cpu_demo", as_json: AsJson = False,
            quiet: Quiet = False):
    """The learning half over a real horizon (claim 10, `experiments/claims.py: claim_10`): at m = 0.5 and 0.9,
    each update trained until its validation curve is flat, tested by beam search, with the share of VED's
    lead that training carried into the policy (transfer) and what RL does to the ranked list (HR@1..50).
    A run cut off resumes its finished and interrupted runs from `OUT/runs`."""
    reproduce(out=out, claims="10", seeds=seeds, quick=quick, test_queries=test_queries, preset_name=preset_name,
              data=None, backbone=None, as_json=as_json, quiet=quiet)


@app.command()
@flags.stage_options("world", "decode", "policy", "sft")
def baselines(data: Data = None, preset_name: Preset = "cpu_demo", policy: PolicyDir = None, queries: Queries = None,
              as_json: AsJson = False, quiet: Quiet = False, *, given):
    """Baselines on the test split (most popular, the latest item's content nearest neighbours, item-to-item
    transitions, SASRec and GRU4Rec trained on the same windows) beside the SFT policy by beam search: HR@K
    and NDCG@K with 95% intervals over users (vstar_toy/baselines.py). What a trained policy should beat."""
    from .baselines import baselines_table
    from .pipeline import sft_policy

    cfg, w = flags.load(preset_name, given, data)
    test = flags.first_test_users(w, queries)
    pol = sft_policy(w, cfg, policy, progress=not quiet, say=flags.say_to(quiet))
    table = baselines_table(w, test, pol, cfg.decode, progress=not quiet)
    show.baselines(table, w, len(test), as_json)


@app.command()
def recipe(out: Annotated[Path, typer.Option(help="runs, recipe.csv and recipe.md go here")] = Path("runs/recipe"),
           steps: Annotated[int | None, typer.Option(min=1, help="policy updates per run (default 60)")] = None,
           preset_name: Preset = "cpu_demo", as_json: AsJson = False, quiet: Quiet = False):
    """How the RL recipe was chosen: a learning rate x inner epochs grid, then warm-up and the joint loss's
    normalisation, for beam+GRPO and V-STAR, judged on the validation split only (experiments/recipe.py)."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from .config import preset
    from .experiments.recipe import recipe_sweep

    table, chosen = recipe_sweep(preset(preset_name), out, progress=not quiet, say=flags.say_to(quiet),
                                 **({} if steps is None else {"steps": steps}))
    show.recipe(table, chosen, out, as_json)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="where the tables and figures go")] = Path("runs/demo"),
         preset_name: Preset = "high_mismatch", queries: Queries = None,
         rl_steps: Annotated[int, typer.Option(min=1, help="policy updates per training run in step 5")] = 40):
    """The whole story in a few minutes: the world and its mismatch knob, SFT, the value model, beam
    search against VED at the same budget, and a short GRPO (beam) against V-STAR (VED + joint) training."""
    check_output_dir(out)  # before the imports: a bad path answers at once
    from . import demo as story
    from .files import run_lock

    with run_lock(out):  # one demo writes a folder at a time
        story.run(out, preset_name, queries, rl_steps)


def main(argv: list[str] | None = None) -> None:
    flags.run_app(app, argv)


if __name__ == "__main__":
    main()
