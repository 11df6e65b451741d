"""PNG plots of a run: learning curves, a confusion matrix and a grid of labelled predictions.

matplotlib is a dependency, but may be missing from a --no-deps install: then :func:`available` says why and
nothing is drawn. Figures are built with the object API on an Agg canvas — no pyplot, no global backend switch,
no window — and written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MISSING = "plots skipped: matplotlib is not installed (pip install matplotlib)"


def available() -> str | None:
    """None when plots can be drawn, else the one line that says why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    return None


def require() -> None:
    """Raise the one-line error when plots were asked for explicitly and cannot be drawn."""
    missing = available()
    if missing:
        from cnnctl.errors import UsageError

        raise UsageError(missing.replace("plots skipped: ", "cannot draw plots: "))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    from cnnctl.fsutil import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        figure.savefig(handle, format="png")
    return path


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss, accuracy (train and validation) and learning rate per epoch."""
    figure = _figure(13, 3.8)
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in history]
    panels = figure.subplots(1, 3)
    for axis in panels:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis, metric, title in ((panels[0], "loss", "loss"), (panels[1], "acc", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s-")):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(value is not None for value in values):
                axis.plot(epochs, [math.nan if v is None else v for v in values], style, label=split, markersize=3)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    panels[1].yaxis.set_major_formatter(_percent())
    lr_axis = panels[2]
    lr_axis.plot(epochs, [row.get("lr", math.nan) for row in history], "o-", markersize=3, label="epoch start")
    if any("lr_end" in row for row in history):
        lr_axis.plot(epochs, [row.get("lr_end", math.nan) for row in history], "x--", markersize=4,
                     label="epoch end")
    lr_axis.set_title("learning rate")
    lr_axis.set_xlabel("epoch")
    lr_axis.grid(alpha=0.3)
    lr_axis.legend()
    figure.tight_layout()
    return _save(figure, path)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def plot_confusion(confusion: Any, classes: Sequence[str], path: Path, title: str = "confusion matrix") -> Path:
    """Counts per (true, predicted) pair; cells coloured by the share of their true class (row)."""
    import numpy as np

    matrix = np.asarray(confusion.cpu() if hasattr(confusion, "cpu") else confusion, dtype=np.int64)
    count = len(classes)
    size = min(14.0, max(4.5, 0.55 * count + 2))
    figure = _figure(size, size * 0.9)
    axis = figure.subplots()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    labels = [name if len(name) <= 12 else name[:11] + "…" for name in classes]
    ticks = range(count)
    axis.set_xticks(list(ticks), labels, rotation=90 if count > 10 or max(map(len, labels), default=0) > 3 else 0)
    axis.set_yticks(list(ticks), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    total = int(matrix.sum())
    accuracy = float(np.trace(matrix)) / total if total else float("nan")
    axis.set_title(f"{title}: accuracy {accuracy:.2%} of {total:,}")
    if count <= 30:
        for row in range(count):
            for col in range(count):
                if matrix[row, col]:
                    axis.text(col, row, str(matrix[row, col]), ha="center", va="center",
                              fontsize=7 if count > 12 else 9, color="white" if share[row, col] > 0.5 else "black")
    figure.tight_layout()
    return _save(figure, path)


def plot_predictions(images: torch.Tensor, predicted: Sequence[int], classes: Sequence[str], path: Path, *,
                     truth: Sequence[int | None] | None = None, probabilities: Sequence[float] | None = None,
                     title: str | None = None) -> Path:
    """A grid of uint8 N×C×H×W images titled with the predicted class; with ``truth``, wrong ones are red and
    framed, and name the true class too."""
    count = int(images.shape[0])
    columns = min(8, max(1, count))
    rows = max(1, math.ceil(count / columns))
    figure = _figure(columns * 1.45, rows * 1.6 + (0.4 if title else 0))
    axes = figure.subplots(rows, columns, squeeze=False)
    wrong = 0
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.set_axis_off()
            continue
        image = images[index].detach().cpu()
        if image.shape[0] == 1:
            axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(image[:3].permute(1, 2, 0).numpy())
        label = classes[predicted[index]]
        text = label if probabilities is None else f"{label} {probabilities[index]:.0%}"
        true = truth[index] if truth is not None else None
        color = "black"
        if true is not None and true != predicted[index]:
            wrong += 1
            color = "red"
            text += f"\n(true {classes[true]})"
            for spine in axis.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
        axis.set_title(text, fontsize=8, color=color)
    if title:
        marked = f" — {wrong} wrong, in red" if truth is not None else ""
        figure.suptitle(title + marked, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def predictions_for(model: torch.nn.Module, images: torch.Tensor, preprocessing: Any,
                    ) -> tuple[list[int], list[float]]:
    """Predicted class and its probability for uint8 images already at the preprocessing's image size."""
    import torch

    from cnnctl.data.loader import Normalizer, fit_to_input

    device = next(model.parameters()).device
    inputs = Normalizer(preprocessing.mean, preprocessing.std, device)(fit_to_input(images, preprocessing).to(device))
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        probabilities = model(inputs).float().softmax(dim=1).cpu()
    model.train(was_training)
    best = probabilities.max(dim=1)
    return best.indices.tolist(), best.values.tolist()


def evaluation_plots(out_dir: Path, model: torch.nn.Module, data: Any, preprocessing: Any, classes: Sequence[str],
                     confusion: Any, *, split: str = "test", grid: int = 32) -> list[Path]:
    """``confusion.png`` and ``predictions.png`` (the first ``grid`` images of ``data``) into ``out_dir``."""
    out_dir = Path(out_dir)
    written = [plot_confusion(confusion, classes, out_dir / "confusion.png", title=f"{split} confusion matrix")]
    images = data.images[:grid]
    predicted, probabilities = predictions_for(model, images, preprocessing)
    truth = data.labels[:grid].tolist()
    written.append(plot_predictions(images, predicted, classes, out_dir / "predictions.png", truth=truth,
                                    probabilities=probabilities, title=f"first {len(predicted)} {split} images"))
    return written


def plot_file_predictions(predictions: Sequence[Any], meta: Any, path: str | Path, limit: int = 64, *,
                          max_pixels: int | None = None) -> Path:
    """``cnnctl predict --plot``: the first ``limit`` readable images with their predicted class; an image in a
    folder named after a class (``digits/7/x.png``) counts that class as its true label."""
    import torch

    from cnnctl.engine.predict import decode_image

    require()
    chosen = [p for p in predictions if not p.error][:limit]
    if not chosen:
        from cnnctl.errors import UsageError

        raise UsageError("--plot: no image could be read, nothing to draw")
    index = {name: i for i, name in enumerate(meta.classes)}
    images = torch.stack([decode_image(Path(p.path), meta.preprocessing, max_pixels=max_pixels) for p in chosen])
    truth = [index.get(Path(p.path).parent.name) for p in chosen]
    return plot_predictions(images, [p.label for p in chosen], meta.classes, Path(path),
                            truth=truth if any(t is not None for t in truth) else None,
                            probabilities=[p.probability for p in chosen], title=f"{len(chosen)} predictions")
