"""Checking a checkpoint before anything is built from it: a bounded read of the safetensors header, the cnnctl
metadata against a schema (types, ranges), and the tensors against the architecture the metadata describes.

A checkpoint is an untrusted file. Its metadata decides what gets allocated (the architecture's arguments, the
input size, the number of classes), so every field is checked first and a bad one is refused in one message
naming the file and the field. The architecture is then built on the ``meta`` device (shapes only, no memory)
and compared with the tensors listed in the header, so what ``load`` allocates is bounded by the file's size.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError, CnnctlError, first_line

MAX_HEADER_BYTES = 16 * 2**20  # a ResNet-50 header is ~40 KB; safetensors itself allows 100 MB
MAX_TENSORS = 50_000  # DenseNet-121 has ~1,000
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1_000
MAX_INPUT_SIDE = 2048  # pixels per side after padding: larger inputs are refused, not attempted
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")  # the resize filters torchvision's transforms name
MAX_PAD = 512
MAX_ARCH_INT = 65_536
MAX_TEXT = 4_096
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
COUNTER_DTYPES = ("I64", "I32")  # BatchNorm's num_batches_tracked
COUNTER_SUFFIX = "num_batches_tracked"
DAMAGED_HINT = "the file is damaged or was not written by cnnctl; train again or use the original file"


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


def read_header(path: Path) -> Header:
    """Parse the header, refusing a header over ``MAX_HEADER_BYTES`` or ``MAX_TENSORS`` before parsing it
    (its length is the file's first 8 bytes), and one whose offsets point past the end of the file."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise not_safetensors(path, f"{size} bytes, shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise not_safetensors(path, f"its header claims {length:,} bytes, more than the "
                                            f"{MAX_HEADER_BYTES:,} cnnctl reads")
            if length > size - 8:
                raise not_safetensors(path, f"its header claims {length:,} bytes but the file has {size:,}")
            raw = handle.read(length)
    except PermissionError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied",
                              hint="check the file's permissions") from error
    except OSError as error:
        from cnnctl.fsutil import os_reason

        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(error)}") from error
    if raw.count(b'"data_offsets"') > MAX_TENSORS + 1:  # counted before parsing: a huge table costs seconds
        raise not_safetensors(path, f"it lists more than {MAX_TENSORS:,} tensors, the most cnnctl accepts")
    try:
        document = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise not_safetensors(path, "its header is nested too deeply") from None
    except ValueError as error:
        raise not_safetensors(path, f"its header is not JSON: {error}") from error
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


# ------------------------------------------------------------------------------------------ the metadata schema


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


