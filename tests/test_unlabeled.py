"""Your own unlabeled images (`--dataset images`, `latteclip adapt`) on real EuroSAT files: no label is read
anywhere."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.engine.checkpoint import load_final_checkpoint
from latteclip.errors import LatteclipError
from tests.conftest import TINY, flags
from tests.test_report import run_chromium

STEPS = ["--max-steps", "4", "--batch-size", "8", "--warmup-steps", "0", "--lr", "1e-4"]


def adapt_argv(root: Path, names: Path, output: Path, *extra: str) -> list[str]:
    """`latteclip adapt` of the images in `root` with the offline describer and the tiny model."""
    return ["adapt", *flags(root=root, classnames=names, lmm="offline", output=output), *TINY, *extra]


# Appended to a copy of the report: the panels the browser shows, and whether every image decoded.
PROBE = """<script>window.addEventListener("load", () => { const p = document.createElement("pre"); p.id = "probe";
p.textContent = JSON.stringify({panels: [...document.querySelectorAll("section.panel")].map(s => ({
title: s.querySelector("h2").textContent, skipped: s.classList.contains("skipped"),
note: (s.querySelector("p.note") || {}).textContent || ""})),
images: [...document.images].map(i => i.complete && i.naturalWidth > 0)}); document.body.appendChild(p); });</script>"""


@pytest.fixture(scope="module")
def labelled(eurosat_folder, tmp_path_factory) -> Path:
    """A folder per class with 4 real EuroSAT images each (seeded split: 3 train+val, 1 test per class)."""
    root = tmp_path_factory.mktemp("labelled") / "tiles"
    for folder in sorted((eurosat_folder / "2750").iterdir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:4]:
            shutil.copy(image, root / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def flat(labelled, tmp_path_factory) -> Path:
    """The labelled folder's training images as one flat folder, named so that sorted order is the labelled order."""
    folder = tmp_path_factory.mktemp("unlabeled") / "tiles"
    folder.mkdir()
    train = build_dataset("folder", labelled, "train")
    for index, sample in enumerate(train.samples):
        shutil.copy(labelled / sample.path, folder / f"{index:03d}_{Path(sample.path).name}")
    return folder


@pytest.fixture(scope="module")
def names(labelled, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("names") / "classes.txt"
    path.write_text("".join(f"{p.name}\n" for p in sorted(labelled.iterdir())))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    payload = load_final_checkpoint(run / "final.pt")
    state = {f"model.{k}": v for k, v in payload["model"].items()}
    state.update({f"method.{k}": v for k, v in payload["method_state"].get("prototypes", {}).items()})
    return state


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left), [k for k in left if not torch.equal(left[k], right[k])][
        :3
    ]


