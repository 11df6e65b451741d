"""``cnnctl download``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl import registry
from cnnctl.cli._common import command, stderr_line
from cnnctl.errors import UsageError


@command()
def download(
    names: Annotated[list[str] | None, typer.Argument(
        help="dataset names (see `cnnctl list datasets`), or `weights ARCH [ARCH...]` for pretrained weights"
    )] = None,
    root: Annotated[str | None, typer.Option(help="data folder \\[env: CNNCTL_DATA] \\[default: ~/.cache/cnnctl/data]")
                    ] = None,
    mirror: Annotated[str | None, typer.Option(help="URL or folder tried before the official mirrors "
                                                     "\\[env: CNNCTL_MIRROR]")] = None,
    all_datasets: Annotated[bool, typer.Option("--all", help="every registered dataset")] = False,
    check: Annotated[bool, typer.Option("--check", help="verify the files on disk, download nothing")] = False,
    source: Annotated[str | None, typer.Option(
        "--from", help="import files you already have, offline: the archive/file itself (recognised by its "
                       "checksum) or a folder holding the official files")] = None,
    # --- `download weights`: published ImageNet weights ---
    dest: Annotated[str | None, typer.Option(
        help="weights: folder to put them in (to copy to an offline machine) \\[default: torch's cache, "
             "$TORCH_HOME/hub/checkpoints]")] = None,
    weights_mirror: Annotated[str | None, typer.Option(
        help="weights: URL or folder tried before the official URL \\[env: CNNCTL_WEIGHTS_MIRROR]")] = None,
    weights: Annotated[str, typer.Option(
        help="weights: which of the architecture's weights (imagenet, IMAGENET1K_V1, ...)")] = "imagenet",
    offline: Annotated[bool, typer.Option(
        "--offline", envvar="CNNCTL_OFFLINE", help="open no network connection (folder mirrors only)")] = False,
) -> None:
    """Download datasets from their official mirrors (or yours) and verify their checksums; `download weights
    ARCH...` fetches and verifies pretrained weights."""
    import os
    from pathlib import Path

    from cnnctl.data.download import ensure_files, import_files

    if offline:
        os.environ["CNNCTL_OFFLINE"] = "1"
    if names and names[0] == "weights":
        _download_weights(names[1:], dest=dest, mirror=weights_mirror, which=weights)
        return

    if all_datasets:
        specs = [spec for spec in registry.datasets().values() if spec.files]
    elif names:
        specs = [registry.get_dataset_spec(name) for name in names]
    else:
        raise UsageError("name a dataset to download (see `cnnctl list datasets`) or pass --all")
    if check and source:
        raise UsageError("--check verifies what is on disk; it cannot be combined with --from")
    root_path = Path(root) if root else None
    for spec in specs:
        if not spec.files:
            raise UsageError(f"{spec.name} has nothing to download", hint=spec.extra.get("download_hint"))
        if source:
            directory = import_files(spec.storage_name, spec.files, Path(source), root=root_path, log=stderr_line)
        else:
            directory = ensure_files(spec.storage_name, spec.files, spec.mirrors, root=root_path, mirror=mirror,
                                     check=check, log=stderr_line)
        prepare = spec.extra.get("prepare")
        if prepare is not None and not check:
            prepare(directory, log=stderr_line)
        print(f"{spec.name}: {'verified' if check else 'ready'} in {directory}")


def _download_weights(archs: list[str], *, dest: str | None, mirror: str | None, which: str) -> None:
    """``cnnctl download weights ARCH...``: each architecture's published weights, fetched and verified."""
    from cnnctl.models.weights import ensure_weights_file, resolve

    if not archs:
        raise UsageError("name the architectures whose weights to download, e.g. `cnnctl download weights "
                         "resnet50 mobilenet_v3_small`")
    for arch in archs:
        found = resolve(arch, which)
        path = ensure_weights_file(found, mirror=mirror, dest=dest, log=stderr_line)
        print(f"{found.arch}: {found.label} verified in {path}")
