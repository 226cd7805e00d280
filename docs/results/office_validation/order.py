"""How the real-data policy and value rank what they decode: VED's and the reranked tree's sets ranked by V
and by log pi, beside beam search, on all Office validation users (choices.md). Run from the repository with
`VSTAR_TOY_ENCODER` unset and the text extra installed."""

import json
from pathlib import Path

import numpy as np

from vstar_toy.config import DecodeConfig, preset
from vstar_toy.evaluate import evaluate
from vstar_toy.metrics import hit_rate, ndcg
from vstar_toy.pipeline import sft_policy, value_model
from vstar_toy.world.amazon import load_world

w = load_world("amazon18-office")
cfg = preset("cpu_demo").for_real_data().replace(decode={"rank": "value"})
pol = sft_policy(w, cfg, progress=False, say=lambda m: None)
head = value_model(w, pol, cfg, progress=False, say=lambda m: None)
val = w.queries("valid")
out = {}
for name, dc in [("beam", DecodeConfig(decoder="beam")), ("ved", DecodeConfig(decoder="ved")),
                 ("reranked 1x (b=5)", DecodeConfig(decoder="reranked")),
                 ("reranked 2.25x (b=8)", DecodeConfig(decoder="reranked", budget_x=2.25, rerank_width=8))]:
    m, sets = evaluate(w, pol, val, dc, head)
    items = np.concatenate([c.items.numpy() for c in sets])
    lp = np.concatenate([c.logp.numpy() for c in sets])
    by_lp = np.take_along_axis(items, np.argsort(-lp, axis=1, kind="stable"), 1)
    out[name] = {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "reach": m["reachability"],
                 "hr@10 by logp": float(hit_rate(by_lp, val.targets, 10).mean()),
                 "ndcg@10 by logp": float(ndcg(by_lp, val.targets, 10).mean())}
    print(name, {k: round(v, 4) for k, v in out[name].items()}, flush=True)
json.dump(out, open(Path(__file__).with_name("order.json"), "w"), indent=1)
