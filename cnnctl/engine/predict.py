"""Prediction on image files: decode (torchvision.io), fit to the checkpoint's preprocessing, batch, classify."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import checkpoint
from cnnctl.data.image_stats import InputCheck
from cnnctl.data.images import ResizeTarget, decode_to_target, read_file_bytes, read_item_bytes
from cnnctl.data.loader import Normalizer
from cnnctl.engine.calibration import UNKNOWN, stored_temperature, stored_threshold
from cnnctl.engine.device import resolve_device
from cnnctl.engine.multilabel import (  # noqa: F401 - part of this module's API (predict --thresholds)
    STORED,
    parse_label_count,
    parse_thresholds,
)
from cnnctl.engine.multilabel_metrics import decisions
from cnnctl.engine.tta import check_tta, tta_probabilities
from cnnctl.errors import CnnctlError, DataError, UsageError
from cnnctl.filekind import IMAGE_SUFFIXES
from cnnctl.fsutil import displayable

if TYPE_CHECKING:
    import torch

    from cnnctl.checkpoint import CheckpointMeta
    from cnnctl.data.base import Preprocessing


@dataclass
class Prediction:
    path: str
    label: int | None = None
    class_name: str | None = None
    probability: float | None = None
    topk: list[tuple[int, str, float]] = field(default_factory=list)
    error: str | None = None
    rejected: bool = False  # the top probability is below the threshold: class_name is "unknown", label None
    labels: list[str] | None = None  # multi-label: every class at or above its threshold
    probabilities: dict[str, float] | None = None  # multi-label: every class's probability

    def as_dict(self, multilabel: bool | None = None) -> dict[str, Any]:
        """The JSON ``predict --json`` writes for this image: multi-label predictions list their labels and every
        class's probability instead of one class and the top-k (``multilabel`` None: when it has probabilities)."""
        if not (self.probabilities is not None if multilabel is None else multilabel):
            return {key: value for key, value in self.__dict__.items() if key not in ("labels", "probabilities")}
        return {"path": self.path, "labels": self.labels, "probabilities": self.probabilities, "error": self.error}


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], int]:
    """Expand folders (recursively, sorted) into image files. Hidden files and non-image files inside folders
    are skipped and counted; a file named explicitly is always kept (and fails later if it is not an image)."""
    found: list[Path] = []
    skipped = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    candidate = Path(root) / name
                    if not name.startswith(".") and candidate.suffix.lower() in IMAGE_SUFFIXES:
                        found.append(candidate)
                    else:
                        skipped += 1
        elif path.exists():  # a FIFO or device named explicitly becomes an error row, unread
            found.append(path)
        else:
            raise CnnctlError(f"{path} does not exist", hint="pass image files or folders of images")
    return found, skipped


def decode_image(path: Path, preprocessing: Preprocessing, *, max_pixels: int | None = None) -> torch.Tensor:
    """Read one image as uint8 C×H×W with the checkpoint's channel count and size (not yet padded): resized,
    or resized and centre-cropped when the checkpoint's preprocessing has a ``resize`` (pretrained weights)."""
    return decode_bytes(read_file_bytes(path), path, preprocessing, max_pixels=max_pixels)


def decode_bytes(data: bytes, path: Path, preprocessing: Preprocessing, *, max_pixels: int | None = None
                 ) -> torch.Tensor:
    """:func:`decode_image` for a file already read. A large JPEG is decoded at reduced size, never smaller than
    the resize needs (data/images.py, ``REDUCED_JPEG_DECODE``)."""
    height, width = preprocessing.image_size
    target = ResizeTarget((height, width), preprocessing.resize, preprocessing.interpolation)
    return decode_to_target(data, path, target, 1 if preprocessing.channels == 1 else 3, max_pixels=max_pixels)


