"""Claims 1, 4, 6 and 7 at lr 1e-4 (``docs/results/reproduce_full``) and at 3e-4 (``summary.json`` here, from
``run.py``) side by side: each claim's two verdicts and every comparison behind them, into ``comparison.md``.
Run from the repository: `python docs/results/claims_lr3e-4/compare.py`."""

import json
from pathlib import Path

HERE = Path(__file__).parent
BEFORE = json.loads((HERE.parent / "reproduce_full" / "summary.json").read_text())
AFTER = json.loads((HERE / "summary.json").read_text())


def by_id(summary: dict) -> dict:
    return {c["id"]: c for c in summary["claims"]}


def fmt(c: dict) -> str:
    return f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] {c['verdict']}"


before, after = by_id(BEFORE), by_id(AFTER)
lines = ["| claim | measure | comparison | lr 1e-4 | lr 3e-4 |", "|---|---|---|---|---|"]
moved = []
for cid in sorted(after):
    for kind, key in (("paper", "comparisons"), ("truth", "comparisons_truth")):
        verdict = "verdict" if kind == "paper" else "verdict_truth"
        b, a = before[cid], after[cid]
        lines.append(f"| {cid} | {kind} ({a['metric' if kind == 'paper' else 'metric_truth']}) | **verdict** | "
                     f"{b[verdict]} | {a[verdict]} |")
        if b[verdict] != a[verdict]:
            moved.append(f"claim {cid}, {kind}: {b[verdict]} at 1e-4, {a[verdict]} at 3e-4")
        old = {(c["a"], c["b"], c["metric"]): c for c in b[key]}
        for c in a[key]:
            o = old.get((c["a"], c["b"], c["metric"]))
            lines.append(f"| | | {c['a']} - {c['b']} | {fmt(o) if o else ''} | {fmt(c)} |")
text = "\n".join(["# Claims 1, 4, 6, 7 at lr 1e-4 and 3e-4", "", *lines, "",
                  "Verdicts that moved: " + ("; ".join(moved) if moved else "none"), ""])
(HERE / "comparison.md").write_text(text)
print(text)
