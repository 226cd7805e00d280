"""The real-data SFT policy chosen on Office's validation rows (issue 30, item 3; choices.md, "The policy").

Every variant is trained on the windows whose target precedes the validation period (``load_world``'s
default) and scored on all 4,866 validation rows by beam search, |C| = 10 (or the protocol named), with
HR@10 / NDCG@10, intervals over users, and the paired difference to the reference variant. SASRec and
GRU4Rec, tuned on the same rows, give the bar to clear. The test split is never read. A finished variant is
kept in ``policy.jsonl``; running the script again reuses the cached SFT policies (decoding only) and skips
the finished sequential recommenders. Run from the repository with
`VSTAR_TOY_ENCODER` unset and the text extra installed: `nice python docs/results/office_validation/policy.py`.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from vstar_toy import seqrec
from vstar_toy.checkpoint import read_meta
from vstar_toy.config import SeqRecConfig, preset
from vstar_toy.evaluate import evaluate
from vstar_toy.metrics import cluster_ci, hit_rate, ndcg
from vstar_toy.pipeline import sft_cache_dir, sft_policy
from vstar_toy.world.amazon import load_world

OUT = Path(__file__).with_name("policy.jsonl")
REF = "dropout 0.1, cosine"
A = {"policy": {"dropout": 0.1}, "sft": {"eval_queries": 1000, "schedule": "cosine", "warmup_steps": 100}}


def with_(over: dict, **stages) -> dict:
    """``over`` with some stages' fields changed."""
    return {s: {**over.get(s, {}), **stages.get(s, {})} for s in {*over, *stages}}


SFT_VARIANTS = {  # name -> (Config.replace stages over the real-data preset, beam width read for the top 10)
    "as before (dropout 0, constant rate)": ({}, 10),
    REF: (A, 10),
    "... width 128": (with_(A, policy={"d_model": 128}), 10),
    "... 4 layers": (with_(A, policy={"n_layers": 4}), 10),
    "... dropout 0.2": (with_(A, policy={"dropout": 0.2}), 10),
    "... 12 epochs (the cosine reaches 0)": (with_(A, sft={"epochs": 12, "patience": 12}), 10),
    "... lr 1e-3": (with_(A, sft={"lr": 1e-3}), 10),
    "... batches of 64": (with_(A, sft={"batch_size": 64}), 10),
    "... without item text": (with_(A, policy={"item_text": False}), 10),
    "... beam 20, top 10 read": (A, 20),
    "... beam 50, top 10 read": (A, 50),
}
FIXED = {  # the tested model's protocol (World.valid_seen: every epoch runs, the last is kept): how many epochs
    f"... {n} epochs, the last kept": with_(A, sft={"epochs": n}) for n in (6, 8, 12, 16)
}
CHOSEN = "... 8 epochs, the last kept"  # config.REAL_DATA's SFT
FIXED |= {  # the title-to-SID alignment task (SFTConfig.align_weight) over the chosen SFT, paired with it too
    f"{CHOSEN}, alignment {w:g}": with_(A, sft={"epochs": 8, "align_weight": w}) for w in (0.5, 1.0)
}
SEQREC_VARIANTS = {
    "SASRec (defaults)": SeqRecConfig(),
    "SASRec, width 128": SeqRecConfig(d_model=128),
    "SASRec, dropout 0.5": SeqRecConfig(dropout=0.5),
    "SASRec, lr 3e-3": SeqRecConfig(lr=3e-3),
    "GRU4Rec (defaults)": SeqRecConfig(kind="gru4rec"),
    "GRU4Rec, dropout 0.1": SeqRecConfig(kind="gru4rec", dropout=0.1),
    "GRU4Rec, lr 3e-3": SeqRecConfig(kind="gru4rec", lr=3e-3),
}


def main(only: set[str]) -> None:
    w = load_world("amazon18-office")
    val = w.queries("valid")
    people = w.people_of(val.users)
    done = {r["variant"]: r for r in map(json.loads, OUT.read_text().splitlines())} if OUT.exists() else {}
    hits = {}  # variant -> (hr, ndcg) per validation row, for paired differences (recomputed, not stored)
    base = preset("cpu_demo").for_real_data()
    seen = dataclasses.replace(w, valid_seen=True)
    for name, (over, width) in (SFT_VARIANTS | {k: (v, 10) for k, v in FIXED.items()}).items():
        if only and name not in only and name != REF:  # the reference is decoded again for the paired differences
            continue
        cfg = base.replace(**over)
        t = time.time()
        pol = sft_policy(seen if name in FIXED else w, cfg, progress=False, say=lambda m: None)
        _, sets = evaluate(w, pol, val, cfg.decode.beam_at_1x(width))
        items = np.concatenate([c.items.numpy() for c in sets])
        hits[name] = hit_rate(items, val.targets, 10), ndcg(items, val.targets, 10)
        log = read_meta(sft_cache_dir(seen if name in FIXED else w, cfg))["sft_log"]
        kept = len(log) if name in FIXED else max(log, key=lambda r: r["valid_hr@10"])["epoch"]
        record(done, name, hits, people, t, {"config": over, "beam": width, "epochs run": len(log), "kept": kept})
    for name, scfg in SEQREC_VARIANTS.items():
        if (only and name not in only) or (not only and name in done):
            continue
        t = time.time()
        model, log = seqrec.fit(w, scfg, progress=False)
        ranks = seqrec.target_ranks(model, val.histories, val.targets)
        top = seqrec.recommend(model, val.histories, 10)
        hits[name] = (ranks < 10).astype(float), ndcg(top, val.targets, 10)
        kept = max(log, key=lambda r: r["valid_hr@10"])["epoch"]
        record(done, name, hits, people, t, {"config": dataclasses.asdict(scfg), "epochs run": len(log), "kept": kept})


def record(done: dict, name: str, hits: dict, people: np.ndarray, t: float, extra: dict) -> None:
    hr, nd = hits[name]
    row = {"variant": name, "hr@10": cluster_ci(hr, people), "ndcg@10": cluster_ci(nd, people),
           "seconds": round(time.time() - t), **extra}
    if REF in hits and name != REF:
        row["hr@10 - ref"] = cluster_ci(hr - hits[REF][0], people)
        row["ndcg@10 - ref"] = cluster_ci(nd - hits[REF][1], people)
    if CHOSEN in hits and name.startswith(CHOSEN + ","):  # a change to the chosen policy, paired with it
        row["hr@10 - chosen"] = cluster_ci(hr - hits[CHOSEN][0], people)
        row["ndcg@10 - chosen"] = cluster_ci(nd - hits[CHOSEN][1], people)
    print(json.dumps(row), flush=True)
    done[name] = row
    OUT.write_text("".join(json.dumps(r) + "\n" for r in done.values()))


if __name__ == "__main__":
    main(set(sys.argv[1:]))
