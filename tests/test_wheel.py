"""The package as a user installs it: a wheel in a fresh virtual environment, run from a folder away from the
checkout."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

PACKAGE = REPO / "src" / "latteclip"


def package_files() -> list[str]:
    """Every file of the package in the checkout (code and data), as the wheel names it."""
    return sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def dependency_folders() -> list[str]:
    """Where this interpreter finds latteclip's dependencies (not the checkout): what the fresh venv may see."""
    folders = []
    for requirement in importlib.metadata.requires("latteclip") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(">")[0].split("=")[0].split("<")[0].strip()
        folder = Path(importlib.metadata.distribution(name).locate_file("")).resolve()
        checkout = REPO / "src"  # the venv may live inside the checkout (make test's .venv): only src is left out
        if checkout not in folder.parents and folder != checkout and str(folder) not in folders:
            folders.append(str(folder))
    return folders


def run(command: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_and_adapt_from_another_folder(tmp_path, eurosat_folder):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["LATTECLIP_CACHE"] = str(tmp_path / "cache")
    # built from a copy: setuptools writes build/ beside the sources, and a build/ left in the checkout would put
    # files deleted since into later wheels
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "src" / "latteclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
        tmp_path,
        env,
    )
    (wheel,) = wheels.glob("latteclip-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    assert sorted(packaged) == package_files()  # configs, specs, splits, vocabularies, Fashion-MNIST; nothing else

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env).strip()
    (Path(site) / "dependencies.pth").write_text("".join(f"{folder}\n" for folder in dependency_folders()))
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        tmp_path,
        env,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import latteclip; print(latteclip.__file__)"], elsewhere, env).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)
    latteclip = venv / "bin" / "latteclip"

    printed = run([latteclip, "demo", "--quick", "--threads", "1"], elsewhere, env)
    assert "| method | blur-noise | rotation |" in printed and "| LatteCLIP |" in printed
    assert (elsewhere / "runs" / "demo-quick" / "results.md").is_file()

    images = elsewhere / "tiles"
    images.mkdir()
    classes = sorted(folder.name for folder in (eurosat_folder / "2750").iterdir())
    for name in classes:
        for image in sorted((eurosat_folder / "2750" / name).iterdir())[:2]:
            shutil.copy(image, images / image.name)
    (elsewhere / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    printed = run(
        [
            latteclip,
            "adapt",
            "--root",
            "tiles",
            "--classnames",
            "classes.txt",
            "--lmm",
            "offline",
            *TINY,
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--warmup-steps",
            "0",
        ],
        elsewhere,
        env,
    )
    predictions = elsewhere / "runs" / "adapt-tiles" / "predictions.csv"
    assert f"predictions:   {predictions.relative_to(elsewhere)}" in printed or str(predictions) in printed
    rows = predictions.read_text().splitlines()
    assert len(rows) == 1 + 2 * len(classes) and rows[0].startswith("path,class,score")
