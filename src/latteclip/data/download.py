"""`latteclip data download NAME --root DIR`: the paper datasets that torchvision can fetch, in torchvision's
layout under DIR, which `build_dataset(NAME, DIR)` reads as it reads CoOp's.

Which torchvision class, its archive URLs and the manual steps live in each spec's `download` entry
(`data/specs/NAME.json`). Every host is tried first with a short connection attempt, so a machine without
network gets one line with the URLs and what to do by hand at once, instead of torchvision's retries.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from latteclip.data.coop import load_spec, spec_names
from latteclip.errors import LatteclipError

CONNECT_SECONDS = 5.0


def downloadable() -> list[str]:
    return [name for name in spec_names() if "download" in load_spec(name)]


def download(name: str, root: str | Path) -> Path:
    """Fetch and unpack `name` under `root` with torchvision; the root that `--root` then takes."""
    if name not in downloadable():
        raise LatteclipError(
            f"cannot download '{name}': choose one of {', '.join(downloadable())} "
            "(the others need their own download: see README)"
        )
    entry = load_spec(name)["download"]
    target = Path(root)
    manual = f"download {' and '.join(entry['urls'])} elsewhere and {entry['manual'].replace('DIR', str(target))}"
    for url in entry["urls"]:
        parts = urlsplit(url)
        try:
            socket.create_connection(
                (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), CONNECT_SECONDS
            ).close()
        except OSError as err:
            raise LatteclipError(f"cannot reach {parts.hostname} ({err}); {manual}") from err
    import torchvision.datasets

    target.mkdir(parents=True, exist_ok=True)
    try:
        getattr(torchvision.datasets, entry["torchvision"])(root=str(target), download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; torchvision reports bad checksums as RuntimeError
        raise LatteclipError(f"downloading {name} failed ({str(err).splitlines()[0]}); {manual}") from err
    return target
