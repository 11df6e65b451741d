"""The checkpoint file: a safetensors file, its bounded header read, writing it atomically, reading its tensors.

The lowest floor of the checkpoint package (format -> schema -> load). Tensor names are the model's own
``state_dict()`` keys, so a file also loads into the plain model with
``model.load_state_dict(safetensors.torch.load_file(path))``. Metadata is one JSON document under the key
``cnnctl``. Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import platform
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import filekind
from cnnctl.errors import CheckpointError, first_line
from cnnctl.filekind import IMAGE_SUFFIXES
from cnnctl.fsutil import atomic_path, os_reason
from cnnctl.version import __version__

if TYPE_CHECKING:
    import torch

    from cnnctl.checkpoint.schema import CheckpointMeta

FORMAT_VERSION = 1
METADATA_KEY = "cnnctl"
MAX_HEADER_BYTES = 16 * 2**20  # a ResNet-50 header is ~40 KB; safetensors itself allows 100 MB
MAX_TENSORS = 50_000  # DenseNet-121 has ~1,000
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
COUNTER_DTYPES = ("I64", "I32")  # BatchNorm's num_batches_tracked
COUNTER_SUFFIX = "num_batches_tracked"
DAMAGED_HINT = "the file is damaged or was not written by cnnctl; train again or use the original file"


def versions() -> dict[str, str]:
    import torch

    found = {"cnnctl": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return found


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself inside its training wrappers: DistributedDataParallel's ``.module``, then
    ``torch.compile``'s ``_orig_mod`` (whose state-dict keys carry the wrappers' prefixes)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as standalone contiguous CPU tensors (safetensors refuses shared storage)."""
    model = unwrap(model)
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}


def save(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state_tensors(model), str(tmp), metadata={METADATA_KEY: meta.to_json()})
    return path


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = existing_checkpoint(path)
    check_dtypes(read_header(path).tensors, str(path))  # bounded, before safetensors parses the header itself
    try:
        return load_file(str(path))
    except Exception as error:
        raise _not_safetensors(path, error) from error


def existing_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: the file itself, or a run folder's best (else last) checkpoint."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:  # permission denied on a folder on the way, a name too long, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(error)}",
                              hint="check the permissions of the file and its folders") from error
    if mode is not None and stat.S_ISDIR(mode):
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise not_a_run_folder(path)
    if mode is None or not stat.S_ISREG(mode):
        what = "does not exist" if mode is None else "is not a regular file"
        raise CheckpointError(f"checkpoint {path} {what}", hint="pass a .safetensors file or a run folder")
    return path


def not_a_run_folder(path: Path) -> CheckpointError:
    """A folder given where a checkpoint was expected: what it holds instead, and what to pass."""
    if (path / "config.json").is_file() and ((path / ".lock").is_file() or (path / "state.safetensors").is_file()):
        return CheckpointError(f"the run in {path} has no checkpoint yet (it has not finished an epoch)",
                               hint="wait for its first epoch, or pass another run")
    if _holds_images(path):
        return CheckpointError(f"{path} is a folder of images, not a run folder",
                               hint=f"pass a run folder (runs/ARCH-DATA/N) or a .safetensors checkpoint; to "
                                    f"classify these images: cnnctl predict CHECKPOINT {path}")
    return CheckpointError(f"{path} is not a run folder: it holds no best.safetensors or last.safetensors",
                           hint="pass a run folder written by `cnnctl train` (runs/ARCH-DATA/N) or a "
                                ".safetensors checkpoint")


def _holds_images(folder: Path, depth: int = 3, per_folder: int = 20) -> bool:
    """Whether ``folder`` holds image files within ``depth`` levels (``photos/train/cats/x.png``), looking at a
    bounded number of entries per folder (a class folder may hold thousands)."""
    import itertools

    try:
        entries = list(itertools.islice(folder.iterdir(), per_folder))
    except OSError:
        return False
    if any(entry.suffix.lower() in IMAGE_SUFFIXES for entry in entries):
        return True
    return depth > 1 and any(_holds_images(entry, depth - 1, per_folder) for entry in entries
                             if entry.is_dir() and not entry.name.startswith("."))