def model_with_meta(model_or_path: Any, device: str, caller: str) -> tuple[torch.nn.Module, Any]:
    """A model from :func:`load_for_inference` (loaded here when given a checkpoint path) and its metadata."""
    import os

    model = load_for_inference(model_or_path, device=device)[0] if isinstance(model_or_path, (str, os.PathLike)) \
        else model_or_path
    meta = getattr(model, "cnnctl_meta", None)
    if meta is None:
        raise CnnctlError(f"{caller} needs a model from cnnctl.load() or a checkpoint path",
                          hint=f"got {type(model).__name__}")
    return model, meta


def load_for_inference(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Preprocessing]:
    model, meta = checkpoint.load(path, device=resolve_device(device))
    model.cnnctl_meta = meta  # type: ignore[attr-defined]
    return model, meta.preprocessing


# Below this encoded size a file decodes (≈15 µs for an MNIST PNG) faster inline than a thread hand-off costs:
# measured on 10,000 MNIST PNGs, a thread pool *halved* decode throughput (GIL hand-offs), so only big files,
# whose decode time dwarfs the hand-off, go to the pool.
PARALLEL_DECODE_BYTES = 32 * 1024
# At most this many input values per batch (256 MB as float32): large inputs get smaller batches.
MAX_BATCH_VALUES = 2**26


