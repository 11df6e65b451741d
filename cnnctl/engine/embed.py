"""``cnnctl embed``: L2-normalised penultimate features of images, with their paths (and labels), to .npz or
.parquet.

The backbone is a cnnctl checkpoint (its own preprocessing) or an architecture with pretrained weights
(published ImageNet weights, an installed weights package, or a file; the preprocessing the architecture's
published weights were trained with). Images are decoded and normalised exactly as ``cnnctl predict`` does
(:class:`~cnnctl.engine.predict.Predictor`), and the features are the classifier's input
(:mod:`cnnctl.engine.features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cnnctl.data.items import scan_source, source_for, sources
from cnnctl.engine.device import resolve_device
from cnnctl.engine.features import l2_normalised, penultimate
from cnnctl.engine.predict import Predictor, find_images, load_for_inference
from cnnctl.engine.runs import is_checkpoint_like, resolve_checkpoint
from cnnctl.errors import CheckpointError, DataError, UsageError
from cnnctl.filekind import IMAGE_SUFFIXES
from cnnctl.fsutil import atomic_path
from cnnctl.models import build_model
from cnnctl.models.pretrained import load_pretrained
from cnnctl.models.weights import is_weights_name, local_imagenet_weights, resolve_cached, run_preprocessing
from cnnctl.registry import get_model_spec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnctl.data.base import Preprocessing

Log = Callable[[str], None]
OUTPUT_SUFFIXES = (".npz", ".parquet")


@dataclass
class Backbone:
    """A model whose classifier input is the features, and the preprocessing its weights expect."""

    model: torch.nn.Module
    classifier: str
    preprocessing: Preprocessing
    arch: str
    weights: str  # where the weights came from, for people


@dataclass
class Embeddings:
    """Features (N×D float32, unit rows) in the order of ``paths``; ``labels`` index ``classes`` (-1: none)."""

    features: np.ndarray
    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per image that could not be read


def check_output(path: str) -> str:
    """The output format a file name asks for (``npz`` or ``parquet``); refused before any work otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {path}: cannot write {suffix or 'a file without a suffix'}; features are "
                         "written to .npz (NumPy) or .parquet (pyarrow)", hint="name the file features.npz or "
                                                                                "features.parquet")
    if suffix == ".parquet":
        _pyarrow()
    return suffix[1:]


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise UsageError("writing .parquet needs pyarrow, which is not installed",
                         hint="pip install 'cnnctl[parquet]', or write .npz") from error
    return pyarrow


# ----------------------------------------------------------------------------------------------- what to embed


def labelled_images(paths: Sequence[str | Path], log: Log = lambda _: None
                    ) -> tuple[list[Any], list[int] | None, list[str]]:
    """The images to embed, in a stable order, with labels where the data has them.

    One dataset — a folder of class folders (or of train/val/test holding them), a label file, a Parquet table
    or Hugging Face folder, tar shards: whatever ``train --data`` reads — gives each image its class (multi-label
    data gives none: a row keeps one class); plain images, files or several paths give none."""
    if len(paths) == 1 and _is_dataset(Path(paths[0]).expanduser()):
        scan = scan_source(paths[0], log=log, min_classes=1)
        items = [item for split in ("train", "val", "test") for item in scan.splits.get(split) or []]
        images = [image for image, _ in items]
        if scan.multilabel:
            log(f"{paths[0]} gives images several labels: the embeddings are written without labels")
            return images, None, []
        return images, [label for _, label in items], list(scan.classes)
    files, skipped = find_images(paths)
    if skipped:
        log(f"skipped {skipped} hidden or non-image file(s)")
    return files, None, []


def _is_dataset(path: Path) -> bool:
    """A folder of class folders or a dataset another source reads (a label file, a table, shards), rather than
    loose images."""
    if path.is_dir():
        return _has_class_folders(path) or source_for(path).name != "folder"
    return path.suffix.lower() not in IMAGE_SUFFIXES and any(source.claims(path) for source in sources())


def _has_class_folders(root: Path) -> bool:
    """Sub-folders and no images directly inside: the images are labelled by their folder."""
    entries = [entry for entry in root.iterdir() if not entry.name.startswith(".")]
    loose = any(entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES for entry in entries)
    return not loose and any(entry.is_dir() for entry in entries)


