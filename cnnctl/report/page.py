"""The evaluation report as one self-contained HTML page: figures drawn with matplotlib, images inlined as PNG data
URIs, a Jinja2 template, no JavaScript and nothing fetched from the network, so it opens from disk anywhere."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.fsutil import atomic_write_text
from cnnctl.plots import _figure

if TYPE_CHECKING:
    import torch

THUMBNAIL_SIDE = 96  # larger images are shrunk to this for the page; small ones (MNIST, CIFAR) stay as they are
TEMPLATE = "template.html.j2"


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_uri(image: torch.Tensor) -> str:
    """A uint8 C×H×W image as a PNG data URI, shrunk to at most :data:`THUMBNAIL_SIDE` pixels a side."""
    from torchvision.io import encode_png

    image = image.detach().cpu()
    height, width = image.shape[-2:]
    if max(height, width) > THUMBNAIL_SIDE:
        from torchvision.transforms.v2 import functional as TF

        scale = THUMBNAIL_SIDE / max(height, width)
        image = TF.resize(image, [max(1, round(height * scale)), max(1, round(width * scale))], antialias=True)
    if image.shape[0] not in (1, 3):
        image = image[:3] if image.shape[0] > 3 else image[:1]
    return png_uri(bytes(encode_png(image.contiguous()).numpy()))


def figure_uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return png_uri(buffer.getvalue())


def _tick_labels(classes: Sequence[str]) -> list[str]:
    return [name if len(name) <= 12 else name[:11] + "…" for name in classes]


def confusion_figure(confusion: Any, classes: Sequence[str]) -> Any:
    """Two panels: the counts (coloured on a log scale, so single errors show) and the row-normalised shares."""
    import numpy as np
    from matplotlib.colors import LogNorm

    matrix = np.asarray(confusion, dtype=np.int64)
    count = len(classes)
    side = min(11.0, max(4.2, 0.45 * count + 2.2))
    figure = _figure(2 * side + 1, side)
    axes = figure.subplots(1, 2)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    panels = (
        (axes[0], np.where(matrix > 0, matrix, np.nan), "counts", LogNorm(vmin=1, vmax=max(2, matrix.max())),
         lambda r, c: str(matrix[r, c]) if matrix[r, c] else ""),
        (axes[1], share, "row-normalised (share of the true class)", None,
         lambda r, c: f"{share[r, c]:.0%}" if share[r, c] >= 0.005 else ""),
    )
    labels = _tick_labels(classes)
    rotate = 90 if count > 10 or max(map(len, labels), default=0) > 3 else 0
    for axis, values, title, norm, text in panels:
        image = axis.imshow(values, cmap="Blues", norm=norm, vmin=None if norm else 0, vmax=None if norm else 1)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        fontsize = 10 if count <= 20 else 7 if count <= 50 else 4
        axis.set_xticks(range(count), labels, rotation=rotate, fontsize=fontsize)
        axis.set_yticks(range(count), labels, fontsize=fontsize)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
        if count <= 20:
            for row in range(count):
                for col in range(count):
                    label = text(row, col)
                    if label:
                        dark = share[row, col] > 0.5
                        axis.text(col, row, label, ha="center", va="center", fontsize=7 if count > 12 else 8,
                                  color="white" if dark else "black")
    figure.tight_layout()
    return figure


def reliability_figure(calibration: dict[str, Any]) -> Any:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many images fall
    in each bin."""
    figure = _figure(6.4, 6.4)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = calibration["bins"]
    width = 1.0 / calibration["num_bins"]
    filled = [row for row in bins if row["count"]]
    centres = [row["lower"] + width / 2 for row in filled]
    top.bar(centres, [row["accuracy"] for row in filled], width=width, color="#4c78a8", edgecolor="white",
            label="accuracy")
    top.bar(centres, [row["confidence"] - row["accuracy"] for row in filled], width=width,
            bottom=[row["accuracy"] for row in filled], color="#e45756", alpha=0.35, edgecolor="#b3261e",
            label="gap to the mean confidence")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    figure.suptitle(f"reliability: ECE {calibration['ece']:.4f} ({calibration['num_bins']} bins)", fontsize=11)
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    top.grid(alpha=0.3)
    bottom.bar([row["lower"] + width / 2 for row in bins], [row["count"] for row in bins], width=width,
               color="#72b7b2", edgecolor="white")
    if any(row["count"] for row in bins):
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _sample(index: int, data: Any, outputs: Any, classes: Sequence[str], **extra: Any) -> dict[str, Any]:
    """What a thumbnail in the page shows about one image."""
    true = int(outputs.labels[index])
    predicted = int(outputs.predicted[index])
    probabilities = outputs.probabilities[index]
    sample = {
        "index": index,
        "uri": image_uri(data.images[index]),
        "true": classes[true],
        "predicted": classes[predicted],
        "p_true": float(probabilities[true]),
        "p_predicted": float(probabilities[predicted]),
        "loss": float(outputs.losses[index]),
        "wrong": true != predicted,
        "name": Path(data.paths[index]).name if data.paths else f"#{index}",
        "path": data.paths[index] if data.paths else None,
    }
    sample.update(extra)
    return sample


def percent(value: float | None, digits: int = 2) -> str:
    """``98.67%``; a probability that would round to zero says how small it is (``<0.1%``), not ``0.0%``."""
    if value is None or math.isnan(value):
        return "—"
    smallest = 10.0 ** -digits / 100
    if 0 < value < smallest / 2:
        return f"<{smallest:.{digits}%}"
    return f"{value:.{digits}%}"


def render(report: dict[str, Any], data: Any, outputs: Any, classes: Sequence[str]) -> str:
    """The page's HTML for ``report`` (the contents of report.json)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["percent"] = percent
    confusion = report["confusion"]
    losses = [_sample(row["index"], data, outputs, classes) for row in report["top_losses"]]
    pairs = [dict(pair, examples=[_sample(i, data, outputs, classes) for i in pair["examples"]])
             for pair in report["confused_pairs"]]
    issues = None
    if report.get("label_issues") is not None:
        issues = [_sample(row["index"], data, outputs, classes, quality=row["quality"])
                  for row in report["label_issues"][:report["label_issues_shown"]]]
    return environment.get_template(TEMPLATE).render(
        report=report,
        classes=list(classes),
        confusion=confusion,
        confusion_uri=figure_uri(confusion_figure(confusion, classes)),
        reliability_uri=figure_uri(reliability_figure(report["calibration"])),
        losses=losses,
        pairs=pairs,
        issues=issues,
    )


def write_page(directory: str | Path, report: dict[str, Any], data: Any, outputs: Any,
               classes: Sequence[str]) -> Path:
    """``DIR/index.html`` (atomically)."""
    path = Path(directory) / "index.html"
    atomic_write_text(path, render(report, data, outputs, classes))
    return path
