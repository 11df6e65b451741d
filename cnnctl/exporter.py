"""Export a checkpoint to ONNX or TorchScript, verified against PyTorch, with its preprocessing beside it as JSON.

The exported model takes the *normalised* float input (N×C×H×W, after resizing and padding) and returns logits,
exactly like the PyTorch model. How to get from an image file to that input is written to
``<stem>.preprocessing.json`` in plain terms (size, padding, mean/std, class names), so the export can be used
from any language without cnnctl; a calibrated checkpoint's temperature and threshold (``cnnctl calibrate``) are in
it too. Before anything is written, the exported file is loaded by its own runtime
(onnxruntime, or ``torch.jit.load``) and run on a batch of inputs; its outputs must match PyTorch's.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.checkpoint import existing_checkpoint, versions
from cnnctl.checkpoint import load as load_checkpoint
from cnnctl.data.download import is_present
from cnnctl.data.folder import load_folder_eval_split
from cnnctl.data.loader import Normalizer, fit_to_input
from cnnctl.data.splits import eval_split
from cnnctl.engine.calibration import stored_temperature, stored_threshold
from cnnctl.errors import CnnctlError, UsageError, first_line
from cnnctl.fsutil import STDOUT, atomic_write_bytes, atomic_write_text, is_folder, require_writable_file
from cnnctl.registry import datasets, suggest

if TYPE_CHECKING:
    import torch

    from cnnctl.checkpoint import CheckpointMeta

TOLERANCE = 1e-4  # largest accepted absolute difference between exported and PyTorch logits
VERIFY_COUNT = 16
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PREPROCESSING_FORMAT = 1
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class ExportFormat:
    """One ``--format``: ``write(model, inputs, *, dynamic_batch, opset, arch)`` serialises the model in memory
    (returning the file's bytes and the opset written, or None), ``runner(data)`` loads those bytes with the
    format's own runtime as a batch → logits function (the file is written only after it verified);
    ``require()`` fails in one line when an optional package is missing; ``has_opset``: ``--opset`` applies."""

    name: str
    description: str
    suffix: str
    write: Callable[..., tuple[bytes, int | None]]
    runner: Callable[[bytes], Callable[[torch.Tensor], torch.Tensor]]
    require: Callable[[], None] | None = None
    has_opset: bool = False


FORMATS: dict[str, ExportFormat] = {}


def register_format(info: ExportFormat) -> ExportFormat:
    FORMATS[info.name] = info
    return info


@dataclass
class ExportResult:
    model_path: Path
    preprocessing_path: Path
    format: str
    dynamic_batch: bool
    opset: int | None
    max_abs_diff: float
    tolerance: float
    verified_on: str  # which inputs the comparison used, in words
    verified_count: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_path"], data["preprocessing_path"] = str(self.model_path), str(self.preprocessing_path)
        return data


def export(checkpoint_path: Any, *, format: str = "onnx", output: Any = None, dynamic_batch: bool = False,
           opset: int | None = None, root: Any = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Export ``checkpoint_path`` (a .safetensors file or run folder) and verify it; see the module docstring.

    ``output`` is the model file to write (or a folder to write it in); by default it goes beside the
    checkpoint as ``<stem>.onnx`` / ``<stem>.torchscript.pt``. Without ``dynamic_batch`` the model takes
    batches of exactly one image (an ONNX model refuses others; TorchScript is traced and checked at 1).
    Raises ``CnnctlError`` when the outputs differ by more than ``tolerance``; then nothing is written.
    """
    info = get_format(format)
    format = info.name
    if opset is not None and not info.has_opset:
        with_opset = " or ".join(name for name, entry in FORMATS.items() if entry.has_opset)
        raise UsageError(f"--opset applies only to --format {with_opset}")
    if info.require is not None:
        info.require()
    source = existing_checkpoint(Path(checkpoint_path))  # a run folder means its best.safetensors
    model_path, preprocessing_path = output_paths(source, format, output)
    model, meta = load_checkpoint(source, device="cpu")

    inputs, verified_on = verification_inputs(meta, root=root)
    import torch

    with torch.inference_mode():
        expected = model(inputs).float()
    batch = None if dynamic_batch else 1
    with _quiet_exporters():  # the model is serialised in memory and checked before a byte is written
        data, opset = info.write(model, inputs, dynamic_batch=dynamic_batch, opset=opset, arch=meta.arch)
        run = info.runner(data)
        actual = torch.cat([run(chunk) for chunk in _chunks(inputs, batch)])
    if actual.shape != expected.shape:
        raise CnnctlError(f"the exported model returned shape {tuple(actual.shape)} instead of "
                          f"{tuple(expected.shape)}; nothing was written")
    max_abs_diff = float((actual - expected).abs().max())
    if not max_abs_diff <= tolerance:  # also catches NaN
        raise CnnctlError(f"the {format} export differs from PyTorch by up to {max_abs_diff:.3g} "
                          f"(> {tolerance:g}) on {verified_on}; nothing was written")
    result = ExportResult(model_path, preprocessing_path, format, dynamic_batch, opset, max_abs_diff,
                          tolerance, verified_on, int(inputs.shape[0]))
    atomic_write_bytes(model_path, data)
    atomic_write_text(preprocessing_path, json.dumps(preprocessing_document(meta, result), indent=2) + "\n")
    return result


def require_onnx() -> None:
    """Fail early, in one line, when the optional ONNX packages are missing."""
    import importlib

    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CnnctlError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          "not installed", hint="pip install 'cnnctl[onnx]'")


