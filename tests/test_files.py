"""vstar_toy/files.py: atomic writes that never share a temporary file, locks that nest in a process and
refuse a second one, and output paths checked before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from vstar_toy import files


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    """Two writers of one path (the failure of issue 22: both used NAME.tmp, one renamed the other's away)."""
    path, errors = tmp_path / "meta.json", []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                files.atomic_write_text(text, path)
        except Exception as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    threads = [threading.Thread(target=write, args=(c * 5000,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert path.read_text() in ("a" * 5000, "b" * 5000)  # one whole file, never a mix
    assert os.listdir(tmp_path) == ["meta.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    files.atomic_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        files.atomic_save({"step": 2, "bad": Unpicklable()}, path)
    import torch

    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.pt"]


def test_remove_temporaries_takes_only_temporary_files(tmp_path):
    (tmp_path / "sub").mkdir()
    keep = [tmp_path / "policy.pt", tmp_path / "sub" / "meta.json", tmp_path / ".lock"]
    gone = [tmp_path / ".policy.pt.x1y2.tmp", tmp_path / "sub" / ".meta.json.abc.tmp"]
    for p in keep + gone:
        p.write_text("x")
    files.remove_temporaries(tmp_path)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


def test_entry_lock_says_when_it_waits(tmp_path):
    entry, notes = tmp_path / "cache" / "sft-abc", []
    held, release = threading.Event(), threading.Event()

    def holder():
        with files.entry_lock(entry, say=lambda m: None) as waited:
            assert not waited
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    with files.entry_lock(entry, say=notes.append) as waited:
        assert waited
    t.join()
    assert notes == [f"waiting for another process that is writing {entry}"]


def test_run_lock_nests_in_one_process_and_refuses_another(tmp_path):
    run = tmp_path / "run"
    with files.run_lock(run):
        with files.run_lock(run):  # the command line around the library's loop
            assert (run / files.OWNER).exists()
        assert (run / files.OWNER).exists(), "the inner exit removed the outer holder's name"
        other = subprocess.run([sys.executable, "-c", "from pathlib import Path; from vstar_toy import files\n"
                                f"with files.run_lock(Path({str(run)!r})): pass"], capture_output=True, text=True)
        assert other.returncode == 1 and "FolderBusyError" in other.stderr
        assert f"--out {run} is being written by process {os.getpid()} on" in other.stderr
    assert not (run / files.OWNER).exists()
    with files.run_lock(run):  # free again
        pass


@pytest.mark.parametrize("case", ["a file", "below a file", "new and nested"])
def test_check_output_dir(case, tmp_path):
    (tmp_path / "f").write_text("x")
    path = {"a file": tmp_path / "f", "below a file": tmp_path / "f" / "sub",
            "new and nested": tmp_path / "a" / "b"}[case]
    if case == "new and nested":
        assert files.check_output_dir(path) == path and not (tmp_path / "a").exists()  # checked, not created
        return
    with pytest.raises(ValueError, match=r"--out .*f.* is a file|cannot be created: .*f is a file"):
        files.check_output_dir(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_check_output_dir_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="cannot be written"):
        files.check_output_dir(ro)
    with pytest.raises(ValueError, match="is not writable"):
        files.check_output_dir(ro / "run")


def test_a_cache_root_that_is_a_file_is_one_line(tmp_path):
    from test_bad_input import cli, one_error_line  # noqa: I001  (pytest puts tests/ on sys.path)

    (tmp_path / "cachefile").write_text("x")
    one_error_line(cli("decode", "--preset", "tiny", "--decoder", "beam", cache=tmp_path / "cachefile"),
                   "VSTAR_TOY_CACHE", "is a file")


@pytest.mark.parametrize("args", [
    ("sft", "--preset", "tiny", "--out", "{file}"),
    ("train", "--preset", "tiny", "--out", "{file}/run"),
    ("reproduce", "--preset", "tiny", "--out", "{file}"),
    ("recipe", "--preset", "tiny", "--out", "{file}"),
    ("demo", "--preset", "tiny", "--out", "{file}"),
    ("world", "--preset", "tiny", "--plot", "{file}"),
])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(args, tmp_path):
    from test_bad_input import cli, one_error_line  # noqa: I001

    file = tmp_path / "taken.txt"
    file.write_text("x")
    res = cli(*(a.format(file=file) for a in args), cache=tmp_path / "cache")
    one_error_line(res, "is a file" if "{file}/" not in "".join(args) else "cannot be created")
    assert not (tmp_path / "cache").exists(), "work was done before the output path was checked"
    assert file.read_text() == "x"
