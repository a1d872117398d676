"""The library entry point: the README's "From Python" example runs as written, and what it returns is what the
command line would have written (the same results.json, the same accuracy on re-evaluation, the same CSV rows)."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import pytest

from latteclip import api
from latteclip.errors import LatteclipError

REPO = Path(__file__).resolve().parents[1]
TILES = ("AnnualCrop_1.jpg", "Forest_2349.jpg", "Highway_1.jpg", "Industrial_549.jpg", "River_19.jpg")


def readme_example() -> str:
    section = (REPO / "README.md").read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def example_folder(tmp_path, eurosat_zip, monkeypatch) -> Path:
    """What the example expects beside it: EuroSAT.zip, a few tiles in my_tiles/ and classes.txt."""
    (tmp_path / "EuroSAT.zip").symlink_to(eurosat_zip)
    (tmp_path / "my_tiles").mkdir()
    with zipfile.ZipFile(eurosat_zip) as archive:
        for name in TILES:
            (tmp_path / "my_tiles" / name).write_bytes(archive.read(f"2750/{name.split('_')[0]}/{name}"))
    (tmp_path / "classes.txt").write_text("annual crop\nforest\nhighway\nindustrial\nriver\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_example_runs_and_returns_what_the_run_folders_hold(example_folder, capsys):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    config, results, adapted = namespace["config"], namespace["results"], namespace["adapted"]
    assert namespace["described"].complete and namespace["described"].summary.complete
    assert results == json.loads((config.run_dir / "results.json").read_text()) and results["steps"] == 4
    # re-measuring the checkpoint gives the accuracy training reported, on the same images
    measured = api.evaluate(config.run_dir / "final.pt", out=example_folder / "eval.json")
    assert measured.report["top1"] == results["top1"] and measured.report["n"] == results["test"]["n"]
    assert measured.method == "latteclip" and json.loads(measured.out.read_text())["top1"] == results["top1"]
    # the adaptation: both runs, predictions.csv with one row per tile (the rows `predict` gives), the report
    assert adapted.adapted["method"] == "latteclip" and adapted.zero_shot["method"] == "zeroshot"
    rows = list(csv.DictReader(adapted.predictions.open()))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(TILES)
    again = {p.path.name: p for p in api.predict(adapted.model, ["my_tiles/"], top_k=5)}
    assert all(again[Path(r["path"]).name].classes[0] == r["class"] for r in rows)
    assert adapted.report.is_file()
    assert adapted.store.resolve() == example_folder / "runs/adapt-my_tiles/descriptions.sqlite"
    assert (example_folder / "exported" / "open_clip_model.safetensors").is_file()


def test_library_refusals_name_the_value(tmp_path):
    with pytest.raises(LatteclipError, match="--method oracle is not one"):
        api.adapt_config(str(tmp_path), "classes.txt", method="oracle")
    with pytest.raises(LatteclipError, match="no dataset root"):
        api.configure(method="zeroshot", dataset="eurosat")
    with pytest.raises(LatteclipError, match="--top-k must be at least 1"):
        api.predict(tmp_path / "final.pt", [tmp_path], top_k=0)


LAYERS = ("data", "models", "describe", "methods", "engine", "experiments", "report", "api", "cli")


def test_layers_import_only_the_layers_below_and_no_command_imports_another():
    """api may call the experiments and the report, never the reverse; a command module imports only cli/__init__."""
    import ast

    source = REPO / "src" / "latteclip"
    upward = []
    for path in source.rglob("*.py"):
        parts = path.relative_to(source).with_suffix("").parts
        layer = "cli" if parts[0] == "__main__" else parts[0] if parts[0] in LAYERS else None  # __main__: `python -m`
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in (n.split(".") for n in names if n.startswith("latteclip.")):
                target = name[1] if name[1] in LAYERS else None
                if target and (layer is None or LAYERS.index(target) > LAYERS.index(layer)):
                    upward.append((str(path.relative_to(source)), ".".join(name)))
                if layer == "cli" and target == "cli" and len(name) > 2 and parts[-1] != "__init__":
                    upward.append((str(path.relative_to(source)), ".".join(name)))
    assert upward == []