class _Checker:
    """Raises one ``CheckpointError`` naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: checkpoint metadata field {field!r} {problem}", hint=DAMAGED_HINT)

    def obj(self, value: Any, field: str, *, optional: bool = False) -> dict[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, not {_type_name(value)}")
        return value

    def text(self, value: Any, field: str, *, optional: bool = False, limit: int = MAX_TEXT) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, not {_type_name(value)}")
        if len(value) > limit:
            raise self.fail(field, f"is {len(value):,} characters long (at most {limit:,})")
        return value

    def integer(self, value: Any, field: str, low: int, high: int, *, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if not _is_int(value):
            raise self.fail(field, f"must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(field, f"is {value}, outside {low}..{high:,}")
        return int(value)

    def numbers(self, value: Any, field: str, count: int, low: float, high: float) -> tuple[float, ...]:
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise self.fail(field, f"must be a list of {count} numbers, not {_short(value)}")
        if len(value) != count:
            raise self.fail(field, f"has {len(value)} values but the input has {count} channel(s)")
        for v in value:
            if not (math.isfinite(v) and low <= v <= high):
                raise self.fail(field, f"holds {v}, outside {low:g}..{high:g}")
        return tuple(float(v) for v in value)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_document(text: str, source: str) -> dict[str, Any]:
    """The metadata JSON checked against the schema; raises ``CheckpointError`` naming the file and the field."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{source}: its cnnctl metadata is nested too deeply to be cnnctl's",
                              hint=DAMAGED_HINT) from None
    except ValueError as error:
        raise CheckpointError(f"{source}: its cnnctl metadata is not JSON ({error})", hint=DAMAGED_HINT) from error
    check = _Checker(source)
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: its cnnctl metadata must be a JSON object, not {_type_name(data)}",
                              hint=DAMAGED_HINT)
    from cnnctl.checkpoint import FORMAT_VERSION

    version = data.get("format", 0)
    check.integer(version, "format", 0, 2**31)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source} was written by a newer cnnctl (format {version})", hint="upgrade cnnctl")

    arch = check.text(data.get("arch"), "arch", limit=200)
    spec = _model_spec(arch, check)  # type: ignore[arg-type]
    arch_args = _arch_args(check.obj(data.get("arch_args"), "arch_args", optional=True), spec, check)

    classes = data.get("classes")
    if not isinstance(classes, list):
        raise check.fail("classes", f"must be a list of class names, not {_type_name(classes)}")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise check.fail("classes", f"has {len(classes):,} names (2..{MAX_CLASSES:,} expected)")
    for index, name in enumerate(classes):
        check.text(name, f"classes[{index}]", limit=MAX_CLASS_NAME)
        if not name:
            raise check.fail(f"classes[{index}]", "is empty")
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise check.fail("classes", f"names {name!r} twice")
        seen.add(name)
    if "num_classes" in data and data["num_classes"] != len(classes):
        raise check.fail("num_classes", f"is {_short(data['num_classes'])} but 'classes' has {len(classes)} names")

    prep = check.obj(data.get("preprocessing"), "preprocessing")
    channels = check.integer(prep.get("channels"), "preprocessing.channels", 1, 3)
    if channels == 2:
        raise check.fail("preprocessing.channels", "is 2 (1 for grey or 3 for colour expected)")
    size = prep.get("image_size")
    if not isinstance(size, list) or len(size) != 2:
        raise check.fail("preprocessing.image_size", f"must be [height, width], not {_short(size)}")
    height = check.integer(size[0], "preprocessing.image_size", 1, MAX_INPUT_SIDE)
    width = check.integer(size[1], "preprocessing.image_size", 1, MAX_INPUT_SIDE)
    pad = check.integer(prep.get("pad", 0), "preprocessing.pad", 0, MAX_PAD)
    assert channels is not None and height is not None and width is not None and pad is not None
    if max(height, width) + 2 * pad > MAX_INPUT_SIDE:
        raise check.fail("preprocessing.pad", f"{pad} makes the input {height + 2 * pad}x{width + 2 * pad}, "
                                              f"larger than {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}")
    mean = check.numbers(prep.get("mean"), "preprocessing.mean", channels, -1e6, 1e6)
    std = check.numbers(prep.get("std"), "preprocessing.std", channels, 1e-6, 1e6)
    extra = check.obj(prep.get("extra"), "preprocessing.extra", optional=True)
    resize = check.integer(prep.get("resize"), "preprocessing.resize", 1, MAX_INPUT_SIDE, optional=True)
    interpolation = check.text(prep.get("interpolation"), "preprocessing.interpolation", optional=True, limit=20)
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise check.fail("preprocessing.interpolation", f"is {_short(interpolation)}; one of "
                                                        f"{', '.join(INTERPOLATIONS)} expected")
    input_shape = [channels, height + 2 * pad, width + 2 * pad]
    if "input_shape" in data and data["input_shape"] != input_shape:
        raise check.fail("input_shape", f"is {_short(data['input_shape'])} but the preprocessing gives "
                                        f"{input_shape}")

    metrics = check.obj(data.get("metrics"), "metrics", optional=True)
    for key, value in metrics.items():
        if not (value is None or _is_number(value)):
            raise check.fail(f"metrics.{key}", f"must be a number, not {_type_name(value)}")
    versions = check.obj(data.get("versions"), "versions", optional=True)
    for key, value in versions.items():
        check.text(value, f"versions.{key}", limit=200)
    return {
        "arch": arch,
        "arch_args": arch_args,
        "classes": list(classes),
        "preprocessing": {"channels": channels, "image_size": [height, width], "pad": pad, "mean": list(mean),
                          "std": list(std), "extra": extra, "resize": resize,
                          "interpolation": interpolation or "bilinear"},
        "dataset": check.text(data.get("dataset"), "dataset", optional=True, limit=200),
        "data_dir": check.text(data.get("data_dir"), "data_dir", optional=True),
        "epoch": check.integer(data.get("epoch"), "epoch", 0, 2**31, optional=True),
        "metrics": metrics,
        "versions": versions,
        "config": check.obj(data.get("config"), "config", optional=True),
    }


def _model_spec(arch: str, check: _Checker) -> Any:
    from cnnctl.registry import get_model_spec

    try:
        return get_model_spec(arch)
    except CnnctlError as error:
        raise check.fail("arch", f"names an architecture this cnnctl does not have ({error.message})") from None


