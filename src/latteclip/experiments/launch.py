"""Independent runs as jobs: on this machine (one per device at once) or on a Slurm cluster (a job array).

Both go through submitit (facebookincubator/submitit): its local executor and its Slurm executor share one interface,
it writes the sbatch script, array and requeue logic that a cluster user expects, and it is maintained by the people
who run it at scale. What is ours is small: which device each local job gets, and how a job's end is read. The
function a job runs and its payload (plain JSON-like data) are pickled by submitit into a folder of ours, written and
read by this user only; the outcome is never unpickled here (a job's result lives in its run folder), so a shared run
folder cannot feed this process code.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latteclip.errors import LatteclipError

LAUNCHERS = ("local", "slurm")
POLL_SECONDS = 2.0
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\w*: ")
FAILED_JOB_ERROR = "submitit.core.utils.FailedJobError"  # how submitit wraps a failed command's stderr
GONE_GRACE_SECONDS = 30.0  # a Slurm job absent from squeue without a result this long has died (no sacct here)


@dataclass(frozen=True)
class Job:
    name: str  # unique within a launch; names its logs
    payload: dict[str, Any]  # the argument of the work function: plain data


@dataclass(frozen=True)
class LaunchSettings:
    launcher: str = "local"
    folder: Path = Path("runs/jobs")  # submitit's files and each job's stdout/stderr
    devices: tuple[str, ...] = ("cpu",)  # local: one job at a time per entry ("cuda:0", "cuda:1", or "cpu" twice)
    timeout_min: int = 24 * 60
    partition: str | None = None  # slurm: --partition
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    array_parallelism: int = 64  # slurm: jobs of the array running at once
    sbatch: dict[str, Any] = field(default_factory=dict)  # slurm: further sbatch options, e.g. {"account": "x"}


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    message: str  # the job's last error line when it failed


def launch(
    jobs: list[Job],
    work: Callable[[dict[str, Any]], Any],
    settings: LaunchSettings,
    progress: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run `work(job.payload)` for every job and wait for all of them; a failed job does not stop the others."""
    if settings.launcher not in LAUNCHERS:
        raise LatteclipError(f"--launcher {settings.launcher} must be one of {', '.join(LAUNCHERS)}")
    if not jobs:
        return []
    import submitit  # imported here: only launching needs it

    settings.folder.mkdir(parents=True, exist_ok=True)
    if settings.launcher == "slurm":
        return _launch_slurm(submitit, jobs, work, settings, progress)
    return _launch_local(submitit, jobs, work, settings, progress)


def _launch_local(
    submitit: Any, jobs: list[Job], work: Callable, settings: LaunchSettings, progress: Callable[[str], None]
) -> list[Outcome]:
    """At most one job per device at a time; each job sees only its own GPU (CUDA_VISIBLE_DEVICES)."""
    waiting = list(jobs)
    running: dict[str, tuple[Job, Any]] = {}  # device -> (job, submitit job)
    outcomes: list[Outcome] = []
    slots = [f"{device}#{i}" for i, device in enumerate(settings.devices)]
    while waiting or running:
        for slot in slots:
            if slot not in running and waiting:
                job = waiting.pop(0)
                running[slot] = (job, _local_executor(submitit, settings, slot).submit(work, job.payload))
                progress(f"started {job.name} on {slot.split('#')[0]}")
        for slot, (job, handle) in list(running.items()):
            if handle.done():
                outcomes.append(_outcome(job, handle, progress))
                del running[slot]
        time.sleep(POLL_SECONDS if running else 0)
    return outcomes


def _local_executor(submitit: Any, settings: LaunchSettings, slot: str) -> Any:
    device = slot.split("#")[0]
    executor = submitit.LocalExecutor(folder=str(settings.folder / "%j"))
    gpu = [int(device.split(":")[1])] if device.startswith("cuda:") else []
    executor.update_parameters(timeout_min=settings.timeout_min, gpus_per_node=len(gpu), visible_gpus=gpu)
    return executor


def _launch_slurm(
    submitit: Any, jobs: list[Job], work: Callable, settings: LaunchSettings, progress: Callable[[str], None]
) -> list[Outcome]:
    """One array job, `array_parallelism` tasks at a time; states are read from squeue and the result files."""
    executor = submitit.SlurmExecutor(folder=str(settings.folder / "%j"))
    executor.update_parameters(
        time=settings.timeout_min,
        cpus_per_task=settings.cpus_per_job,
        array_parallelism=settings.array_parallelism,
        job_name="latteclip",
        **({"partition": settings.partition} if settings.partition else {}),
        **({"gpus_per_node": settings.gpus_per_job} if settings.gpus_per_job else {}),
        **({"additional_parameters": dict(settings.sbatch)} if settings.sbatch else {}),
    )
    try:
        handles = executor.map_array(work, [job.payload for job in jobs])
    except Exception as err:  # sbatch missing, refused or unreachable: one line, before anything waits
        raise LatteclipError(
            f"Slurm refused the jobs ({str(err).strip().splitlines()[-1]}); check sbatch works here "
            "(sinfo) and the --slurm-* options"
        ) from err
    progress(f"submitted {len(jobs)} runs as Slurm array {handles[0].job_id.split('_')[0]}")
    pending = dict(zip([job.name for job in jobs], zip(jobs, handles)))
    outcomes: list[Outcome] = []
    gone_since: dict[str, float] = {}
    while pending:
        queued = _squeue_ids()
        for name, (job, handle) in list(pending.items()):
            if handle.paths.result_pickle.exists() or _gone_for_good(handle.job_id, queued, gone_since):
                outcomes.append(_outcome(job, handle, progress))
                del pending[name]
        if pending:
            time.sleep(POLL_SECONDS)
    return outcomes


def _squeue_ids() -> set[str] | None:
    """Job ids Slurm still holds (array tasks as JOB_TASK), or None when squeue did not answer."""
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(listed.stdout.split()) if listed.returncode == 0 else None


def _gone_for_good(job_id: str, queued: set[str] | None, gone_since: dict[str, float]) -> bool:
    if queued is None or job_id in queued:
        gone_since.pop(job_id, None)
        return False
    first_seen = gone_since.setdefault(job_id, time.monotonic())
    return time.monotonic() - first_seen > GONE_GRACE_SECONDS


def _outcome(job: Job, handle: Any, progress: Callable[[str], None]) -> Outcome:
    """Finished when the job wrote its result without an exception; else its last error line, from its log."""
    failed = not handle.paths.result_pickle.exists() or _raised(handle)
    message = _last_error_line(handle.paths.stderr) if failed else ""
    progress(f"{'failed' if failed else 'finished'} {job.name}" + (f": {message}" if message else ""))
    return Outcome(job.name, not failed, message)


def _raised(handle: Any) -> bool:
    """Whether the job ended by an exception: submitit logs it to the job's stderr before writing the result."""
    stderr = Path(handle.paths.stderr)
    return stderr.is_file() and "Submitted job triggered an exception" in stderr.read_text(errors="replace")


def _last_error_line(stderr_path: Path) -> str:
    stderr = Path(stderr_path)
    if not stderr.is_file():
        return f"no log at {stderr}: the job never started or its node was lost"
    lines = [line.strip() for line in stderr.read_text(errors="replace").splitlines() if line.strip()]
    raised = [line for line in lines if EXCEPTION_LINE.match(line)]  # the traceback's last line, not srun's epilogue
    last = (raised or [line for line in lines if not line.startswith("srun:")] or ["(empty log)"])[-1]
    return last.removeprefix(f"{FAILED_JOB_ERROR}: ")
