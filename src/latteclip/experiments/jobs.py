"""One planned run as a job: the function a launcher calls, its marks in the run folder, and each run's state.

A job gets plain data (the run's configuration as a dict, and the describe settings of an LMM zero-shot entry), so
the same function runs in this process, in a local submitit job or on a Slurm node. It reuses a finished run,
resumes an interrupted one (`run_or_reuse`) and leaves `failed.txt` (the error line) in the run folder when it
fails; `started.json` says which process runs it, so `status` tells a running run from an interrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from latteclip.config import RunConfig
from latteclip.describe.settings import resolve_settings
from latteclip.engine.lmm_zeroshot import lmm_zero_shot
from latteclip.engine.results import RunResults, computed_as, has_results, read_results
from latteclip.engine.session import pick_device, resolve_precision
from latteclip.engine.trainer import run_training
from latteclip.errors import LatteclipError
from latteclip.experiments.archive import comparable

FAILED_FILE = "failed.txt"
STARTED_FILE = "started.json"
STATES = ("done", "running", "interrupted", "failed", "missing")


def run_or_reuse(
    config: RunConfig, prepare: Callable[[RunConfig], None] | None = None, fresh: bool = False
) -> RunResults:
    """Train and evaluate, or return the results of a finished run with the same configuration in its folder.

    An interrupted run with the same configuration continues from its last checkpoint. `prepare` (e.g.
    the description stage for the run's training images) runs only when the run trains. `fresh` trains
    anew even over a finished run of the same configuration (its code changed).
    """
    run_dir = config.run_dir
    same = not fresh and same_config(config)
    if same and has_results(run_dir):
        results = read_results(run_dir)
        if computed_here_alike(results, config):
            return results
    resume = same and (run_dir / "last.pt").is_file()
    # the experiment's own folder: a run of another configuration is replaced
    config = dataclasses.replace(config, resume=resume, overwrite=not resume)
    if prepare is not None:
        prepare(config)
    return run_training(config)


def computed_here_alike(results: RunResults, config: RunConfig) -> bool:
    """A finished run is reused only where this run would compute in the same precision on the same kind of device."""
    device = pick_device(config.device)
    return computed_as(results, resolve_precision(config.precision, device), device.type)


def same_config(config: RunConfig) -> bool:
    """Whether the run folder of `config` holds a run of the same configuration (finished or not)."""
    saved = config.run_dir / "config.yaml"
    return saved.is_file() and comparable(yaml.safe_load(saved.read_text()) or {}) == comparable(config.to_dict())


def run_job(payload: dict[str, Any]) -> float:
    """Run (or reuse, or resume) the run `payload["config"]` describes; its top-1. Module level: launchers pickle it."""
    config = RunConfig(**{**payload["config"], "betas": tuple(payload["config"]["betas"])})
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
    (run_dir / STARTED_FILE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    )
    try:
        results = _run(config, payload.get("describe"), payload.get("fresh", False))
    except BaseException as err:
        last_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        (run_dir / FAILED_FILE).write_text(f"{type(err).__name__}: {last_line}\n")
        raise
    finally:
        (run_dir / STARTED_FILE).unlink(missing_ok=True)
    return results["top1"]


def _run(config: RunConfig, describe: dict[str, Any] | None, fresh: bool) -> RunResults:
    if describe is None:
        return run_or_reuse(config, fresh=fresh)
    if has_results(config.run_dir) and same_config(config):
        return read_results(config.run_dir)
    results = lmm_zero_shot(config, resolve_settings(describe, {}))
    if results is None:
        raise LatteclipError(f"the LMM answered for only some test images of {config.dataset}: run again for the rest")
    return results


@dataclass(frozen=True)
class RunState:
    state: str  # one of STATES
    message: str = ""  # a failed run's error line, a running one's host and process


def run_state(config: RunConfig) -> RunState:
    """done: results of this configuration; failed: its error line; running / interrupted: started, not finished."""
    run_dir = config.run_dir
    if has_results(run_dir) and same_config(config):
        return RunState("done")
    if (run_dir / FAILED_FILE).is_file():
        return RunState("failed", (run_dir / FAILED_FILE).read_text().strip())
    started = run_dir / STARTED_FILE
    if started.is_file():
        mark = json.loads(started.read_text())
        alive = mark["host"] != socket.gethostname() or _process_alive(int(mark["pid"]))
        return RunState("running" if alive else "interrupted", f"{mark['host']} process {mark['pid']}")
    if (run_dir / "config.yaml").is_file():
        return RunState("interrupted", "resumes from its last checkpoint" if (run_dir / "last.pt").is_file() else "")
    return RunState("missing")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