def test_adapt_end_to_end_and_the_labelled_path_agree(flat, labelled, names, tmp_path, capsys):
    out = tmp_path / "runs"
    adapt = adapt_argv(flat, names, out, *STEPS)
    assert main(adapt) == 0
    printed = capsys.readouterr().out
    folder = out / "adapt-tiles"
    for line in (
        f"predictions:   {folder / 'predictions.csv'}",
        f"report:        {folder / 'report' / 'report.html'}",
        f"adapted model: {folder / 'latteclip' / 'final.pt'}",
    ):
        assert line in printed
    results = json.loads((folder / "latteclip" / "results.json").read_text())
    assert results["evaluation"] == "label-free" and results["top1"] is None and results["steps"] == 4
    diagnostics = results["diagnostics"]
    # the one candidate (--lr given) trained on all but the 3 held-back images, and was scored on those
    assert diagnostics["images"] == 27 and sum(diagnostics["adapted"]["counts"].values()) == 27
    assert results["holdout"]["images"] == 3 and len(results["label_free_scores"]) == 9
    assert set(diagnostics["mean_mixer_weights"]) == {"class", "image", "group"}
    # prototype drift: the cosine of each adapted class weight with the zero-shot run's class weight
    start, end = (load_final_checkpoint(folder / run / "final.pt")["classifier"] for run in ("zeroshot", "latteclip"))
    expected = torch.nn.functional.cosine_similarity(start.float(), end.float(), dim=-1)
    assert list(diagnostics["class_weight_drift"].values()) == pytest.approx(expected.tolist(), abs=1e-6)

    rows = list(csv.DictReader((folder / "predictions.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in flat.iterdir())
    assert all(r["class"] in names.read_text().split() and 0 < float(r["score"]) <= 1 for r in rows)

    # a rerun reuses every stage (the runs are not trained again)
    before = (folder / "latteclip" / "final.pt").stat().st_mtime_ns
    assert main(adapt) == 0 and (folder / "latteclip" / "final.pt").stat().st_mtime_ns == before
    capsys.readouterr()

    # measured on a labelled copy: the same accuracy as training on the labelled folder itself
    on_labelled = flags(eval_dataset="folder", eval_root=labelled, store=folder / "descriptions.sqlite")
    assert main([*adapt, "--name", "measured", *on_labelled]) == 0
    measured = json.loads((out / "measured" / "latteclip" / "results.json").read_text())
    # training the same images by hand (`train --dataset images` on the adapt folder's training list) gives the same
    by_hand = [*flags(dataset="images", root=out / "measured" / "images-train.txt", classnames=names), *on_labelled]
    assert (
        main(["train", "--method", "latteclip", *by_hand, "--output", str(out), "--name", "folder-run", *TINY, *STEPS])
        == 0
    )
    reference = json.loads((out / "folder-run" / "results.json").read_text())
    assert measured["evaluation"] == "labelled" and measured["test"]["n"] == reference["test"]["n"] == 10
    assert measured["top1"] == reference["top1"] and measured["test"]["confusion"] == reference["test"]["confusion"]
    assert_same_weights(out / "measured" / "latteclip", out / "folder-run")

    # the label-free report, as a browser shows it
    page = folder / "report" / "report.html"
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    shown = json.loads(
        html.unescape(
            re.search(
                r'<pre id="probe">(.*?)</pre>',
                run_chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()),
                re.S,
            ).group(1)
        )
    )
    panels = {p["title"]: p for p in shown["panels"]}
    for drawn in (
        "Without labels: what the predictions did",
        "Prediction distribution: zero-shot vs adapted",
        "Class weight drift (LatteCLIP: prototype drift)",
        "Mixer weight distribution",
        "Gallery: training images, texts, mixer weights, pseudo-labels",
    ):
        assert not panels[drawn]["skipped"], drawn
    for needs_labels in ("Accuracy", "Confusion matrix", "Pseudo-label accuracy"):
        assert panels[needs_labels]["skipped"] and "needs labels" in panels[needs_labels]["note"]
    assert shown["images"] and all(shown["images"])


def test_label_free_methods_read_no_label(flat, labelled, names, tmp_path):
    """The same weights from `images` input, with a labelled copy beside it, and from a CSV of the files with permuted
    labels."""
    out, store = tmp_path / "runs", str(tmp_path / "descriptions.sqlite")
    images = ["--dataset", "images", "--root", str(flat), "--classnames", str(names), "--store", store]
    assert main(["describe", *images, "--lmm", "offline", *TINY]) == 0
    keys = names.read_text().split()
    permuted = {k: keys[(i + 3) % len(keys)] for i, k in enumerate(keys)}
    files = sorted(p.name for p in flat.iterdir())
    key_of = {p.name: p.parent.name for p in labelled.rglob("*.jpg")}
    table = tmp_path / "permuted.csv"
    true_table = tmp_path / "true.csv"
    for path, label_of in ((table, lambda f: permuted[key_of[f[4:]]]), (true_table, lambda f: key_of[f[4:]])):
        lines = [f"{flat / f},{label_of(f)},train" for f in files] + [f"{flat / f},{label_of(f)},test" for f in files]
        path.write_text("path,label,split\n" + "\n".join(lines) + "\n")
    for method in ("flyp_pl", "latteclip"):
        common = ["train", "--method", method, "--output", str(out), *TINY, *STEPS, "--store", store]
        assert main([*common, *images, "--name", f"{method}-images"]) == 0
        copy = tmp_path / "elsewhere"  # a labelled copy of the same files appears: nothing changes
        shutil.copytree(labelled, copy, dirs_exist_ok=True)
        assert main([*common, *images, "--name", f"{method}-images-again"]) == 0
        assert_same_weights(out / f"{method}-images", out / f"{method}-images-again")
        for name, path in (("permuted", table), ("true", true_table)):
            assert main([*common, "--dataset", "csv", "--root", str(path), "--name", f"{method}-{name}"]) == 0
            assert_same_weights(out / f"{method}-images", out / f"{method}-{name}")
    assert json.loads((out / "latteclip-true" / "results.json").read_text())["evaluation"] == "labelled"


def test_every_label_free_method_predict_and_export_on_images(flat, names, tmp_path, capsys):
    out = tmp_path / "runs"
    descriptions = tmp_path / "class_descriptions.json"
    descriptions.write_text(
        json.dumps({k: [f"an aerial image of {k}", f"{k} seen from above"] for k in names.read_text().split()})
    )
    images = ["--dataset", "images", "--root", str(flat), "--classnames", str(names), "--output", str(out), *TINY]
    for method in ("zeroshot", "reclip", "coft", "coft_plus"):
        extra = ["--class-descriptions", str(descriptions)] if method == "coft_plus" else []
        assert (
            main(
                [
                    "train",
                    "--method",
                    method,
                    *images,
                    "--max-steps",
                    "2",
                    "--batch-size",
                    "8",
                    "--name",
                    method,
                    *extra,
                ]
            )
            == 0
        )
        results = json.loads((out / method / "results.json").read_text())
        assert results["evaluation"] == "label-free" and results["diagnostics"]["images"] == 30
    assert json.loads((out / "zeroshot" / "results.json").read_text())["diagnostics"]["changed_from_zero_shot"] == 0
    capsys.readouterr()
    listing = tmp_path / "some.txt"  # --root FILE.txt: the paths listed, relative to the file
    listing.write_text("\n".join(f"{flat.name}/{p.name}" for p in sorted(flat.iterdir())[:5]) + "\n")
    shutil.copytree(flat, tmp_path / flat.name)
    assert len(build_dataset("images", listing, "train", None, DatasetOptions(classnames_file=str(names)))) == 5

    checkpoint = str(out / "coft" / "final.pt")
    assert main(["predict", "--checkpoint", checkpoint, str(flat), "--format", "csv", "--top-k", "3"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 30 and set(rows[0]) == {"path", "class", "score", "class_2", "score_2", "class_3", "score_3"}
    assert (
        main(["export", "--checkpoint", str(out / "zeroshot" / "final.pt"), "--out", str(tmp_path / "exported")]) == 0
    )
    assert (tmp_path / "exported" / "README.md").is_file()


def test_unlabeled_input_refusals(flat, names, labelled, tmp_path, capsys):
    images = ["--dataset", "images", "--root", str(flat), *TINY]
    run = ["--output", str(tmp_path)]
    cases = [
        (
            ["train", "--method", "oracle", *images, *run, "--classnames", str(names)],
            "trains on the true labels and --dataset images has none",
        ),
        (["train", "--method", "flyp_pl", *images, *run], "--dataset images needs --classnames FILE"),
        (
            [
                "describe",
                *images,
                "--classnames",
                str(names),
                "--lmm",
                "offline",
                "--true-class-members",
                "2",
                "--store",
                str(tmp_path / "s.sqlite"),
            ],
            "--true-class-members draws groups from the true labels and tiles has none",
        ),
        (
            ["adapt", "--root", str(flat), "--classnames", str(names), *run, *TINY],
            "reads descriptions (image, group): choose a describer with --lmm",
        ),
        (["adapt", "--root", str(flat), "--classnames", str(names), "--method", "oracle", *run, *TINY], "is not one"),
    ]
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert message is None or message in err, err
    with pytest.raises(LatteclipError, match="no labels, so no test split: pass --eval-dataset NAME --eval-root PATH"):
        build_dataset("images", flat, "test", None, DatasetOptions(classnames_file=str(names)))
    few = tmp_path / "few.txt"
    few.write_text("Forest\nRiver\n")  # the labelled copy has classes these names do not cover
    with pytest.raises(LatteclipError, match="has class 'AnnualCrop', which is none of the run's class names"):
        from latteclip.data.registry import align_classes

        align_classes(
            build_dataset("folder", labelled, "test"),
            build_dataset("images", flat, "train", None, DatasetOptions(classnames_file=str(few))).info,
        )


# --- issue 12 item 6: no label leaks in the data layer and the store --------------------------------------------------
def test_limit_on_a_training_split_reads_no_labels(labelled, tmp_path):
    files = sorted(labelled.rglob("*.jpg"))
    keys = sorted({p.parent.name for p in files})
    shifted = {k: keys[(i + 1) % len(keys)] for i, k in enumerate(keys)}
    tables = {}
    for name, label_of in (("true", lambda p: p.parent.name), ("permuted", lambda p: shifted[p.parent.name])):
        tables[name] = tmp_path / f"{name}.csv"
        tables[name].write_text(
            "".join(f"{p},{label_of(p)},{'test' if i % 4 == 0 else 'train'}\n" for i, p in enumerate(files))
        )

    def subset(name: str, split: str, seed: int = 0) -> list[str]:
        return [
            s.path for s in build_dataset("csv", tables[name], split, None, DatasetOptions(limit=7, seed=seed)).samples
        ]

    assert subset("true", "train") == subset("permuted", "train")  # uniform: the labels do not choose
    assert subset("true", "train", seed=1) != subset("true", "train")
    test = build_dataset("csv", tables["true"], "test", None, DatasetOptions(limit=5))
    assert len({s.label for s in test.samples}) == 5  # evaluation splits stay class-balanced


def test_fallback_split_is_the_same_for_every_seed(labelled):
    for split in ("train", "test"):
        zero, one = (build_dataset("folder", labelled, split, None, DatasetOptions(seed=seed)) for seed in (0, 1))
        assert [(s.path, s.label) for s in zero.samples] == [(s.path, s.label) for s in one.samples]
    assert zero.info.split_source == "seeded 50/20/30 (fixed seed 0)"


def test_true_class_groups_are_read_only_by_name(labelled, tmp_path, capsys):
    from latteclip.describe.jobs import image_hashes
    from latteclip.describe.store import ANALYSIS_TAG, DescriptionStore

    store_path = tmp_path / "analysis.sqlite"
    data = ["--dataset", "folder", "--root", str(labelled), "--store", str(store_path)]
    assert main(["describe", *data, "--lmm", "offline", "--kinds", "group", "--true-class-members", "3", *TINY]) == 0
    capsys.readouterr()
    train = build_dataset("folder", labelled, "train")
    hashes = image_hashes(train, progress=False)
    store = DescriptionStore(store_path)
    models = {row["model"] for row in store.rows()}
    assert len(models) == 1 and next(iter(models)).endswith(ANALYSIS_TAG)
    assert store.get_texts(hashes, "group") == [None] * len(hashes)
    assert None not in store.get_texts(hashes, "group", model=next(iter(models)))
    store.close()
    train_args = [
        "train",
        "--method",
        "latteclip",
        *data,
        "--texts",
        "class,group",
        "--output",
        str(tmp_path),
        *TINY,
        *STEPS,
    ]
    assert main(train_args) == 2 and "have no group description" in capsys.readouterr().err
    assert main([*train_args, "--described-by", next(iter(models)), "--name", "asked-by-name"]) == 0
