"""`latteclip report` on a real tiny run, checked in headless Chromium, plus the run-reading rules."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.errors import LatteclipError
from latteclip.report.runs import Run, compare, load_run, per_class_gain, read_metrics
from tests.conftest import TINY_FLYP, flags, tiny_flags

ALL_PANELS = [
    "Accuracy",
    "Per-class accuracy gain over zero-shot",
    "Confusion matrix",
    "Test accuracy over training",
    "Training loss",
    "Pseudo-label agreement (zero-shot vs fine-tuning)",
    "Pseudo-label accuracy",
    "Mixer weight per text kind over training",
    "Mixer weight distribution",
    "Gallery: training images, texts, mixer weights, pseudo-labels",
    "Other logged metrics",
    "Configuration and timings",
]

# Appended to a copy of the page: records what the browser actually shows once everything has loaded.
BROWSER_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, file: i.dataset.file, complete: i.complete,
                                                  width: i.naturalWidth, height: i.naturalHeight,
                                                  shown: i.getBoundingClientRect().width}));
  const panels = [...document.querySelectorAll("section.panel")].map(s => ({title: s.querySelector("h2").textContent,
                                                                           skipped: s.classList.contains("skipped"),
                                                                           height: s.offsetHeight}));
  const probe = document.createElement("pre");
  probe.id = "browser-probe";
  probe.textContent = JSON.stringify({images, panels,
                                      headline: document.querySelector("#headline .headline").innerText});
  document.body.appendChild(probe);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (make browser installs it; CI does)")
    return found


def run_chromium(*args: str) -> str:
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def latteclip_run(tiny_runs, eurosat_zip, tmp_path_factory) -> Path:
    """A real LatteCLIP run beside the tiny zeroshot run: the offline describe stage (latte-tiny, random weights)
    writes image and group texts with each group's members, then image texts with HTML characters are imported
    over them (the newest text wins), and LatteCLIP trains 8 steps, showing 2 images in its gallery."""
    output = tiny_runs["zeroshot"].parent
    store = output / "latte-descriptions.sqlite"
    common = tiny_flags(root=eurosat_zip, store=store)  # the describe and the train commands' alike
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATTECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["describe", *common, "--lmm", "offline"]) == 0
        train = build_dataset("eurosat", str(eurosat_zip), "train", None, DatasetOptions(limit=40))
        lines = tmp_path_factory.mktemp("import") / "texts.jsonl"
        lines.write_text(
            "".join(
                json.dumps(
                    {
                        "image": sample.path,
                        "kind": "image",
                        "prompt": "p",
                        "model": "hand-written",
                        "text": f"Green fields divided by <straight> roads & hedges, tile {i}.",
                    }
                )
                + "\n"
                for i, sample in enumerate(train.samples)
            )
        )
        assert main(["describe", *common, "--import", str(lines)]) == 0
        schedule = flags(**TINY_FLYP, gallery_size=2)  # the tiny flyp run's steps, and 2 images in the gallery
        assert main(["train", *flags(method="latteclip", name="latteclip", output=output), *schedule, *common]) == 0
    return output / "latteclip"


def test_report_shows_every_panel_in_a_browser(latteclip_run, tiny_runs, tmp_path, capsys):
    run = latteclip_run
    assert main(["report", str(run), str(tiny_runs["zeroshot"]), "--out", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "report.html"
    assert f"report: {page}" in capsys.readouterr().out
    text = page.read_text()
    assert (
        re.findall(r'<img src="(?!data:image/png;base64,)', text) == []
        and "http" not in text.split("</style>")[1].split("<pre>")[0]
    )
    assert "Green fields divided by &lt;straight&gt; roads &amp; hedges, tile " in text

    probe_page = page.with_name("probe.html")
    probe_page.write_text(text.replace("</body>", BROWSER_PROBE + "</body>"))
    dom = run_chromium("--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri())
    shown = json.loads(html.unescape(re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S).group(1)))

    assert [p["title"] for p in shown["panels"]] == ALL_PANELS
    assert [p["title"] for p in shown["panels"] if p["skipped"] or p["height"] < 60] == []
    files = {p.name for p in page.parent.glob("*.png")}
    assert {
        "headline.png",
        "per_class_gain.png",
        "confusion.png",
        "accuracy_curve.png",
        "loss.png",
        "pl_agreement.png",
        "pseudo_label_accuracy.png",
        "mixer_weights_curve.png",
        "mixer_weights_distribution.png",
        "other_metrics.png",
        "gallery_00_image.png",
        "gallery_00_group.png",
        "gallery_01_image.png",
        "gallery_01_group.png",
    } == files
    assert sorted(i["file"] for i in shown["images"]) == sorted(files)
    size = {i["file"]: (i["width"], i["height"]) for i in shown["images"]}
    assert size["gallery_00_image.png"] == (128, 128)  # 64x64 EuroSAT image shown at 128 px
    for number in ("00", "01"):  # each group as the describe stage drew it: 2x2 member grid, 64 px cells, 4 px gaps
        assert size[f"gallery_{number}_group.png"] == (2 * 64 + 3 * 4, 2 * 64 + 3 * 4)
    for image in shown["images"]:
        with Image.open(page.parent / image["file"]) as beside:
            assert image["complete"] and (image["width"], image["height"]) == beside.size, image
        assert image["shown"] > 50, image

    latte, zero_shot = (
        json.loads((folder / "results.json").read_text())["top1"] for folder in (run, tiny_runs["zeroshot"])
    )
    assert f"{100 * latte:.2f}%" in shown["headline"] and f"{100 * zero_shot:.2f}%" in shown["headline"]
    assert f"{100 * (latte - zero_shot):+.2f}" in shown["headline"] and "zeroshot run zeroshot" in shown["headline"]

    screenshot = tmp_path / "report.png"
    run_chromium("--window-size=1200,3000", f"--screenshot={screenshot}", page.as_uri())
    with Image.open(screenshot) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000  # a blank or unstyled page has a handful of colours


def test_panels_without_data_say_why(tiny_runs, tmp_path):
    """The plain flyp_pl run: no mixer, gallery or agreement records; without a zeroshot run, no per-class reference."""
    out = tmp_path / "report"
    assert main(["report", str(tiny_runs["flyp"]), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    skipped = dict(
        re.findall(r'class="panel skipped" id="[^"]+"><h2>(.*?)</h2><p class="note">Not shown: (.*?)</p>', text)
    )
    assert set(skipped) == {
        "Per-class accuracy gain over zero-shot",
        "Pseudo-label agreement (zero-shot vs fine-tuning)",
        "Mixer weight per text kind over training",
        "Mixer weight distribution",
        "Gallery: training images, texts, mixer weights, pseudo-labels",
    }
    assert "name its folder too" in skipped["Per-class accuracy gain over zero-shot"]
    assert (
        skipped["Pseudo-label agreement (zero-shot vs fine-tuning)"]
        == "method flyp_pl does not log analysis/pl_agreement"
    )
    assert "step-0 evaluation of this run" in text  # the zero-shot number still comes from the step-0 record
    assert not (tiny_runs["flyp"] / "report").exists()


def make_run(
    name: str, method: str, per_class: dict, top1: float, evals: list[dict] | None = None, model: str = "m"
) -> Run:
    return Run(
        Path(name),
        {},
        {
            "method": method,
            "dataset": "d",
            "model": model,
            "pretrained": "p",
            "top1": top1,
            "steps": 5,
            "test": {"per_class": per_class},
        },
        [],
        evals or [],
    )


def test_zero_shot_reference_and_per_class_gain():
    ft = make_run(
        "ft",
        "flyp_pl",
        {"a": 0.5, "b": 1.0, "c": None, "d": 0.75},
        0.6,
        [{"step": 0, "eval/top1": 0.3}, {"step": 5, "eval/top1": 0.6}],
    )
    zs = make_run("zs", "zeroshot", {"a": 0.25, "b": 1.0, "c": 0.5, "d": None}, 0.4)
    other_model = make_run("zs-other", "zeroshot", {"a": 0.0}, 0.1, model="other")

    named = compare([zs, ft])
    assert named.subject is ft and named.zero_shot_run is zs and named.zero_shot_top1 == 0.4
    assert per_class_gain(ft, zs) == [("a", 0.5, 0.25), ("b", 1.0, 1.0)]
    logged = compare([ft])
    assert (
        logged.zero_shot_run is None
        and logged.zero_shot_top1 == 0.3
        and logged.zero_shot_source == "step-0 evaluation of this run"
    )
    with pytest.warns(UserWarning, match="not used as the zero-shot reference"):
        mismatched = compare([ft, other_model])
    assert mismatched.zero_shot_run is None and mismatched.zero_shot_top1 == 0.3
    seed0, seed1 = make_run("seed0/ft", "flyp_pl", {}, 0.5), make_run("seed1/ft", "flyp_pl", {}, 0.5)
    assert [compare([seed0, seed1, zs]).label(r) for r in (seed0, seed1, zs)] == ["seed0/ft", "seed1/ft", "zs"]
    elsewhere = make_run("dtd", "flyp_pl", {}, 0.5)
    elsewhere.results["dataset"] = "dtd"
    with pytest.raises(LatteclipError, match="name runs of one dataset"):
        compare([ft, elsewhere])


def test_metrics_reading_and_unfinished_runs(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"step": 0, "eval/top1": 0.25}\n{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 2, "loss": NaN}\n'
        '{"step": 2, "eval/top1": 0.5}\n{"step": 3, "lo'
    )
    with pytest.warns(UserWarning, match="metrics.jsonl:5 is not a JSON record"):
        train, evals = read_metrics(log)
    assert [r["step"] for r in train] == [1, 2] and evals == [
        {"step": 0, "eval/top1": 0.25},
        {"step": 2, "eval/top1": 0.5},
    ]
    run = Run(tmp_path, {}, {"top1": 0.5}, train, evals)
    assert run.series("loss") == ([1], [2.0]) and run.series("eval/top1") == ([0, 2], [0.25, 0.5])
    assert run.metric_keys() == ["loss", "lr"] and run.logged_zero_shot_top1 == 0.25
    with pytest.raises(LatteclipError, match="not a finished run"):
        load_run(tmp_path)