# ----------------------------------------------------------------------------------------------- the backbone


def open_backbone(target: str, pretrained: str | None = None, *, device: str = "cpu", offline: bool = False,
                  weights_mirror: str | None = None, log: Log = lambda _: None) -> Backbone:
    """A checkpoint or run folder (``target`` names one), or the architecture ``target`` with the weights
    ``pretrained`` names (``imagenet``, a weights name, or a file)."""
    if is_checkpoint_like(target) or Path(target).exists():
        if pretrained:
            raise UsageError(f"--pretrained applies to an architecture, but {target} is a checkpoint",
                             hint="leave --pretrained out to use the checkpoint's weights")
        return _checkpoint_backbone(target, device)
    if not pretrained:
        raise UsageError(f"{target} is not a checkpoint or run folder here; an architecture needs --pretrained",
                         hint=f"e.g. cnnctl embed {target} DATA --pretrained imagenet (or a weights file)")
    return pretrained_backbone(target, pretrained, device=device, offline=offline, weights_mirror=weights_mirror,
                               log=log)


def _checkpoint_backbone(target: str, device: str) -> Backbone:
    path = resolve_checkpoint(target)
    model, preprocessing = load_for_inference(path, device=device)
    meta = model.cnnctl_meta  # type: ignore[attr-defined]
    return Backbone(model, get_model_spec(meta.arch).classifier, preprocessing, meta.arch, str(path))


def weights_of(arch: str, pretrained: str) -> Any:
    """The published weights whose preprocessing ``pretrained`` takes: the ones it names, or for a weights file
    the architecture's recommended ImageNet weights' (a file carries no preprocessing of its own)."""
    if is_weights_name(pretrained):
        return resolve_cached(arch, pretrained)
    try:
        return local_imagenet_weights(arch, pretrained)
    except UsageError as error:
        raise UsageError(f"{arch} has no published weights, so the preprocessing of {pretrained} is unknown",
                         hint="pass a cnnctl checkpoint instead (it carries its preprocessing), or an "
                              "architecture with published weights") from error


def pretrained_backbone(arch: str, pretrained: str, *, device: str = "cpu", offline: bool = False,
                        weights_mirror: str | None = None, img_size: int | None = None,
                        log: Log = lambda _: None) -> Backbone:
    """``arch`` built with its weights' number of classes, ``pretrained`` loaded (see
    :func:`cnnctl.models.pretrained.load_pretrained`), in eval mode on ``device``; ``img_size`` crops smaller
    (or larger) than the weights' crop, the resize scaled with it, as ``--img-size`` does in training."""
    spec = get_model_spec(arch)
    weights = weights_of(spec.name, pretrained)
    model = build_model(spec.name, num_classes=int(weights.extra.get("num_classes") or 1000), in_channels=3)
    settings = SimpleNamespace(offline=offline, weights_mirror=weights_mirror)
    report = load_pretrained(model, spec, pretrained, log=log, config=settings)
    preprocessing = run_preprocessing(weights, 3, weights.preprocessing.crop, img_size=img_size, folder=True,
                                      grey_input="replicate")
    return Backbone(model.to(resolve_device(device)).eval(), spec.classifier, preprocessing, spec.name,
                    report.path)


# ----------------------------------------------------------------------------------------------- the features


def embed_files(backbone: Backbone, files: Sequence[Any], *, batch_size: int = 64,
                max_pixels: int | None = None, advance: Callable[[int], None] = lambda _: None
                ) -> tuple[torch.Tensor, list[int], list[str]]:
    """L2-normalised features of the readable ``files`` (in their order: paths, or a dataset's items such as a
    tar shard's member), the positions of those files, and one line per file that could not be read."""
    import torch

    meta = SimpleNamespace(preprocessing=backbone.preprocessing, num_classes=1, classes=[])
    predictor = Predictor(backbone.model, meta, batch_size=batch_size, max_pixels=max_pixels)  # type: ignore
    features: list[torch.Tensor] = []
    kept: list[int] = []
    failures: list[str] = []
    start = 0
    for chunk, decoded in predictor.decoded_batches(files):
        good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
        failures += [f"{chunk[i]}: {decoded[i]}" for i, item in enumerate(decoded) if isinstance(item, str)]
        if good:
            batch = predictor.model_inputs(torch.stack([decoded[i] for i in good]))  # type: ignore[misc]
            features.append(l2_normalised(penultimate(backbone.model, backbone.classifier, batch)).cpu())
            kept += [start + i for i in good]
        start += len(chunk)
        advance(len(chunk))
    if not features:
        raise DataError(f"none of the {len(files)} images could be read", hint=failures[0] if failures else None)
    return torch.cat(features), kept, failures


