"""Decoder speed on the default world: queries per second at the same 1x token budget, VED's wall
time over beam search's, and what batching and the KV cache buy over a naive reference.

    python benchmarks/decoders.py [--queries N] [--quick] [--repeats R] [--out FILE.json]

Every decoder goes through ``vstar_toy.decoding.decode`` with the default ``DecodeConfig`` sizes
(|C| = 16, b0 = 8) at ``budget_x = 1``: B = 1 + (L - 1) * |C| forward tokens per query. Each decoder
decodes the same test queries in batches of 64 (one warm-up pass, then ``--repeats`` timed passes;
the best pass is reported, the median beside it). VED also runs with the backbone-only value head, with the
oracle's table lookup (what the value costs), and in fixed shapes (``DecodeConfig.shapes``: what they cost here).

The naive reference is constrained beam search as public code often writes it: one query at a
time, no KV cache, and for every node the whole prompt plus the prefix re-encoded by one causal pass
of the backbone. It must return the same candidates as the batched beam search (checked, and
printed); the speed-up is its per-query time over the batched, cached beam search's.

All ratios are measured in the same run, on the same machine; the table says which machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import numpy as np
import torch

from vstar_toy import pipeline
from vstar_toy.config import Config, DecodeConfig
from vstar_toy.decoding import budget_tokens, decode
from vstar_toy.policy.base import SEP
from vstar_toy.policy.value import ValueHead
from vstar_toy.values import OracleValue

DECODERS = ("beam", "topk", "temperature", "ved")


# ----------------------------------------------------------------------------------------------
# the naive reference: one query, one node, one full re-encode at a time


def naive_next_logp(policy, history: np.ndarray, prefix: tuple[int, ...], node: int) -> torch.Tensor:
    """(K_max,) log pi(. | x, prefix) by one causal pass over [prompt, SEP, prefix]: no cache at all."""
    items = torch.as_tensor(history[None], dtype=torch.long)
    tokens, levels, slots, mask, next_slot = policy.item_tokens(items)  # the prompt, (1, T) each
    codes = torch.as_tensor(prefix, dtype=torch.long)
    lv = torch.arange(len(prefix))
    gen_tokens = torch.cat([torch.tensor([SEP]), policy.code_token(lv, codes)])  # [SEP, y_1 .. y_l]
    n = len(gen_tokens)
    tokens = torch.cat([tokens, gen_tokens[None]], 1)
    levels = torch.cat([levels, torch.arange(n)[None]], 1)
    slots = torch.cat([slots, next_slot.expand(1, n)], 1)
    mask = torch.cat([mask, torch.ones(1, n, dtype=torch.bool)], 1)
    hidden, _ = policy._encode(tokens, levels, slots, mask)
    lvl = torch.tensor([len(prefix)])
    return policy.restricted_logp(hidden[:, -1], lvl, torch.tensor([node]))[0]


def naive_beam_search(policy, history: np.ndarray, width: int) -> tuple[list[tuple[int, ...]], list[float], int]:
    """Constrained beam search for one query, every node re-encoded from scratch.

    Returns the final beams (best first), their log pi(y|x), and the backbone calls made
    (1 + (L - 1) * width when every level has enough prefixes, as for the batched search)."""
    child = policy.catalog.child
    L = policy.levels
    beams = [((), 0.0, 0)]  # (prefix, log pi(prefix | x), trie node)
    calls = 0
    for _ in range(L):
        scored = []
        for prefix, score, node in beams:
            lp = naive_next_logp(policy, history, prefix, node)
            calls += 1
            for code in np.flatnonzero(child[node] >= 0):
                scored.append((prefix + (int(code),), score + float(lp[code]), int(child[node, code])))
        scored.sort(key=lambda t: -t[1])
        beams = scored[:width]
    return [b[0] for b in beams], [b[1] for b in beams], calls


# ----------------------------------------------------------------------------------------------
# timing


def time_decoder(policy, value, histories: np.ndarray, cfg: DecodeConfig, batch: int, repeats: int,
                 queries=None) -> dict:
    """Decode all ``histories`` in batches; one warm-up pass, then ``repeats`` timed passes. ``value``
    is a value head, or (with the ``queries`` of the histories) any scorer of ``vstar_toy.values``."""

    def one_pass():
        sets = []
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(histories), batch):
                fn = value.bind(queries.take(slice(s, s + batch))) if queries is not None else value
                sets.append(decode(policy, histories[s : s + batch], cfg, fn))
        return time.perf_counter() - t0, sets

    _, sets = one_pass()  # warm-up (and the spend we report)
    times = [one_pass()[0] for _ in range(repeats)]
    cost = np.concatenate([c.cost_tokens for c in sets])
    expansion = np.concatenate([c.expansion_tokens for c in sets])
    return {
        "best_s": min(times), "median_s": statistics.median(times), "qps": len(histories) / min(times),
        "mean_cost_tokens": float(cost.mean()), "max_cost_tokens": int(cost.max()),
        "budget_tokens": int(sets[0].budget_tokens), "expansion_tokens": float(expansion.mean()),
        "valid_frac": float(np.mean([c.valid.float().mean() for c in sets])), "sets": sets,
    }


def check_naive(policy, histories: np.ndarray, n_candidates: int, repeats: int) -> dict:
    """Naive beam search on ``histories``, timed, and compared with the batched beam search."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = [naive_beam_search(policy, h, n_candidates) for h in histories]
        best = min(best, time.perf_counter() - t0)
    with torch.no_grad():
        batched = decode(policy, histories, DecodeConfig(decoder="beam", n_candidates=n_candidates, warm_beam=1))
    same, max_dlogp = 0, 0.0
    for b, (sids, logps, _) in enumerate(out):
        got = {tuple(s) for s in batched.sids[b][batched.valid[b]].tolist()}
        same += got == set(sids)
        max_dlogp = max(max_dlogp, float(np.abs(np.sort(batched.logp[b].numpy())[::-1] - np.array(logps)).max()))
    return {"seconds": best, "per_query_s": best / len(histories), "queries": len(histories), "same": same,
            "max_abs_dlogp": max_dlogp, "calls_per_query": out[0][2]}


