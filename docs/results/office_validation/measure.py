"""Issue 21 measurements on Office validation users: embedding x item_text for SFT; value user mean vs mean+last."""
import json, sys, time
import numpy as np
from vstar_toy.config import preset, DecodeConfig
from vstar_toy.world.amazon import load_world
from vstar_toy.pipeline import sft_policy, value_model
from vstar_toy.evaluate import evaluate, scorers, value_quality

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
json.dump(out, open(f"/tmp/office/measure_{sys.argv[1].replace(',', '_')}.json", "w"), indent=1)
