"""Throughput of the `openai` describer against a local server that answers after a fixed delay.

In one run: images per second for N EuroSAT images at concurrency 1 and at the default
concurrency (a fresh store each, so every image is sent); the default concurrency against a server
that answers one request at a time (like `transformers serve`) with a timeout shorter than its queue
would be, where the client must lower its requests in flight without failing or sending a request twice
(the server counts requests per image); and the client's own cost per request,
measured two ways: (1) building the request (reading the file, the base64 data URL, the JSON body)
plus the SQLite write, timed image by image with no server involved; (2) the CPU time of this
process during the concurrent run divided by the requests sent (threads, HTTP, JSON, SQLite).
The server runs in its own process so its work is not counted as the client's.

    PYTHONPATH=src python benchmarks/describe_throughput.py [--images 500] [--delay 0.1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from latteclip.data import DatasetOptions, build_dataset
from latteclip.describe.jobs import image_hashes, image_jobs
from latteclip.describe.openai_http import DEFAULT_CONCURRENCY, OpenAIDescriber
from latteclip.describe.prompts import load_prompts
from latteclip.describe.runner import Runner
from latteclip.describe.store import DescriptionStore

REPO = Path(__file__).resolve().parents[1]


def start_server(delay: float, *flags: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "lmm_server.py"), "--delay", str(delay), *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    return server, server.stdout.readline().strip()


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=10) as answer:
        return json.loads(answer.read())


def timed_run(jobs, url: str, concurrency: int, folder: Path, timeout: float = 120.0) -> dict:
    store = DescriptionStore(folder / f"c{concurrency}-t{timeout}.sqlite")
    describer = OpenAIDescriber([url], timeout=timeout)
    runner = Runner(describer, store, "eurosat", concurrency, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = runner.run(jobs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    store.close()
    sent = summary.counts["image"].done
    if not summary.complete:
        raise SystemExit(f"run at concurrency {concurrency} did not complete: {summary.lines()}")
    return {
        "concurrency": concurrency,
        "requests": sent,
        "seconds": wall,
        "images_per_s": sent / wall,
        "client_cpu_ms_per_request": 1000 * cpu / sent,
        "lowest_in_flight": describer.limit.lowest,
        "failed": summary.counts["image"].failed,
    }


def client_overhead(jobs, folder: Path, url: str) -> dict:
    """Per request, no server: build the picture and the JSON body, then write the answer to SQLite."""
    describer = OpenAIDescriber([url])  # asked only which model it serves; the loop sends nothing
    store = DescriptionStore(folder / "overhead.sqlite")
    parts: dict[str, list[float]] = {"request": [], "store": [], "total": []}
    for job in jobs:
        start = time.perf_counter()
        body = describer.payload(job.build())
        built = time.perf_counter()
        store.put(
            job.image_hash,
            job.kind,
            job.prompt,
            describer.backend,
            describer.model,
            f"answer {len(body)}",
            image=job.image,
            dataset="eurosat",
            variant=job.variant,
        )
        end = time.perf_counter()
        parts["request"].append(1000 * (built - start))
        parts["store"].append(1000 * (end - built))
        parts["total"].append(1000 * (end - start))
    store.close()
    return {name: spread(times) for name, times in parts.items()}


def spread(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {
        "mean_ms": statistics.mean(ordered),
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[int(0.95 * len(ordered)) - 1],
        "max_ms": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "eurosat" / "EuroSAT.zip"))
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.1, help="server seconds per answer")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="the concurrent run's requests in flight"
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=2.0,
        help="--lmm-timeout against the one-at-a-time server (its queue at the default concurrency is longer)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--write-results", action="store_true", help="write the figures into docs/results.md")
    args = parser.parse_args()

    dataset = build_dataset("eurosat", args.root, "train", options=DatasetOptions(limit=args.images))
    prompt = load_prompts().description("image", dataset.info.domain)
    jobs = image_jobs(dataset, image_hashes(dataset, progress=False), lambda i: prompt)
    server, url = start_server(args.delay)
    queue_server, queue_url = start_server(args.delay, "--one-at-a-time")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            overhead = client_overhead(jobs, folder, url)
            serial = timed_run(jobs, url, 1, folder)
            concurrent = timed_run(jobs, url, args.concurrency, folder)
            queued = timed_run(jobs, queue_url, args.concurrency, folder, timeout=args.queue_timeout)
            queued["server"] = server_stats(queue_url)
    finally:
        for process in (server, queue_server):
            process.terminate()
            process.wait()
    if queued["failed"] or queued["server"]["most_per_key"] != 1 or queued["server"]["requests"] != len(jobs):
        raise SystemExit(f"against the one-at-a-time server: {queued}")
    figures = {
        "images": len(jobs),
        "server_delay_s": args.delay,
        "serial": serial,
        "concurrent": concurrent,
        "one_at_a_time": queued,
        "speedup": concurrent["images_per_s"] / serial["images_per_s"],
        "client_overhead_per_request": overhead,
    }
    for run, what in ((serial, "parallel server"), (concurrent, "parallel server"), (queued, "one-at-a-time server")):
        print(
            f"{what}, concurrency {run['concurrency']:>3}: {run['requests']} requests in {run['seconds']:.2f} s = "
            f"{run['images_per_s']:.1f} images/s, client CPU {run['client_cpu_ms_per_request']:.2f} ms/request, "
            f"fewest in flight {run['lowest_in_flight'] or run['concurrency']}"
        )
    print(
        f"one-at-a-time server, timeout {args.queue_timeout:g} s: {queued['server']['requests']} requests received for "
        f"{len(jobs)} images (at most {queued['server']['most_per_key']} per image), {queued['failed']} failed"
    )
    print(f"speed-up: {figures['speedup']:.1f}x")
    for name, what in (("request", "read + data URL + JSON"), ("store", "SQLite write"), ("total", "both")):
        t = overhead[name]
        print(
            f"client overhead per request, {what} (no server): mean {t['mean_ms']:.2f} ms, median {t['median_ms']:.2f} "
            f"ms, p95 {t['p95_ms']:.2f} ms, max {t['max_ms']:.2f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if args.write_results:
        sys.path.insert(0, str(Path(__file__).parent))
        from results_page import write_section

        rows = [
            "| server | --concurrency | --lmm-timeout (s) | fewest in flight | seconds | images/s | requests received "
            "| failed | client CPU per request (ms) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r, what, timeout, received in (
            (serial, "parallel", 120, "-"),
            (concurrent, "parallel", 120, "-"),
            (queued, "one at a time", args.queue_timeout, str(queued["server"]["requests"])),
        ):
            rows.append(
                f"| {what} | {r['concurrency']} | {timeout:g} | {r['lowest_in_flight'] or r['concurrency']} | "
                f"{r['seconds']:.2f} | {r['images_per_s']:.1f} | {received} | {r['failed']} | "
                f"{r['client_cpu_ms_per_request']:.2f} |"
            )
        rows.append(
            f"\nSpeed-up at the default concurrency: **{figures['speedup']:.1f}x**. Against the one-at-a-time server "
            f"every image was sent once (at most {queued['server']['most_per_key']} request per image).\n"
        )
        rows += [
            "| client overhead per request (no server) | mean (ms) | median (ms) | p95 (ms) | max (ms) |",
            "|---|---|---|---|---|",
        ]
        for name, what in (("request", "read + data URL + JSON"), ("store", "SQLite write"), ("total", "both")):
            t = overhead[name]
            rows.append(
                f"| {what} | {t['mean_ms']:.2f} | {t['median_ms']:.2f} | {t['p95_ms']:.2f} | {t['max_ms']:.2f} |"
            )
        write_section(
            "describe_throughput",
            f"Description stage against a local server answering in {args.delay * 1000:.0f} ms, "
            f"{len(jobs)} EuroSAT images",
            "\n".join(rows),
        )


if __name__ == "__main__":
    main()