def _arch_args(args: dict[str, Any], spec: Any, check: _Checker) -> dict[str, Any]:
    """Each argument must be one the builder takes, of the type of its default, in range."""
    import inspect

    from cnnctl.models import arch_options

    accepted = arch_options(spec)
    defaults = dict(spec.default_args)
    for parameter in inspect.signature(spec.builder).parameters.values():
        if parameter.default is not inspect.Parameter.empty:
            defaults.setdefault(parameter.name, parameter.default)
    for key, value in args.items():
        field = f"arch_args.{key}"
        if key not in accepted:
            takes = ", ".join(sorted(accepted)) or "none"
            raise check.fail(field, f"is not an option of {spec.name} (it takes {takes})")
        default = defaults.get(key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise check.fail(field, f"must be true or false, not {_short(value)}")
        elif isinstance(default, int):
            check.integer(value, field, 1, MAX_ARCH_INT)
        elif isinstance(default, float):
            if not _is_number(value) or not math.isfinite(value):
                raise check.fail(field, f"must be a number, not {_short(value)}")
            if key == "dropout" and not 0 <= value < 1:
                raise check.fail(field, f"is {value}, outside [0, 1)")
        elif isinstance(default, str):
            check.text(value, field, limit=200)
        elif not (value is None or isinstance(value, (bool, int, float, str))):
            raise check.fail(field, f"must be a plain value, not {_type_name(value)}")
    return dict(args)


# ------------------------------------------------------------------------------- the tensors vs the metadata


def shape_problems(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> list[str]:
    """What differs between the tensor names and shapes an architecture has and those a file holds."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{name} {tuple(found[name])} vs {tuple(expected[name])}"
                  for name in expected if name in found and tuple(found[name]) != tuple(expected[name])]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    return problems


def _few(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_dtypes(tensors: dict[str, TensorInfo], source: str) -> None:
    """Weights are floating point (int8, bool or fp8 "weights" would load and predict nonsense); only BatchNorm's
    batch counters are integers."""
    for name in sorted(tensors):
        allowed = COUNTER_DTYPES if name.endswith(COUNTER_SUFFIX) else FLOAT_DTYPES
        if tensors[name].dtype not in allowed:
            raise CheckpointError(f"{source}: tensor {name} is {tensors[name].dtype}; weights must be "
                                  f"{'/'.join(allowed)}", hint=DAMAGED_HINT)


def check_tensors(meta: Any, tensors: dict[str, TensorInfo], source: str) -> None:
    """Weights must be floating point, and their names and shapes those of the architecture the metadata
    describes (built on the ``meta`` device: no memory, whatever the arguments say) at its input size."""
    check_dtypes(tensors, source)
    import torch

    from cnnctl.models import build_from_meta
    from cnnctl.registry import get_model_spec

    spec = get_model_spec(meta.arch)
    channels, height, width = meta.preprocessing.input_shape
    if spec.fixed_input and (height, width) != tuple(spec.input_size):
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing.image_size' gives "
                              f"{height}x{width} inputs (with padding), but {spec.name} takes "
                              f"{spec.input_size[0]}x{spec.input_size[1]}", hint=DAMAGED_HINT)
    if not spec.fixed_input and min(height, width) < spec.min_input:
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing.image_size' gives "
                              f"{height}x{width} inputs, smaller than the {spec.min_input}x{spec.min_input} "
                              f"{spec.name} needs", hint=DAMAGED_HINT)
    try:
        with torch.device("meta"):
            model = build_from_meta(meta)
    except NotImplementedError:  # a builder that computes with tensors (RegNet): load compares the shapes
        return
    except CnnctlError as error:
        raise CheckpointError(f"{source}: checkpoint metadata field 'arch_args' is refused: {error.message}",
                              hint=DAMAGED_HINT) from None
    except Exception as error:  # noqa: BLE001 - a builder refusing its arguments (negative sizes, ...)
        raise CheckpointError(f"{source}: checkpoint metadata field 'arch_args' {_short(meta.arch_args)} cannot "
                              f"build {meta.arch} ({type(error).__name__}: {first_line(error, 120)})",
                              hint=DAMAGED_HINT) from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = shape_problems(expected, {name: info.shape for name, info in tensors.items()})
    if problems:
        described = f"{meta.arch} with arch_args {json.dumps(meta.arch_args)}" if meta.arch_args else meta.arch
        raise CheckpointError(f"{source} does not match its architecture ({described}): {'; '.join(problems)}")
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, channels, height, width, device="meta"))
    except NotImplementedError:
        return
    except Exception as error:  # noqa: BLE001 - the input size does not fit the layers
        raise CheckpointError(f"{source}: checkpoint metadata field 'preprocessing' gives {channels}x{height}x"
                              f"{width} inputs, which {meta.arch} cannot take ({first_line(error, 120)})",
                              hint=DAMAGED_HINT) from None
