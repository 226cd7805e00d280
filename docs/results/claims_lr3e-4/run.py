"""Claims 1, 4, 6 and 7 at the re-chosen learning rate 3e-4 (issue 29, item 7).

The recipe's criterion picked ``RLConfig.lr`` = 1e-4 over beam search + GRPO and V-STAR as written; with the
corrected update (``vstar+``) in its grid it picks 3e-4 (README, "The recipe, re-chosen"). The default stayed
1e-4 because claims 1-8 ran at it. This script runs every claim that trains a policy (1, 4, 6, 7; claims 2, 3,
5 and 8 decode the SFT policy and do not depend on the rate) at the full settings of `vstar-toy reproduce`
(3 seeds, all 1,200 test users, 60 steps) with the rate as the only change, into ``runs/claims_lr3e-4``
(resumed if cut off: finished runs are kept), and copies the report, tables and figures here; ``compare.py``
sets them beside the rate of 1e-4.

The rule, fixed before the run: 3e-4 becomes the default if every verdict of claims 1, 4, 6 and 7 is the
same as at 1e-4 (``docs/results/reproduce_full``); otherwise 1e-4 stays, and the README names the verdicts
that depend on the rate. Run from the repository: `nice python docs/results/claims_lr3e-4/run.py`.
"""

import shutil
from pathlib import Path

from vstar_toy.config import preset
from vstar_toy.experiments import reproduce
from vstar_toy.experiments.runner import Settings

HERE = Path(__file__).parent
OUT = Path("runs/claims_lr3e-4")

summary = reproduce([1, 4, 6, 7], preset("cpu_demo").replace(rl={"lr": 3e-4}), Settings.make(), OUT)
for path in [OUT / "report.md", OUT / "summary.json", *OUT.glob("claim_*.csv"), *OUT.glob("*.png")]:
    shutil.copy(path, HERE / path.name)
for claim in summary["claims"]:
    print(claim["id"], claim["verdict"])
