"""How each command's result reads on a terminal: one JSON object on stdout with ``--json`` (progress and
notes go to stderr), else a few aligned lines. One function per command, named after it."""

from __future__ import annotations

import json


def _fields(out: dict, width: int) -> None:
    for k, v in out.items():
        print(f"{k:<{width}} {v:.4f}" if isinstance(v, float) else f"{k:<{width}} {v}")


def world(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    print("\nspearman_exposure_reward: per level, rho between the logs' log-probability of a prefix and its "
          "true reward.\nNear 1 = likelihood ranks prefixes as reward does; near 0 = it does not (mismatch).")


def value(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out))
        return
    print(f"V_phi ({out['inputs']} inputs) on {out['world']}: {'trained' if out['trained'] else 'loaded'} in "
          f"{out['seconds']:.1f} s")
    print(f"Spearman rho with the true prefix reward, per level ({out['queries']} validation users, Fig. 3's "
          "protocol):")
    for name, r in out["spearman"].items():
        print(f"  {name:<8} {r}")


def decode(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
    else:
        _fields(metrics, 18)


def train(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    _fields(summary, 20)
    print(f"per-step metrics in {summary['run']}/metrics.csv; the trained policy in {summary['run']}/final (use "
          "--policy)")


def reproduce(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for c in summary["claims"]:
        vals = ", ".join(f"{k}: {v:.4f}" for k, v in c["values_truth"].items() if v is not None)
        print(f"claim {c['id']}: paper ({c['metric']}) {c['verdict']:<14} truth ({c['metric_truth']}) "
              f"{c['verdict_truth']:<14} {vals}")
    print(f"report: {summary['report']}")


def baselines(table, world, n_queries: int, as_json: bool) -> None:
    from .baselines import KS

    if as_json:
        print(json.dumps({"world": world.name, "embedding": world.embedding, "queries": n_queries,
                          "rows": table.to_dict(orient="records")}, default=float))
        return
    cols = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS] + ["SFT - it, hr@10", "SFT - it, ndcg@10"]
    print(f"{world.name}, {n_queries} test users; item embeddings: {world.embedding}")
    print(table[["baseline", *cols]].round(4).to_string(index=False))
    print("'SFT - it': the SFT policy's score minus the baseline's, paired by user (its 95% interval in --json)")


def recipe(table, chosen: dict, out, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"chosen": chosen, "runs": table.to_dict(orient="records")}, default=float))
    else:
        print(table.round(4).to_string(index=False))
        print(f"chosen: {chosen}; table in {out / 'recipe.md'}")
