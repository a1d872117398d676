"""The command line explains itself quickly: `--help` of every command without importing torch, defaults shown,
and every method option described (read from the methods' source, which must agree with their dataclasses)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from latteclip.cli import COMMANDS, _flag_kind, build_parser
from latteclip.config import machine_cpus
from latteclip.methods import REGISTRY, declared_options, get_method

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from latteclip.cli import main
try:
    main(sys.argv[1:])
except SystemExit as end:
    heavy = sorted(m for m in ("torch", "open_clip", "torchvision", "transformers") if m in sys.modules)
    print("IMPORTED", ",".join(heavy), end.code, file=sys.stderr)
"""


def help_run(*command: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *command, "--help"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    return done.stdout, done.stderr.strip().splitlines()[-1]


def test_help_of_every_command_exits_0_without_importing_torch():
    build_parser()
    for command in ["", *COMMANDS, "data download"]:
        out, probe = help_run(*command.split())
        assert probe == "IMPORTED  0", (command, probe)
        assert "usage: latteclip" in out


def test_every_option_of_every_command_has_a_description():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    undescribed = [(name, a.option_strings[0]) for name, child in commands.items() for a in child._actions
                   if a.option_strings and not a.help]
    assert undescribed == []


def test_help_shows_defaults_and_describes_every_method_option():
    out, _ = help_run("train")
    flat = " ".join(out.split())
    assert "--lr LR base learning rate (AdamW) (default: 1e-07)" in flat
    assert f"--workers WORKERS data-loading worker processes (default: {machine_cpus()})" in flat
    options = flat.split("method options", 1)[1]
    for method in REGISTRY:
        for option in declared_options(method):
            assert option.description, f"{method}.{option.name} has no comment to describe it"
            flag = "--" + option.name.replace("_", "-")
            section = re.split(re.escape(flag) + "[ ,]", options, maxsplit=1)[1][:400]
            assert option.description.split()[0] in section and f"{method}:" in section, (method, option.name)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_options_read_from_the_source_match_the_dataclasses(method):
    options = get_method(method).Options
    fields = {f.name: f for f in dataclasses.fields(options)}
    declared = {o.name: o for o in declared_options(method)}
    assert list(declared) == list(fields)
    hints = typing.get_type_hints(options)
    for name, field in fields.items():
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert declared[name].default == (list(default) if isinstance(default, tuple) else default), name
        kind = hints[name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType")) else kind
        expected = "list" if typing.get_origin(base) in (list, tuple) else base.__name__
        assert _flag_kind(declared[name].annotation) == expected, name
