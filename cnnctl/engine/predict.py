"""Prediction on image files: decode (torchvision.io), fit to the checkpoint's preprocessing, batch, classify."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.images import IMAGE_SUFFIXES
from cnnctl.errors import CnnctlError, DataError

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
        elif path.is_file():
            found.append(path)
        else:
            raise CnnctlError(f"{path} does not exist", hint="pass image files or folders of images")
    return found, skipped


def decode_image(path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    """Read one image as uint8 C×H×W with the checkpoint's channel count and size (not yet padded)."""
    from cnnctl.data.images import read_image, resize_to

    size = tuple(preprocessing.image_size)
    image = read_image(path, channels=1 if preprocessing.channels == 1 else 3, size=size)  # BMP/TIFF via Pillow
    return resize_to(image, size)


def decode_bytes(data: bytes, path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    """:func:`decode_image` for a file already read."""
    from cnnctl.data.images import decode_image_bytes, resize_to

    size = tuple(preprocessing.image_size)
    image = decode_image_bytes(data, path, channels=1 if preprocessing.channels == 1 else 3, size=size)
    return resize_to(image, size)


def load_for_inference(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Preprocessing]:
    from cnnctl import checkpoint
    from cnnctl.engine.device import resolve_device

    model, meta = checkpoint.load(path, device=resolve_device(device))
    model.cnnctl_meta = meta  # type: ignore[attr-defined]
    return model, meta.preprocessing


# Below this encoded size a file decodes (≈15 µs for an MNIST PNG) faster inline than a thread hand-off costs:
# measured on 10,000 MNIST PNGs, a thread pool *halved* decode throughput (GIL hand-offs), so only big files,
# whose decode time dwarfs the hand-off, go to the pool.
PARALLEL_DECODE_BYTES = 32 * 1024


class Predictor:
    """Batched inference for one checkpoint.

    Files are read in order; small ones are decoded inline, large ones in a thread pool one batch ahead, so their
    decoding overlaps the model's work on the previous batch. ``timings`` adds up where the time went.
    """

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, *, batch_size: int = 256, topk: int = 5,
                 workers: int | None = None):
        import torch

        from cnnctl.data.loader import Normalizer

        self.model = model.eval()
        self.meta = meta
        self.preprocessing = meta.preprocessing
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.topk = max(1, min(topk, meta.num_classes))
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.normalize = Normalizer(self.preprocessing.mean, self.preprocessing.std, self.device)
        self.timings = {"decode_s": 0.0, "inference_s": 0.0}
        self._torch = torch

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at ``image_size`` → logits."""
        import torch.nn.functional as F

        images = images.to(self.device)
        pad = self.preprocessing.pad
        if pad:
            images = F.pad(images, (pad, pad, pad, pad), value=0)
        with self._torch.inference_mode():
            return self.model(self.normalize(images)).float()

    def predict_tensor(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = self.logits(images).softmax(dim=1).cpu()
        return probabilities.argmax(dim=1), probabilities

    def _safe_decode(self, data: bytes | None, path: Path) -> torch.Tensor | str:
        """A decoded image, or the one-line reason it could not be read (so one bad file does not stop a run)."""
        try:
            if data is None:
                return decode_image(path, self.preprocessing)
            return decode_bytes(data, path, self.preprocessing)
        except DataError as error:
            return str(error)

    def _start_decoding(self, chunk: Sequence[Path], pool: ThreadPoolExecutor) -> list[Any]:
        """Decode small files now and hand large ones to ``pool``; returns images, error strings or futures."""
        started = time.perf_counter()
        pending: list[Any] = []
        for path in chunk:
            try:
                data = path.read_bytes()
            except OSError:
                data = None  # decode_image reports the reason
            if data is not None and len(data) >= PARALLEL_DECODE_BYTES:
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

    def decoded_batches(self, files: Sequence[Path]) -> Iterator[tuple[Sequence[Path], list[torch.Tensor | str]]]:
        """``(paths, images or error strings)`` per batch, decoding the next batch while the caller works."""
        import torchvision.io  # noqa: F401 - ~1 s the first time; kept out of the decode timing
        from torchvision.transforms.v2 import functional  # noqa: F401
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

    def predict_files(self, files: Sequence[Path]) -> Iterator[Prediction]:
        classes = self.meta.classes
        for chunk, decoded in self.decoded_batches(files):
            good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
            results: list[Prediction | None] = [None] * len(chunk)
            if good:
                started = time.perf_counter()
                batch = self._torch.stack([decoded[i] for i in good])
                _, probabilities = self.predict_tensor(batch)
                top_p, top_i = probabilities.topk(self.topk, dim=1)
                # one conversion per batch: indexing tensors element by element costs more than the model
                top_p_rows, top_i_rows = top_p.tolist(), top_i.tolist()
                self.timings["inference_s"] += time.perf_counter() - started
                for row, i in enumerate(good):
                    ranked = [(c, classes[c], p) for p, c in zip(top_p_rows[row], top_i_rows[row])]
                    label, name, probability = ranked[0]
                    results[i] = Prediction(str(chunk[i]), label, name, probability, ranked)
            for i, item in enumerate(decoded):
                if isinstance(item, str):
                    results[i] = Prediction(str(chunk[i]), error=item)
            yield from results  # type: ignore[misc]


def predict_api(model_or_path: Any, images: Any, *, topk: int = 5, device: str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``cnnctl.predict``: labels (int64 N) and class probabilities (N×classes) for files, folders or a uint8
    N×C×H×W tensor already at the checkpoint's image size."""
    import torch

    if isinstance(model_or_path, (str, Path)):
        model, _ = load_for_inference(model_or_path, device=device)
    else:
        model = model_or_path
    meta = getattr(model, "cnnctl_meta", None)
    if meta is None:
        raise CnnctlError("cnnctl.predict needs a model from cnnctl.load() or a checkpoint path")
    predictor = Predictor(model, meta, topk=topk)
    if isinstance(images, torch.Tensor):
        return predictor.predict_tensor(images)
    files, _ = find_images([images] if isinstance(images, (str, Path)) else images)
    if not files:
        raise DataError("no images to predict")
    decoded = [image for _, images in predictor.decoded_batches(files) for image in images]
    errors = [item for item in decoded if isinstance(item, str)]
    if errors:
        raise DataError(errors[0])
    return predictor.predict_tensor(torch.stack(decoded))
