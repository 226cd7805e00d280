"""The GPU path in numbers: Qwen2.5-1.5B (bf16, random weights) behind the Policy protocol, against
Hugging Face ``generate`` on the same model, and one GRPO + Sibling-GRPO training step.

    python benchmarks/gpu.py [--tiny] [--out FILE.json] [--repeats R] [--queries Q] [--beams B]

Sizes (issue 6): 64 queries x 16 beams, 128-token prompts (32 history items, each ``<sid>`` + 3 codes),
a synthetic catalog of 4,000 items whose SIDs (3 levels x 256 codes) are drawn at random, unique.
``--tiny`` runs the same rows on a CPU with ``tiny-qwen`` and a 300-item catalog, in seconds.

Rows, each timed as the best of ``--repeats`` passes after one warm-up pass (seconds per batch):

1. ``generate(num_beams=B, num_return_sequences=B, prefix_allowed_tokens_fn=...)``, length_penalty 0
   (sequences ranked by their summed log-probs): the baseline.
2. Our constrained beam search with ``normalize="vocab"``: the same scores as ``generate`` (log-softmax
   over the whole vocabulary); its candidate set must equal ``generate``'s (the share of queries where
   it does is printed: bf16 rounding may flip near-ties).
3. Our beam search with ``normalize="valid"``, which reads only the level's SID rows of the LM head.
4. VED at the 1x budget (|C| = B, b0 = B / 2, a random ``ValueHead``), same normalisation as row 3.
5. One training step (``policy_loss("joint")``, backward, AdamW) over Q x B candidates (row 2's), with
   random rewards: *naive*, every candidate re-encodes its prompt through the Hugging Face forward
   (with HF gradient checkpointing, without which 1,024 x 131 tokens do not fit); *shared-prompt*,
   ``QwenPolicy.logprobs`` (each prompt encoded once); and shared-prompt with our layer checkpointing.
   Parameters and AdamW states are bf16 (no fp32 master copy). Peak GiB = torch.cuda.max_memory_allocated.

The random LM head's SID rows are re-drawn (``QwenPolicy.sharpen``) so that code logits have a std of
about 4: with the init std of 0.02 every code is equally likely and rankings are decided by rounding.
A row that fails (out of memory, or anything else) prints its error and the others still run. Ratios
are measured in the same run on the same device, which the table names.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback

import numpy as np
import torch

from vstar_toy.config import DecodeConfig, ValueConfig
from vstar_toy.decoding import beam_search, decode
from vstar_toy.policy.qwen import QwenPolicy
from vstar_toy.policy.value import ValueHead
from vstar_toy.rl.losses import policy_loss
from vstar_toy.world.catalog import Catalog

FULL = dict(backbone="qwen2.5-1.5b", queries=64, beams=16, prompt_tokens=128, items=4000, levels=3, codes=256)
TINY = dict(backbone="tiny-qwen", queries=8, beams=4, prompt_tokens=24, items=300, levels=3, codes=8)
TARGETS = {"beam_speedup": 12.0, "ved_over_beam": 1.5, "train_seconds": 0.6, "train_gib": 30.0}


def synthetic_catalog(n_items: int, levels: int, codes: int, seed: int = 0) -> Catalog:
    """``n_items`` unique SIDs drawn uniformly from the codes**levels grid, with random unit embeddings."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(codes**levels, size=n_items, replace=False)
    sids = np.stack([(flat // codes ** (levels - 1 - lvl)) % codes for lvl in range(levels)], 1)
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    return Catalog.from_sids(sids, emb / np.linalg.norm(emb, axis=1, keepdims=True), (codes,) * levels)


# ----------------------------------------------------------------------------------------------
# plumbing: timing, peak memory, one failure per row


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, repeats: int, device: torch.device):
    """(best seconds of ``repeats`` passes after one warm-up pass, peak GiB of the timed passes, last output)."""
    fn()
    reset_peak(device)
    best, out = math.inf, None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, peak_gib(device), out


class Rows:
    """The result table: one dict per measured row; ``attempt`` records a failure instead of raising."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def attempt(self, name: str, fn):
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (OOM or anything else: report it, run the other rows)
            oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
            msg = "out of memory" if oom else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if not oom:
                traceback.print_exc(file=sys.stderr)
        self.add(name, None, "", error=msg)
        reset_peak(self.device)  # outside the except block: the traceback no longer holds the failed row's tensors
        return None

    def add(self, name, value, unit, target: str = "", ok: bool | None = None, error: str | None = None):
        self.rows.append(dict(measure=name, value=value, unit=unit, target=target, ok=ok, error=error))


# ----------------------------------------------------------------------------------------------
# the measurements


def decode_rows(rows: Rows, policy: QwenPolicy, hist: np.ndarray, beams: int, repeats: int):
    """Rows 1-4; returns our vocab-normalised beam candidates (the training batch) or None."""
    dev, cat = rows.device, policy.catalog
    res = {}

    def quality(sids: torch.Tensor) -> None:
        """Rows: the share of returned SIDs that are catalog items, and of the B slots per query filled."""
        sids = sids.reshape(-1, cat.levels).cpu()
        returned = (sids >= 0).all(1).numpy()
        items = cat.item_of(sids.clamp_min(0).numpy())
        rows.add("  valid SIDs (of those returned)", float((items[returned] >= 0).mean()) if returned.any() else 0.0,
                 "share")
        rows.add("  slots filled", float(returned.mean()), "share")

    def run_generate():
        t, gib, (sids, _) = timed(lambda: policy.hf_beam_search(hist, beams), repeats, dev)
        res["generate"] = (t, sids)
        rows.add(f"HF generate(num_beams={beams}) s/batch", t, "s")
        quality(sids)
        rows.add("  peak memory", gib, "GiB")

    def run_beam(norm: str):
        policy.normalize = norm
        with torch.no_grad():
            t, gib, cands = timed(lambda: beam_search(policy, hist, beams), repeats, dev)
        res[f"beam_{norm}"] = (t, cands)
        rows.add(f"our beam search ({norm}) s/batch", t, "s")
        quality(cands.sids)
        rows.add("  peak memory", gib, "GiB")

    def run_ved():
        policy.normalize = "valid"
        head = ValueHead.for_policy(policy, ValueConfig()).eval()
        cfg = DecodeConfig(decoder="ved", n_candidates=beams, warm_beam=max(1, beams // 2), budget_x=1.0)
        with torch.no_grad():
            t, gib, cands = timed(lambda: decode(policy, hist, cfg, head), repeats, dev)
        res["ved"] = (t, cands)
        rows.add("VED 1x s/batch", t, "s")
        quality(cands.sids)
        rows.add("  within budget", float((cands.cost_tokens <= cands.budget_tokens).mean()), "share")
        rows.add("  peak memory", gib, "GiB")

    rows.attempt("generate", run_generate)
    rows.attempt("beam (vocab)", lambda: run_beam("vocab"))
    rows.attempt("beam (valid)", lambda: run_beam("valid"))
    rows.attempt("ved", run_ved)
    policy.normalize = "vocab"
    if "generate" in res and "beam_vocab" in res:
        (t_gen, g_sids), (t_beam, cands) = res["generate"], res["beam_vocab"]
        same = [{tuple(s) for s in g_sids[b].tolist()} == {tuple(s) for s in cands.sids[b][cands.valid[b]].tolist()}
                for b in range(len(hist))]
        rows.add("same set as generate (vocab beam)", float(np.mean(same)), "share of queries")
        ratio = t_gen / t_beam
        rows.add("speed-up of our beam (vocab) over generate", ratio, "x",
                 f">= {TARGETS['beam_speedup']:g}x", ratio >= TARGETS["beam_speedup"])
        if "beam_valid" in res:
            rows.add("speed-up of our beam (valid) over generate", t_gen / res["beam_valid"][0], "x")
    if "ved" in res and "beam_valid" in res:
        ratio = res["ved"][0] / res["beam_valid"][0]
        rows.add("VED 1x time / our beam (valid) time", ratio, "x", f"<= {TARGETS['ved_over_beam']:g}x",
                 ratio <= TARGETS["ved_over_beam"])
    return (res.get("beam_vocab") or res.get("beam_valid") or (None, None))[1]


def hf_checkpointing(model, on: bool) -> None:
    """Hugging Face's activation checkpointing on or off (renamed in transformers 5.2x; both spellings work)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def train_rows(rows: Rows, policy: QwenPolicy, hist: np.ndarray, cands, repeats: int, seed: int = 0):
    """Row 5: one joint-loss step, naive vs shared-prompt."""
    dev = rows.device
    sids = cands.sids.to(dev)
    valid = cands.valid.to(dev)
    rewards = torch.as_tensor(np.random.default_rng(seed).random(valid.shape), dtype=torch.float32, device=dev)
    policy.normalize = "valid"

    def step(opt, logp_fn):
        opt.zero_grad(set_to_none=True)
        logp = logp_fn(hist, sids.clamp_min(0))
        loss, _ = policy_loss("joint", logp, logp.detach(), logp.detach(), sids, rewards, valid)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def variant(name: str, logp_fn, hf_ckpt: bool = False, our_ckpt: bool = False, target: bool = False):
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        policy.train()
        if hf_ckpt:
            hf_checkpointing(policy.model, True)
        policy.checkpointing = our_ckpt
        try:
            t, gib, loss = timed(lambda: step(opt, logp_fn), repeats, dev)
        finally:
            if hf_ckpt:
                hf_checkpointing(policy.model, False)
            policy.checkpointing = False
            policy.eval()
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss}")
        rows.add(f"train step {name} s", t, "s", f"< {TARGETS['train_seconds']:g} s" if target else "",
                 t < TARGETS["train_seconds"] if target else None)
        rows.add(f"train step {name} peak", gib, "GiB", f"< {TARGETS['train_gib']:g} GiB" if target else "",
                 (gib < TARGETS["train_gib"]) if target and gib is not None else None)

    rows.attempt("train naive", lambda: variant("naive (re-encode, HF ckpt)", policy.reference_logprobs, hf_ckpt=True))
    rows.attempt("train shared", lambda: variant("shared-prompt", policy.logprobs, target=True))
    rows.attempt("train shared + ckpt", lambda: variant("shared-prompt + ckpt", policy.logprobs, our_ckpt=True,
                                                        target=True))


# ----------------------------------------------------------------------------------------------
# the table


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__})"


