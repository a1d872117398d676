"""Rebuild the Fashion-MNIST subset shipped in the package from the original IDX files.

    python scripts/make_fmnist_subset.py /usr/share/datasets/fashion-mnist

Keeps, per class and in file order, the first 2,000 source-domain training images (index < 50,000),
the first 600 target-domain training images (index >= 50,000) and the whole test set: about 16 MB,
enough for the demo and the benchmark. The full set is used by passing the IDX folder as --root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latteclip.data.fmnist import bundled_path, write_bundled_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, help="folder with train-images-idx3-ubyte.gz and the other three IDX files"
    )
    parser.add_argument("--out", type=Path, default=bundled_path())
    parser.add_argument("--source-per-class", type=int, default=2000)
    parser.add_argument("--target-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: the whole test set")
    args = parser.parse_args()
    counts = write_bundled_subset(
        args.folder, args.out, args.source_per_class, args.target_per_class, args.test_per_class
    )
    print(f"{args.out}: {counts['train']} training and {counts['test']} test images, {counts['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
