"""Run the command line and kill it with SIGKILL at a chosen call: the fault injection of
tests/test_faults.py (not a test module itself).

    python tests/kill_at.py MODULE:NAME N before|after [--match TEXT] -- ARGUMENTS OF vstar-toy

replaces ``MODULE.NAME`` by a wrapper that, on the N-th call whose string or path arguments contain
TEXT, kills this process before (or after) calling the original. Nothing is flushed or cleaned up: what
is left on disk is what a crash at that point leaves.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import PurePath


def kill_at(target: str, n: int, when: str, match: str = "") -> None:
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        named = " ".join(str(a) for a in (*args, *kwargs.values()) if isinstance(a, (str, PurePath)))
        hit = False
        if match in named:
            calls += 1
            hit = calls == n
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, attr, wrapper)


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    head, rest = args[:split], args[split + 1:]
    target, n, when, *opts = head
    assert when in ("before", "after"), when
    match = opts[1] if opts[:1] == ["--match"] else ""
    kill_at(target, int(n), when, match)
    from vstar_toy.cli import main as cli_main

    sys.argv = ["vstar-toy", *rest]
    cli_main()


if __name__ == "__main__":
    main()
