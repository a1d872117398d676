"""Every bad input ends the CLI with exit code 2 and one line on stderr that names the path or value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from latteclip.cli import main

TINY = ["--model", "latte-tiny", "--pretrained", "random", "--workers", "0"]


@pytest.fixture()
def class_folder(eurosat_folder, tmp_path) -> Path:
    root = tmp_path / "scenes"
    for key in ("Forest", "River"):
        shutil.copytree(eurosat_folder / "2750" / key, root / key)
    return root


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI, check that it failed cleanly, and return its one line of complaint."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def zeroshot(tmp_path: Path, *args: str) -> list[str]:
    return ["zeroshot", *TINY, "--output", str(tmp_path / "runs"), *args]


def train(tmp_path: Path, *args: str) -> list[str]:
    return ["train", *TINY, "--output", str(tmp_path / "runs"), "--max-steps", "2", *args]


def test_missing_root(tmp_path, capsys):
    absent = tmp_path / "nowhere" / "eurosat"
    line = run_cli(zeroshot(tmp_path, "--dataset", "eurosat", "--root", str(absent)), capsys)
    assert f"dataset root {absent} does not exist" in line
    line = run_cli(zeroshot(tmp_path, "--dataset", "eurosat"), capsys)
    assert "no dataset root: pass --root" in line


def test_root_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = run_cli(zeroshot(tmp_path, "--dataset", "eurosat", "--root", str(tmp_path / "empty")), capsys)
    assert f"no eurosat images found under {tmp_path / 'empty'}" in line
    broken_zip = tmp_path / "EuroSAT.zip"
    broken_zip.write_bytes(b"PK but not really a zip")
    line = run_cli(zeroshot(tmp_path, "--dataset", "eurosat", "--root", str(broken_zip)), capsys)
    assert f"{broken_zip} cannot be read as a zip archive" in line


def test_split_file_naming_missing_images(eurosat_zip, tmp_path, capsys):
    split = {
        "train": [["Forest/Forest_1.jpg", 0, "Forest"]],
        "val": [],
        "test": [["Forest/Forest_999999.jpg", 0, "Forest"]],
    }
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(split))
    line = run_cli(
        zeroshot(tmp_path, "--dataset", "eurosat", "--root", str(eurosat_zip), "--split-file", str(split_file)), capsys
    )
    assert f"split file {split_file} names 1 images missing" in line and "Forest/Forest_999999.jpg" in line
    line = run_cli(
        zeroshot(
            tmp_path, "--dataset", "eurosat", "--root", str(eurosat_zip), "--split-file", str(tmp_path / "no.json")
        ),
        capsys,
    )
    assert f"split file {tmp_path / 'no.json'} does not exist" in line


def test_unknown_dataset(tmp_path, capsys):
    line = run_cli(zeroshot(tmp_path, "--dataset", "imagenet9", "--root", str(tmp_path)), capsys)
    assert "unknown dataset 'imagenet9'" in line and "eurosat" in line


def test_empty_class_folder(class_folder, tmp_path, capsys):
    (class_folder / "Desert").mkdir()
    line = run_cli(zeroshot(tmp_path, "--dataset", "folder", "--root", str(class_folder)), capsys)
    assert f"class folder {class_folder / 'Desert'} has no images" in line


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\xff\xd8\xff\xe0 binary \x00\x81", "cannot be read as UTF-8 CSV text"),
        (b"path,label\nForest/a.jpg\n", "row 1 (Forest/a.jpg) needs path,label"),
        (b"path,label\nForest/not_there.jpg,forest\n", "names 1 missing images (first: Forest/not_there.jpg)"),
        (b"path,label\n", "has no rows"),
    ],
    ids=["binary", "no-label", "missing-image", "header-only"],
)
def test_bad_csv(class_folder, tmp_path, capsys, content, expected):
    table = class_folder / "labels.csv"
    table.write_bytes(content)
    line = run_cli(zeroshot(tmp_path, "--dataset", "csv", "--root", str(table)), capsys)
    assert f"CSV file {table}" in line and expected in line


def test_csv_with_a_partial_split_column(class_folder, tmp_path, capsys):
    first = {k: sorted((class_folder / k).iterdir())[0].name for k in ("Forest", "River")}
    table = class_folder / "labels.csv"
    table.write_text(f"Forest/{first['Forest']},forest,train\nRiver/{first['River']},river\n")
    line = run_cli(zeroshot(tmp_path, "--dataset", "csv", "--root", str(table)), capsys)
    assert "row 2 has no split column while others do" in line


def test_unknown_model_and_missing_weights(eurosat_zip, tmp_path, capsys):
    line = run_cli(
        [
            "zeroshot",
            "--model",
            "ViT-Q-99",
            "--pretrained",
            "random",
            "--dataset",
            "eurosat",
            "--root",
            str(eurosat_zip),
        ],
        capsys,
    )
    assert "unknown model 'ViT-Q-99'" in line
    missing = tmp_path / "weights" / "open_clip_model.safetensors"
    line = run_cli(
        [
            "zeroshot",
            "--model",
            "latte-tiny",
            "--pretrained",
            str(missing),
            "--dataset",
            "eurosat",
            "--root",
            str(eurosat_zip),
        ],
        capsys,
    )
    assert f"weights file {missing} does not exist" in line


def test_unknown_method_and_method_options(eurosat_zip, tmp_path, capsys):
    data = ["--dataset", "eurosat", "--root", str(eurosat_zip), "--limit", "10"]
    line = run_cli(train(tmp_path, "--method", "dreamclip", *data), capsys)
    assert "unknown method 'dreamclip'" in line and "flyp_pl" in line
    line = run_cli(train(tmp_path, "--method", "flyp_pl", "--ensemble", *data), capsys)
    assert "option(s) ensemble do not apply to method flyp_pl" in line
    config = tmp_path / "run.yaml"
    config.write_text("method: oracle\nmethod_options:\n  momentum: 0.5\n")
    line = run_cli(train(tmp_path, "--config", str(config), *data), capsys)
    assert "option(s) momentum do not apply to method oracle" in line


def test_bad_config_files_and_values(eurosat_zip, tmp_path, capsys):
    data = ["--dataset", "eurosat", "--root", str(eurosat_zip)]
    line = run_cli(train(tmp_path, "--method", "flyp_pl", "--config", str(tmp_path / "absent.yaml"), *data), capsys)
    assert f"config file {tmp_path / 'absent.yaml'} does not exist" in line
    config = tmp_path / "typo.yaml"
    config.write_text("learning_rate: 0.1\n")
    line = run_cli(train(tmp_path, "--method", "flyp_pl", "--config", str(config), *data), capsys)
    assert f"{config}: unknown option 'learning_rate'" in line
    line = run_cli(zeroshot(tmp_path, *data, "--limit", "0"), capsys)
    assert "--limit must be at least 1, not 0" in line


def test_eval_of_a_missing_checkpoint(tmp_path, capsys):
    line = run_cli(["eval", "--checkpoint", str(tmp_path / "final.pt")], capsys)
    assert f"checkpoint {tmp_path / 'final.pt'} does not exist" in line
