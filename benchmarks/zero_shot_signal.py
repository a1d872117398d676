"""ANALYSIS (READS THE TRUE LABELS of target training images): what the source model's zero-shot scores know per shift.

    latteclip pretrain                     # prints the source weights file the benchmark starts from
    PYTHONPATH=src python benchmarks/zero_shot_signal.py --pretrained FILE --reads-labels

Every label-free method here starts from the zero-shot pseudo-labels, and CoFT's first phase trains on
its most confident ones. Per shift this prints, over the target's training images: pseudo-label accuracy,
how often the true class is among the top 3 (chance 30%), the AUC of the zero-shot margin (top-1 minus
top-2 cosine) for telling right pseudo-labels from wrong ones (0.5: confidence says nothing), and the
accuracy of the most confident fifth. Never used for a choice; nothing is written.
"""

from __future__ import annotations

import argparse

import torch

from latteclip.config import resolve_config
from latteclip.data.shifts import SHIFTS, UNSHIFTED
from latteclip.engine.features import frozen_image_features
from latteclip.engine.session import open_session
from latteclip.models import class_text_features


def margin_auc(margin: torch.Tensor, right: torch.Tensor) -> float:
    """P(margin of a right pseudo-label > margin of a wrong one), ties counted half (Mann-Whitney)."""
    difference = margin[right][:, None] - margin[~right][None, :]
    return ((difference > 0).float().mean() + (difference == 0).float().mean() / 2).item()


@torch.no_grad()
def shift_signal(pretrained: str, shift: str) -> str:
    config = resolve_config(
        {
            "method": "zeroshot",
            "dataset": f"fmnist-{shift}",
            "root": "bundled",
            "model": "latte-fmnist",
            "pretrained": pretrained,
            "device": "cpu",
        }
    )
    session = open_session(config)
    data, method, loaded = session.dataset("train"), session.method, session.loaded
    features, valid = frozen_image_features(loaded, data, session.device, config.eval_batch_size)
    classifier = class_text_features(
        loaded.model, method.tokens, method.info.classnames, [method.info.templates[0]], session.device
    )
    top = (features[valid] @ classifier.float().cpu().t()).topk(3, dim=-1)
    truth = data.labels[valid]
    right = top.indices[:, 0] == truth
    margin = top.values[:, 0] - top.values[:, 1]
    confident = margin.argsort(descending=True)[: max(1, len(margin) // 5)]
    return (
        f"| {shift} | {len(truth)} | {100 * right.float().mean():.1f} | "
        f"{100 * (top.indices == truth[:, None]).any(1).float().mean():.1f} | {margin_auc(margin, right):.3f} | "
        f"{100 * right[confident].float().mean():.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pretrained", required=True, help="the source weights (.safetensors) that `latteclip pretrain` printed"
    )
    parser.add_argument(
        "--reads-labels", action="store_true", help="confirm: this analysis reads the true training labels"
    )
    args = parser.parse_args()
    if not args.reads_labels:
        parser.exit(2, "zero_shot_signal.py reads the TRUE labels of the target training images: add --reads-labels\n")
    torch.set_num_threads(1)
    print(
        "| shift | images | pseudo-label acc % | true class in top 3 % | margin AUC | acc of the most confident fifth "
        "% |"
    )
    print("|---|---|---|---|---|---|")
    for shift in [s for s in SHIFTS if s != UNSHIFTED]:
        print(shift_signal(args.pretrained, shift), flush=True)


if __name__ == "__main__":
    main()
