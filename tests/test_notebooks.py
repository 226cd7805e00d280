"""Every tutorial runs top to bottom: converted from jupytext percent format, executed by nbclient in
a fresh kernel, in a temporary working directory, on the tiny preset, each in under 2 minutes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
LIMIT_S = 120


def test_the_tutorials_are_found():
    assert [p.stem[:2] for p in TUTORIALS][:4] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, model_cache, tmp_path, monkeypatch):
    # `import streamlit` (test_app.py, same worker) sets MPLBACKEND=Agg, which the kernel would inherit
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("VSTAR_TOY_TUTORIAL_PRESET", "tiny")
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(model_cache))
    monkeypatch.chdir(tmp_path)
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=LIMIT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.monotonic()
    client.execute()
    elapsed = time.monotonic() - start
    assert elapsed < LIMIT_S, f"{path.name} took {elapsed:.0f} s"
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert figures >= 2, f"{path.name} drew {figures} figures"
