"""``cnnctl download``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, stderr_line
from cnnctl.errors import UsageError


@command()
def download(
    names: Annotated[list[str] | None, typer.Argument(help="dataset names (see `cnnctl list datasets`)")] = None,
    root: Annotated[str | None, typer.Option(help="data folder [env: CNNCTL_DATA; default ~/.cache/cnnctl/data]")
                    ] = None,
    mirror: Annotated[str | None, typer.Option(help="URL or folder tried before the official mirrors "
                                                     "[env: CNNCTL_MIRROR]")] = None,
    all_datasets: Annotated[bool, typer.Option("--all", help="every registered dataset")] = False,
    check: Annotated[bool, typer.Option("--check", help="verify the files on disk, download nothing")] = False,
) -> None:
    """Download datasets from their official mirrors (or yours) and verify their checksums."""
    from pathlib import Path

    from cnnctl import registry
    from cnnctl.data.download import ensure_files

    if all_datasets:
        specs = [spec for spec in registry.datasets().values() if spec.files]
    elif names:
        specs = [registry.get_dataset_spec(name) for name in names]
    else:
        raise UsageError("name a dataset to download (see `cnnctl list datasets`) or pass --all")
    for spec in specs:
        if not spec.files:
            raise UsageError(f"{spec.name} has nothing to download")
        directory = ensure_files(spec.name, spec.files, spec.mirrors, root=Path(root) if root else None,
                                 mirror=mirror, check=check, log=stderr_line)
        print(f"{spec.name}: {'verified' if check else 'ready'} in {directory}")
