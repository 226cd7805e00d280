"""Files that several processes, and a crash at any moment, can share.

Four rules, one function each, used by every stage that writes (the cache, checkpoints, run folders,
reports):

- ``atomic_save`` / ``atomic_write_text``: a file is written under a temporary name of its own
  (unique per writer) in the same folder and renamed into place when complete, so a reader sees the old
  file or the new one, never half of one, and two writers never write the same temporary file;
- ``entry_lock``: one lock per cache entry (``filelock``; the kernel releases it when its process dies,
  even by SIGKILL). A second process waits for the first, then finds the entry complete and reuses it;
  an entry is complete when its last file (``meta.json``) exists, so a holder killed half-way leaves
  nothing that the next one mistakes for a finished entry;
- ``cache_entry``: the protocol every cache follows on top of ``entry_lock``: load a complete entry, else
  take its lock, look again, and build it (or resume what a killed holder left);
- ``run_lock``: one writer per run folder; a second process is refused at once with the holder's PID;
- ``check_output_dir``: an output path checked before any work (a file where a folder is wanted, a
  folder that cannot be created or written) with one clear error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")
LOCK = ".lock"
CACHE_ENV = "VSTAR_TOY_CACHE"
OWNER = ".owner"  # who holds a run folder's lock: "process PID on HOST since TIME"


class FolderBusyError(ValueError):
    """A run folder that another process is writing (exit status 2 on the command line)."""


# ----------------------------------------------------------------------------------------------
# atomic writes


def _write_atomically(path: Path, write: Callable) -> None:
    """``write(file object)`` into a temporary file of this writer's own beside ``path``, then rename it
    over ``path``; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj, path)``, all or nothing."""
    import torch  # here, so that the command line answers --help without loading torch

    _write_atomically(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """``path.write_bytes(data)``, all or nothing."""
    _write_atomically(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: Path) -> None:
    """``path.write_text(text)`` in UTF-8, all or nothing."""
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def remove_temporaries(folder: Path) -> None:
    """Remove what writers killed mid-write left in ``folder`` and below (their ``.NAME.*.tmp`` files).
    Call it only while holding the folder's lock: another writer's temporary file is then none of them."""
    if folder.is_dir():
        for tmp in folder.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def cache_root() -> Path:
    """Where models and embeddings are cached: ``$VSTAR_TOY_CACHE``, else ``.cache/vstar_toy`` in the
    working directory."""
    return Path(os.environ.get(CACHE_ENV, ".cache/vstar_toy"))


# ----------------------------------------------------------------------------------------------
# locks


@contextlib.contextmanager
def entry_lock(entry: Path, say: Callable[[str], None] = print) -> Iterator[bool]:
    """Hold the lock of the cache entry ``entry`` (a folder; the lock file ``.ENTRY.lock`` lies beside it).
    Yields whether this process had to wait for another one: the caller then looks again at what the
    other process left (a complete entry to reuse, or a partial state to resume)."""
    check_output_dir(entry.parent, "the model cache (VSTAR_TOY_CACHE)")
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry.parent / f".{entry.name}{LOCK}"))
    waited = False
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting for another process that is writing {entry}")
        waited = True
        lock.acquire()
    try:
        remove_temporaries(entry)
        yield waited
    finally:
        lock.release()


def cache_entry(entry: Path, who: str, what: str, load: Callable[[], T], build: Callable[[], T],
                say: Callable[[str], None] = print, hint: str = "", last: str = "meta.json") -> T:
    """The cache entry ``entry`` (a folder): ``load()`` when it is complete (its ``last`` file, written last,
    exists), else ``build()`` under the entry's lock (``entry_lock``). A process that waited for another one
    finds the entry complete and loads it, or, if the other was killed, builds it itself (``build`` resumes
    from the partial state the other left, where it keeps one). ``who`` and ``what`` name the entry in the
    notes ``say`` prints; ``hint`` follows the note of a reuse."""
    if (entry / last).exists():
        say(f"{who}: reusing {what} in {entry}{hint}")
        return load()
    with entry_lock(entry, say) as waited:
        if (entry / last).exists():
            say(f"{who}: reusing {what} that another process wrote in {entry} while this one waited")
            return load()
        if waited:
            say(f"{who}: the process that held {entry} ended without finishing it; this one takes over")
        return build()


@contextlib.contextmanager
def run_lock(folder: Path, option: str = "--out") -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (created if needed) while writing it. A second process
    gets a ``FolderBusyError`` naming the holder at once: two writers of one run would interleave steps.
    Within one process the lock nests (the command line holds it around the library's training loop,
    which takes it too)."""
    check_output_dir(folder, option)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK), is_singleton=True)  # one object per path in this process
    if lock.is_locked:  # held by this process already
        with lock:
            yield
        return
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = (folder / OWNER).read_text(encoding="utf-8").strip() or "another process"
        except OSError:
            holder = "another process"
        raise FolderBusyError(f"{option} {folder} is being written by {holder}: wait for it to end, or pass "
                              f"another {option}") from None
    try:
        remove_temporaries(folder)
        atomic_write_text(f"process {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n", folder / OWNER)
        yield
    finally:
        (folder / OWNER).unlink(missing_ok=True)
        lock.release()


# ----------------------------------------------------------------------------------------------
# output paths


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """``path`` if a folder can be written there, before any work is done; else one ``ValueError``
    naming ``option``: a file where the folder (or one above it) should be, or a folder that cannot be
    created or written. Nothing is created."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:  # the nearest existing folder at or above path
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise ValueError(f"{option} {path} {where}; expected a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "cannot be written" if probe == path else f"cannot be created: {probe} is not writable"
        raise ValueError(f"{option} {path} {what} by this user")
    return path
