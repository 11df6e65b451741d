"""Export a checkpoint (ONNX FP32/FP16/INT8, OpenVINO IR FP32/FP16/INT8, TorchScript), judged in its own runtime
before it is written, with its preprocessing beside it as JSON.

The exported model takes the *normalised* float input (N×C×H×W, after resizing and padding) and returns logits,
exactly like the PyTorch model. How to get from an image file to that input is written to
``<stem>.preprocessing.json`` in plain terms (size, padding, mean/std, class names), so the export can be used
from any language without cnnctl; a calibrated checkpoint's temperature and threshold (``cnnctl calibrate``) are in
it too.

The export is serialised in memory and run by its own runtime (ONNX Runtime, OpenVINO, ``torch.jit.load``) on the
checkpoint's test split (or the folder ``data``) beside the PyTorch model (:mod:`cnnctl.exports.gate`): an exact
format must give PyTorch's logits within its tolerance, and no export may lose more than ``max_drop`` accuracy
points; otherwise nothing is written (``force`` writes it anyway and says so). Without the labelled images here,
an exact format is compared on seeded random pixels, and a lossy one (FP16, INT8) is refused unless ``force``.
Files are written through a temporary file and a rename.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import existing_checkpoint, versions
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.data.targets import as_multi_hot
from cnnctl.engine.calibration import stored_temperature, stored_threshold
from cnnctl.engine.multilabel_metrics import decisions as label_decisions
from cnnctl.errors import CnnctlError, UsageError, first_line
from cnnctl.exports import images as export_images
from cnnctl.exports import onnx_format, openvino_format, torchscript_format  # noqa: F401  (each registers formats)
from cnnctl.exports.formats import (  # noqa: F401  (the registry's names, where they always were)
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    ExportFormat,
    get_format,
    quiet_exporters,
    register_format,
)
from cnnctl.exports.gate import MAX_DROP, Comparison, ShapeMismatch, check_max_drop, compare
from cnnctl.fsutil import STDOUT, atomic_write_bytes, atomic_write_text, is_folder, require_writable_file

if TYPE_CHECKING:
    import torch

    from cnnctl.checkpoint import CheckpointMeta

PREPROCESSING_FORMAT = 1
CALIBRATION_IMAGES = 300  # training images a quantised format calibrates on
EXAMPLE_COUNT = 16  # images the exporters trace with

# Sections of the preprocessing JSON beyond what export writes itself, by key: ``build(meta)`` returns the
# section (JSON-ready) or None to leave it out. Readers ignore keys they do not know, so a section can be added
# without a new PREPROCESSING_FORMAT.
DOCUMENT_SECTIONS: dict[str, Callable[[CheckpointMeta], Any]] = {}


def register_document_section(key: str, build: Callable[[CheckpointMeta], Any]) -> None:
    DOCUMENT_SECTIONS[key] = build


@dataclass
class ExportResult:
    model_path: Path
    preprocessing_path: Path
    format: str
    dynamic_batch: bool
    opset: int | None
    max_abs_diff: float
    tolerance: float | None  # None: a lossy format, judged by accuracy alone
    verified_on: str  # which inputs the comparison used, in words
    verified_count: int
    precision: str = "fp32"
    runtime: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # every file written, the model file last
    size: int = 0  # bytes on disk, all files
    comparison: Comparison | None = None
    max_drop: float = MAX_DROP
    forced: str | None = None  # why the export would have been refused, when --force wrote it anyway
    details: dict[str, Any] = field(default_factory=dict)  # how it was converted or quantised
    label_decisions: int | None = None  # multi-label: the (image, label) decisions at the thresholds compared
    multilabel: bool = False  # accuracy is then the subset accuracy of the checkpoint's decisions

    @property
    def gated(self) -> bool:
        """Whether its accuracy was measured (on labelled images)."""
        return self.comparison is not None and self.comparison.accuracy is not None

    def to_dict(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in self.__dataclass_fields__}
        data["model_path"], data["preprocessing_path"] = str(self.model_path), str(self.preprocessing_path)
        data["files"] = [str(path) for path in self.files]
        data["comparison"] = self.comparison.to_dict() if self.comparison else None
        return data


def export(checkpoint_path: Any, *, format: str = "onnx", output: Any = None, dynamic_batch: bool = False,
           opset: int | None = None, root: Any = None, data: Any = None, max_drop: float = MAX_DROP,
           force: bool = False, calibration_images: int = CALIBRATION_IMAGES,
           calibration_method: str | None = None, tolerance: float | None = None) -> ExportResult:
    """Export ``checkpoint_path`` (a .safetensors file or run folder), judge it in its runtime, then write it.

    ``output`` is the model file to write (or a folder to write it in); by default it goes beside the checkpoint as
    ``<stem><suffix>`` (``best.onnx``, ``best.int8.onnx``, ``best.openvino.xml`` + ``.bin``, ...). Without
    ``dynamic_batch`` the model takes batches of exactly one image. ``data``: labelled images to judge (and
    calibrate) on instead of the checkpoint's dataset: a class folder, a label file, a table or shards.
    ``max_drop``: accuracy points the export may lose (0-100). ``calibration_images``/``calibration_method``: for
    the int8 formats. ``tolerance``: replaces an exact format's own. Raises ``CnnctlError`` when the export fails a
    check (then nothing is written) unless ``force``.
    """
    info = get_format(format)
    max_drop = check_max_drop(max_drop)
    _check_options(info, opset, calibration_images, calibration_method)
    if info.require is not None:
        info.require()
    source = existing_checkpoint(Path(checkpoint_path))  # a run folder means its best.safetensors
    model_path, preprocessing_path = output_paths(source, info.name, output)
    companions = companion_paths(model_path, info)
    model, meta = load_checkpoint(source, device="cpu")
    labelled, why = export_images.labelled_split(meta, root=root, data=data)
    if labelled is not None:
        example = next(iter(labelled.batches))[0][:EXAMPLE_COUNT]
        batches, on, count = labelled.batches, labelled.described, labelled.count
    else:
        example = export_images.random_inputs(meta)
        batches, on, count = [(example, None)], f"{example.shape[0]} random images (seed 0; {why})", len(example)
    tolerance = info.tolerance if tolerance is None else tolerance
    decisions: list[int] = []
    on_batch = right = None
    if meta.multilabel:  # accuracy is the subset accuracy of the decisions; exact formats also compare each one
        right = functools.partial(subset_right, meta)
        if tolerance is not None:
            def on_batch(expected: Any, actual: Any) -> None:
                decisions.append(compare_label_decisions(meta, expected, actual, tolerance))
    calibration = None
    if info.calibrated:
        calibration = export_images.calibration_images(meta, count=calibration_images, root=root, data=data,
                                                       method=calibration_method or info.methods[0], format=info.name)
    model.eval()
    with quiet_exporters():  # the model is serialised in memory and judged before a byte is written
        exported = info.write(model, example, dynamic_batch=dynamic_batch, opset=opset, arch=meta.arch,
                              calibration=calibration)
        try:
            run = info.runner(exported.files)
            comparison = compare(model, run, batches, num_classes=meta.num_classes, on=on,
                                 batch=None if dynamic_batch else 1, on_batch=on_batch, right=right,
                                 multilabel=meta.multilabel)
        except ShapeMismatch as error:
            raise CnnctlError(f"{error}; nothing was written") from error
        except CnnctlError:
            raise
        except Exception as error:  # the runtime's own failure (an operator it lacks, say): its first line
            raise CnnctlError(f"{info.runtime} could not run the {info.name} export of {meta.arch}: "
                              f"{first_line(error, 200)}; nothing was written",
                              hint="try another --format, or --debug for the traceback") from error
    refusal = _refusal(info, comparison, tolerance, max_drop, why, meta.multilabel)
    if refusal is not None and not force:
        raise CnnctlError(f"{refusal}; nothing was written", hint=_refusal_hint(info, comparison, tolerance))
    paths = {suffix: path for suffix, path in zip(info.companions, companions)}
    paths[info.suffix] = model_path
    files = [paths[suffix] for suffix in exported.files if suffix != info.suffix] + [model_path]
    result = ExportResult(model_path, preprocessing_path, info.name, dynamic_batch, exported.opset,
                          comparison.max_abs_diff, tolerance, on, count, info.precision,
                          getattr(run, "runtime", {"name": info.runtime}), files, exported.size, comparison,
                          max_drop, refusal, exported.details, sum(decisions) if decisions else None,
                          meta.multilabel)
    for suffix, content in exported.files.items():  # companions first, the model file (what users open) last
        if suffix != info.suffix:
            atomic_write_bytes(paths[suffix], content)
    atomic_write_bytes(model_path, exported.files[info.suffix])
    atomic_write_text(preprocessing_path, json.dumps(preprocessing_document(meta, result), indent=2) + "\n")
    return result


def _check_options(info: ExportFormat, opset: int | None, calibration_images: int,
                   calibration_method: str | None) -> None:
    if opset is not None and not info.has_opset:
        raise UsageError(f"--opset applies only to --format {_names(lambda entry: entry.has_opset)}")
    if calibration_method is not None:
        if not info.calibrated:
            raise UsageError(f"--calibration-method applies only to --format {_names(lambda entry: entry.calibrated)}")
        if calibration_method not in info.methods:
            raise UsageError(f"{info.name} calibrates by {' or '.join(info.methods)}, not {calibration_method!r}")
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise UsageError(f"--calibration-images must be a whole number of at least 1, not {calibration_images!r}")


def subset_right(meta: CheckpointMeta, logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Multi-label: the images whose whole set of labels the checkpoint's decisions get right."""
    given = label_decisions(logits.float().sigmoid(), meta.resolved_thresholds, meta.label_count_range)
    return int((given == (as_multi_hot(labels, meta.num_classes) > 0.5)).all(1).sum())