def get_format(format: str) -> ExportFormat:
    name = format.strip().lower()
    if name not in FORMATS:
        raise suggest(format, list(FORMATS), "export format")
    return FORMATS[name]


def output_paths(source: Path, format: str, output: Any = None) -> tuple[Path, Path]:
    """Where the model and its preprocessing JSON go: ``<stem><suffix>`` and ``<stem>.preprocessing.json``.
    Both are checked now, before any work: only regular files (or links to them) in writable folders."""
    suffix = get_format(format).suffix
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
    stem = model_path.name.removesuffix(suffix) if model_path.name.endswith(suffix) else model_path.stem
    preprocessing_path = model_path.with_name(stem + ".preprocessing.json")
    option = "--output" if output is not None else "export"
    return (require_writable_file(model_path, option=option),
            require_writable_file(preprocessing_path, option=option))


def verification_inputs(meta: CheckpointMeta, *, root: Any = None,
                        count: int = VERIFY_COUNT) -> tuple[torch.Tensor, str]:
    """A normalised batch to compare the export on: the first ``count`` test images of the checkpoint's dataset
    (for an image folder: of the folder it was trained on, its test split or the validation images held out) if
    it is on this machine (nothing is downloaded), else deterministic random pixels. Also says which."""
    import torch

    images, described = _local_test_images(meta, root, count)
    if images is None:
        channels, (height, width) = meta.preprocessing.channels, meta.preprocessing.image_size
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, channels, height, width), dtype=torch.uint8, generator=generator)
        described = f"{count} random images (seed 0; {described})"
    fitted = fit_to_input(images, meta.preprocessing)
    normalize = Normalizer(meta.preprocessing.mean, meta.preprocessing.std, torch.device("cpu"))
    return normalize(fitted).contiguous(), described


def _local_test_images(meta: CheckpointMeta, root: Any, count: int) -> tuple[torch.Tensor | None, str]:
    if not meta.dataset:
        return None, "the checkpoint names no dataset"
    if meta.dataset == "folder":
        return _folder_images(meta, count)
    spec = datasets().get(meta.dataset)
    if spec is None:
        return None, f"dataset {meta.dataset} is not registered"
    if not spec.files or not is_present(spec.storage_name, spec.files, Path(root) if root else None):
        return None, f"the {spec.name} test split is not on this machine; `cnnctl download {spec.name}` fetches it"
    try:
        test = eval_split(meta, split="test", root=str(root) if root else None)
    except CnnctlError as error:
        return None, f"the {spec.name} test split could not be read: {error.message}"
    taken = min(count, len(test))
    return test.images[:taken], f"{taken} images from the {spec.name} test split"


def _folder_images(meta: CheckpointMeta, count: int) -> tuple[torch.Tensor | None, str]:
    """The first ``count`` images of the split eval would use, from the folder the checkpoint was trained on."""
    folder = meta.data_dir
    if not folder:
        return None, "the checkpoint does not say which image folder it was trained on"
    if not Path(folder).expanduser().is_dir():
        return None, f"the image folder it was trained on, {folder}, is not on this machine"
    try:
        data = load_folder_eval_split(meta, max_items=count)
    except CnnctlError as error:
        return None, f"the images of {folder} could not be read: {error.message}"
    split = Path(data.source).name
    return data.images, f"{len(data)} images of the {split} split of {folder}"


