"""``cnnctl list`` and ``cnnctl summary``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl import registry
from cnnctl.cli._common import command, complete_arch, print_json
from cnnctl.errors import UsageError
from cnnctl.recipe.options import choice_settings


@command("list")
def list_command(
    what: Annotated[str, typer.Argument(
        help="what to list (architectures also as archs or models); with --source timm: a name pattern",
        show_default=False, **choice_settings(lambda: ("all", "architectures", "datasets")))] = "all",
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    wide: Annotated[bool, typer.Option("--wide", "-w", help="every column and the long descriptions")] = False,
    root: Annotated[str | None, typer.Option(help="data folder to check for local copies \\[env: CNNCTL_DATA]")] = None,
    source: Annotated[str | None, typer.Option(
        help="timm: list timm's architectures (timm:NAME) matching the pattern, e.g. 'resnet*'")] = None,
) -> None:
    """List the registered architectures and datasets."""
    from pathlib import Path

    from cnnctl.data.download import is_present

    if source is not None:
        _list_timm(source, what, json_output)
        return

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
             "description": spec.description, **_imagenet_columns(spec.name)}
            for spec in registry.models().values()
            if spec.source != "timm"  # registered on use; `--source timm` lists them all, whatever this process used
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
        columns = ("name", "source", "input", "min input", "params (10 classes)", "ImageNet top-1", "description") \
            if wide else ("name", "input", "params", "top-1", "description")
        for column in columns:
            numeric = column.startswith(("params", "min", "Image", "top"))
            table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "description")
        for row in output["architectures"]:
            size = "x".join(map(str, row["input_size"])) + ("" if row["fixed_input"] else "+")
            minimum = size.rstrip("+") if row["fixed_input"] else (
                "any" if row["min_input"] <= 1 else f"{row['min_input']}x{row['min_input']}")
            params = f"{row['params']:,}" if row["params"] else "—"
            description = str(row["description"])
            top1 = f"{row['imagenet_top1']:.2f}%" if row.get("imagenet_top1") else "—"
            if wide:
                table.add_row(str(row["name"]), str(row["source"]), size, minimum, params, top1, description)
            else:
                table.add_row(str(row["name"]), size, params, top1, short_description(description))
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


def _imagenet_columns(name: str) -> dict[str, object]:
    """Which published ImageNet weights `--pretrained imagenet` loads for an architecture, and their top-1."""
    from cnnctl.models.torchvision_zoo import imagenet_default

    found = imagenet_default(name)
    return {"imagenet_weights": found[0] if found else None, "imagenet_top1": found[1] if found else None}


def _list_timm(source: str, pattern: str, json_output: bool) -> None:
    """`cnnctl list --source timm [PATTERN]`: timm's names (nothing is built) and their weights tags."""
    if source != "timm":
        raise registry.suggest(source, ["timm"], "--source")
    from cnnctl.models.timm_models import list_timm

    rows = list_timm("*" if pattern in ("all", "architectures", "archs", "models") else pattern)
    if json_output:
        print_json({"architectures": rows})
        return
    for row in rows:
        print(f"{row['name']}\t{','.join(row['pretrained']) or '-'}")


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
        print_json({**result.as_dict(), **_checkpoint_fields(target)})
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
                  f"parameter size:           {result.parameter_mb:.2f} MB (10^6 bytes)"
                  + (f"\nbuffers:                  {result.buffer_mb:.2f} MB (BatchNorm statistics and the like)"
                     if result.buffer_mb else ""), highlight=False)
    for line in _checkpoint_lines(target):
        console.print(line, highlight=False)


def _checkpoint_fields(target: str) -> dict[str, object]:
    """For a checkpoint: its preprocessing and the pretrained weights it started from (for --json)."""
    from pathlib import Path

    if not Path(target).exists():
        return {}
    from cnnctl.checkpoint import read_meta

    meta = read_meta(target)
    return {"pretrained_weights": meta.preprocessing.extra.get("weights") or (meta.config or {}).get("pretrained"),
            "preprocessing": meta.preprocessing.to_dict(), "pretrained": meta.pretrained}


def _checkpoint_lines(target: str) -> list[str]:
    """For a checkpoint: the pretrained weights it started from and the preprocessing it applies."""
    from pathlib import Path

    if not Path(target).exists():
        return []
    from cnnctl.checkpoint import read_meta

    meta = read_meta(target)
    prep = meta.preprocessing
    lines = []
    if prep.extra.get("weights"):
        lines.append(f"pretrained weights:       {prep.extra['weights']} ({prep.extra.get('weights_source', '?')})")
    elif (meta.config or {}).get("pretrained"):
        lines.append(f"pretrained weights:       {meta.config['pretrained']}")
    mapping = (meta.pretrained or {}).get("mapping") or {}
    if mapping:
        lines.append(f"pretrained tensors:       {len(mapping)} paired by order (their names differ from the "
                     "model's; the pairs are in the metadata's `pretrained.mapping`)")
    size = "x".join(map(str, prep.image_size))
    steps = f"resize {prep.resize} ({prep.interpolation}) → centre crop {size}" if prep.resize else f"resize to {size}"
    mean = ", ".join(f"{v:.3f}" for v in prep.mean)
    std = ", ".join(f"{v:.3f}" for v in prep.std)
    lines.append(f"preprocessing:            {steps}, mean ({mean}), std ({std})")
    return lines


def _scaled(count: int) -> str:
    """1814073344 → '1.814 G', 416520 → '0.417 M'."""
    return f"{count / 1e9:.3f} G" if count >= 1e9 else f"{count / 1e6:.3f} M"
