"""The command line explains itself quickly: `--help` of every command without importing torch, in under half a
second, defaults shown, and every method option described (from the torch-free options dataclasses the methods use)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latteclip.cli import COMMANDS, build_parser
from latteclip.config import RunConfig, machine_cpus
from latteclip.methods import REGISTRY, get_method
from latteclip.methods.options import OPTIONS

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
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
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
    undescribed = [
        (name, a.option_strings[0])
        for name, child in commands.items()
        for a in child._actions
        if a.option_strings and not a.help
    ]
    assert undescribed == []


def test_every_run_option_declared_with_a_flag_is_a_flag_of_some_command():
    """A declared flag no parser adds is one the README can name and no user can pass (--deterministic was one)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    dests = {a.dest for child in commands.values() for a in child._actions}
    flagged = [f.name for f in dataclasses.fields(RunConfig) if f.metadata["flag"]]
    assert [name for name in flagged if name not in dests] == []
    train = commands["train"].parse_args(["--deterministic"])
    assert train.deterministic is True


def test_help_shows_defaults_and_describes_every_method_option():
    out, _ = help_run("train")
    flat = " ".join(out.split())
    assert "--lr LR base learning rate (AdamW) (default: 1e-07)" in flat
    assert f"--workers WORKERS data-loading worker processes (default: {machine_cpus()})" in flat
    options = flat.split("method options", 1)[1]
    for method in REGISTRY:
        for field in dataclasses.fields(OPTIONS[method]):
            flag = "--" + field.name.replace("_", "-")
            section = re.split(re.escape(flag) + "[ ,]", options, maxsplit=1)[1][:400]
            assert field.metadata["help"].split()[0] in section and f"{method}:" in section, (method, field.name)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_each_method_uses_the_options_class_the_flags_come_from(method):
    assert set(OPTIONS) == set(REGISTRY)
    assert get_method(method).Options is OPTIONS[method]


TIMED = """
import sys, time
started = time.perf_counter()
from latteclip.cli import main
try:
    main(["train", "--help"])
except SystemExit:
    print(time.perf_counter() - started, file=sys.stderr)
"""


def test_train_help_takes_under_half_a_second():
    """Import, parser and help text of the largest command, timed inside the process (best of three: a busy
    machine)."""
    seconds = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", TIMED],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        )
        seconds.append(float(done.stderr.strip().splitlines()[-1]))
    assert min(seconds) < 0.5, seconds
