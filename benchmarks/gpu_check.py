"""The Python steps of the GPU check (benchmarks/gpu_check.sh) and the page section it writes from their JSON.

    python benchmarks/gpu_check.py prepare                    # here: .gpu_check/ (EuroSAT subset, missing wheels)
    python benchmarks/gpu_check.py page --json-dir DIR PAGE.md  # the "GPU check" section from a run's JSON files

The other actions are the script's steps: `environment` (device, versions), `describer` (the in-process transformers
describer with benchmarks/tiny_llava.py's model), `experiment` (the experiment's run results and tables as JSON)
and `summary` (each step's status, wall time and log tail). Every figure on the page comes from those files.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK_DIR = REPO / ".gpu_check"  # ignored by git; the device run carries it
SHARED_DATA = Path(os.environ.get("LATTECLIP_SHARED_DATA", REPO.parent / "shared" / "data"))  # as the tests read it
# the GPU machine has torch, transformers, timm...; these pure-Python ones travel as wheels (device README)
WHEELS = ("open_clip_torch", "ftfy", "wcwidth", "submitit")
DEVICE_PYTHON = "3.12"  # the GPU machine's python3 (.library/device/KINDS.md)
# per class: the device takes at most 64 MiB with the checkout, so EuroSAT travels as a subset (~29 MB)
SUBSET = {"train": 400, "val": 100, "test": 300}
LOG_TAIL_LINES = 25
NO_DEVICE_EXIT = 3  # gpu_check.sh runs no other step after this exit of the environment step
STEP_TITLES = {
    "environment": "device and versions",
    "train_step_bf16": "train step, bf16",
    "grad_sync": "gradient synchronisation",
    "describer": "in-process transformers describer",
    "experiment": "EuroSAT experiment run",
    "experiment_tables": "experiment tables",
    "experiment_results": "experiment results",
    "train_step_compile": "train step, bf16, torch.compile",
}


def prepare(args: argparse.Namespace) -> None:
    """EuroSAT's CoOp split cut to SUBSET per class, as a stored zip with its split file, and the missing wheels."""
    source = Path(args.shared_data) / "eurosat"
    target = CHECK_DIR / "data" / "eurosat"
    target.mkdir(parents=True, exist_ok=True)
    split = json.loads((source / "split_zhou_EuroSAT.json").read_text())
    kept = {part: _first_per_class(split[part], SUBSET[part]) for part in SUBSET}
    with zipfile.ZipFile(source / "EuroSAT.zip") as whole, zipfile.ZipFile(target / "EuroSAT.zip", "w") as subset:
        for entries in kept.values():
            for entry in entries:
                subset.writestr("2750/" + entry[0], whole.read("2750/" + entry[0]), zipfile.ZIP_STORED)
    (target / "split_zhou_EuroSAT.json").write_text(json.dumps(kept))
    wheels = CHECK_DIR / "wheels"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *pins]
    pip += ["--python-version", DEVICE_PYTHON, "--implementation", "cp"]
    pip += [f"--platform={platform}" for platform in ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "any")]
    subprocess.run(pip, check=True)
    size = sum(f.stat().st_size for f in CHECK_DIR.rglob("*") if f.is_file()) / 2**20
    counts = ", ".join(f"{len(v)} {k}" for k, v in kept.items())
    print(f"{CHECK_DIR}: EuroSAT subset ({counts} images) and {', '.join(pins)}: {size:.1f} MiB")


def _first_per_class(entries: list, per_class: int) -> list:
    taken: dict[int, int] = {}
    kept = []
    for entry in entries:
        if taken.get(entry[1], 0) < per_class:
            taken[entry[1]] = taken.get(entry[1], 0) + 1
            kept.append(entry)
    return kept


