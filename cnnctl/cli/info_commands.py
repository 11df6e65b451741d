"""``cnnctl list`` and ``cnnctl summary``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, complete_arch, print_json
from cnnctl.errors import UsageError
from cnnctl.options import choice_settings


@command("list")
def list_command(
    what: Annotated[str, typer.Argument(
        help="what to list (architectures also as archs or models)", show_default=False,
        **choice_settings(lambda: ("all", "architectures", "datasets")))] = "all",
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    wide: Annotated[bool, typer.Option("--wide", "-w", help="every column and the long descriptions")] = False,
    root: Annotated[str | None, typer.Option(help="data folder to check for local copies \\[env: CNNCTL_DATA]")] = None,
) -> None:
    """List the registered architectures and datasets."""
    from pathlib import Path

    from cnnctl import registry
    from cnnctl.data.download import is_present

    kinds = {"all": ("architectures", "datasets"), "architectures": ("architectures",), "archs": ("architectures",),
             "models": ("architectures",), "datasets": ("datasets",)}
    if what not in kinds:
        raise registry.suggest(what, sorted(kinds), "list")
    output: dict[str, list[dict[str, object]]] = {}
    if "architectures" in kinds[what]:
        output["architectures"] = [
            {"name": spec.name, "family": spec.family, "source": spec.source,
             "input_size": list(spec.input_size), "fixed_input": spec.fixed_input, "min_input": spec.min_input,
             "params": spec.params, "classifier": spec.classifier, "aliases": list(spec.aliases),
             "description": spec.description}
            for spec in registry.models().values()
        ]
    if "datasets" in kinds[what]:
        root_path = Path(root) if root else None
        output["datasets"] = [
            {"name": spec.name, "classes": len(spec.classes), "image_shape": list(spec.image_shape),
             "train_size": spec.train_size, "test_size": spec.test_size,
             "local": bool(spec.files) and is_present(spec.storage_name, spec.files, root_path),
             "description": spec.description}
            if spec.files else  # the folder dataset: everything depends on the folder
            {"name": spec.name, "classes": None, "image_shape": None, "train_size": None, "test_size": None,
             "local": None, "description": spec.description}
            for spec in registry.datasets().values()
        ]
    if json_output:
        print_json(output)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "architectures" in output:
        caption = ("+ : larger inputs too.  torchvision models also answer to tv:NAME; plain resnet18/34/50 are the "
                   "small-image versions, tv:resnet18/34/50 the ImageNet ones." +
                   ("" if wide else "  --wide: every column."))
        table = Table(title="architectures", title_justify="left", caption_justify="left", caption=caption)
        columns = ("name", "source", "input", "min input", "params (10 classes)", "description") if wide else (
            "name", "input", "params", "description")
        for column in columns:
            table.add_column(column, justify="right" if column.startswith(("params", "min")) else "left",
                             no_wrap=column != "description")
        for row in output["architectures"]:
            size = "x".join(map(str, row["input_size"])) + ("" if row["fixed_input"] else "+")
            minimum = size.rstrip("+") if row["fixed_input"] else (
                "any" if row["min_input"] <= 1 else f"{row['min_input']}x{row['min_input']}")
            params = f"{row['params']:,}" if row["params"] else "—"
            description = str(row["description"])
            if wide:
                table.add_row(str(row["name"]), str(row["source"]), size, minimum, params, description)
            else:
                table.add_row(str(row["name"]), size, params, short_description(description))
        console.print(table)
    if "datasets" in output:
        table = Table(title="datasets", title_justify="left")
        columns = ("name", "classes", "image", "train", "test", "local", "description") if wide else (
            "name", "classes", "image", "train / test", "local", "description")
        for column in columns:
            table.add_column(column, justify="right" if column in ("classes", "train", "test") else "left",
                             no_wrap=column != "description")
        for row in output["datasets"]:
            description = str(row["description"]) if wide else short_description(str(row["description"]), 24)
            if row["classes"] is None:
                cells = ["any", "any", "—", "—", "—"]
            else:
                cells = [str(row["classes"]), "x".join(map(str, row["image_shape"])), f"{row['train_size']:,}",
                         f"{row['test_size']:,}", "yes" if row["local"] else "no"]
            if not wide:
                cells[2:4] = [f"{cells[2]} / {cells[3]}" if cells[2] != "—" else "—"]
            table.add_row(str(row["name"]), *cells, description)
        console.print(table)


def short_description(text: str, limit: int = 32) -> str:
    """The head of a description: up to its first ':' or '(' ("classic LeNet-5: conv 6@5x5, ..." → "classic
    LeNet-5"), else its first ``limit`` characters at a word boundary."""
    for mark in (":", " (", ", "):
        head = text.split(mark)[0].strip()
        if len(head) <= limit:
            return head
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


@command()
def summary(
    target: Annotated[str, typer.Argument(help="architecture name or checkpoint (.safetensors or run folder)",
                                          autocompletion=complete_arch)],
    input_size: Annotated[str | None, typer.Option(
        help="CxHxW (3x224x224), or HxW (64x64) with the model's channels \\[default: the model's own]")] = None,
    num_classes: Annotated[int | None, typer.Option(min=1, help="classes \\[default: 10, or the checkpoint's]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per-layer table, parameter counts and MACs of an architecture or checkpoint."""
    from cnnctl.summary import summarize_target

    if num_classes is not None and num_classes < 1:
        raise UsageError("--num-classes must be at least 1")
    result = summarize_target(target, input_size, num_classes)
    if json_output:
        print_json(result.as_dict())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.arch}  input {'x'.join(map(str, result.input_shape))}, "
                        f"{result.num_classes} classes", title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    for row in result.layers:
        table.add_row(row.name, row.type, "x".join(map(str, row.output_shape)), f"{row.parameters:,}")
    console = Console()
    console.print(table)
    console.print(f"total parameters:         {result.total_parameters:,}\n"
                  f"trainable parameters:     {result.trainable_parameters:,}\n"
                  f"non-trainable parameters: {result.non_trainable_parameters:,}\n"
                  f"MACs:                     {result.macs:,} ({_scaled(result.macs)})\n"
                  f"parameter size:           {result.parameter_mb:.2f} MB", highlight=False)


def _scaled(count: int) -> str:
    """1814073344 → '1.814 G', 416520 → '0.417 M'."""
    return f"{count / 1e9:.3f} G" if count >= 1e9 else f"{count / 1e6:.3f} M"
