"""What a run may do to its folder: a finished or interrupted run is never replaced unless asked.

`check_run_folder` runs before the model or the data are loaded, so a refusal costs nothing;
`prepare_run_folder` clears an earlier run's outputs only once the run has everything it needs.
"""

from __future__ import annotations

from pathlib import Path

from latteclip.config import RunConfig
from latteclip.engine.checkpoint import is_pickle_checkpoint
from latteclip.errors import LatteclipError
from latteclip.paths import check_writable_folder, remove_stale_temp_files

RUN_OUTPUTS = ("last.pt", "final.pt", "results.json")


def check_run_folder(config: RunConfig) -> None:
    """Refuse a run that would replace an earlier one without --overwrite, or resume nothing."""
    run_dir = config.run_dir
    check_writable_folder(run_dir, "--output")
    finished = (run_dir / "final.pt").is_file() or (run_dir / "results.json").is_file()
    if config.resume:
        if (run_dir / "last.pt").is_file():
            if is_pickle_checkpoint(run_dir / "last.pt"):
                raise LatteclipError(
                    f"cannot resume {run_dir}: its last.pt is a pickle from an earlier latteclip, which this version "
                    f"does not load; run the same command with --overwrite instead of --resume to train it again"
                )
            return
        if finished:
            raise LatteclipError(
                f"run {run_dir} already finished (final.pt exists); choose another --name to train again"
            )
        raise LatteclipError(f"--resume: {run_dir} holds no run to continue (no last.pt); drop --resume to start it")
    if config.overwrite:
        return
    if finished:
        raise LatteclipError(
            f"{run_dir} already holds a finished run (final.pt, results.json); "
            f"pass --name NEW for a new run, or --overwrite to replace it"
        )
    if (run_dir / "last.pt").is_file():
        raise LatteclipError(
            f"{run_dir} holds an interrupted run (last.pt); pass --resume to continue it, "
            f"--name NEW for a new run, or --overwrite to start it again"
        )


def prepare_run_folder(run_dir: Path, fresh: bool) -> None:
    """Remove what a killed write left and, for a fresh start, the outputs of the run it replaces."""
    for name in (*RUN_OUTPUTS, "config.yaml"):
        remove_stale_temp_files(run_dir / name)
        if fresh and name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