def environment(args: argparse.Namespace) -> None:
    """The device, the library versions and the data the steps read."""
    import torch

    from latteclip.data import build_dataset
    from latteclip.experiments.machine import machine_description

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("GPU check: --device cuda but torch sees no GPU (GPU_CHECK_DEVICE=cpu for the CPU run)", file=sys.stderr)
        raise SystemExit(NO_DEVICE_EXIT)
    try:  # the device's copy of the checkout may have no .git, its machine no git
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit_id = commit.stdout.strip() if commit.returncode == 0 else None
    except OSError:
        commit_id = None
    images = {split: len(build_dataset("eurosat", args.data_root, split).samples) for split in ("train", "test")}
    record = {
        **machine_description(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": _version("transformers"),
        "open_clip": _version("open_clip_torch"),
        "commit": commit_id,
        "quick": args.quick,
        "eurosat_images": images,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    _write(args.out, record)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def describer(args: argparse.Namespace) -> None:
    """`latteclip describe --lmm transformers` with the tiny random LLaVA-NeXT, on the device, timed."""
    from latteclip.cli import main
    from latteclip.describe.hf_local import model_dtype
    from latteclip.describe.store import DescriptionStore

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_llava import build_tiny_llava

    work = Path(args.work)
    folder = build_tiny_llava(work / "tiny-llava-next")
    store = work / "describe.sqlite"
    argv = ["describe", "--dataset", "eurosat", "--root", args.data_root, "--limit", str(args.images)]
    argv += ["--lmm", "transformers", "--lmm-model", folder, "--lmm-batch-size", "16", "--device", args.device]
    argv += ["--store", str(store), "--kinds", "image,group", "--workers", "0"]
    argv += ["--model", args.clip_model, "--pretrained", "random"]  # the CLIP model describe loads beside the LMM
    start = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - start
    with DescriptionStore(store) as opened:
        counts = {kind: n for (kind, _, _), n in opened.counts().items()}
    import torch

    record = {
        "images": args.images,
        "texts": counts,
        "wall_s": wall,
        "texts_per_s": sum(counts.values()) / wall,
        "dtype": str(model_dtype(torch.device(args.device))).removeprefix("torch."),
    }
    if code != 0 or not counts:
        raise SystemExit(f"describe exited {code} with {counts} texts stored")
    _write(args.out, record)


def experiment(args: argparse.Namespace) -> None:
    """Each finished run's figures and the tables page of the experiment, from its run folders."""
    runs = []
    for results in sorted(Path(args.runs).glob("*/*/results.json")):
        data = json.loads(results.read_text())
        runs.append(
            {
                "run": f"{results.parent.parent.name}/{results.parent.name}",
                "method": data["method"],
                "top1": data["top1"],
                "steps": data["steps"],
                "precision": data.get("precision"),
                "device_type": data.get("device_type"),
                "timings": data["timings"],
            }
        )
    tables = Path(args.tables)
    if not runs:
        raise SystemExit(f"no finished run under {args.runs}")
    _write(args.out, {"runs": runs, "tables": tables.read_text() if tables.is_file() else None})


def summary(args: argparse.Namespace) -> None:
    """steps.tsv (name, exit code, wall seconds, limit, command), each with its log's last lines, as JSON."""
    steps = []
    for line in Path(args.steps).read_text().splitlines():
        name, code, wall, limit, command = line.split("\t", 4)
        log = Path(args.logs) / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.is_file() else []
        steps.append(
            {"name": name, "exit_code": int(code), "wall_s": float(wall), "limit_s": int(limit), "command": command}
            | {"log_tail": tail}
        )
    _write(args.out, {"command": args.command, "steps": steps, "total_wall_s": sum(s["wall_s"] for s in steps)})


def _write(path: str, record: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1, default=str))


# --- the page --------------------------------------------------------------------------------------------------
def _read(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine_line(env: dict) -> str:
    gpu = f"{env['device_name']} ({env['gpu_memory_gib']:.0f} GiB), " if env.get("device_name") else ""
    cuda = f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env.get("device_name") else ""
    return (
        f"{gpu}{env['cpu']}, {env['cores']} cores; Python {env['python']}, torch {env['torch']}{cuda}; "
        f"transformers {env['transformers']}, open_clip {env['open_clip']}; commit {env['commit'] or 'unknown'}"
    )


def _step_table(steps: list[dict]) -> list[str]:
    lines = ["| step | status | wall time (s) | command |", "|---|---|---|---|"]
    for step in steps:
        code = step["exit_code"]
        status = "ok" if code == 0 else f"timed out ({step['limit_s']} s)" if code in (124, 137) else f"failed ({code})"
        if code == 125:  # the script's mark for a step it did not start
            reason = step["command"].removeprefix("skipped: ") if step["command"].startswith("skipped: ") else None
            status = f"not run ({reason or 'no time left'})"
        title = STEP_TITLES.get(step["name"], step["name"])
        lines.append(f"| {title} | {status} | {step['wall_s']:.1f} | `{step['command']}` |")
    return lines


def _train_step_lines(record: dict | None, compiled: bool) -> list[str]:
    title = "Training step" + (", torch.compile" if compiled else "")
    if record is None:
        return [f"### {title}", "", "Not measured: the step failed or did not run (the table above)."]
    args = record["args"]
    precision = "bf16 autocast" if args["bf16"] and args["device"].startswith("cuda") else "fp32"
    lines = [
        f"### {title}, {precision}",
        "",
        f"{args['model']} (random weights), batch {args['batch_size']}, {record['device']}; mean of {args['steps']} "
        f"steps after {args['warmup']} warm-up step(s).",
        "",
        "| variant | step (s) | images/s | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['step_s']:.4f} | {r['images_per_s']:.1f} | {r['peak_mb']:.0f} |" for r in record["rows"]
    ]
    return lines


def _grad_sync_lines(record: dict | None) -> list[str]:
    if record is None:
        return ["### Gradient synchronisation", "", "Not measured: the step failed or did not run (the table above)."]
    args = record["args"]
    share = 100 * record["wait_s"] / record["step_s"]
    return [
        "### Gradient synchronisation",
        "",
        "| processes | batch per process | trained parameters (M) | buckets | step (s) | waiting after backward (s) |",
        "|---|---|---|---|---|---|",
        f"| {args['nproc']} x {args['device']} | {args['batch_size']} | {record['parameters'] / 1e6:.1f} | "
        f"{record['buckets']}, all-reduced {record['when']} | {record['step_s']:.4f} | "
        f"{record['wait_s']:.4f} ({share:.1f}%) |",
    ]


def _experiment_lines(record: dict | None, env: dict) -> list[str]:
    images = env.get("eurosat_images", {})
    lines = [
        "### EuroSAT through `latteclip experiment run paper`",
        "",
        f"EuroSAT images read: {images.get('train')} training (train + val) and {images.get('test')} test. Random "
        "weights: the accuracies are near chance (10 classes); what this shows is that the runs finish on the "
        "device, and how long they take.",
        "",
    ]
    if record is None:
        return [*lines, "No run finished (the step's log below)."]
    lines += [
        "| run | top-1 (%) | steps | zero-shot labels (s) | set-up (s) | whole run (s) | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        top1 = f"{100 * run['top1']:.2f}" if run["top1"] is not None else "n/a"
        seconds = " | ".join(f"{run['timings'].get(k, 0):.1f}" for k in ("zero_shot_labels_s", "setup_s", "total_s"))
        where = f"{run['precision']} on {run['device_type']}"
        lines.append(f"| {run['run']} | {top1} | {run['steps']} | {seconds} | {where} |")
    if record.get("tables"):  # the page's headings become bold lines inside this section
        page = [f"**{t.lstrip('#').strip()}**" if t.startswith("#") else t for t in record["tables"].splitlines()]
        lines += ["", "`latteclip experiment tables` on these runs:", "", *page]
    return lines


def _describer_lines(record: dict | None) -> list[str]:
    title = "### In-process transformers describer (tiny random LLaVA-NeXT, benchmarks/tiny_llava.py)"
    if record is None:
        return [title, "", "Not measured: the step failed or did not run (the table above)."]
    texts = record["texts"]
    return [
        title,
        "",
        "| images | image texts | group texts | whole command (s) | texts/s over it | dtype |",
        "|---|---|---|---|---|---|",
        f"| {record['images']} | {texts.get('image', 0)} | {texts.get('group', 0)} | {record['wall_s']:.1f} | "
        f"{record['texts_per_s']:.1f} | {record['dtype']} |",
    ]


def _failure_lines(steps: list[dict]) -> list[str]:
    lines = []
    for step in steps:
        if step["exit_code"] not in (0, 125) and step["log_tail"]:
            title = STEP_TITLES.get(step["name"], step["name"])
            lines += ["", f"Last lines of the log of {title}:", "", "```", *step["log_tail"], "```"]
    return lines


def write_page(folder: Path, page: Path) -> None:
    """The "GPU check" section of `page`, from the JSON files a run of gpu_check.sh left in `folder`."""
    from results_page import write_section

    env, summary_record = _read(folder, "environment"), _read(folder, "steps")
    if summary_record is None:
        raise SystemExit(f"{folder} has no steps.json: the check did not get that far")
    steps = summary_record["steps"]
    started = f"Started {env['started']}; " if env else ""
    body = [
        f"{started}{len(steps)} steps in {summary_record['total_wall_s']:.0f} s.",
        "",
        *_step_table(steps),
        "",
        *_train_step_lines(_read(folder, "train_step_bf16"), compiled=False),
        "",
        *_train_step_lines(_read(folder, "train_step_compile"), compiled=True),
        "",
        *_grad_sync_lines(_read(folder, "grad_sync")),
        "",
        *_experiment_lines(_read(folder, "experiment"), env or {}),
        "",
        *_describer_lines(_read(folder, "describer")),
        *_failure_lines(steps),
    ]
    if env is None:  # the page still shows which steps failed, and why
        title, where = "GPU check: device not recorded", "not recorded (the environment step failed: its log below)"
    else:
        title = f"GPU check: {env['device_name'] or env['device']}" + (" (--quick)" if env["quick"] else "")
        where = _machine_line(env)
    write_section("gpu_check", title, "\n".join(body), page, summary_record["command"], where)


ACTIONS = {
    "prepare": prepare,
    "environment": environment,
    "describer": describer,
    "experiment": experiment,
    "summary": summary,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    step = argparse.ArgumentParser(add_help=False)
    step.add_argument("--out", required=True, help="the step's JSON file")
    prepared = actions.add_parser("prepare", help="the EuroSAT subset and the wheels the device run carries")
    prepared.add_argument("--shared-data", default=str(SHARED_DATA))
    env = actions.add_parser("environment", parents=[step])
    env.add_argument("--device", required=True)
    env.add_argument("--data-root", required=True)
    env.add_argument("--quick", action="store_true")
    desc = actions.add_parser("describer", parents=[step])
    desc.add_argument("--device", required=True)
    desc.add_argument("--data-root", required=True)
    desc.add_argument("--work", required=True)
    desc.add_argument("--images", type=int, default=64)
    desc.add_argument("--clip-model", default="ViT-B-32")
    exp = actions.add_parser("experiment", parents=[step])
    exp.add_argument("--runs", required=True, help="the experiment's output folder")
    exp.add_argument("--tables", required=True, help="the page `experiment tables --out` wrote")
    summ = actions.add_parser("summary", parents=[step])
    summ.add_argument("--steps", required=True)
    summ.add_argument("--logs", required=True)
    summ.add_argument("--command", required=True, help="how the check was started, for the page")
    page = actions.add_parser("page")
    page.add_argument("--json-dir", required=True)
    page.add_argument("page", help="the results page to write the section into (docs/results.md, or a copy)")
    args = parser.parse_args()
    if args.action == "page":
        sys.path.insert(0, str(Path(__file__).parent))
        write_page(Path(args.json_dir), Path(args.page))
    else:
        ACTIONS[args.action](args)


if __name__ == "__main__":
    main()
