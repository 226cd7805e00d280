"""The documentation site (mkdocs.yml, docs/hooks.py): it builds in strict mode, every module has its API
reference page, the paper-equation table links each function to its entry, and every committed report is
reachable from the reports page. The default run builds without executing the tutorials; the slow browser
test executes them (tiny preset), opens each tutorial page in headless Chromium and counts its figures and
error cells. ``VSTAR_TOY_DOCS_SITE=site`` points it at a site already built by ``make docs`` instead, and
then it also writes the screenshots committed under docs/screenshots/.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocs_jupyter")
pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted(p.stem for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(out: Path, execute: bool, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "VSTAR_TOY_DOCS_EXECUTE": str(execute).lower(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    res = build(out, execute=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    hooks = _load("hooks")
    for module in hooks.modules():
        page = site / "reference" / module / "index.html"
        assert page.exists(), module
        assert f'id="{module}"' in page.read_text(), f"{module}: no reference heading"
    for name in TUTORIALS:
        assert (site / "tutorials" / name / "index.html").exists(), name
    for path, (title, _) in hooks.readme_pages().items():
        page = site / path.removesuffix(".md").replace("index", "") / "index.html"
        assert page.exists(), path
        if path != "index.md":  # each README section's page holds that section, not something of the same name
            assert f">{title}<" in page.read_text().replace("&gt;", ">"), title


def test_the_equation_table_links_every_function_to_its_reference_entry(site):
    html = (site / "paper-equation-function" / "index.html").read_text()
    targets = re.findall(r'href="\.\./reference/(vstar_toy[\w.]*)/#([\w.]+)"', html)
    assert ("vstar_toy.rl.advantages", "vstar_toy.rl.advantages.grpo_advantages") in targets
    assert ("vstar_toy.rl.losses", "vstar_toy.rl.losses.sibling_loss") in targets
    assert len(targets) >= 30, targets
    for module, anchor in targets:  # each anchor exists on its page
        assert f'id="{anchor}"' in (site / "reference" / module / "index.html").read_text(), anchor


def test_every_committed_report_is_reachable_from_the_reports_page(site):
    html = (site / "reports" / "index.html").read_text()
    for report in sorted((ROOT / "docs" / "results").glob("*/*.md")):
        rel = report.relative_to(ROOT / "docs").with_suffix("")
        assert f'href="../{rel.as_posix()}/"' in html, rel
        assert (site / rel / "index.html").exists(), rel


def test_doctests_in_docstrings_render_as_code_not_quotes(site):
    html = (site / "reference" / "vstar_toy.rl.advantages" / "index.html").read_text()
    assert "&gt;&gt;&gt;" in html and "<blockquote>" not in html


def test_doctest_fencing_leaves_fenced_text_alone():
    fence = _load("griffe_doctests").fence_doctests
    assert fence("a\n>>> 1\n1\n\nb") == "a\n```pycon\n>>> 1\n1\n```\n\nb"
    fenced = "```pycon\n>>> 1\n1\n```"
    assert fence(fenced) == fenced
    assert fence("  >>> f(\n  ...     2)\n  3\nnext") == "  ```pycon\n  >>> f(\n  ...     2)\n  3\n  ```\nnext"


@pytest.mark.slow
@pytest.mark.browser
def test_every_tutorial_page_shows_figures_and_no_error(tmp_path, model_cache):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (make install puts it there when apt-get can)")
    given = os.environ.get("VSTAR_TOY_DOCS_SITE")
    if given:
        site = Path(given).resolve()
    else:
        site = tmp_path / "site"
        env = {"VSTAR_TOY_TUTORIAL_PRESET": "tiny", "VSTAR_TOY_CACHE": str(model_cache)}
        res = build(site, execute=True, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    figures = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name in TUTORIALS:
            page.goto((site / "tutorials" / name / "index.html").as_uri())
            figures[name] = page.locator("article img").count()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
                                  ".output_error, .jp-RenderedText[data-mime-type*='error']").count()
            assert errors == 0, f"{name}: {errors} error or stderr outputs"
            assert "Traceback" not in page.content(), f"{name}: a traceback"
            assert figures[name] >= 1, f"{name}: no figure"
        if given:  # the committed screenshots, of the real site
            shots = ROOT / "docs" / "screenshots"
            shots.mkdir(exist_ok=True)
            page.goto((site / "tutorials" / TUTORIALS[2] / "index.html").as_uri())
            page.locator("article img").first.evaluate("e => e.scrollIntoView({block: 'end'})")  # a figure
            page.wait_for_timeout(800)  # the header's transition
            page.screenshot(path=str(shots / "tutorial.png"))
            page.goto((site / "reference" / "vstar_toy.rl.advantages" / "index.html").as_uri())
            page.screenshot(path=str(shots / "reference.png"))
        browser.close()
    print("figures per tutorial page:", figures)
