"""The choices of issue 21 on Office's validation users (choices.md): per title embedding, the SFT policy
with and without the items' text, and per policy the value seeing the history's mean, or the mean and the
latest item: Spearman per level (Fig. 3's protocol) and VED at 1x. `python measure.py minilm,tfidf`."""

import json
import sys
import time
from pathlib import Path

from vstar_toy.config import DecodeConfig, preset
from vstar_toy.evaluate import evaluate, scorers, value_quality
from vstar_toy.pipeline import sft_policy, value_model
from vstar_toy.world.amazon import load_world

out = {}
cfg0 = preset("cpu_demo")
for enc in sys.argv[1].split(","):
    w = load_world("amazon18-office", encoder=enc)
    valid = w.queries("valid")
    for item_text in (False, True):
        c = cfg0.replace(policy={"item_text": item_text})
        t = time.time()
        pol = sft_policy(w, c, progress=False, say=lambda m: None)
        m, _ = evaluate(w, pol, valid, DecodeConfig(decoder="beam"))
        key = f"{enc} item_text={item_text}"
        out[key] = {"sft_valid_hr@10": m["hr@10"], "sft_valid_ndcg@10": m["ndcg@10"], "sft_s": time.time() - t}
        print(key, out[key], flush=True)
        for user in ("mean", "mean+last"):
            cv = c.replace(value={"user": user})
            head = value_model(w, pol, cv, progress=False, say=lambda m: None)
            rho = value_quality(w, pol, w.queries("valid", n=256), scorers(w, head))
            vm, _ = evaluate(w, pol, valid, DecodeConfig(decoder="ved"), head)
            out[key][f"value {user}"] = {"rho": {k: [round(x, 4) for x in v] for k, v in rho.items()},
                                         "ved_valid_hr@10": vm["hr@10"], "ved_valid_ndcg@10": vm["ndcg@10"]}
            print(key, user, out[key][f"value {user}"], flush=True)
json.dump(out, open(Path(__file__).with_name("measure.json"), "w"), indent=1)
