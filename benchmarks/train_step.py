"""Time one training step: LatteCLIP's fast text path against the straightforward one, and other methods.

The straightforward step encodes four texts per image (class text for each pseudo-label, image
and group description), each padded to 77 tokens, as the reference implementation does; the
fast step encodes each distinct text once with tokens cut to the longest. Both run on the same
model (random weights, the given OpenCLIP shapes), the same EuroSAT images and the same texts.
Each variant runs in its own process so that peak memory is its own.

    python benchmarks/train_step.py                       # ViT-B-32, batch 64, CPU: fast vs reference
    python benchmarks/train_step.py --device cuda --batch-size 512 --variants flyp_pl,latteclip
    python benchmarks/train_step.py --device cuda --batch-size 512 --variants latteclip --compile --warmup 3

`--compile` compiles the model as `train --compile` does (engine.trainer.accelerate); the first steps compile,
so give it warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# the project's data folder, as the tests read it (LATTECLIP_SHARED_DATA, default ../shared/data beside the checkout)
SHARED_DATA = Path(os.environ.get("LATTECLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
EUROSAT_ZIP = SHARED_DATA / "eurosat" / "EuroSAT.zip"
WORDS = (
    "green fields crossed by a narrow road with scattered houses and dense trees along a river bank "
    "under clear sky showing bright patches of farmland and industrial roofs near the lake"
).split()


def synthetic_description(i: int, kind: str) -> str:
    """LMM-like texts of 10-20 words (the prompts ask for fewer than 20), different per image."""
    n = 10 + (i * 7) % 11
    start = (i * 5 + (3 if kind == "group" else 0)) % len(WORDS)
    return " ".join(WORDS[(start + j) % len(WORDS)] for j in range(n)) + f" ({kind} {i})"


def build(args, variant: str):
    from latteclip.config import RunConfig
    from latteclip.data import DatasetOptions, build_dataset, collate
    from latteclip.describe.store import DescriptionStore, image_key
    from latteclip.engine.optim import optimizer_for_run, scaled_groups
    from latteclip.engine.trainer import accelerate
    from latteclip.methods import build_options, get_method
    from latteclip.methods.base import TrainContext
    from latteclip.models import load_clip

    torch.manual_seed(0)
    device = torch.device(args.device)
    loaded = load_clip(args.model, "random", device)
    transform = loaded.eval_transform()
    train = build_dataset("eurosat", EUROSAT_ZIP, "train", transform, DatasetOptions(limit=args.batch_size))
    tmp = Path(tempfile.mkdtemp())
    store = DescriptionStore(tmp / "d.sqlite")
    for i in range(len(train)):
        key = image_key(train.read_bytes(i))
        store.put(key, "image", "p", "bench", "m", synthetic_description(i, "image"))
        store.put(key, "group", "g", "bench", "m", synthetic_description(i, "group"))
    store.close()
    method_name = "latteclip" if variant.startswith("latteclip") else variant
    options = {"fast_text": variant != "latteclip_reference"} if method_name == "latteclip" else {}
    cls = get_method(method_name)
    method = cls(loaded, train.info, build_options(cls, options), device)
    zs = torch.randint(0, train.info.num_classes, (len(train),), generator=torch.Generator().manual_seed(0))
    method.setup_training(TrainContext(train, zs, tmp, 0, str(tmp / "d.sqlite")))
    accelerate(method.model, RunConfig(compile=args.compile))
    batch = collate([train[i] for i in range(len(train))])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    optimizer = optimizer_for_run(scaled_groups(method.parameters()), RunConfig(lr=1e-7))
    return method, batch, optimizer


def run_worker(args, variant: str) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    method, batch, optimizer = build(args, variant)
    cuda = args.device.startswith("cuda")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and args.bf16 else torch.autocast("cpu", enabled=False)
    )

    def step(i: int) -> float:
        with autocast:
            result = method.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        method.after_optimizer_step(batch, result, i)
        return result.loss.item()

    for i in range(args.warmup):
        step(i)
    rss_before = _current_rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + i)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak, step_peak = torch.cuda.max_memory_allocated() / 2**20, None
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        step_peak = peak - rss_before  # what a step adds above the resident model, optimizer and data
    mean = sum(times) / len(times)
    return {
        "variant": variant,
        "step_s": mean,
        "images_per_s": len(batch["index"]) / mean,
        "peak_mb": peak,
        "step_peak_mb": step_peak,
        "times": times,
    }


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--variants", default="latteclip,latteclip_reference", help="latteclip, latteclip_reference, flyp_pl, ..."
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers, as `train --compile`")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--write-results", action="store_true", help="write the table into docs/results.md")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args, args.worker)))
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--worker", variant] + [a for a in sys.argv[1:]]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from latteclip.experiments.machine import machine_description

    machine = machine_description()
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{machine['cpu']}, {machine['cores']} cores"
    )
    compiled = ", compiled" if args.compile else ""
    print(
        f"{args.model} (random weights), batch {args.batch_size}, {args.device} ({device}){compiled}, "
        f"torch {torch.__version__}"
    )
    print(f"{'variant':<22}{'step (s)':>10}{'images/s':>10}{'peak MB':>10}{'step +MB':>10}")
    for r in rows:
        extra = f"{r['step_peak_mb']:>10.0f}" if r["step_peak_mb"] is not None else f"{'':>10}"
        print(f"{r['variant']:<22}{r['step_s']:>10.3f}{r['images_per_s']:>10.1f}{r['peak_mb']:>10.0f}{extra}")
    by = {r["variant"]: r for r in rows}
    if "latteclip" in by and "latteclip_reference" in by:
        print(
            "speed-up of the fast LatteCLIP step: "
            f"{by['latteclip_reference']['step_s'] / by['latteclip']['step_s']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": device, "rows": rows}, indent=1))
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).parent))
        from results_page import write_section

        lines = [
            "| variant | step (s) | images/s | peak memory (MB) | added by the step (MB) |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            added = f"{r['step_peak_mb']:.0f}" if r["step_peak_mb"] is not None else "n/a"
            lines.append(
                f"| {r['variant']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['peak_mb']:.0f} | {added} |"
            )
        if "latteclip" in by and "latteclip_reference" in by:
            lines.append(
                f"\nSpeed-up of the fast LatteCLIP step over the reference: "
                f"**{by['latteclip_reference']['step_s'] / by['latteclip']['step_s']:.2f}x**."
            )
        kind = ("gpu" if args.device.startswith("cuda") else "cpu") + ("_compiled" if args.compile else "")
        title = f"One training step, {args.model} (random weights), batch {args.batch_size}, {args.device}{compiled}"
        memory = (
            "peak GPU memory allocated"
            if kind.startswith("gpu")
            else "peak resident memory of the process, and what the step adds above the model, optimizer and data"
        )
        write_section(
            f"train_step_{kind}",
            title,
            "\n".join(lines) + f"\n\nMemory: {memory}. Mean of {args.steps} steps after {args.warmup} warm-up step(s).",
        )


if __name__ == "__main__":
    main()
