"""MkDocs hooks that make the site's pages from what the repository already holds (mkdocs.yml).

- the README: its text before the first ``##`` is the home page, each ``##`` section a page, with links
  rewritten for the site (``docs/x`` -> ``x``; a committed benchmark table becomes a page of its own) and the
  paper-equation table's functions linked to their API reference entries;
- the API reference: one page per module of ``vstar_toy``, rendered by mkdocstrings from the docstrings;
- the reports page: every committed report under ``docs/results/`` (the README's Results section is a guide
  page of its own);
- the navigation, in the README's order, then the tutorials, the reports and the reference.

Executed tutorials are cached by mkdocs-jupyter, keyed by the notebook's text; the cache folder is keyed here
by the package's sources and this file too (it sets the kernels' environment), so that a change of the code a
tutorial runs executes it again.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vstar_toy"
BENCHMARK_LINK = re.compile(r"\]\(benchmarks/results/([\w.-]+)\.md\)")
CODE_CELL = re.compile(r"`([\w/]+\.py): ([^`]+)`")
BARE_MODULE = re.compile(r"(?<!\[)`([\w/]+\.py)`(?!\])")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def readme_pages() -> dict[str, tuple[str, str]]:
    """{page path: (title, markdown)}: the README's preamble as index.md, each ``##`` section as a page."""
    text = (ROOT / "README.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    pages = {"index.md": ("Home", _site_links(parts[0]))}
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        body = _site_links(body)
        if title.startswith("Paper equation"):
            body = _link_functions(body)
        pages[f"{_slug(title)}.md"] = (title, f"# {title}\n{body}")
    contents = [f"- [{title}]({path})" for path, (title, _) in pages.items() if path != "index.md"]
    tutorials = [f"- [{p.stem}](tutorials/{p.name})" for p in sorted((ROOT / "tutorials").glob("*.py"))]
    pages["index.md"] = ("Home", pages["index.md"][1] + "\n## The guide\n\n" + "\n".join(contents)
                         + "\n\n## The tutorials, run and rendered\n\n" + "\n".join(tutorials)
                         + "\n\n[The committed reports](reports.md) and [the API reference](reference/vstar_toy.md).\n")
    return pages


def _site_links(md: str) -> str:
    """README links as the site sees them: ``docs/`` is the site's root; benchmark tables are pages."""
    md = BENCHMARK_LINK.sub(r"](benchmarks/\1.md)", md)
    return md.replace("](docs/", "](")


def _link_functions(md: str) -> str:
    """`rl/advantages.py: grpo_advantages, x` -> each name a link to its reference entry (autorefs), and
    a bare `values.py` to its module's; a path of tests keeps its code span."""
    def link(m: re.Match) -> str:
        path, names = m.group(1), m.group(2)
        if path.startswith("tests/"):
            return m.group(0)
        module = "vstar_toy." + path.removesuffix(".py").replace("/", ".")
        out = []
        for name in (n.strip() for n in names.split(",")):
            ident = name.split(" ")[0]  # "ved_decode" of "ved_decode; ..."
            out.append(f"[`{name}`][{module}.{ident}]" if re.fullmatch(r"[\w.]+", ident) else f"`{name}`")
        return f"[`{path}`][{module}]: " + ", ".join(out)

    def link_module(m: re.Match) -> str:
        path = m.group(1)
        if path.startswith("tests/"):
            return m.group(0)
        return f"[`{path}`][vstar_toy.{path.removesuffix('.py').replace('/', '.')}]"
    return BARE_MODULE.sub(link_module, CODE_CELL.sub(link, md))


def modules() -> list[str]:
    """Every module of the package, dotted, in file order (packages' ``__init__`` as the package; scripts in
    folders that are no package, e.g. ``data/``, left out)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if not (path.parent / "__init__.py").exists():
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def reports_page() -> str:
    """Markdown: the committed reports under docs/results, each folder with its pages and figures."""
    lines = ["# Reports", "", "Every report the README quotes, as committed (`docs/results/`). Each was written",
             "by the command its first lines name; rerun it to regenerate.", ""]
    for folder in sorted(p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir()):
        lines.append(f"## {folder.name}")
        lines.append("")
        for f in sorted(folder.iterdir()):
            if f.suffix == ".md":
                lines.append(f"- [{f.name}](results/{folder.name}/{f.name})")
            elif f.suffix in (".png", ".csv"):
                lines.append(f"- [`{f.name}`](results/{folder.name}/{f.name})")
        lines.append("")
    return "\n".join(lines)


def _tree_hash() -> str:
    """A hash of the package's sources and of this file (which sets the kernels' environment)."""
    h = hashlib.sha256()
    for path in [*sorted(PACKAGE.rglob("*.py")), Path(__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def on_config(config):
    # the tutorials' kernels run in tutorials/: they share the repository's model cache (make demo's models),
    # named relative to it, so that the pages' printed cache paths name no folder of the building machine
    os.environ.setdefault("VSTAR_TOY_CACHE", "../.cache/vstar_toy")
    # tqdm.auto warns on import in a kernel without ipywidgets (IProgress): a stderr cell on every page,
    # naming this machine's paths; the progress bars are off in the tutorials anyway
    quiet = "ignore::Warning:tqdm.auto"
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), quiet) if w)
    pages = readme_pages()
    tutorials = sorted(p.name for p in (ROOT / "tutorials").glob("*.py"))
    config["nav"] = [
        {"Home": "index.md"},
        {"Guide": [{title: path} for path, (title, _) in pages.items() if path != "index.md"]},
        {"Tutorials": [f"tutorials/{name}" for name in tutorials]},
        {"Reports": "reports.md"},
        {"Reference": [{m: f"reference/{m}.md"} for m in modules()]},
    ]
    jupyter = config["plugins"].get("mkdocs-jupyter")
    if jupyter is not None:  # renders of tutorials that ran other code are not reused
        jupyter.config["cache_dir"] = str(ROOT / ".cache" / "mkdocs-jupyter" / _tree_hash())
    return config


def on_files(files, config):
    generated = {path: md for path, (_, md) in readme_pages().items()}
    generated["reports.md"] = reports_page()
    for m in modules():
        generated[f"reference/{m}.md"] = f"::: {m}\n"
    for table in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        generated[f"benchmarks/{table.name}"] = table.read_text()
    for path, content in generated.items():
        files.append(File.generated(config, path, content=content))
    return files
