"""`latteclip export`: plain OpenCLIP (in a fresh process, without this package) predicts what `latteclip predict`
does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from latteclip.api import load_model
from latteclip.cli import main
from latteclip.data.datasets import DatasetInfo
from latteclip.engine.export import clip_benchmark_order, export_open_clip
from latteclip.errors import LatteclipError
from latteclip.methods.flyp import FlypPseudoLabels

# Runs the README's snippet as written (one image), then the same objects on every image, then local-dir: loading.
CHECK = """
import json, sys
from pathlib import Path
images = [Path(p) for p in json.loads(sys.argv[1])]
{snippet}
def top5(model, preprocess, path):
    image = preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.encode_image(image), dim=-1)
        probs = (logit_scale.exp() * features @ class_weights.T).softmax(dim=-1)[0]
    top = probs.topk(5)
    return [[classnames[i], s] for i, s in zip(top.indices.tolist(), top.values.tolist())]
local, _, local_preprocess = open_clip.create_model_and_transforms("local-dir:" + str(folder))
local.eval()
print(json.dumps({{
    "by_file": {{str(p): top5(model, preprocess, p) for p in images}},
    "by_local_dir": {{str(p): top5(local, local_preprocess, p) for p in images}},
    "latteclip_imported": any(name.split(".")[0] == "latteclip" for name in sys.modules),
}}))
"""


def test_plain_open_clip_gives_the_same_predictions(tiny_runs, tiny_test_images, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_runs["flyp"] / "final.pt"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "latte-tiny.json",
        "classifier.safetensors",
        "clip_benchmark_classifier.pt",
        "README.md",
    }
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:
        assert f.get_tensor("class_weights").shape == (10, 64)
        assert json.loads(f.metadata()["classnames"])[3] == "highway or road"
        assert f.metadata()["method"] == "flyp_pl"

    images = sorted(tiny_test_images.rglob("*.jpg"))[::4]
    capsys.readouterr()
    assert (
        main(["predict", "--checkpoint", str(tiny_runs["flyp"] / "final.pt"), *map(str, images), "--format", "jsonl"])
        == 0
    )
    expected = {r["path"]: r["top"] for r in map(json.loads, capsys.readouterr().out.splitlines())}

    readme = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace('"image.jpg"', "images[0]")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK.format(snippet=snippet), json.dumps(list(map(str, images)))],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed, report = done.stdout.strip().splitlines()[-2:]
    assert not json.loads(report)["latteclip_imported"]
    name, prob = printed.rsplit(" ", 1)
    assert name == expected[str(images[0])][0]["class"] and float(prob) == pytest.approx(
        expected[str(images[0])][0]["score"], abs=1e-5
    )
    for key in ("by_file", "by_local_dir"):
        got = json.loads(report)[key]
        for path in map(str, images):
            assert [c for c, _ in got[path]] == [t["class"] for t in expected[path]]
            assert [s for _, s in got[path]] == pytest.approx([t["score"] for t in expected[path]], abs=1e-5)


class ImageAdapter(FlypPseudoLabels):
    """Stands in for a method with an adapter on the image path (CoFT, ReCLIP): plain OpenCLIP cannot run it."""

    name = "adapted"
    exportable_to_open_clip = False

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(super().encode_images(images) * 2 + 1, dim=-1)


def test_methods_that_change_the_image_path_are_refused(tiny_runs, tmp_path):
    trained = load_model(str(tiny_runs["flyp"] / "final.pt"), "cpu")
    adapted = ImageAdapter(trained.loaded, trained.info, trained.options, trained.device)
    with pytest.raises(LatteclipError, match="method adapted changes the image path"):
        export_open_clip(adapted, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# CLIP_benchmark 1.6.2: models/open_clip.py loads the model, metrics/zeroshot_classification.py the --load_clfs file
# and scores every image with `100. * F.normalize(model.encode_image(images), dim=-1) @ classifier`.
# its `eurosat` is torchvision's EuroSAT, an ImageFolder: labels in the sorted order of the class folders
CLIP_BENCHMARK_EUROSAT = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def test_clip_benchmark_reads_the_classifier_and_scores_as_our_classifier(tiny_runs, tiny_test_images, tmp_path):
    import open_clip
    from PIL import Image

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_runs["flyp"] / "final.pt"), "--out", str(out)]) == 0
    classifier = torch.load(str(out / "clip_benchmark_classifier.pt"), map_location="cpu")  # as CLIP_benchmark loads it
    model, _, transform = open_clip.create_model_and_transforms("local-dir:" + str(out), pretrained="laion400m_e32")
    model.eval()
    paths = sorted(tiny_test_images.rglob("*.jpg"))[::4]
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        logits = 100.0 * torch.nn.functional.normalize(model.encode_image(images), dim=-1) @ classifier

    trained = load_model(str(tiny_runs["flyp"] / "final.pt"), "cpu")
    assert classifier.shape == (64, 10) and trained.info.class_keys == CLIP_BENCHMARK_EUROSAT  # already its order
    with torch.no_grad():
        ours = 100.0 * trained.encode_images(images) @ trained.classifier().t()
    torch.testing.assert_close(logits, ours, rtol=1e-5, atol=1e-4)
    readme = (out / "README.md").read_text()
    assert f'--model "local-dir:{out.resolve()}" --load_clfs "{out.resolve()}/clip_benchmark_classifier.pt"' in readme
    assert "--dataset eurosat " in readme


def test_clip_benchmark_columns_follow_the_benchmarks_class_order():
    keys = CLIP_BENCHMARK_EUROSAT
    shuffled = [keys[i] for i in (3, 0, 9, 1, 2, 8, 4, 5, 6, 7)]
    info = DatasetInfo("eurosat", [k.lower() for k in shuffled], shuffled, ["{}"], "land use")
    order = clip_benchmark_order(info)
    assert order.dataset == "eurosat" and [shuffled[c] for c in order.classes] == keys
    # classes the benchmark does not have in that form, or a dataset it does not know: our own order, no dataset name
    assert clip_benchmark_order(DatasetInfo("eurosat", ["a", "b"], keys[:2], ["{}"], "land use")).dataset is None
    own = clip_benchmark_order(DatasetInfo("my-folder", ["x", "y", "z"], ["x", "y", "z"], ["{}"], "things"))
    assert own.dataset is None and own.classes == [0, 1, 2]
