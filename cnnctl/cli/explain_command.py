"""``cnnctl explain``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import command, print_json, stderr_line
from cnnctl.registry import suggest


@command()
def explain(
    checkpoint_path: Annotated[str, typer.Argument(metavar="CHECKPOINT", help=".safetensors file or run folder")],
    paths: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="image files or folders")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="DIR",
                                        help="folder for the PNGs (one per image)")] = "explanations",
    method: Annotated[str, typer.Option(help="gradcam, gradcam++ or integrated-gradients")] = "gradcam",
    layer: Annotated[str | None, typer.Option(
        metavar="NAME", help="module to explain at (gradcam, gradcam++) \\[default: the last convolutional "
                             "block]")] = None,
    target: Annotated[str | None, typer.Option(
        metavar="CLASS", help="class to explain, by name or index \\[default: each image's prediction]")] = None,
    topk: Annotated[int, typer.Option(min=1, help="top predictions shown beside the map")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Heat maps of where the model finds its evidence (Captum: pip install 'cnnctl\\[explain]'): one PNG per
    image, with the map over the image and the top-k predictions."""
    from cnnctl.engine.heatmaps import METHODS
    from cnnctl.engine.heatmaps import explain as explain_images

    if method not in METHODS:
        raise suggest(method, list(METHODS), "--method")
    explanations = explain_images(checkpoint_path, paths, method=method, layer=layer, target=target,
                                  output=output, topk=topk, device=device)
    layers = {item.layer for item in explanations if item.layer}
    if layers and not json_output:
        stderr_line(f"{method} at layer {', '.join(sorted(layers))}" + ("" if layer else " (chosen automatically; "
                                                                         "--layer NAME to change)"))
    if json_output:
        print_json([{"image": item.source, "output": str(item.output), "method": item.method, "layer": item.layer,
                     "target": item.target_name,
                     "topk": [{"class": name, "probability": p} for _, name, p in item.topk]}
                    for item in explanations])
        return
    for item in explanations:
        best = item.topk[0]
        print(f"{item.source}: {best[1]} {best[2]:.1%} → {item.output}")