def compare_label_decisions(meta: CheckpointMeta, expected: torch.Tensor, actual: torch.Tensor,
                            tolerance: float) -> int:
    """Multi-label: the labels the export gives at the checkpoint's thresholds and label count (those the
    preprocessing JSON states) must be PyTorch's, except on an image where a probability lies within ``tolerance``
    of its threshold (that label alone without a label count, the whole image with one, as it can move the others),
    or the label count's cut falls between two probabilities within ``tolerance``. Returns the number of (image,
    label) decisions compared."""
    import torch

    thresholds = torch.tensor(meta.resolved_thresholds, dtype=torch.float32).view(1, -1)
    theirs, ours = actual.float().sigmoid(), expected.float().sigmoid()
    label_count = meta.label_count_range
    ours_given = label_decisions(ours, meta.resolved_thresholds, label_count)
    excused = (ours - thresholds).abs() <= tolerance
    if label_count is not None:
        infinity = torch.full_like(ours, float("inf"))
        lowest_kept = torch.where(ours_given, ours, infinity).amin(1, keepdim=True)
        highest_left = torch.where(ours_given, -infinity, ours).amax(1, keepdim=True)
        excused = excused.any(1, keepdim=True) | ((lowest_kept - highest_left).abs() <= tolerance)
    differ = (label_decisions(theirs, meta.resolved_thresholds, label_count) != ours_given) & ~excused
    if bool(differ.any()):
        image, label = (int(v) for v in differ.nonzero()[0])
        raise CnnctlError(f"the export decides label {meta.classes[label]!r} of verification image {image} unlike "
                          f"PyTorch at its threshold {float(thresholds[0, label]):.4g}; nothing was written")
    return int(differ.numel())