def fmt(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("share", "share of queries"):
        return f"{100 * v:.1f}%"
    return f"{v:.2f} {unit}" if unit in ("x", "GiB") else f"{v:.4f} {unit}"


def print_table(rows: Rows, header: str, judge: bool) -> None:
    """The table; verdicts against the targets only when ``judge`` (the full sizes on a GPU)."""
    print(header)
    w = max(len(r["measure"]) for r in rows.rows) + 2
    print(f"{'measure':<{w}}{'result':>16}  {'target':<14}verdict")
    for r in rows.rows:
        if r["value"] is None and not r["error"]:
            continue  # e.g. peak GPU memory on a CPU
        if r["error"]:
            print(f"{r['measure']:<{w}}{'FAILED':>16}  {'':<14}{r['error']}")
            continue
        verdict = "" if r["ok"] is None else ("meets" if r["ok"] else "MISSES") if judge else "(full sizes on a GPU)"
        print(f"{r['measure']:<{w}}{fmt(r['value'], r['unit']):>16}  {r['target']:<14}{verdict}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny-qwen and a 300-item catalog on a CPU (seconds)")
    ap.add_argument("--out", help="write the results to this JSON file")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per row (best kept); 3, or 1 with --tiny")
    ap.add_argument("--queries", type=int, help="queries per batch (64; 8 with --tiny)")
    ap.add_argument("--beams", type=int, help="beams = candidates per query (16; 4 with --tiny)")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available; cpu with --tiny)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --tiny, where more only "
                    "spin-wait on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    size = dict(TINY if args.tiny else FULL)
    for k in ("queries", "beams"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    repeats = args.repeats or (1 if args.tiny else 3)
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    L = size["levels"]
    if size["prompt_tokens"] % (L + 1):
        raise ValueError(f"prompt_tokens = {size['prompt_tokens']} is invalid: expected a multiple of L + 1 = {L + 1}")

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    catalog = synthetic_catalog(size["items"], L, size["codes"], args.seed)
    policy = QwenPolicy.from_backbone(catalog, size["backbone"], device=device, normalize="vocab", seed=args.seed)
    # code logits of std ~4: hidden states leave the final RMSNorm with rms ~1 per dimension
    policy.sharpen(4.0 / policy.hidden_size**0.5, seed=args.seed)
    dtype = policy.model.get_input_embeddings().weight.dtype
    hist = np.random.default_rng(args.seed + 1).integers(0, size["items"], (size["queries"],
                                                                           size["prompt_tokens"] // (L + 1)))
    n_params = sum(p.numel() for p in policy.parameters())
    header = (f"device: {device_name(device)}\nbackbone: {size['backbone']} ({n_params / 1e6:.1f}M parameters with "
              f"SID tokens, {str(dtype).replace('torch.', '')}, random weights)\n"
              f"batch: {size['queries']} queries x {size['beams']} beams, {size['prompt_tokens']}-token prompts; "
              f"catalog {size['items']} items, {L} levels x {size['codes']} codes")

    rows = Rows(device)
    cands = decode_rows(rows, policy, hist, size["beams"], repeats)
    if cands is not None:
        train_rows(rows, policy, hist, cands, repeats, args.seed)
    else:
        rows.add("train steps", None, "", error="skipped: no candidates (our beam search failed)")
    print_table(rows, header + f"\ntotal wall time {time.perf_counter() - t0:.1f} s",
                judge=not args.tiny and device.type == "cuda")
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(dict(device=device_name(device), size=size, repeats=repeats, targets=TARGETS, rows=rows.rows,
                           dtype=str(dtype), n_parameters=n_params), f, indent=1)
        os.replace(tmp, args.out)
    return 0 if not any(r["error"] for r in rows.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
