"""The machine an experiment runs on: idle cores, torch threads, and its description for the pages."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from /proc/stat; None where there is no /proc."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is already counted in user time


def idle_cores(window_s: float = 1.0) -> int:
    """Cores left by other jobs right now: CPU use measured over `window_s`, else the one-minute load average.

    The load average lags: just after another job ends it still counts that job's cores, which would
    halve the threads of a demo started on a machine that has meanwhile gone idle.
    """
    cores = os.cpu_count() or 1
    busy = None
    before = cpu_times()
    if before is not None:
        time.sleep(window_s)
        after = cpu_times()
        if after is not None and after[1] > before[1]:
            busy = cores * (after[0] - before[0]) / (after[1] - before[1])
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (OSError, AttributeError):
            return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def use_threads(threads: int) -> int:
    """Set torch's threads: `threads`, or with 0 one per idle core.

    On a machine busy with other jobs, more threads than idle cores is several times slower
    (measured: 2 threads on 2 shared cores took 5 s a step where 1 thread took 0.7 s), because
    each operation waits for its slowest thread.
    """
    torch.set_num_threads(threads if threads > 0 else idle_cores())
    return torch.get_num_threads()


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def elapsed(since: float) -> str:
    seconds = int(time.time() - since)
    return f"{seconds // 60}:{seconds % 60:02d}"
