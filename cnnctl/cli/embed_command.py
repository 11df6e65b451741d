"""``cnnctl embed``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnctl.cli._common import command, stderr_line
from cnnctl.errors import DataError
from cnnctl.fsutil import displayable, require_writable_file
from cnnctl.progress import counting
from cnnctl.recipe.options import OPTION_BY_NAME


@command()
def embed(
    source: Annotated[str, typer.Argument(
        metavar="CKPT_OR_ARCH", help="a checkpoint or run folder, or an architecture with --pretrained",
        show_default=False)],
    paths: Annotated[list[str], typer.Argument(
        metavar="DATA", help="a folder of class folders (labels from their names), a folder of images, or image "
                             "files", show_default=False)],
    output: Annotated[str, typer.Option(
        "--output", "-o", help="features file: .npz (NumPy) or .parquet (pyarrow, `pip install "
                               "'cnnctl[parquet]'`)")] = "embeddings.npz",
    pretrained: Annotated[str | None, typer.Option(
        help="with an architecture: imagenet (its published or installed ImageNet weights), a weights name, or "
             "a .safetensors / .pth file; the preprocessing is the published weights'", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per batch")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    max_pixels: Annotated[int | None, typer.Option(
        min=1, help="refuse images with more pixels (read from the header) \\[default: 89,478,485]")] = None,
    offline: Annotated[bool, typer.Option("--offline", help=OPTION_BY_NAME["offline"].help)] = False,
    weights_mirror: Annotated[str | None, typer.Option(help=OPTION_BY_NAME["weights_mirror"].help,
                                                       show_default=False)] = None,
) -> None:
    """Write the L2-normalised penultimate features of images, with their paths and labels.

    The features are what the classifier sees, computed with the weights' own preprocessing. Rows follow the
    image paths (sorted); labels come from a dataset (class folders, a label file, a table or tar shards, as
    train --data reads them). Read with numpy.load or pyarrow.parquet.read_table."""
    import os

    from cnnctl.engine.embed import (
        Embeddings,
        check_output,
        embed_files,
        labelled_images,
        open_backbone,
        write_embeddings,
    )

    if offline:
        os.environ["CNNCTL_OFFLINE"] = "1"
    check_output(output)  # the format and its library, before any work
    require_writable_file(output, option="--output")
    files, labels, classes = labelled_images(paths, stderr_line)
    if not files:
        raise DataError(f"no image files found in {', '.join(displayable(p) for p in paths)}",
                        hint="pass image files, a folder of images, or a folder of class folders")
    backbone = open_backbone(source, pretrained, device=device, offline=offline, weights_mirror=weights_mirror,
                             log=stderr_line)
    started = time.perf_counter()
    with counting(len(files), "embedding") as bar:
        features, kept, failures = embed_files(backbone, files, batch_size=batch_size, max_pixels=max_pixels,
                                               advance=bar.advance)
    seconds = time.perf_counter() - started
    result = Embeddings(features.numpy(), [str(files[i]) for i in kept],
                        None if labels is None else [labels[i] for i in kept], classes, failures)
    write_embeddings(result, output, backbone=backbone)
    for failure in failures[:5]:
        stderr_line(f"  could not read {displayable(failure)}")
    labelled = f", {len(classes)} classes" if labels is not None else ""
    stderr_line(f"wrote {output}: {features.shape[0]:,} images × {features.shape[1]:,} features{labelled} "
                f"({backbone.arch}, {seconds:.1f}s)" + (f"; {len(failures)} unreadable" if failures else ""))