def _chunks(inputs: torch.Tensor, batch: int | None) -> Iterator[torch.Tensor]:
    if batch is None:
        yield inputs
        return
    yield from inputs.split(batch)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters warn and log about their own future (TorchScript is deprecated), opset conversion and
    tracing details; cnnctl checks the result itself and reports what matters in one line."""
    import logging

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", module=r"torch\..*")
            warnings.filterwarnings("ignore", module=r"onnxscript\..*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_onnx(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                 arch: str) -> tuple[bytes, int]:
    """torch.export-based ONNX export (the default since torch 2.9; the TorchScript-based one is deprecated),
    serialised in memory: the model file's bytes and the opset written."""
    import torch

    example = inputs[:2] if dynamic_batch else inputs[:1]  # a batch of 1 would be specialised to 1
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    try:
        program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=opset, dynamo=True, external_data=False,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        proto = program.model_proto
        data = proto.SerializeToString()
    except Exception as error:  # the exporter raises many types; the message is what matters
        reason = first_line(error, 200)
        target = f" at opset {opset}" if opset else ""
        raise CnnctlError(f"could not export {arch} to ONNX{target}: {reason}",
                          hint="try another --opset, or --debug for the traceback") from error
    written = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:  # the exporter falls back silently when it cannot convert
        raise CnnctlError(f"could not export {arch} to ONNX opset {opset}: the exporter could only write opset "
                          f"{written}; nothing was written", hint=f"use --opset {written}, or leave it out")
    return data, written


def _onnx_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        return torch.from_numpy(logits).float()

    return run


def _export_torchscript(model: torch.nn.Module, inputs: torch.Tensor, *, dynamic_batch: bool, opset: int | None,
                        arch: str) -> tuple[bytes, None]:
    """Traced, not scripted: tracing takes any model that runs, and verification checks that it traced well.
    Saved to memory (a full disk would abort inside libtorch's writer); the caller writes the bytes."""
    import io

    import torch

    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, inputs[:1], check_trace=False)  # verified below, on 16 images
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    except Exception as error:
        reason = first_line(error, 200)
        raise CnnctlError(f"could not export {arch} to TorchScript: {reason}",
                          hint="--debug shows the traceback") from error
    return buffer.getvalue(), None


def _torchscript_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    import io

    import torch

    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")  # the model just traced, not an untrusted file

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return loaded(batch).float()

    return run


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
        "output": f"logits, N x {meta.num_classes}; softmax(logits / temperature) gives class probabilities in "
                  "the order of classes" + ("; answer 'unknown' when the top probability is below reject_below"
                                            if threshold is not None else ""),
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
        "verification": {"max_abs_diff": result.max_abs_diff, "tolerance": result.tolerance,
                         "inputs": result.verified_on},
    }
    document["exports"] = dict(sorted(exports.items()))
    return document


def _other_exports(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """Entries of an earlier export beside this one, kept if their file is still there and the preprocessing
    they were verified with is the same."""
    try:
        earlier = json.loads(path.read_text())
        exports = dict(earlier["exports"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    shared = ("format", "arch", "classes", "channels", "image_size", "resize", "interpolation", "pad", "mean", "std",
              "input_shape")
    if any(earlier.get(key) != document[key] for key in shared):
        return {}
    return {name: entry for name, entry in exports.items() if (path.parent / name).is_file()}


# The entries call the functions by name, so a test (or a plugin) that replaces one is used.
register_format(ExportFormat("onnx", "ONNX, run by onnxruntime (pip install 'cnnctl[onnx]')", ".onnx",
                             lambda *args, **kwargs: _export_onnx(*args, **kwargs),
                             lambda data: _onnx_runner(data), require=lambda: require_onnx(), has_opset=True))
register_format(ExportFormat("torchscript", "TorchScript (traced), run by torch.jit.load", ".torchscript.pt",
                             lambda *args, **kwargs: _export_torchscript(*args, **kwargs),
                             lambda data: _torchscript_runner(data)))
