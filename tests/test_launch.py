"""Jobs through submitit: on this machine with several devices at once, and through a real local Slurm."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submitit.helpers import CommandFunction

from latteclip.experiments.launch import Job, LaunchSettings, launch
from tests.conftest import REPO

SLURM_LOCK = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/latteclip-slurm") + ".lock")  # beside the script's folder

# A job: record when it ran, then fail when its payload says so (the payload arrives as the last argument).
JOB_SCRIPT = """
import ast, json, sys, time
payload = ast.literal_eval(sys.argv[-1])
start = time.time(); time.sleep(payload["seconds"])
with open(payload["out"], "w") as f: json.dump({"start": start, "end": time.time()}, f)
if payload.get("fail"): raise SystemExit("ValueError: run " + payload["name"] + " could not read its dataset")
"""


def _jobs(tmp_path: Path, seconds: float, fail: str | None = None) -> list[Job]:
    names = ["a", "b", "c"]
    return [
        Job(n, {"name": n, "seconds": seconds, "out": str(tmp_path / f"{n}.json"), "fail": n == fail}) for n in names
    ]


def _intervals(tmp_path: Path, names: list[str]) -> list[tuple[float, float]]:
    return [tuple(json.loads((tmp_path / f"{n}.json").read_text()).values()) for n in names]


def test_local_launcher_runs_one_job_per_device_at_once(tmp_path):
    work = CommandFunction([sys.executable, "-c", JOB_SCRIPT])
    settings = LaunchSettings("local", tmp_path / "jobs", devices=("cpu", "cpu"), timeout_min=5)
    outcomes = launch(_jobs(tmp_path, 3.0, fail="c"), work, settings, progress=lambda _: None)
    by_name = {o.name: o for o in outcomes}
    assert by_name["a"].ok and by_name["b"].ok
    assert not by_name["c"].ok and "could not read its dataset" in by_name["c"].message
    (a_start, a_end), (b_start, b_end), (c_start, _) = _intervals(tmp_path, ["a", "b", "c"])
    assert a_start < b_end and b_start < a_end  # two devices: a and b overlapped
    assert c_start >= min(a_end, b_end) - 0.5  # the third waited for a free device


def test_one_device_runs_jobs_one_at_a_time(tmp_path):
    work = CommandFunction([sys.executable, "-c", JOB_SCRIPT])
    settings = LaunchSettings("local", tmp_path / "jobs", devices=("cpu",), timeout_min=5)
    assert all(o.ok for o in launch(_jobs(tmp_path, 0.5), work, settings, progress=lambda _: None))
    (_a_start, a_end), (b_start, b_end), (c_start, _) = _intervals(tmp_path, ["a", "b", "c"])
    assert a_end <= b_start and b_end <= c_start


@pytest.fixture(scope="module")
def local_slurm():
    """A real one-node Slurm on 127.0.0.1 (scripts/slurm-local.sh); the test fails with the reason when it cannot
    start. There is one such Slurm per machine: a lock file keeps tests on other pytest workers (`make test` runs two)
    waiting until this test has stopped it."""
    script = REPO / "scripts" / "slurm-local.sh"
    with open(SLURM_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
        if started.returncode != 0:
            pytest.fail(f"local Slurm did not start: {started.stderr.strip() or started.stdout.strip()}")
        conf = started.stdout.strip().rsplit("SLURM_CONF=", 1)[1]
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        yield conf
        subprocess.run([str(script), "stop"], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.mark.slow
def test_slurm_launcher_runs_an_array_and_names_the_failed_job(tmp_path, local_slurm):
    work = CommandFunction([sys.executable, "-c", JOB_SCRIPT])
    settings = LaunchSettings("slurm", tmp_path / "jobs", timeout_min=5, cpus_per_job=1, array_parallelism=2)
    started = time.time()
    outcomes = launch(_jobs(tmp_path, 1.0, fail="b"), work, settings, progress=lambda _: None)
    assert time.time() - started < 120
    by_name = {o.name: o for o in outcomes}
    assert by_name["a"].ok and by_name["c"].ok
    assert not by_name["b"].ok and "could not read its dataset" in by_name["b"].message
    assert all((tmp_path / f"{n}.json").is_file() for n in "abc")  # every task ran, on the Slurm node
