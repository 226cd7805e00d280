"""The paper's claims in the toolkit's worlds (docs/design.md, section 5): one function per claim, a shared
runner that caches what they share, verdicts from paired seeds, and ``report.md``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..files import atomic_write_text, run_lock
from ..rl import columns
from .claims import CLAIMS
from .report import write_report
from .runner import Runner, Settings

SWEEPS = (8, 10)
"""The claims that sweep the synthetic world's mismatch knob: they have no real-data reading."""


def claim_ids(claims: str | None, quick: bool = False, real_data: bool = False) -> list[int]:
    """The claims `vstar-toy reproduce --claims` names ("1,2,5"); by default every claim, without the horizon
    study (10) under ``quick`` (it is `vstar-toy horizon --quick`) and without the sweeps on real data."""
    if claims is None:
        return [c for c in CLAIMS if not (real_data and c in SWEEPS) and not (quick and c == 10)]
    try:
        ids = [int(c) for c in claims.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--claims = {claims!r} is invalid: expected comma-separated integers such as 1,2,5") from None
    unknown = [c for c in ids if c not in CLAIMS]
    if unknown:
        raise ValueError(f"--claims = {claims!r} is invalid: expected numbers in 1..{len(CLAIMS)}")
    if real_data and any(c in SWEEPS for c in ids):
        raise ValueError("--claims: claims 8 and 10 sweep the synthetic world's mismatch knob; leave them out "
                         "with --data")
    return ids


def reproduce(claims: list[int], base: Config, settings: Settings, out: str | Path, progress: bool = True,
              say: Callable[[str], None] | None = None, world_loader: Callable | None = None,
              label: str = "", backbone: str | None = None) -> dict:
    """Run ``claims`` and write ``out/report.md``, ``out/claim_N.csv`` and ``out/summary.json``.
    Returns the summary: ``{"claims": [{"id", "verdict", "metric", "values"}, ...], ...}``.
    ``world_loader``: real data (a function () -> World); ``backbone``: a Qwen2 backbone for every
    policy instead of the tiny transformer (see ``pipeline.make_policy``)."""
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        raise ValueError(f"claims = {unknown} are invalid: expected numbers in 1..{len(CLAIMS)}")
    out = Path(out)
    with run_lock(out):  # one reproduction writes a folder at a time
        runner = Runner(base, settings, out, progress=progress, say=say, world_loader=world_loader,
                        backbone=backbone)
        return _run_claims(claims, runner, label)


def reproduce_named(out: str | Path, claims: str | None = None, preset_name: str = "cpu_demo", seeds: int | None = None,
                    quick: bool = False, test_queries: int | None = None, data: str | None = None,
                    backbone: str | None = None, progress: bool = True,
                    say: Callable[[str], None] | None = None) -> dict:
    """``reproduce`` as `vstar-toy reproduce` names its inputs: the claims as "1,2,5" (``claim_ids``), a preset
    by name, the settings' seeds, size and test users (``Settings.make``), and real data by name."""
    from ..config import preset
    from ..pipeline import check_names, load_data

    check_names(data, backbone)
    ids = claim_ids(claims, quick, real_data=data is not None)
    settings = Settings.make(quick=quick, test_queries=test_queries, **({} if seeds is None else {"seeds": seeds}))
    return reproduce(ids, preset(preset_name), settings, out, progress=progress, say=say, label=data or "",
                     world_loader=None if data is None else lambda: load_data(data), backbone=backbone)


def _run_claims(claims: list[int], runner: Runner, label: str) -> dict:
    """The body of ``reproduce``: each claim's table, the report and the summary."""
    out, settings, backbone = runner.out, runner.settings, runner.backbone
    t0 = time.perf_counter()
    frames: list[pd.DataFrame] = []
    for c in claims:
        runner.say(f"claim {c}: {CLAIMS[c].__doc__.splitlines()[0]}")
        df = CLAIMS[c](runner)
        df.to_csv(out / f"claim_{c}.csv", index=False)
        frames.append(df)
        runner.say(f"claim {c}: {df.attrs['verdict']}")
    seconds = time.perf_counter() - t0
    header = (f"{label or 'synthetic world'}; policy: {backbone or 'tiny transformer'}; {settings.seeds} seed(s); "
              f"{'quick' if settings.quick else 'full'} settings: {settings}. Item embeddings (what the semantic "
              f"reward and the value read): {runner.world(0).embedding}.")
    report = write_report(frames, runner, out, header, seconds)

    def clean(v):
        return None if isinstance(v, float) and np.isnan(v) else v

    def diagnostics(key) -> dict:
        logs = runner.train_logs[key].values()
        return {col: clean(float(np.mean([log[col].mean() for log in logs if col in log])))
                for col in (columns.ZERO_VAR_SHARE, columns.SIBLING_SIGNAL_SHARE, columns.LOSS_KL, columns.GRAD_NORM)}

    summary = {
        "claims": [{"id": a["claim"], "title": a["title"], "verdict": a["verdict"], "metric": a["metric"],
                    "values": {k: clean(v) for k, v in a["values"].items()},
                    "verdict_truth": a["verdict_truth"], "metric_truth": a["metric_truth"],
                    "values_truth": {k: clean(v) for k, v in a["values_truth"].items()},
                    "comparisons": [{k: clean(v) for k, v in asdict(c).items()} for c in a["comparisons"]],
                    "comparisons_truth": [{k: clean(v) for k, v in asdict(c).items()} for c in a["comparisons_truth"]]}
                   for a in (df.attrs for df in frames)],
        "training": {arm.label + ("" if m is None else f"; m = {m}"): diagnostics((arm, m))
                     for arm, m in runner.train_logs},
        "test_users": len(runner.test_queries(0)), "seeds": settings.seeds, "quick": settings.quick,
        "seconds": round(seconds, 1), "report": str(report),
    }
    atomic_write_text(json.dumps(summary, indent=2), out / "summary.json")
    return summary


__all__ = ["CLAIMS", "Runner", "Settings", "reproduce"]
