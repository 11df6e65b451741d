"""``cnnctl download``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, stderr_line
from cnnctl.errors import UsageError


@command()
def download(
    names: Annotated[list[str] | None, typer.Argument(help="dataset names (see `cnnctl list datasets`)")] = None,
    root: Annotated[str | None, typer.Option(help="data folder \\[env: CNNCTL_DATA] \\[default: ~/.cache/cnnctl/data]")
                    ] = None,
    mirror: Annotated[str | None, typer.Option(help="URL or folder tried before the official mirrors "
                                                     "\\[env: CNNCTL_MIRROR]")] = None,
    all_datasets: Annotated[bool, typer.Option("--all", help="every registered dataset")] = False,
    check: Annotated[bool, typer.Option("--check", help="verify the files on disk, download nothing")] = False,
    source: Annotated[str | None, typer.Option(
        "--from", help="import files you already have, offline: the archive/file itself (recognised by its "
                       "checksum) or a folder holding the official files")] = None,
) -> None:
    """Download datasets from their official mirrors (or yours) and verify their checksums."""
    from pathlib import Path

    from cnnctl import registry
    from cnnctl.data.download import ensure_files, import_files

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
