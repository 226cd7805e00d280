"""The command line's options: every knob is declared once, as a field of a config stage (``config.py``).

Each field of a stage of ``Config`` is an option of every command that takes that stage (``stage_options``):

- the flag is the field's name with dashes (``RLConfig.kl_coef``: ``--kl-coef``); a name several stages
  share carries its stage (``--sft-lr``, ``--value-seed``), except where ``BARE`` gives the plain flag to
  one stage (``--seed`` is the world's, ``--lr`` the policy update's); ``RENAMED`` keeps names users know;
- the help is the field's name and docstring (``config.field_docs``), the choices its ``Literal`` options
  (``config.choices``), listed in ``--help`` stage by stage;
- an option not given is None, so the preset's value stays (``Config.overlay``); a value out of range is
  refused by the config itself and reported under the flag the user typed (``overlay``), before any work.

The options that are not config fields (the preset, the data set, counts, output folders) are declared
here once too, each with its range.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

import typer

from .config import BACKBONE_NAMES, PRESETS, UPDATES, VALUE_KINDS, Config, ConfigError, field_docs, preset

STAGES: dict[str, type] = get_type_hints(Config)
"""The stages of a config by name: world, policy, sft, value, decode, rl."""

BARE = {"seed": "world", "lr": "rl"}
"""A field name several stages share, and the stage whose field keeps the plain flag; the others are prefixed
by their stage (``--policy-seed``, ``--sft-lr``)."""

RENAMED = {("decode", "n_candidates"): "candidates", ("value", "inputs"): "value-inputs",
           ("value", "user"): "value-user"}
"""Flags that are not the field's name: the names users know, and two names too general to stand alone."""


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field of a config stage, as a command-line option."""

    stage: str
    """The stage's name in ``Config`` (``STAGES``)."""
    field: str
    """The field's name in the stage's dataclass."""
    flag: str
    """The option, with its dashes: ``--kl-coef``."""
    kind: object
    """The field's type (``int``, ``float``, ``bool``, a ``Literal``, ``tuple[int, ...]``, ``int | None``)."""

    @property
    def param(self) -> str:
        """The name under which the command receives the value (unique across stages)."""
        return f"{self.stage}__{self.field}"

    @property
    def help(self) -> str:
        """What ``--help`` says of the option: the field it sets and the field's docstring."""
        cls = STAGES[self.stage]
        return f"{cls.__name__}.{self.field}: {field_docs(cls)[self.field]}"

    def annotation(self, *aliases: str) -> object:
        """The option as typer reads it from a parameter's annotation (None when not given), with ``aliases``
        as further names of the flag."""
        origin = get_origin(self.kind)
        decls = (f"{self.flag}/--no-{self.flag[2:]}",) if self.kind is bool else (self.flag, *aliases)
        if origin is tuple:
            kind = str  # "16,16,16", read by ``parse``
        elif origin is Literal or not get_args(self.kind):
            kind = self.kind
        else:  # X | None
            (kind,) = (a for a in get_args(self.kind) if a is not type(None))
        return Annotated[kind | None, typer.Option(
            *decls, help=self.help, metavar="X,Y,..." if origin is tuple else None, show_default=False)]

    def parse(self, raw: object) -> object:
        """The field's value from what typer passed: a tuple from "16,16,16", else the value itself."""
        if get_origin(self.kind) is not tuple:
            return raw
        item = get_args(self.kind)[0]
        try:
            return tuple(item(x) for x in str(raw).split(","))
        except ValueError:
            example = ",".join(map(str, getattr(STAGES[self.stage](), self.field)))
            raise ValueError(f"{self.flag} = {raw!r} is invalid: expected comma-separated {item.__name__}s such as "
                             f"{example}") from None


@functools.cache
def all_flags() -> dict[tuple[str, str], Flag]:
    """Every field of every stage as a ``Flag``, keyed by (stage, field)."""
    stages_of: dict[str, list[str]] = {}
    for stage, cls in STAGES.items():
        for f in dataclasses.fields(cls):
            stages_of.setdefault(f.name, []).append(stage)
    flags = {}
    for stage, cls in STAGES.items():
        kinds = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            plain = len(stages_of[f.name]) == 1 or BARE.get(f.name) == stage
            name = RENAMED.get((stage, f.name)) or (f.name if plain else f"{stage}_{f.name}")
            flags[(stage, f.name)] = Flag(stage, f.name, "--" + name.replace("_", "-"), kinds[f.name])
    if len({f.flag for f in flags.values()}) != len(flags):
        raise RuntimeError("two config fields share a flag: give one of them a stage (BARE) or a name (RENAMED)")
    return flags


def stage_options(*stages: str, aliases: dict[str, str] | None = None) -> Callable:
    """A decorator: the command takes every field of ``stages`` as an option (``Flag``), and receives what the
    user gave as its keyword ``given``, {stage: {field: value}} with the options not given left out.
    ``aliases``: a second flag for a field in this command, e.g. ``{"value.pretrain_steps": "--steps"}``."""
    aliases = aliases or {}

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "given"]
        flags = [f for (stage, _), f in all_flags().items() if stage in stages]
        generated = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=f.annotation(*filter(None, [aliases.get(f"{f.stage}.{f.field}")])))
                     for f in flags]

        @functools.wraps(fn)
        def command(**options):
            given: dict[str, dict] = {stage: {} for stage in stages}
            for f in flags:
                raw = options.pop(f.param)
                if raw is not None:
                    given[f.stage][f.field] = f.parse(raw)
            return fn(**options, given=given)

        command.__signature__ = signature.replace(parameters=own + generated)
        command.stages = stages  # which stages a command takes: read by the tests
        return command

    return wrap


