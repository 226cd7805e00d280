"""A griffe extension for the API reference (mkdocs.yml): the docstrings' doctest examples, written bare
(``>>> call`` and its output, as ``pytest --doctest-modules`` runs them), become fenced ``pycon`` blocks, so
that Markdown shows them as code instead of nested quotes and links."""

from __future__ import annotations

import re

from griffe import Extension

PROMPT = re.compile(r"^(\s*)>>> ")


def fence_doctests(text: str) -> str:
    """Every run of lines from a ``>>>`` line to the next blank line (or less indented line) fenced as
    ``pycon``; text already inside a fence is left alone.

    >>> fence_doctests("Sum.\\n\\n>>> 1 + 1\\n2\\n\\nDone.").splitlines()
    ['Sum.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'Done.']
    """
    out, lines, i, fenced = [], text.splitlines(), 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else PROMPT.match(line)
        if m is None:
            out.append(line)
            i += 1
            continue
        indent = m.group(1)
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class FenceDoctests(Extension):
    """Fence each object's doctest examples before its docstring is parsed."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and ">>> " in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
