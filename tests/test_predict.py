"""`latteclip predict` on real EuroSAT files with a real tiny checkpoint: formats, folders, unreadable files."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset


def predict(capsys, *args: str) -> tuple[str, str]:
    assert main(["predict", *args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_predictions_on_the_test_split_reproduce_the_runs_confusion_matrix(
    tiny_runs, tiny_test_images, eurosat_zip, capsys
):
    """The run's own evaluation and `predict` on the same 40 files must agree image by image."""
    checkpoint = tiny_runs["flyp"] / "final.pt"
    out, err = predict(
        capsys,
        "--checkpoint",
        str(checkpoint),
        str(tiny_test_images),
        "--format",
        "jsonl",
        "--top-k",
        "3",
        "--batch-size",
        "7",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 40 and "40 images classified, 0 unreadable skipped" in err
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    info = build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(limit=40)).info
    confusion = [[0] * info.num_classes for _ in range(info.num_classes)]
    for row in rows:
        assert len(row["top"]) == 3
        scores = [t["score"] for t in row["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        true = info.class_keys.index(Path(row["path"]).parent.name)
        confusion[true][info.classnames.index(row["top"][0]["class"])] += 1
    results = json.loads((tiny_runs["flyp"] / "results.json").read_text())
    assert confusion == results["test"]["confusion"]


def test_formats_folders_and_unreadable_files(tiny_runs, tiny_test_images, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "nested" / "deeper").mkdir(parents=True)
    sources = sorted(tiny_test_images.rglob("*.jpg"))[:3]
    shutil.copy(sources[0], folder / "a.jpg")
    shutil.copy(sources[1], folder / "nested" / "b.JPG")
    (folder / "nested" / "deeper" / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image and not an image extension: ignored in folders")
    checkpoint = str(tiny_runs["flyp"] / "final.pt")

    # all ten classes: the scores are CLIP's softmax over classes and must sum to 1
    out, err = predict(
        capsys, "--checkpoint", checkpoint, str(folder), str(sources[2]), "--format", "csv", "--top-k", "10"
    )
    table = list(csv.DictReader(io.StringIO(out)))
    broken = str(folder / "nested" / "deeper" / "broken.png")
    paths = [str(folder / "a.jpg"), str(folder / "nested" / "b.JPG"), broken, str(sources[2])]
    assert [r["path"] for r in table] == paths  # one row per image, the unreadable one too (empty class)
    for row in table:
        scores = [float(row["score"])] + [float(row[f"score_{k}"]) for k in range(2, 11)] if row["class"] else []
        if row["path"] == broken:
            assert scores == [] and row["class_10"] == ""
            continue
        assert sum(scores) == pytest.approx(1.0, abs=1e-5) and scores == sorted(scores, reverse=True)
        assert len({row["class"], *[row[f"class_{k}"] for k in range(2, 11)]}) == 10
    assert f"unreadable image skipped: {folder / 'nested' / 'deeper' / 'broken.png'}" in err
    assert "3 images classified, 1 unreadable skipped" in err

    out, _ = predict(capsys, "--checkpoint", checkpoint, str(folder), "--top-k", "2")
    lines = out.splitlines()
    assert lines[0].split() == ["image", "top-1", "score", "top-2", "score"]
    assert lines[1].startswith(str(folder / "a.jpg")) and lines[3].startswith(
        str(folder / "nested" / "deeper" / "broken.png")
    )
    assert "(unreadable: skipped)" in lines[3]
    assert f"{float(table[0]['score']):.4f}" in lines[1] and table[0]["class_2"] in lines[1]

    written = tmp_path / "predictions.jsonl"
    _, err = predict(
        capsys,
        "--checkpoint",
        checkpoint,
        str(folder / "a.jpg"),
        "--format",
        "jsonl",
        "--top-k",
        "1",
        "--out",
        str(written),
    )
    record = json.loads(written.read_text())
    assert record["top"][0]["class"] == table[0]["class"] and f"-> {written}" in err


def test_bad_input_is_one_line_error(tiny_runs, tiny_test_images, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tiny_runs["flyp"] / "final.pt"), str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(tiny_runs["flyp"] / "final.pt"), str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tiny_runs["interrupted"] / "last.pt"), str(tiny_test_images)]) == 2
    assert "not a final checkpoint" in capsys.readouterr().err
