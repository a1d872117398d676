"""What rounding does to pre-trained weights, against what a changed recipe does: the archive's tolerance, measured.

    PYTHONPATH=src python benchmarks/weights_rounding.py [--work DIR] [--write-results]

Pre-trains the demo's source model (its recipe in configs/demo.yaml) in a process per variant: CPU kernels of
several vector widths (`ATEN_CPU_CAPABILITY`: default = scalar, avx2, this machine's best) with 1 and 2 torch
threads, and the same recipe with another seed (what a change to the training code looks like: same recipe, another
trajectory). Each variant's weights get their SHA-256 and `behaviour` (engine/pretraining.py: zero-shot class and
top score of 1000 probe images), compared with the first variant's as the archive compares them
(experiments/archive.py: `same_behaviour`). Each variant caches under `--work/<variant>`, so a rerun only compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from latteclip.experiments.archive import PREDICTIONS_MAY_DIFFER, SCORES_MAY_DIFFER, same_behaviour
from latteclip.experiments.spec import load_experiment, package_experiment_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_page import write_section

VARIANTS = [  # (folder, label, torch threads, ATEN_CPU_CAPABILITY or None for the machine's best, recipe changes)
    ("best-1", "best vectors, 1 thread", 1, None, {}),
    ("default-1", "scalar kernels (default), 1 thread", 1, "default", {}),
    ("seed-1", "changed recipe: seed 1, best vectors, 1 thread", 1, None, {"seed": 1}),
    ("best-2", "best vectors, 2 threads", 2, None, {}),
    ("avx2-1", "avx2, 1 thread", 1, "avx2", {}),
]
PRETRAIN = """import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from latteclip.config import resolve_config
from latteclip.engine.pretraining import behaviour_path, pretrained_weights
weights = pretrained_weights(resolve_config(json.loads(sys.argv[1])))
print(json.dumps({"path": str(weights.path), "behaviour": str(behaviour_path(weights.path)),
                  "capability": torch.backends.cpu.get_cpu_capability(), "top1": weights.summary["clean_test_top1"]}))
"""


def pretrain(recipe: dict, folder: Path, threads: int, capability: str | None) -> dict:
    """Pre-train (or read from the variant's cache) in a fresh process: the capability is read when torch loads."""
    env = {**os.environ, "LATTECLIP_CACHE": str(folder)}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    command = [sys.executable, "-c", PRETRAIN, json.dumps(recipe), str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"pre-training {folder.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/weights-rounding", help="a cache folder per variant under this one")
    parser.add_argument(
        "--variants",
        default=",".join(v[0] for v in VARIANTS),
        help="comma-separated variants, the reference first (default: all)",
    )
    parser.add_argument("--write-results", action="store_true", help="write the section of docs/results.md")
    args = parser.parse_args()
    chosen = {name: index for index, name in enumerate(args.variants.split(","))}
    experiment = load_experiment(package_experiment_file("demo"))
    recipe = {"method": "pretrain", "model": experiment.model, "root": experiment.root, **experiment.pretrain}
    lines = [
        "| variant (the first is the reference) | CPU kernels | weights SHA-256 | clean top-1 % | "
        "probe answers against the reference | same weights for the archive |",
        "|---|---|---|---|---|---|",
    ]
    reference = None
    variants = sorted((v for v in VARIANTS if v[0] in chosen), key=lambda v: chosen[v[0]])
    for folder, label, threads, capability, changes in variants:
        made = pretrain({**recipe, **changes}, Path(args.work) / folder, threads, capability)
        digest = hashlib.sha256(Path(made["path"]).read_bytes()).hexdigest()[:16]
        behaviour = json.loads(Path(made["behaviour"]).read_text())["behaviour"]
        reference = reference or behaviour
        same, distance = same_behaviour(reference, behaviour)
        lines.append(f"| {label} | {made['capability']} | {digest} | {100 * made['top1']:.2f} | {distance} | {same} |")
        print(lines[-1], flush=True)
    body = (
        f"The demo's source recipe (`configs/demo.yaml`: `{json.dumps(experiment.pretrain, sort_keys=True)}`) "
        "pre-trained once per variant. The archive counts two sets of weights of one recipe as the same when at "
        f"most {100 * PREDICTIONS_MAY_DIFFER:.0f}% of the probe's zero-shot classes differ and their top scores "
        f"differ by at most {SCORES_MAY_DIFFER} on average (docs/domain_shift.md).\n\n" + "\n".join(lines)
    )
    if args.write_results:
        write_section("weights_rounding", "Pre-trained weights under rounding, and under a changed recipe", body)
    print(body)


if __name__ == "__main__":
    main()