def _not_safetensors(path: Path, error: Exception) -> CheckpointError:
    text = first_line(error, 120)
    if "incomplete" in text.lower() or "not fully covered" in text:
        text = "the file is truncated, or its header does not match its size"
    elif "deserializing header" in text:  # safetensors' own names (HeaderTooLarge, ...) say nothing to a user
        text = "its header is damaged"
    return not_safetensors(path, text)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Header:
    """A safetensors header: the string metadata and each tensor's dtype and shape (no tensor data read)."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def not_safetensors(path: Path | str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors checkpoint ({reason[:160]})",
                           hint="it may be truncated or another format; cnnctl never unpickles checkpoints")


def wrong_kind_error(path: Path | str, kind: str | None = None) -> CheckpointError | None:
    """The message for a file that is not a cnnctl checkpoint but something cnnctl recognises (an export, a
    PyTorch pickle, an image, a text file...), naming it and what to pass instead; None when ``path`` is a
    safetensors file or of an unknown kind. ``kind``: already sniffed."""
    path = Path(path)
    kind = kind or filekind.sniff(path)
    if path.suffix.lower() == ".onnx" and kind is None:  # ONNX files need not start as exporters write them
        kind = filekind.ONNX
    if kind is None or kind == filekind.SAFETENSORS:
        return None
    run = _run_folder_of(path)
    instead = (f"pass the run folder {run} or its {(run / 'best.safetensors').name}" if run is not None
               else "pass a run folder (runs/ARCH-DATA/N) or its best.safetensors")
    if kind in (filekind.ONNX, filekind.TORCHSCRIPT):
        source = filekind.exported_from(path)
        how = "cnnctl export" if kind == filekind.ONNX else "cnnctl export --format torchscript"
        return CheckpointError(
            f"{path} is {filekind.describe(kind)} (what `{how}` writes), not a cnnctl checkpoint",
            hint=f"pass the .safetensors checkpoint it was exported from{f': {source}' if source else ''}")
    if kind in (filekind.TORCH_SAVE, filekind.PICKLE):
        return CheckpointError(
            f"{path} is a PyTorch pickle file: cnnctl never unpickles files (loading one can run any code it "
            "holds); it evaluates, predicts with and exports its own .safetensors checkpoints",
            hint=f"to start training from these weights: cnnctl train ARCH --pretrained {path}; to classify "
                 f"with ImageNet weights: cnnctl predict {path} --arch ARCH PATH...")
    if kind == filekind.IMAGE:
        return CheckpointError(f"{path} is an image, not a checkpoint",
                               hint=f"to classify it: cnnctl predict CHECKPOINT {path}")
    return CheckpointError(f"{path} is {filekind.describe(kind)}, not a cnnctl checkpoint", hint=instead)


def _run_folder_of(path: Path) -> Path | None:
    """The run folder a file sits in (``runs/lenet5-mnist/1/config.json`` → ``runs/lenet5-mnist/1``)."""
    folder = path.parent
    return folder if (folder / "best.safetensors").is_file() or (folder / "last.safetensors").is_file() else None


def _unreadable_header(path: Path, reason: str) -> CheckpointError:
    """A file whose first bytes are no safetensors header: named by its kind where it is recognised."""
    return wrong_kind_error(path) or not_safetensors(path, reason)


def read_header(path: Path) -> Header:
    """Parse the header, refusing a header over ``MAX_HEADER_BYTES`` or ``MAX_TENSORS`` before parsing it
    (its length is the file's first 8 bytes), and one whose offsets point past the end of the file."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _unreadable_header(path, "the file is empty" if size == 0 else
                                         "the file is too short to hold a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                if filekind.sniff(path) == filekind.SAFETENSORS:  # a header that large is built to exhaust memory
                    raise not_safetensors(path, f"its header claims {length:,} bytes, more than the "
                                                f"{MAX_HEADER_BYTES:,} cnnctl reads")
                raise _unreadable_header(path, "it does not begin with a safetensors header")
            if length > size - 8:
                raise _unreadable_header(path, "it ends inside its own header: the file is truncated (an "
                                               "interrupted copy or download?)")
            raw = handle.read(length)
    except PermissionError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied",
                              hint="check the file's permissions") from error
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(error)}") from error
    if raw.count(b'"data_offsets"') > MAX_TENSORS + 1:  # counted before parsing: a huge table costs seconds
        raise not_safetensors(path, f"it lists more than {MAX_TENSORS:,} tensors, the most cnnctl accepts")
    try:
        document = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise not_safetensors(path, "its header is nested too deeply") from None
    except ValueError as error:
        raise _unreadable_header(path, f"its header is not JSON: {first_line(error, 80)}") from error
    if not isinstance(document, dict):
        raise not_safetensors(path, "its header is not a JSON object")
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise not_safetensors(path, "its __metadata__ is not a map of strings")
    if len(document) > MAX_TENSORS:
        raise not_safetensors(path, f"it lists more than {MAX_TENSORS:,} tensors, the most cnnctl accepts")
    tensors: dict[str, TensorInfo] = {}
    data_size = size - 8 - length
    for name, entry in document.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = (isinstance(dtype, str) and isinstance(shape, list)
                     and all(_is_int(d) and d >= 0 for d in shape) and _is_int(start) and _is_int(end)
                     and 0 <= start <= end <= data_size)
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise not_safetensors(path, f"tensor {name!r} has a damaged entry or lies past the end of the file")
        tensors[name] = TensorInfo(dtype, tuple(shape))
    return Header(metadata, tensors)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_dtypes(tensors: dict[str, TensorInfo], source: str) -> None:
    """Weights are floating point (int8, bool or fp8 "weights" would load and predict nonsense); only BatchNorm's
    batch counters are integers."""
    for name in sorted(tensors):
        allowed = COUNTER_DTYPES if name.endswith(COUNTER_SUFFIX) else FLOAT_DTYPES
        if tensors[name].dtype not in allowed:
            raise CheckpointError(f"{source}: tensor {name} is {tensors[name].dtype}; weights must be "
                                  f"{'/'.join(allowed)}", hint=DAMAGED_HINT)