def refusal(error: ConfigError) -> str:
    """A config's refusal of a value, told under the flag that sets it."""
    stage = next(name for name, cls in STAGES.items() if cls is error.cls)
    flag = all_flags()[(stage, error.field)].flag
    return f"{flag} = {error.value!r} is invalid: expected {error.expected} ({error.cls.__name__}.{error.field})"


def overlay(cfg: Config, given: dict[str, dict]) -> Config:
    """``cfg`` with the options the user gave laid over it (``Config.overlay``); a value the config refuses
    is reported under its flag."""
    try:
        return cfg.overlay(**given)
    except ConfigError as e:
        raise ValueError(refusal(e)) from None


def configure(preset_name: str, given: dict[str, dict], data: str | None = None,
              say: Callable[[str], None] = lambda msg: None) -> Config:
    """The config a command runs with: the preset (with the choices made for real data under ``--data``,
    ``Config.for_real_data``) and the options the user gave over it. When |C| was given and b0 was not, and
    the preset's b0 is not below the new |C|, b0 follows (VED needs b0 < |C|), and ``say`` tells it."""
    world_options = given.get("world", {})
    if data is not None and world_options:
        flags = ", ".join(all_flags()[("world", k)].flag for k in world_options)
        raise ValueError(f"{flags}: the synthetic world's options do not apply with --data")
    cfg = preset(preset_name)
    cfg = cfg.for_real_data() if data is not None else cfg
    decode = given.get("decode", {})
    n = decode.get("n_candidates")
    b0 = cfg.decode.with_candidates(n).warm_beam if n is not None and n >= 1 else cfg.decode.warm_beam
    if "warm_beam" not in decode and b0 != cfg.decode.warm_beam:
        given = {**given, "decode": {**decode, "warm_beam": b0}}
        say(f"note: --warm-beam lowered to {b0} (VED's b0 must be below --candidates)")
    return overlay(cfg, given)


def load(preset_name: str, given: dict[str, dict], data: str | None, backbone: str | None = None,
         say: Callable[[str], None] = lambda msg: None, decodes: bool = False):
    """(config, world) of a command: the options checked (``configure``), then the world (``pipeline.load``);
    for a command that ``decodes`` with the config's |C|, that |C| against the catalog."""
    from . import pipeline

    cfg = configure(preset_name, given, data, say)
    world = pipeline.load(cfg, data, backbone)
    if decodes and cfg.decode.n_candidates > world.catalog.n_items:
        raise ValueError(f"--candidates = {cfg.decode.n_candidates} is invalid: the catalog of {world.name} holds "
                         f"{world.catalog.n_items} items")
    return cfg, world


def first_test_users(world, queries: int | None):
    """The first ``queries`` test users (all of them when None), refusing a count the split cannot give."""
    n_split = world.size("test")
    if queries is not None and not 1 <= queries <= n_split:
        raise ValueError(f"--queries = {queries} is invalid: expected 1 .. {n_split} (the test users of {world.name})")
    return world.queries("test", n=queries)


def say_to(quiet: bool) -> Callable[[str], None]:
    """Progress and notes go to stderr, so that --json output on stdout stays clean."""
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run the command line: a mistake in what was typed (an option click refuses, a value the config refuses,
    a path that cannot be written, a file that is not there) is one line on stderr and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args or ["--help"], standalone_mode=False)
    except typer.TyperException as e:  # click's refusals (typer >= 0.29 carries its own click)
        print(f"error: {e.format_message()}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------------------------
# the options that are not config fields

Preset = Annotated[Literal[tuple(PRESETS)], typer.Option("--preset", help="a named preset (config.presets)")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object and nothing else on stdout (progress "
                                                 "and notes still go to stderr)")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bars or notes on stderr")]
PolicyDir = Annotated[Path | None, typer.Option("--policy", exists=True, file_okay=False,
                                                help="a checkpoint from `vstar-toy sft` (default: cached)")]
Backbone = Annotated[str | None, typer.Option(
    "--backbone", help=f"a Qwen2 backbone instead of the tiny transformer: {', '.join(BACKBONE_NAMES)} (random "
    "weights from the config) or a local checkpoint path")]
Data = Annotated[str | None, typer.Option(
    "--data", help="real data instead of the synthetic world: amazon18-office or a MiniOneRec directory")]
Queries = Annotated[int | None, typer.Option("--queries", min=1, help="test users (default: all)")]
Seeds = Annotated[int | None, typer.Option("--seeds", min=1, help="seeds per arm (confidence intervals need >= 2; "
                                                                  "default 3)")]
TestQueries = Annotated[int | None, typer.Option(
    "--test-queries", min=0, help="test users scored per seed (default 0: the whole test split)")]
ValueKind = Annotated[Literal[VALUE_KINDS], typer.Option(
    "--value", help="what VED ranks prefixes by: learned (V_phi), oracle (the world's true prefix value; synthetic "
    "worlds only), logp or cosine")]
Update = Annotated[Literal[tuple(UPDATES)] | None, typer.Option(
    "--update", help="a named update (config.UPDATES): paper (Eq. 2 and 19 as written) or vstar+ (the corrected "
    "V-STAR of claim 9); --baseline, --negatives and --group override its parts")]

