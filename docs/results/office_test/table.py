"""Office test table (issue 30): the real-data SFT policy chosen on validation (``config.REAL_DATA``,
docs/results/office_validation/choices.md) beside the baselines, all trained on every window whose target
precedes the test period (``pipeline.load_data``: ``World.valid_seen``, the last epoch kept), 3 seeds of
each trained model, all 4,866 test rows of 2,024 users. Per row, a trained model's hit is averaged over its
seeds; intervals resample users (``metrics.cluster_ci``); "SFT - it" is paired by row. Writes table.json and
table.md beside this file. Run from the repository with `VSTAR_TOY_ENCODER` unset and the text extra
installed: `nice python docs/results/office_test/table.py` (about 25 minutes on 2 cores).
"""

import json
import time
from pathlib import Path

import numpy as np

from vstar_toy import baselines, seqrec
from vstar_toy.config import preset
from vstar_toy.evaluate import evaluate
from vstar_toy.metrics import cluster_ci, hit_rate, ndcg
from vstar_toy.pipeline import load_data, sft_policy

SEEDS = (0, 1, 2)
HERE = Path(__file__).parent
SFT = "SFT policy, beam search (|C| = 10)"


def sft_rows(w, test, seed: int) -> np.ndarray:
    """(B, 10) the chosen SFT policy's top 10 by beam search at 1x, for one seed of its initial weights (the
    seed's SFT policy of ``vstar-toy reproduce --data``, ``experiments.runner``; shared through the cache)."""
    cfg = preset("cpu_demo").for_real_data().replace(policy={"seed": seed})
    pol = sft_policy(w, cfg, progress=False, say=lambda m: None)
    _, sets = evaluate(w, pol, test, cfg.decode.beam_at_1x(10))
    return np.concatenate([c.items.numpy() for c in sets])


def main() -> None:
    w = load_data("amazon18-office")
    test = w.queries("test")
    people = w.people_of(test.users)
    per_seed: dict[str, list[np.ndarray]] = {}  # name -> one (B, 10) ranking per seed
    t0 = time.time()
    for name in ("popular", "content-NN (latest item)", "transitions (latest item)"):
        per_seed[name] = [baselines.RANKERS[name](w, test, 10)]  # deterministic: one "seed"
    for seed in SEEDS:
        per_seed.setdefault(SFT, []).append(sft_rows(w, test, seed))
        for kind, name in (("sasrec", "SASRec"), ("gru4rec", "GRU4Rec")):
            model, _ = seqrec.fit(w, seqrec.tested_config(kind, w, seed=seed), progress=False)
            per_seed.setdefault(name, []).append(seqrec.recommend(model, test.histories, 10))
        print(f"seed {seed} done after {time.time() - t0:.0f} s", flush=True)
    scores = {name: {m: np.mean([fn(r, test.targets, 10) for r in runs], 0) for m, fn in (("hr", hit_rate),
                                                                                        ("ndcg", ndcg))}
              for name, runs in per_seed.items()}
    rows = []
    for name, s in scores.items():
        row = {"model": name, "seeds": len(per_seed[name]),
               "per seed hr@10": [float(hit_rate(r, test.targets, 10).mean()) for r in per_seed[name]]}
        for m in ("hr", "ndcg"):
            row[f"{m}@10"] = cluster_ci(s[m], people)
            row[f"SFT - it, {m}@10"] = cluster_ci(scores[SFT][m] - s[m], people)
        rows.append(row)
    (HERE / "table.json").write_text(json.dumps({"rows": rows, "test rows": len(test),
                                                 "test users": int(len(np.unique(people))),
                                                 "training windows": int((w.split == 0).sum()),
                                                 "minutes": round((time.time() - t0) / 60, 1)}, indent=1))
    f = lambda v: f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"  # noqa: E731
    lines = ["| model | seeds | HR@10 | NDCG@10 | SFT - it, HR@10 | SFT - it, NDCG@10 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['seeds']} | {f(r['hr@10'])} | {f(r['ndcg@10'])} | "
              f"{'' if r['model'] == SFT else f(r['SFT - it, hr@10'])} | "
              f"{'' if r['model'] == SFT else f(r['SFT - it, ndcg@10'])} |" for r in rows]
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
