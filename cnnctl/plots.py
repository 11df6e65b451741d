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

from cnnctl.data.loader import Normalizer, fit_to_input
from cnnctl.engine.predict import decode_image, true_label
from cnnctl.errors import UsageError
from cnnctl.fsutil import atomic_path

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
        raise UsageError(missing.replace("plots skipped: ", "cannot draw plots: "))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
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
    panels[0].set_yscale("log")  # the late epochs' small improvements stay visible
    panels[0].set_title("loss (log scale)")
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
    """Counts per (true, predicted) pair, coloured by the share of their true class (row): the diagonal in blue
    on 0–100 %, the errors in red on a scale of their own (0 to the largest error share, square-root), so a
    class confused 5 % of the time stands out instead of fading to white beside a 95 % diagonal."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    matrix = np.asarray(confusion.cpu() if hasattr(confusion, "cpu") else confusion, dtype=np.int64)
    count = len(classes)
    size = min(14.0, max(5.0, 0.55 * count + 2.6))
    figure = _figure(size + 0.9, size * 0.9)
    axis = figure.subplots()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    on_diagonal = np.eye(count, dtype=bool)
    errors = np.ma.masked_where(on_diagonal | (matrix == 0), share)
    correct = np.ma.masked_where(~on_diagonal, share)
    largest_error = float(errors.max()) if errors.count() else 0.0
    axis.imshow(np.zeros_like(share), cmap="Greys", vmin=0, vmax=1)  # white behind the empty cells
    right = axis.imshow(correct, cmap="Blues", vmin=0, vmax=1)
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    beside = make_axes_locatable(axis)
    figure.colorbar(right, cax=beside.append_axes("right", size="3.5%", pad=0.15), format=_percent(),
                    label="correct, of the true class")
    if largest_error:  # a perfect matrix has no error scale to show
        wrong = axis.imshow(errors, cmap="Reds", norm=PowerNorm(0.5, vmin=0, vmax=largest_error))
        figure.colorbar(wrong, cax=beside.append_axes("right", size="3.5%", pad=0.95), format=_percent(),
                        label="errors, of the true class")
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
                    level = share[row, col] if row == col else (
                        (share[row, col] / largest_error) ** 0.5 if largest_error else 0.0)
                    axis.text(col, row, str(matrix[row, col]), ha="center", va="center",
                              fontsize=7 if count > 12 else 9, color="white" if level > 0.55 else "black")
    figure.tight_layout()
    return _save(figure, path)


def plot_predictions(images: torch.Tensor, predicted: Sequence[int], classes: Sequence[str], path: Path, *,
                     truth: Sequence[int | None] | None = None, probabilities: Sequence[float] | None = None,
                     title: str | None = None, count_wrong: bool = True,
                     names: Sequence[str] | None = None) -> Path:
    """A grid of uint8 N×C×H×W images titled with the predicted class (under its file name, with ``names``);
    with ``truth``, wrong ones are red and framed, and name the true class too (and ``count_wrong`` adds their
    number to the title)."""
    count = int(images.shape[0])
    columns = min(8, max(1, count))
    rows = max(1, math.ceil(count / columns))
    lines = 1 + (truth is not None) + (names is not None)
    width = columns * (1.75 if names is not None else 1.45)
    figure = _figure(width, rows * (1.3 + 0.3 * lines) + (0.4 if title else 0))
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
        if names is not None:
            text = f"{short_name(names[index])}\n{text}"
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
        import textwrap

        marked = f" — {wrong} wrong, in red" if truth is not None and count_wrong else ""
        lines = textwrap.wrap(title + marked, width=max(20, int(width / 0.085)))  # a 10-point character is ~0.085"
        figure.set_figheight(figure.get_figheight() + 0.2 * (len(lines) - 1))
        figure.suptitle("\n".join(lines), fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def short_name(name: str, width: int = 20) -> str:
    """A file name cut in the middle to fit a tile's title (the start and the extension stay readable)."""
    if len(name) <= width:
        return name
    tail = max(4, width // 3)
    return f"{name[:width - tail - 1]}…{name[-tail:]}"


def predictions_for(model: torch.nn.Module, images: torch.Tensor, preprocessing: Any, batch_size: int = 512,
                    ) -> tuple[list[int], list[float]]:
    """Predicted class and its probability for uint8 images already at the preprocessing's image size, a batch
    at a time (a whole split of large images would not fit in memory at once)."""
    import torch

    device = next(model.parameters()).device
    normalize = Normalizer(preprocessing.mean, preprocessing.std, device)
    was_training = model.training
    model.eval()
    labels: list[int] = []
    confidences: list[float] = []
    with torch.inference_mode():
        for start in range(0, int(images.shape[0]), batch_size):
            chunk = fit_to_input(images[start:start + batch_size], preprocessing).to(device)
            best = model(normalize(chunk)).float().softmax(dim=1).max(dim=1)
            labels += best.indices.cpu().tolist()
            confidences += best.values.cpu().tolist()
    model.train(was_training)
    return labels, confidences


def mistakes_first(predicted: Sequence[int], truth: Sequence[int | None] | None, confidence: Sequence[float],
                   limit: int, *, correct_share: float = 0.25) -> list[int]:
    """Indices to show: the wrong predictions (most confident first), then correct ones taken in turn from each
    class, so a grid shows the mistakes and every class rather than whatever came first. However many the
    mistakes, ``correct_share`` of the grid (at least one tile) is kept for correct predictions while there are
    any, so the grid also shows what the model gets right."""
    count = len(predicted)
    wrong = [i for i in range(count) if truth is not None and truth[i] is not None and truth[i] != predicted[i]]
    wrong.sort(key=lambda i: -confidence[i])
    right = count - len(wrong)
    kept_for_correct = min(right, max(1, round(limit * correct_share))) if wrong else right
    chosen = wrong[:max(0, limit - kept_for_correct)]
    taken = set(wrong)
    by_class: dict[int, list[int]] = {}
    for i in range(count):
        if i not in taken:
            key = truth[i] if truth is not None and truth[i] is not None else predicted[i]
            by_class.setdefault(key, []).append(i)
    queues = [by_class[key] for key in sorted(by_class)]
    depth = 0
    while len(chosen) < limit and any(depth < len(queue) for queue in queues):
        chosen += [queue[depth] for queue in queues if depth < len(queue)][:limit - len(chosen)]
        depth += 1
    return chosen


def evaluation_plots(out_dir: Path, model: torch.nn.Module, data: Any, preprocessing: Any, classes: Sequence[str],
                     confusion: Any, *, split: str = "test", grid: int = 32) -> list[Path]:
    """``confusion.png`` and ``predictions.png`` into ``out_dir``: the grid shows the split's wrong predictions
    first, then correct ones from every class."""
    out_dir = Path(out_dir)
    written = [plot_confusion(confusion, classes, out_dir / "confusion.png", title=f"{split} confusion matrix")]
    predicted, probabilities = predictions_for(model, data.images, preprocessing)
    truth = data.labels.tolist()
    chosen = mistakes_first(predicted, truth, probabilities, grid)
    wrong = sum(p != t for p, t in zip(predicted, truth))
    shown_wrong = sum(predicted[i] != truth[i] for i in chosen)
    title = (f"{split}: {wrong:,} of {len(truth):,} wrong; shown: {shown_wrong} wrong (red, most confident "
             f"first), then {len(chosen) - shown_wrong} correct")
    written.append(plot_predictions(data.images[chosen], [predicted[i] for i in chosen], classes,
                                    out_dir / "predictions.png", truth=[truth[i] for i in chosen],
                                    probabilities=[probabilities[i] for i in chosen], title=title, count_wrong=False))
    return written


def plot_file_predictions(predictions: Sequence[Any], meta: Any, path: str | Path, limit: int = 64, *,
                          max_pixels: int | None = None) -> Path:
    """``cnnctl predict --plot``: the first ``limit`` readable images in input order (the order of the CSV), each
    under its file name with its predicted class; an image in a folder named after a class (``digits/7/x.png``)
    counts that class as its true label, and a wrong prediction is red."""
    import torch

    require()
    readable = [p for p in predictions if not p.error]
    if not readable:
        raise UsageError("--plot: no image could be read, nothing to draw")
    index = {name: i for i, name in enumerate(meta.classes)}
    shown = readable[:limit]
    # an image answered "unknown" (predict --reject-below) is drawn so, neither right nor wrong
    truth = [None if getattr(p, "rejected", False) else true_label(p.path, index) for p in shown]
    known = any(t is not None for t in truth)
    images = torch.stack([decode_image(Path(p.path), meta.preprocessing, max_pixels=max_pixels) for p in shown])
    title = f"the first {len(shown)} of {len(readable):,} images, in input order"
    if known:
        wrong = sum(t is not None and t != p.label for t, p in zip(truth, shown))
        title += f"; {wrong} wrong, in red (true class from the folder name)"
    classes = [*meta.classes, "unknown"]
    labels = [len(meta.classes) if p.label is None else p.label for p in shown]
    return plot_predictions(images, labels, classes, Path(path),
                            truth=truth if known else None, probabilities=[p.probability for p in shown],
                            title=title, count_wrong=False, names=[Path(p.path).name for p in shown])
