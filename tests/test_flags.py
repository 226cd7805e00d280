"""One declaration per knob: every config field is a flag of the commands that take its stage, documented by
the field's own docstring; every option of every command refuses a bad value with one line naming it and exit
status 2 before any work; and the package's imports point one way (config imports nothing of it)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Literal, get_origin

import pytest
import typer
from typer.testing import CliRunner

from vstar_toy import cli, experiments, pipeline
from vstar_toy.config import field_docs
from vstar_toy.flags import STAGES, all_flags

PACKAGE = Path(cli.__file__).parent
COMMANDS = {info.callback.__name__: info.callback for info in cli.app.registered_commands}
CLICK = typer.main.get_command(cli.app).commands


def stages_of(command: str) -> tuple[str, ...]:
    return getattr(COMMANDS[command], "stages", ())


def test_every_stage_is_taken_by_a_command_and_train_takes_them_all():
    assert set(stages_of("train")) == set(STAGES)
    assert {"world", "sft", "value", "decode", "train", "baselines"} == {c for c in COMMANDS if stages_of(c)}


@pytest.mark.parametrize("command", [c for c in COMMANDS if stages_of(c)])
def test_every_field_is_a_flag_with_its_doc_as_help(command):
    params = {p.opts[0]: p for p in CLICK[command].params}
    shown = CliRunner().invoke(cli.app, [command, "--help"], terminal_width=200).output
    for stage in stages_of(command):
        docs = field_docs(STAGES[stage])
        for field in dataclasses.fields(STAGES[stage]):
            flag = all_flags()[(stage, field.name)]
            param = params[flag.flag.split("/")[0]]
            assert param.help == f"{STAGES[stage].__name__}.{field.name}: {docs[field.name]}", (command, flag.flag)
            assert param.default is None, "an option not given must leave the preset's value"
            assert flag.flag in shown, (command, flag.flag)


def test_flags_keep_the_names_users_know():
    names = {k: f.flag for k, f in all_flags().items()}
    assert names[("world", "mismatch")] == "--mismatch" and names[("world", "seed")] == "--seed"
    assert names[("rl", "lr")] == "--lr" and names[("sft", "lr")] == "--sft-lr"
    assert names[("decode", "n_candidates")] == "--candidates" and names[("value", "inputs")] == "--value-inputs"
    assert names[("sft", "epochs")] == "--epochs" and names[("rl", "steps")] == "--steps"
    (pretrain_steps,) = [p for p in CLICK["value"].params if p.name == "value__pretrain_steps"]
    assert pretrain_steps.opts == ["--pretrain-steps", "--steps"]


# -- every option refuses a bad value, before any work ----------------------------------------------


def bad_value(param, tmp: Path) -> tuple[str, str] | None:
    """(value, words the one line must hold) for a value outside ``param``'s range; None for a switch."""
    flag = param.opts[0]
    if param.is_flag:
        return None
    field = next((f for f in all_flags().values() if f.param == param.name), None)
    if field is not None:  # a config field: the config refuses it, under the flag's name
        if get_origin(field.kind) is Literal:
            return "nonsense", flag
        return ("x", flag) if get_origin(field.kind) is tuple else ("-1", f"{flag} = -1")
    file = tmp / "a_file"
    file.write_text("")
    nowhere = str(tmp / "nowhere")
    known = {"--out": str(file), "--plot": str(file), "--policy": nowhere, "--data": nowhere, "--claims": "0",
             "--backbone": "nonsense", "--preset": "nonsense", "--value": "nonsense", "--update": "nonsense"}
    if flag in known:
        return known[flag], flag
    assert param.min is not None, f"{flag}: a count without a range"
    return str(param.min - 1), flag


def _options(command: str):
    return [p for p in CLICK[command].params if p.opts and p.opts[0] != "--help"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_refuses_a_bad_value_with_one_line_before_any_work(command, tmp_path, monkeypatch, capsys):
    def work(*args, **kwargs):
        raise AssertionError("work began before the options were checked")

    for target, name in [(pipeline, "build_world"), (pipeline, "load_data"), (pipeline, "sft_policy"),
                         (experiments, "reproduce")]:
        monkeypatch.setattr(target, name, work)
    monkeypatch.setattr("vstar_toy.experiments.recipe.recipe_sweep", work)
    monkeypatch.setattr("vstar_toy.demo.run", work)
    monkeypatch.setenv("VSTAR_TOY_CACHE", str(tmp_path / "cache"))
    required = ["--out", str(tmp_path / "out")] if command in ("sft", "train") else []
    checked = 0
    for param in _options(command):
        bad = bad_value(param, tmp_path)
        if bad is None:
            continue
        value, words = bad
        args = [a for a in required if param.opts[0] != "--out"]
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, *args, param.opts[0], value])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert exit_.value.code == 2 and len(err) == 1, (command, param.opts[0], err)
        assert err[0].startswith("error:") and words in err[0], (command, param.opts[0], err[0])
        checked += 1
    assert checked >= 3
    assert not (tmp_path / "cache").exists()


# -- the package's imports ------------------------------------------------------------------------


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports (at the top or inside a function)."""
    mods = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        here = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] if node.level else [])
                target = ".".join(filter(None, [base, node.module]))
                for alias in node.names:
                    graph[m].add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in mods else target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names)
        graph[m] = {t for t in graph[m] if t in mods and t != m}
    return graph


def test_config_imports_nothing_of_the_package():
    assert _imports()["vstar_toy.config"] == set()


def test_no_import_cycle_in_the_package():
    graph = _imports()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m not in done:
            for t in sorted(graph[m]):
                visit(t, path + [m])
            done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_cli_holds_commands_only():
    lines = (PACKAGE / "cli.py").read_text().splitlines()
    assert len(lines) <= 250, "option declarations live in flags.py, the demo's story in demo.py, output in show.py"
