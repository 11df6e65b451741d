"""``cnnctl doctor``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, print_json


@command()
def doctor(
    root: Annotated[str | None, typer.Option(help="data folder to check \\[env: CNNCTL_DATA]")] = None,
    out: Annotated[str, typer.Option(help="folder that holds run folders")] = "runs",
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Check the installation: versions, devices, folders.

    Versions of cnnctl, torch and the optional extras, CUDA/MPS availability, and the data, cache and run \
folders with whether they can be written (exit 1 if one cannot)."""
    from cnnctl.doctor import diagnose

    report = diagnose(root=root, runs=out)
    if json_output:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"cnnctl {report['cnnctl']}  Python {report['python']}  {report['platform']}", highlight=False)
    packages = Table(title="packages", title_justify="left")
    for column in ("package", "version", "for"):
        packages.add_column(column)
    for row in report["packages"]:
        packages.add_row(row["name"], row["version"] or "[dim]not installed[/dim]", row["for"])
    console.print(packages)
    devices = Table(title="devices", title_justify="left")
    devices.add_column("device")
    devices.add_column("available")
    for row in report["devices"]:
        devices.add_row(row["name"], row["detail"] if row["available"] else f"[dim]no[/dim] {row['detail']}".strip())
    console.print(devices)
    folders = Table(title="folders", title_justify="left")
    for column in ("folder", "path", "state"):
        folders.add_column(column, overflow="fold")
    for row in report["folders"]:
        state = row["state"] if row["writable"] else f"[red]{row['state']}[/red]"
        folders.add_row(row["name"], row["path"], state)
    console.print(folders)
    problems = [row for row in report["folders"] if not row["writable"]]
    if problems:
        raise typer.Exit(1)