# ----------------------------------------------------------------------------------------------
# main


def load_value_head(world, policy, cfg: Config):
    """The cached V_phi of ``pipeline.value_model``. When the cache holds a head of another shape (it
    was written by an older ValueHead), say so and time an untrained head of today's shape instead:
    VED's cost is its budget whatever the values, and pre-training one here would take minutes."""
    try:
        return pipeline.value_model(world, policy, cfg, progress=False)
    except RuntimeError as err:
        print(f"value head: the cached one does not load ({str(err).splitlines()[-1].strip()}); "
              "timing VED with an untrained ValueHead of the current shape")
        return ValueHead.for_policy(policy, cfg.value)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=None, help="at most N test queries per pass (default 512: the\n"
                    "default world's whole test split, 300; 128 quick)")
    ap.add_argument("--batch", type=int, default=64, help="queries per decode call (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per decoder (default 3; 2 quick)")
    ap.add_argument("--naive-queries", type=int, default=None,
                    help="queries for the naive reference (default 32; 8 quick)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run in well under a minute")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    args.queries = args.queries or (128 if args.quick else 512)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.naive_queries = args.naive_queries or (8 if args.quick else 32)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = Config()
    world = pipeline.build_world(cfg.world)
    policy = pipeline.sft_policy(world, cfg, progress=False)
    head = load_value_head(world, policy, cfg)
    policy.eval()
    head.eval()
    histories = world.queries("test", n=args.queries, seed=0).histories
    C, b0 = cfg.decode.n_candidates, cfg.decode.warm_beam
    L = world.catalog.levels

    # 1. every decoder at the same 1x budget, batched, on the same queries
    rows = {}
    for name in DECODERS:
        dcfg = cfg.replace(decode={"decoder": name, "budget_x": 1.0}).decode
        rows[name] = time_decoder(policy, head, histories, dcfg, args.batch, args.repeats)
    # what the value costs: the same search with the backbone-only head and with a table lookup (the oracle)
    ved_cfg = cfg.replace(decode={"decoder": "ved", "budget_x": 1.0}).decode
    backbone_head = ValueHead.for_policy(policy, dataclasses.replace(cfg.value, inputs="backbone")).eval()
    rows["ved/backbone V"] = time_decoder(policy, backbone_head, histories, ved_cfg, args.batch, args.repeats)
    rows["ved/oracle V"] = time_decoder(policy, OracleValue(world), histories, ved_cfg, args.batch, args.repeats,
                                        queries=world.queries("test", n=args.queries, seed=0))
    # what fixed shapes cost on this device (DecodeConfig.shapes: L rows per query per iteration, two host reads)
    rows["ved/fixed"] = time_decoder(policy, head, histories, dataclasses.replace(ved_cfg, shapes="fixed"), args.batch,
                                     args.repeats)
    # 2. the naive reference against the batched beam search
    naive = check_naive(policy, histories[: args.naive_queries], C, 1)
    beam_per_query = rows["beam"]["best_s"] / len(histories)
    ratio = rows["ved"]["best_s"] / rows["beam"]["best_s"]
    ratio_median = rows["ved"]["median_s"] / rows["beam"]["median_s"]

    # 3. the table
    sizes = (f"{world.catalog.n_items} items, L = {L}, K = {list(world.catalog.codebook_sizes)}, |C| = {C}, "
             f"b0 = {b0}, budget 1x = {budget_tokens(L, C, 1.0)} tokens/query, {len(histories)} queries "
             f"in batches of {args.batch}, best of {args.repeats} passes")
    print()
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"sizes:   {sizes}")
    print(f"policy:  TinyPolicy d_model = {cfg.policy.d_model}, layers = {cfg.policy.n_layers}; world {world.name}")
    print()
    print(f"| {'decoder':<14} | {'queries/s':>10} | {'ms/batch':>9} | {'median s':>9} | {'cost tok':>8} | "
          f"{'budget':>6} | {'expansion':>9} | {'valid':>5} |")
    print(f"|{'-' * 16}|{'-' * 12}|{'-' * 11}|{'-' * 11}|{'-' * 10}|{'-' * 8}|{'-' * 11}|{'-' * 7}|")
    n_batches = -(-len(histories) // args.batch)
    for name, r in rows.items():
        print(f"| {name:<14} | {r['qps']:>10.0f} | {1e3 * r['best_s'] / n_batches:>9.1f} | {r['median_s']:>9.3f} | "
              f"{r['mean_cost_tokens']:>8.1f} | {r['budget_tokens']:>6} | {r['expansion_tokens']:>9.1f} | "
              f"{r['valid_frac']:>5.2f} |")
    print(f"| {'naive beam':<14} | {1 / naive['per_query_s']:>10.1f} | {'-':>9} | {'-':>9} | "
          f"{naive['calls_per_query']:>8} | {'-':>6} | {'-':>9} | {'-':>5} |")
    print()
    verdict = "within" if ratio <= 1.5 else "ABOVE"
    print(f"VED / beam wall time at the same 1x budget: {ratio:.2f} "
          f"(best of {args.repeats}; median {ratio_median:.2f}) "
          f"-- {verdict} the 1.5 target")
    print(f"VED's value, wall time over VED with the oracle's table lookup: semantic V_phi "
          f"{rows['ved']['best_s'] / rows['ved/oracle V']['best_s']:.2f}, backbone-only V_phi "
          f"{rows['ved/backbone V']['best_s'] / rows['ved/oracle V']['best_s']:.2f}")
    print(f"naive reference (1 query at a time, no KV cache, prompt re-encoded per node, "
          f"{naive['calls_per_query']} full passes/query) on {naive['queries']} queries: "
          f"{1e3 * naive['per_query_s']:.1f} ms/query vs batched+cached beam {1e3 * beam_per_query:.2f} ms/query "
          f"-> speed-up x{naive['per_query_s'] / beam_per_query:.0f}")
    print(f"naive == batched beam search: {naive['same']}/{naive['queries']} queries with the same candidate set "
          f"(max |d log pi| = {naive['max_abs_dlogp']:.1e})")
    print(f"total benchmark time: {time.perf_counter() - t_start:.1f} s")

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "sizes": {"items": world.catalog.n_items, "levels": L, "codebook_sizes": list(world.catalog.codebook_sizes),
                  "n_candidates": C, "warm_beam": b0, "budget_tokens": budget_tokens(L, C, 1.0),
                  "queries": len(histories), "batch": args.batch, "repeats": args.repeats},
        "decoders": {k: {kk: vv for kk, vv in v.items() if kk != "sets"} for k, v in rows.items()},
        "ved_over_beam": ratio, "ved_over_beam_median": ratio_median,
        "naive": naive, "naive_speedup": naive["per_query_s"] / beam_per_query,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if naive["same"] != naive["queries"]:
        raise SystemExit("the naive reference and the batched beam search disagree: see above")
    return result


if __name__ == "__main__":
    main()
