"""Write one benchmark's section of docs/results.md, between markers, leaving the other sections alone.

Every number on that page comes from a script through this function, with the command that
produced it and the machine it ran on.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

from latteclip.experiments.machine import machine_description

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
HEADER = (
    "# Measured results\n\nEvery section below is written by the benchmark script it names; nothing here is "
    "typed by hand.\n"
)


def machine() -> str:
    m = machine_description()
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}; Python {m['python']}, torch {m['torch']}"


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # a script outside the checkout keeps its own path
        script = script.resolve().relative_to(RESULTS.parents[1])
    return "python " + " ".join(shlex.quote(a) for a in [str(script), *sys.argv[1:]])


def write_section(
    name: str, title: str, body: str, path: Path = RESULTS, command: str | None = None, where: str | None = None
) -> None:
    """Replace (or append) the section `name` with `body`, headed by the command and the machine.

    `command` and `where` default to this process's; a page written from figures measured elsewhere (the GPU check's
    JSON) names the command and the machine that measured them.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    command, where = command or command_line(), where or machine()
    section = f"{start}\n## {title}\n\nCommand: `{command}`  \nMachine: {where}\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.is_file() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