class Predictor:
    """Batched inference for one checkpoint.

    Files are read in order; small ones are decoded inline, large ones in a thread pool one batch ahead, so their
    decoding overlaps the model's work on the previous batch. ``timings`` adds up where the time went.
    """

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, *, batch_size: int = 256, topk: int = 5,
                 workers: int | None = None, max_pixels: int | None = None, tta: str = "none",
                 reject_below: float | None = None, thresholds: Sequence[float] | None = None,
                 label_count: tuple[int, int] | None | str = STORED):
        import torch

        self.model = model.eval()
        self.meta = meta
        self.preprocessing = meta.preprocessing
        self.device = next(model.parameters()).device
        channels, height, width = self.preprocessing.input_shape
        self.batch_size = max(1, min(batch_size, MAX_BATCH_VALUES // (channels * height * width)))
        self.topk = max(1, min(topk, meta.num_classes))
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.normalize = Normalizer(self.preprocessing.mean, self.preprocessing.std, self.device)
        self.timings = {"decode_s": 0.0, "inference_s": 0.0}
        self.max_pixels = max_pixels  # images with more pixels are refused from their header (data/images.py)
        self.tta = check_tta(tta)  # test-time augmentation (cnnctl/engine/tta.py)
        self.multilabel = bool(getattr(meta, "multilabel", False))  # a sigmoid per class, labels at thresholds
        self.thresholds = list(thresholds) if thresholds is not None else (
            meta.resolved_thresholds if self.multilabel else None)
        self.label_count = (getattr(meta, "label_count_range", None) if label_count == STORED
                            else label_count)  # (fewest, most) labels per image, or None: any number
        # images unlike the training images: input_warning(); a model without a training run has no statistics
        self.input_check = InputCheck(getattr(meta, "image_stats", None))
        # `cnnctl calibrate`: logits are divided by the stored temperature; an image whose top probability is
        # below the threshold (--reject-below, else the stored one) is answered "unknown"
        self.temperature = stored_temperature(meta)
        self.reject_below = check_reject_below(reject_below) if reject_below is not None else stored_threshold(meta)
        if self.multilabel and reject_below is not None:
            raise UsageError("--reject-below answers 'unknown' below one class's probability; it does not apply to "
                             "multi-label checkpoints", hint="raise --thresholds instead")
        self._torch = torch

    def model_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at ``image_size`` → the normalised, padded batch the model takes."""
        import torch.nn.functional as F

        images = images.to(self.device)
        pad = self.preprocessing.pad
        if pad:
            images = F.pad(images, (pad, pad, pad, pad), value=0)
        return self.normalize(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at ``image_size`` → logits."""
        with self._torch.inference_mode():
            return self.model(self.model_inputs(images)).float() / self.temperature

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at ``image_size`` → class probabilities (multi-label: each class's sigmoid), averaged
        over the ``tta`` views."""
        with self._torch.inference_mode():
            return tta_probabilities(self.scaled_model, self.model_inputs(images), self.tta,
                                     multilabel=self.multilabel)

    def scaled_model(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits divided by the calibration temperature."""
        logits = self.model(inputs)
        return logits if self.temperature == 1.0 else logits.float() / self.temperature

    def rejects(self, probability: float) -> bool:
        return self.reject_below is not None and probability < self.reject_below

    def predict_tensor(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class indices N, probabilities N×classes); multi-label: (bool N×classes, the labels given at the
        thresholds, probabilities N×classes)."""
        probabilities = self.probabilities(images).cpu()
        if self.multilabel:
            return decisions(probabilities, self.thresholds, self.label_count), probabilities
        return probabilities.argmax(dim=1), probabilities

    def _safe_decode(self, data: bytes, path: Path) -> torch.Tensor | str:
        """A decoded image, or the one-line reason it could not be read (so one bad file does not stop a run)."""
        try:
            return decode_bytes(data, path, self.preprocessing, max_pixels=self.max_pixels)
        except DataError as error:
            return str(error)

    def _start_decoding(self, chunk: Sequence[Path], pool: ThreadPoolExecutor) -> list[Any]:
        """Decode small files now and hand large ones to ``pool``; returns images, error strings or futures."""
        started = time.perf_counter()
        pending: list[Any] = []
        for path in chunk:
            try:
                data = read_item_bytes(path)  # regular files only, bounded: a FIFO or /dev/zero is an error row
            except DataError as error:
                pending.append(str(error))
                continue
            if len(data) >= PARALLEL_DECODE_BYTES:
                pending.append(pool.submit(self._safe_decode, data, path))
            else:
                pending.append(self._safe_decode(data, path))
        self.timings["decode_s"] += time.perf_counter() - started
        return pending

    def _finish_decoding(self, pending: list[Any]) -> list[torch.Tensor | str]:
        started = time.perf_counter()
        decoded = [item.result() if isinstance(item, Future) else item for item in pending]
        self.timings["decode_s"] += time.perf_counter() - started
        return decoded

    @staticmethod
    def import_decoders() -> None:
        """Import the image decoders (~1 s the first time), so that callers can keep it out of their timing."""
        import torchvision.io  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401

    def decoded_batches(self, files: Sequence[Path]) -> Iterator[tuple[Sequence[Path], list[torch.Tensor | str]]]:
        """``(paths, images or error strings)`` per batch, decoding the next batch while the caller works."""
        self.import_decoders()  # kept out of the decode timing
        with ThreadPoolExecutor(self.workers) as pool:
            previous: tuple[Sequence[Path], list[Any]] | None = None
            for start in range(0, len(files), self.batch_size):
                chunk = files[start:start + self.batch_size]
                current = (chunk, self._start_decoding(chunk, pool))
                if previous is not None:
                    yield previous[0], self._finish_decoding(previous[1])
                previous = current
            if previous is not None:
                yield previous[0], self._finish_decoding(previous[1])

    def input_warning(self) -> str | None:
        """One line when the images predicted so far differ clearly from the training images (inverted
        colours, brightness far outside their range), saying what the model expects."""
        return self.input_check.warning()

    def classify(self, names: Sequence[str], batch: torch.Tensor) -> list[Prediction]:
        """One :class:`Prediction` per image of ``batch`` (uint8 N×C×H×W at ``image_size``), ``names`` giving
        their ``path`` field. ``predict_files`` and the HTTP server (cnnctl/serve/) both call it, so a file gives
        the same row on both."""
        classes = self.meta.classes
        started = time.perf_counter()
        given, probabilities = self.predict_tensor(batch)
        if self.multilabel:  # every label at or above its threshold, every label's probability
            self.timings["inference_s"] += time.perf_counter() - started
            return [self._multilabel_prediction(name, row, p) for name, row, p in zip(names, given, probabilities)]
        top_p, top_i = probabilities.topk(self.topk, dim=1)
        # one conversion per batch: indexing tensors element by element costs more than the model
        top_p_rows, top_i_rows = top_p.tolist(), top_i.tolist()
        self.timings["inference_s"] += time.perf_counter() - started
        results = []
        for name, p_row, i_row in zip(names, top_p_rows, top_i_rows):
            ranked = [(c, classes[c], p) for p, c in zip(p_row, i_row)]
            label, class_name, probability = ranked[0]
            if self.rejects(probability):
                results.append(Prediction(name, None, UNKNOWN, probability, ranked, rejected=True))
            else:
                results.append(Prediction(name, label, class_name, probability, ranked))
        return results

    def predict_files(self, files: Sequence[Path]) -> Iterator[Prediction]:
        for chunk, decoded in self.decoded_batches(files):
            good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
            results: list[Prediction | None] = [None] * len(chunk)
            if good:
                batch = self._torch.stack([decoded[i] for i in good])  # type: ignore[misc]
                self.input_check.add(batch)
                for i, prediction in zip(good, self.classify([str(chunk[i]) for i in good], batch)):
                    results[i] = prediction
            for i, item in enumerate(decoded):
                if isinstance(item, str):
                    results[i] = Prediction(str(chunk[i]), error=item)
            yield from results  # type: ignore[misc]

    def _multilabel_prediction(self, path: str, given: torch.Tensor, probabilities: torch.Tensor) -> Prediction:
        classes = self.meta.classes
        values = probabilities.tolist()
        best = max(range(len(values)), key=values.__getitem__)
        labels = [classes[c] for c in given.nonzero().flatten().tolist()]
        return Prediction(path, best, classes[best], values[best], labels=labels,
                          probabilities={name: value for name, value in zip(classes, values)})


def check_reject_below(value: float) -> float:
    if not 0 <= value <= 1:
        raise CnnctlError(f"--reject-below must be a probability from 0 to 1, got {value:g}",
                          hint="0 answers every image (no rejection)")
    return float(value)


def predict_api(model_or_path: Any, images: Any, *, device: str = "cpu", tta: str = "none", batch_size: int = 256,
                max_pixels: int | None = None, reject_below: float | None = None, thresholds: Any = None,
                label_count: str | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cnnctl.predict``: labels (int64 N) and class probabilities (N×classes) for files, folders or a uint8
    N×C×H×W tensor already at the checkpoint's image size; ``tta``: none, flip, crop or flip-crop (engine/tta.py).
    Probabilities are divided by the checkpoint's calibration temperature; an image whose top probability is below
    ``reject_below`` (default: the checkpoint's stored threshold, if any) gets label -1 ("unknown"). A multi-label
    checkpoint gives (bool N×classes: the labels at its thresholds, or at ``thresholds``, within its label count,
    or ``label_count`` (any, N or MIN-MAX), and each class's sigmoid probability)."""
    import torch

    model, meta = model_with_meta(model_or_path, device, "cnnctl.predict")
    given = parse_thresholds(thresholds, meta.classes, task=getattr(meta, "task", None), option="thresholds")
    predictor = Predictor(model, meta, batch_size=batch_size, max_pixels=max_pixels, tta=tta,
                          reject_below=reject_below, thresholds=given,
                          label_count=parse_label_count(label_count, meta, option="label_count"))
    if not isinstance(images, torch.Tensor):
        files, _ = find_images([images] if isinstance(images, (str, Path)) else images)
        if not files:
            raise DataError("no images to predict")
        decoded = [image for _, images in predictor.decoded_batches(files) for image in images]
        errors = [item for item in decoded if isinstance(item, str)]
        if errors:
            raise DataError(errors[0])
        images = torch.stack(decoded)
    predictor.input_check.add(images)
    warning = predictor.input_warning()
    if warning:  # the command line prints it; here it is a Python warning, once per call
        import warnings

        warnings.warn(warning.removeprefix("warning: "), UserWarning, stacklevel=3)
    labels, probabilities = predictor.predict_tensor(images)
    if predictor.reject_below is not None and not predictor.multilabel:
        labels = torch.where(probabilities.max(dim=1).values < predictor.reject_below, -1, labels)
    return labels, probabilities


# ---------------------------------------------------------------------------------------------------- output

CSV_COLUMNS = ("path", "label", "class", "probability", "topk", "error")
MULTILABEL_CSV_COLUMNS = ("path", "labels", "probabilities", "error")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(cell: str) -> str:
    """Prefix a text cell that a spreadsheet would take for a formula with ``'``, as OWASP advises."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def topk_cell(ranked: Sequence[tuple[int, str, float]]) -> str:
    """``name:probability`` pairs joined by ``;``. In names ``%``, ``;`` and ``:`` are written ``%25``, ``%3B``
    and ``%3A`` (URL encoding), so ``cell.split(";")`` then ``split(":")`` always finds the pairs and
    ``urllib.parse.unquote`` gives the names back."""
    def quoted(name: str) -> str:
        return name.replace("%", "%25").replace(";", "%3B").replace(":", "%3A")

    return ";".join(f"{quoted(name)}:{probability:.4f}" for _, name, probability in ranked)


def displayable_prediction(p: Prediction) -> Prediction:
    """``p`` with file and class names that are not valid UTF-8 written with ``\\xNN`` escapes (printable,
    writable as UTF-8, and still naming the file)."""
    return Prediction(displayable(p.path), p.label, None if p.class_name is None else displayable(p.class_name),
                      p.probability, [(c, displayable(name), prob) for c, name, prob in p.topk],
                      None if p.error is None else displayable(p.error), p.rejected,
                      None if p.labels is None else [displayable(name) for name in p.labels],
                      None if p.probabilities is None else {displayable(name): value
                                                            for name, value in p.probabilities.items()})


def multilabel_csv(predictions: Iterable[Prediction]) -> str:
    """The CSV ``cnnctl predict`` writes for a multi-label checkpoint: path, the labels given (``a|b``, as a label
    file writes them), every class's probability (``name:p;...``, as the top-k cell) and the error."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MULTILABEL_CSV_COLUMNS)
    for p in map(displayable_prediction, predictions):
        scores = [(0, name, value) for name, value in (p.probabilities or {}).items()]
        writer.writerow([neutralise_formula(cell) for cell in (p.path, "|".join(p.labels or []), topk_cell(scores),
                                                              p.error or "")])
    return buffer.getvalue()


def predictions_csv(predictions: Iterable[Prediction], multilabel: bool = False) -> str:
    """The CSV ``cnnctl predict`` writes: one row per file, text cells safe to open in a spreadsheet, names
    escaped as in :func:`displayable_prediction` (``multilabel``: :func:`multilabel_csv`)."""
    import csv
    import io

    if multilabel:
        return multilabel_csv(predictions)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for p in map(displayable_prediction, predictions):
        probability = "" if p.probability is None else f"{p.probability:.6f}"
        label = "" if p.label is None else str(p.label)
        path, name, top, error = (neutralise_formula(cell)
                                  for cell in (p.path, p.class_name or "", topk_cell(p.topk), p.error or ""))
        writer.writerow([path, label, name, probability, top, error])
    return buffer.getvalue()


def predictions_json(predictions: Iterable[Prediction], multilabel: bool = False) -> str:
    """The JSON ``cnnctl predict --json`` writes: a list of the predictions' fields, names escaped as in CSV."""
    import json

    return json.dumps([displayable_prediction(p).as_dict(multilabel) for p in predictions], indent=2) + "\n"


def true_label(path: str | Path, class_index: dict[str, int]) -> int | None:
    """The class an image's folder names (``digits/7/x.png`` → class ``7``), or None."""
    return class_index.get(Path(path).parent.name)


def folder_accuracy(predictions: Sequence[Prediction], classes: Sequence[str]) -> tuple[int, int] | None:
    """(correct, counted) over the readable images whose folder names a class; None when none does."""
    index = {name: i for i, name in enumerate(classes)}
    pairs = [(p.label, true_label(p.path, index)) for p in predictions if not p.error and not p.rejected]
    known = [(label, truth) for label, truth in pairs if truth is not None]
    if not known:
        return None
    return sum(label == truth for label, truth in known), len(known)
