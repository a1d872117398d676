"""What gradient synchronisation costs: a data-parallel step, and the wait for the gradients after its backward pass.

    python benchmarks/grad_sync.py                        # ViT-B-32, 2 CPU processes (gloo), batch 8 each
    python benchmarks/grad_sync.py --no-overlap           # every bucket all-reduced after the backward pass
    python benchmarks/grad_sync.py --no-overlap --bucket-mb 0   # one flat all-reduce per dtype (the earlier way)
    python benchmarks/grad_sync.py --device cuda --nproc 2 --write-results

Each process runs the contrastive step of FLYP/LatteCLIP on random images and texts (global-batch loss
through `gather_with_grad`) with the trainer's gradient averaging (`distributed.GradientSync`: 25 MB buckets,
all-reduced while the backward pass runs). Timed: the whole step (forward, backward, averaged gradients) and the
part of it spent waiting for the all-reduces after the backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, args: argparse.Namespace, port: int, queue) -> None:
    from latteclip import distributed
    from latteclip.models import load_clip
    from latteclip.models.losses import contrastive_loss

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(args.nproc), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=rank, world_size=args.nproc)
    torch.manual_seed(0)
    loaded = load_clip(args.model, "random", device)
    model = loaded.model.train()
    images = torch.randn(args.batch_size, 3, loaded.image_size, loaded.image_size, device=device)
    tokens = loaded.tokenizer([f"a photo of object number {i}" for i in range(args.batch_size)]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    bucket_bytes = int(args.bucket_mb * 2**20) if args.bucket_mb > 0 else 2**62  # 0: one bucket per dtype
    sync = distributed.GradientSync(params, bucket_bytes, overlap=args.overlap)

    def settle() -> None:  # GPU work queued so far has run
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps, waits = [], []
    for i in range(args.warmup + args.steps):
        model.zero_grad(set_to_none=True)
        settle()
        start = time.perf_counter()
        image_features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        loss = contrastive_loss(image_features, text_features, model.logit_scale)
        sync.start(loss)
        loss.backward()
        settle()
        middle = time.perf_counter()
        sync.finish()
        settle()
        end = time.perf_counter()
        if i >= args.warmup:
            steps.append(end - start)
            waits.append(end - middle)
    if rank == 0:
        numel = sum(p.numel() for p in params)
        queue.put({"step_s": statistics.mean(steps), "wait_s": statistics.mean(waits), "parameters": numel})
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=8, help="images per process")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--port", type=int, default=29517)
    parser.add_argument(
        "--bucket-mb", type=float, default=25, help="all-reduce bucket size (0: one flat bucket per dtype)"
    )
    parser.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="all-reduce buckets during the backward pass (--no-overlap: after it)",
    )
    parser.add_argument("--write-results", action="store_true", help="write the figures into docs/results.md")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    load = (
        os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    )  # other jobs on the machine share its cores
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(worker, args=(args, args.port, queue), nprocs=args.nproc, start_method="spawn")
    row = queue.get()
    share = row["wait_s"] / row["step_s"]
    buckets = f"{args.bucket_mb:g} MB buckets" if args.bucket_mb > 0 else "one flat bucket per dtype"
    when = "during the backward pass" if args.overlap else "after the backward pass"
    millions = row["parameters"] / 1e6
    print(
        f"{args.model}, {args.nproc} x {args.device}, batch {args.batch_size} per process, {millions:.1f} M "
        f"trained parameters, {buckets} all-reduced {when}: step {row['step_s']:.3f} s, of which waiting for the "
        f"gradients after the backward pass {row['wait_s']:.3f} s ({100 * share:.1f}%)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "buckets": buckets, "when": when, **row}, indent=1))
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).parent))
        from results_page import write_section

        body = "\n".join(
            [
                "| processes | batch per process | trained parameters (M) | buckets | all-reduced | step (s) "
                "| waiting after backward (s) |",
                "|---|---|---|---|---|---|---|",
                f"| {args.nproc} x {args.device} | {args.batch_size} | {millions:.1f} | {buckets} | {when} | "
                f"{row['step_s']:.3f} | {row['wait_s']:.3f} ({100 * share:.1f}%) |",
                "",
                f"Mean of {args.steps} steps after {args.warmup} warm-up step(s); {args.threads} torch thread(s) per "
                f"process; load average {load:.1f} when it started (on {os.cpu_count()} cores).",
            ]
        )
        write_section(
            f"grad_sync_{args.device}",
            f"Gradient synchronisation, {args.model}, {args.nproc} processes, {args.device}",
            body,
        )


if __name__ == "__main__":
    main()
