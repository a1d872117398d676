"""`data download`: fetch a paper dataset with torchvision into a folder that `--root` reads."""

from __future__ import annotations

import argparse

from latteclip.cli import command


@command(
    "data", "dataset tools: `data download NAME --root DIR` fetches EuroSAT, DTD, Flowers102, ... with torchvision"
)
def _data_parser(parser: argparse.ArgumentParser) -> None:
    from latteclip.cli import DefaultsHelpFormatter

    actions = parser.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "download",
        formatter_class=DefaultsHelpFormatter,
        help="download a dataset into DIR in torchvision's layout (read by --dataset NAME --root DIR)",
    )
    fetch.add_argument(
        "name",
        metavar="NAME",
        help="eurosat, dtd, oxford_flowers, oxford_pets, fgvc_aircraft, food101, sun397 or caltech101",
    )
    fetch.add_argument("--root", required=True, help="folder to download into (the --root of later commands)")


@_data_parser
def run_data(args: argparse.Namespace) -> int:
    from latteclip.data.download import download

    root = download(args.name, args.root)
    print(f"{args.name} is in {root}: use --dataset {args.name} --root {root}")
    return 0