def _names(chosen: Callable[[ExportFormat], bool]) -> str:
    """``onnx, onnx-fp16 or onnx-int8``: the formats ``chosen`` picks, in words."""
    names = [name for name, entry in FORMATS.items() if chosen(entry)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _refusal(info: ExportFormat, comparison: Comparison, tolerance: float | None, max_drop: float,
             why: str, multilabel: bool = False) -> str | None:
    """Why this export should not be written, or None."""
    name, on = info.name, comparison.on
    if tolerance is not None and not comparison.max_abs_diff <= tolerance:  # also catches NaN
        return (f"the {name} export differs from PyTorch by up to {comparison.max_abs_diff:.3g} (> {tolerance:g}) "
                f"on {on}")
    drop = comparison.drop
    if drop is not None and not drop <= max_drop:
        measure = "subset accuracy" if multilabel else "accuracy"
        return (f"the {name} export's {measure} is {100 * comparison.accuracy:.2f}% against PyTorch's "
                f"{100 * comparison.reference_accuracy:.2f}% on {on}: a drop of {drop:.2f} points "
                f"(> --max-drop {max_drop:g})")
    if drop is None and tolerance is None:
        return f"the accuracy of the {name} export (a lossy format) could not be checked: {why}"
    return None


def _refusal_hint(info: ExportFormat, comparison: Comparison, tolerance: float | None) -> str:
    if comparison.drop is None and tolerance is None:
        return "pass --data FOLDER to check it on your images, or --force to write it unchecked"
    return "--force writes it anyway"


def companion_paths(model_path: Path, info: ExportFormat) -> list[Path]:
    """The files written beside the model file (an OpenVINO IR's weights: the .xml's name with .bin)."""
    name = model_path.name
    stem = name.removesuffix(info.suffix) if name.endswith(info.suffix) else model_path.stem
    paths = []
    for suffix in info.companions:
        path = model_path.with_name(stem + suffix) if name.endswith(info.suffix) else model_path.with_suffix(
            Path(suffix).suffix)
        paths.append(require_writable_file(path, option="--output"))
    return paths


def output_paths(source: Path, format: str, output: Any = None) -> tuple[Path, Path]:
    """Where the model and its preprocessing JSON go: ``<stem><suffix>`` and ``<stem>.preprocessing.json``.
    Both are checked now, before any work: only regular files (or links to them) in writable folders. Every
    format of a checkpoint shares the one JSON (``best.int8.onnx`` too: ``best.preprocessing.json``)."""
    info = get_format(format)
    suffix = info.suffix
    default_name = source.name.removesuffix(".safetensors") + suffix
    if output is None:
        model_path = source.with_name(default_name)
    elif str(output) == STDOUT:
        raise UsageError("export writes two files (the model and its preprocessing JSON), so --output - "
                         "(standard output) is not possible", hint="pass a file name or a folder")
    else:
        folder = str(output).endswith(("/", os.sep)) or is_folder(Path(output).expanduser())
        output = Path(output).expanduser()
        model_path = output / default_name if folder else output
    if os.path.realpath(model_path) == os.path.realpath(source):
        raise UsageError(f"--output {model_path} is the checkpoint itself", hint="choose another file name")
    stem = _stem(model_path.name, suffix)
    preprocessing_path = model_path.with_name(stem + ".preprocessing.json")
    option = "--output" if output is not None else "export"
    return (require_writable_file(model_path, option=option),
            require_writable_file(preprocessing_path, option=option))


def _stem(name: str, suffix: str) -> str:
    """``best`` of ``best.int8.onnx`` (the format's suffix, or a precision tag before the file's own suffix)."""
    if name.endswith(suffix):
        return name.removesuffix(suffix)
    stem = Path(name).stem
    for tag in (".fp16", ".int8", ".openvino"):
        stem = stem.removesuffix(tag)
    return stem


def preprocessing_document(meta: CheckpointMeta, result: ExportResult) -> dict[str, Any]:
    """Everything needed to feed the exported model an image and read its answer, with no cnnctl around.

    One file serves every export of a checkpoint (``best.onnx`` and ``best.torchscript.pt`` share
    ``best.preprocessing.json``): what differs between them is listed under ``exports``, by file name.
    """
    prep = meta.preprocessing
    temperature, threshold = stored_temperature(meta), stored_threshold(meta)
    channels, input_height, input_width = prep.input_shape
    height, width = prep.image_size
    colour = "grayscale (1 channel)" if channels == 1 else f"RGB ({channels} channels)"
    grey = (" (from RGB: L = (19595 R + 38470 G + 7471 B + 32768) >> 16, i.e. PIL's convert('L'), rounded)"
            if channels == 1 else " (alpha dropped, palette expanded)")
    steps = ["decode the image file (an animated image: its first frame)",
             "apply its EXIF orientation, as PIL.ImageOps.exif_transpose does (phone photos are stored sideways)",
             f"convert to {colour}, uint8{grey}"]
    if prep.resize is not None:
        steps += [f"resize so that the shorter side is {prep.resize} pixels, keeping the aspect ratio "
                  f"({prep.interpolation}, antialiased, on uint8)",
                  f"crop the centre {height}x{width} (height x width)"]
    else:
        steps.append(f"resize to {height}x{width} (height x width, bilinear, antialiased) if it is another size")
    if prep.pad:
        steps.append(f"zero-pad {prep.pad} pixels on every side (giving {input_height}x{input_width})")
    steps += ["divide by 255 (values in [0, 1])", "per channel: subtract mean, divide by std",
              f"stack into a float32 array N x {channels} x {input_height} x {input_width} (NCHW); "
              "N is the export's batch: 1, or any number for 'any'"]
    document = {
        "format": PREPROCESSING_FORMAT,
        "arch": meta.arch,
        "classes": list(meta.classes),
        "channels": channels,
        "image_size": [height, width],
        "resize": prep.resize,
        "interpolation": prep.interpolation,
        "pad": prep.pad,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "input_name": INPUT_NAME,
        "input_shape": [channels, input_height, input_width],
        "input_dtype": "float32",
        "output_name": OUTPUT_NAME,
        "output": (f"logits, N x {meta.num_classes}; a sigmoid per class gives its probability, and an image has "
                   "every class whose probability is at or above its threshold (thresholds, in the order of classes)"
                   + ("; an image given fewer than label_count[0] classes also gets its most probable others up to "
                      "that many, one given more than label_count[1] keeps its most probable ones"
                      if meta.label_count is not None else "")
                   if meta.multilabel else
                   f"logits, N x {meta.num_classes}; softmax(logits / temperature) gives class probabilities in "
                   "the order of classes" + ("; answer 'unknown' when the top probability is below reject_below"
                                             if threshold is not None else "")),
        **({"task": meta.task, "thresholds": meta.resolved_thresholds, "label_count": meta.label_count}
           if meta.multilabel else {}),
        "temperature": temperature,  # `cnnctl calibrate` (1: not calibrated); the exported graph outputs raw logits
        "reject_below": threshold,  # `cnnctl calibrate --target-error`, or null
        "steps": steps,
        "checkpoint": {"dataset": meta.dataset, "epoch": meta.epoch, "metrics": meta.metrics or {}},
        "versions": versions(),
    }
    exports = _other_exports(result.preprocessing_path, document)
    exports[result.model_path.name] = {
        "format": result.format,
        "batch": "any" if result.dynamic_batch else 1,
        **({"opset": result.opset} if result.opset is not None else {}),
        "precision": result.precision,
        "runtime": result.runtime,
        "files": [path.name for path in result.files],
        "size_bytes": result.size,
        **result.details,
        "verification": {"max_abs_diff": result.max_abs_diff, "tolerance": result.tolerance,
                         "inputs": result.verified_on,
                         **({"label_decisions": f"{result.label_decisions} (image, label) decisions at the "
                                                "thresholds agree with PyTorch's"}
                            if result.label_decisions is not None else {})},
        "accuracy": _accuracy_entry(result),
    }
    document["exports"] = dict(sorted(exports.items()))
    for key, build in DOCUMENT_SECTIONS.items():
        section = build(meta)
        if section is not None:
            document[key] = section
    return document


def _accuracy_entry(result: ExportResult) -> dict[str, Any]:
    """The gate's measurements, as the export's JSON keeps them."""
    comparison = result.comparison
    entry: dict[str, Any] = {"images": result.verified_on, "count": result.verified_count,
                             **({"measure": "subset accuracy"} if result.multilabel else {})}
    if comparison is not None:
        entry.update({"accuracy": comparison.accuracy, "pytorch_accuracy": comparison.reference_accuracy,
                      "drop_points": comparison.drop, "top1_agreement": comparison.top1_agreement,
                      f"top{comparison.k}_agreement": comparison.topk_agreement,
                      "max_probability_diff": comparison.max_prob_diff})
    entry.update({"max_drop": result.max_drop, "checked": result.gated, "passed": result.forced is None})
    if result.forced is not None:
        entry["forced"] = result.forced
    return entry


def _other_exports(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Entries of an earlier export beside this one, kept if their file is still there and the preprocessing
    they were verified with is the same."""
    try:
        earlier = json.loads(path.read_text())
        exports = dict(earlier["exports"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    shared = ("format", "arch", "classes", "channels", "image_size", "resize", "interpolation", "pad", "mean", "std",
              "input_shape", "task", "thresholds", "label_count")
    if any(earlier.get(key) != document.get(key) for key in shared):
        return {}
    return {name: entry for name, entry in exports.items() if (path.parent / name).is_file()}