def embed(backbone: Backbone, paths: Sequence[str | Path], *, batch_size: int = 64, max_pixels: int | None = None,
          log: Log = lambda _: None, advance: Callable[[int], None] = lambda _: None) -> Embeddings:
    """:func:`embed_files` of what :func:`labelled_images` finds in ``paths``."""
    files, labels, classes = labelled_images(paths, log)
    if not files:
        raise DataError(f"no image files found in {', '.join(str(p) for p in paths)}",
                        hint="pass image files, a folder of images, or a folder of class folders")
    features, kept, failures = embed_files(backbone, files, batch_size=batch_size, max_pixels=max_pixels,
                                           advance=advance)
    return Embeddings(features.numpy(), [str(files[i]) for i in kept],
                      None if labels is None else [labels[i] for i in kept], classes, failures)


# ----------------------------------------------------------------------------------------------- writing


def write_embeddings(result: Embeddings, output: str, *, backbone: Backbone | None = None) -> Path:
    """Write ``result`` atomically as ``.npz`` (arrays ``features``, ``paths``, and ``labels``/``classes``
    when known) or ``.parquet`` (columns ``path``, ``features`` and ``label``/``class`` when known)."""
    kind = check_output(output)
    with atomic_path(output) as tmp:
        if kind == "npz":
            _write_npz(result, tmp, backbone)
        else:
            _write_parquet(result, tmp, backbone)
    return Path(output)


def _describe(backbone: Backbone | None) -> dict[str, str]:
    return {} if backbone is None else {"arch": backbone.arch, "weights": backbone.weights}


def _write_npz(result: Embeddings, tmp: Path, backbone: Backbone | None) -> None:
    import numpy as np

    arrays: dict[str, Any] = {"features": result.features.astype(np.float32), "paths": np.array(result.paths)}
    if result.labels is not None:
        arrays["labels"] = np.array(result.labels, dtype=np.int64)
        arrays["classes"] = np.array(result.classes)
    for key, value in _describe(backbone).items():
        arrays[key] = np.array(value)
    with open(tmp, "wb") as handle:  # a file object: np.savez would add .npz to the temporary name
        np.savez(handle, **arrays)


def _write_parquet(result: Embeddings, tmp: Path, backbone: Backbone | None) -> None:
    import numpy as np

    pa = _pyarrow()
    import pyarrow.parquet as pq

    features = result.features.astype(np.float32)
    columns: dict[str, Any] = {"path": pa.array(result.paths, type=pa.string())}
    if result.labels is not None:
        columns["label"] = pa.array(result.labels, type=pa.int64())
        columns["class"] = pa.array([result.classes[i] for i in result.labels], type=pa.string())
    columns["features"] = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    metadata = {f"cnnctl.{key}": value for key, value in _describe(backbone).items()}
    if result.labels is not None:
        import json

        metadata["cnnctl.classes"] = json.dumps(result.classes)
    table = pa.table(columns).replace_schema_metadata(metadata or None)
    pq.write_table(table, str(tmp))


def read_embeddings(path: str | Path) -> Embeddings:
    """What :func:`write_embeddings` wrote, read back (.npz or .parquet)."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() == ".npz":
        with np.load(path) as data:
            labels = data["labels"].tolist() if "labels" in data else None
            classes = data["classes"].tolist() if "classes" in data else []
            return Embeddings(data["features"], data["paths"].tolist(), labels, classes)
    if path.suffix.lower() != ".parquet":
        raise CheckpointError(f"{path} is not an .npz or .parquet file of features")
    _pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    labels = table.column("label").to_pylist() if "label" in table.column_names else None
    stored = (table.schema.metadata or {}).get(b"cnnctl.classes")
    import json

    classes = json.loads(stored) if stored else []
    return Embeddings(features, table.column("path").to_pylist(), labels, classes)
