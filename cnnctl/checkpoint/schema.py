"""The checkpoint's metadata: :class:`CheckpointMeta` and its schema (types, ranges), checked before anything is
built from it. Sits above the file format (``format.py``) and below loading (``load.py``).

A checkpoint is an untrusted file. Its metadata decides what gets allocated (the architecture's arguments, the
input size, the number of classes), so every field is checked first and a bad one is refused in one message
naming the file and the field. The architecture is then built on the ``meta`` device (shapes only, no memory)
and compared with the tensors listed in the header, so what ``load`` allocates is bounded by the file's size.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Any

from cnnctl.checkpoint.format import DAMAGED_HINT, FORMAT_VERSION, MAX_TENSORS, _is_int, versions
from cnnctl.data.base import Preprocessing
from cnnctl.data.image_stats import STAT_KEYS
from cnnctl.errors import CheckpointError, CnnctlError
from cnnctl.recipe.options import MAX_IMAGE_SIDE  # pixels per side after padding: larger inputs are refused
from cnnctl.registry import arch_options, get_model_spec

MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1_000
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")  # the resize filters torchvision's transforms name
MAX_PAD = 512
MAX_ARCH_INT = 65_536
MAX_TEXT = 4_096
MAX_TEMPERATURE = 100.0  # the calibration temperature's upper bound (cnnctl/engine/calibration.py fits within it)
















# ------------------------------------------------------------------------------------------ the metadata schema




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
    height = check.integer(size[0], "preprocessing.image_size", 1, MAX_IMAGE_SIDE)
    width = check.integer(size[1], "preprocessing.image_size", 1, MAX_IMAGE_SIDE)
    pad = check.integer(prep.get("pad", 0), "preprocessing.pad", 0, MAX_PAD)
    assert channels is not None and height is not None and width is not None and pad is not None
    if max(height, width) + 2 * pad > MAX_IMAGE_SIDE:
        raise check.fail("preprocessing.pad", f"{pad} makes the input {height + 2 * pad}x{width + 2 * pad}, "
                                              f"larger than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}")
    mean = check.numbers(prep.get("mean"), "preprocessing.mean", channels, -1e6, 1e6)
    std = check.numbers(prep.get("std"), "preprocessing.std", channels, 1e-6, 1e6)
    extra = check.obj(prep.get("extra"), "preprocessing.extra", optional=True)
    resize = check.integer(prep.get("resize"), "preprocessing.resize", 1, MAX_IMAGE_SIDE, optional=True)
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
    image_stats = _image_stats(data.get("image_stats"), check)
    task, thresholds = _task(data, len(classes), check)
    label_count = _label_count(data.get("label_count"), task, len(classes), check)
    calibration = _calibration(data.get("calibration"), check)
    distillation = check.obj(data.get("distillation"), "distillation", optional=True)
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
        "pretrained": _pretrained(check.obj(data.get("pretrained"), "pretrained", optional=True), check),
        "image_stats": image_stats,
        "calibration": calibration,
        "distillation": distillation or None,
        "task": task,
        "thresholds": thresholds,
        "label_count": label_count,
    }


TASKS = ("single", "multilabel")


def _task(data: dict[str, Any], classes: int, check: _Checker) -> tuple[str, list[float] | None]:
    """``task`` (single when absent: older checkpoints) and, for multilabel, one decision threshold per class,
    each from 0 to 1."""
    task = check.text(data.get("task", "single"), "task", limit=20)
    if task not in TASKS:
        raise check.fail("task", f"is {_short(task)}; one of {', '.join(TASKS)} expected")
    value = data.get("thresholds")
    if value is None:
        return str(task), None
    if task != "multilabel":
        raise check.fail("thresholds", "is given, but only multi-label checkpoints have thresholds")
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise check.fail("thresholds", f"must be a list of {classes} numbers, not {_short(value)}")
    if len(value) != classes:
        raise check.fail("thresholds", f"has {len(value)} values but there are {classes} classes")
    for v in value:
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise check.fail("thresholds", f"holds {v}, outside 0..1")
    return str(task), [float(v) for v in value]


def _label_count(value: Any, task: str, classes: int, check: _Checker) -> list[int] | None:
    """``label_count``: [fewest, most] labels per image seen in training (multilabel), 0 <= fewest <= most <=
    classes."""
    if value is None:
        return None
    if task != "multilabel":
        raise check.fail("label_count", "is given, but only multi-label checkpoints have one")
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value)):
        raise check.fail("label_count", f"must be [fewest, most], two whole numbers, not {_short(value)}")
    if not 0 <= value[0] <= value[1] <= classes:
        raise check.fail("label_count", f"is {value}; 0 <= fewest <= most <= {classes} (the classes) expected")
    return [int(v) for v in value]



def _calibration(value: Any, check: _Checker) -> dict[str, Any] | None:
    """What ``cnnctl calibrate`` stored: a temperature in (0, 100], a threshold in [0, 1] or null, and numbers."""
    if value is None:
        return None
    found = check.obj(value, "calibration")
    temperature = found.get("temperature")
    if not _is_number(temperature) or not (math.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
        raise check.fail("calibration.temperature", f"must be a number in (0, {MAX_TEMPERATURE:g}], not "
                                                    f"{_short(temperature)}")
    threshold = found.get("threshold")
    if threshold is not None and (not _is_number(threshold) or not 0 <= threshold <= 1):
        raise check.fail("calibration.threshold", f"must be a number from 0 to 1 or null, not {_short(threshold)}")
    for key, number in found.items():
        if key == "split":
            check.text(number, "calibration.split", limit=20)
        elif not (number is None or _is_number(number)):
            raise check.fail(f"calibration.{key}", f"must be a number, not {_type_name(number)}")
    return dict(found)


def _pretrained(found: dict[str, Any], check: _Checker) -> dict[str, Any]:
    """The weights a run started from; its order mapping (file key → model key) must be names."""
    mapping = check.obj(found.get("mapping"), "pretrained.mapping", optional=True)
    if len(mapping) > MAX_TENSORS:
        raise check.fail("pretrained.mapping", f"has {len(mapping):,} pairs (at most {MAX_TENSORS:,})")
    for theirs, ours in mapping.items():
        check.text(ours, f"pretrained.mapping[{_short(theirs)}]", limit=MAX_TEXT)
    return found


def _image_stats(value: Any, check: _Checker) -> dict[str, float] | None:
    """The training images' statistics (cnnctl/data/image_stats.py): optional (older checkpoints have none); every
    level a number from 0 to 1."""
    if value is None:
        return None
    stats = check.obj(value, "image_stats")
    for key in STAT_KEYS:
        level = stats.get(key)
        if not _is_number(level) or not 0 <= level <= 1:
            raise check.fail(f"image_stats.{key}", f"must be a number from 0 to 1, not {_short(level)}")
    return {key: float(stats[key]) for key in STAT_KEYS}


def _model_spec(arch: str, check: _Checker) -> Any:
    try:
        return get_model_spec(arch)
    except CnnctlError as error:
        raise check.fail("arch", f"names an architecture this cnnctl does not have ({error.message})") from None


def _arch_args(args: dict[str, Any], spec: Any, check: _Checker) -> dict[str, Any]:
    """Each argument must be one the builder takes, of the type of its default, in range."""
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






@dataclass
class CheckpointMeta:
    arch: str
    arch_args: dict[str, Any]
    classes: list[str]
    preprocessing: Preprocessing
    dataset: str | None = None
    data_dir: str | None = None
    epoch: int | None = None
    metrics: dict[str, float] | None = None
    versions: dict[str, str] | None = None
    config: dict[str, Any] | None = None  # the training options (to rebuild the validation split, to resume)
    pretrained: dict[str, Any] | None = None  # the weights it started from (PretrainedReport.to_dict())
    image_stats: dict[str, float] | None = None  # how the training images look (cnnctl/data/image_stats.py)
    calibration: dict[str, Any] | None = None  # `cnnctl calibrate`: temperature, threshold (engine/calibration.py)
    distillation: dict[str, Any] | None = None  # --teacher: the teacher and the loss's settings (engine/distill.py)
    task: str = "single"  # or "multilabel": a sigmoid per class, labels at or above ``thresholds``
    thresholds: list[float] | None = None  # multilabel: each class's decision threshold (tuned on validation)
    label_count: list[int] | None = None  # multilabel: [fewest, most] labels per training image; decisions keep to it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def resolved_thresholds(self) -> list[float]:
        """Each class's decision threshold (multilabel; 0.5 where none were tuned)."""
        return list(self.thresholds) if self.thresholds is not None else [0.5] * self.num_classes

    @property
    def label_count_range(self) -> tuple[int, int] | None:
        """(fewest, most) labels per image the decisions keep to (multilabel; None: any number)."""
        return (self.label_count[0], self.label_count[1]) if self.label_count is not None else None

    def to_json(self) -> str:
        document = (
            {
                "format": FORMAT_VERSION,
                "arch": self.arch,
                "arch_args": self.arch_args,
                "num_classes": self.num_classes,
                "classes": self.classes,
                "preprocessing": self.preprocessing.to_dict(),
                "input_shape": list(self.preprocessing.input_shape),
                "dataset": self.dataset,
                "data_dir": self.data_dir,
                "epoch": self.epoch,
                "metrics": self.metrics or {},
                "versions": self.versions or versions(),
                "config": self.config or {},
                **({"image_stats": self.image_stats} if self.image_stats else {}),
            }
        )
        if self.pretrained:  # absent otherwise: a checkpoint trained from scratch reads as before
            document["pretrained"] = self.pretrained
        if self.calibration:
            document["calibration"] = self.calibration
        if self.distillation:
            document["distillation"] = self.distillation
        if self.task != "single":  # likewise: a single-label checkpoint reads as before
            document["task"] = self.task
            document["thresholds"] = self.resolved_thresholds
            if self.label_count is not None:
                document["label_count"] = list(self.label_count)
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> CheckpointMeta:
        """Parse metadata checked against the schema (``schema``): a bad field is one error naming it."""
        data = parse_document(text, source)
        return cls(
            arch=data["arch"],
            arch_args=data["arch_args"],
            classes=data["classes"],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            dataset=data["dataset"],
            data_dir=data["data_dir"],
            epoch=data["epoch"],
            metrics=data["metrics"],
            versions=data["versions"],
            config=data["config"],
            pretrained=data["pretrained"] or None,
            image_stats=data["image_stats"],
            calibration=data["calibration"],
            distillation=data["distillation"],
            task=data["task"],
            thresholds=data["thresholds"],
            label_count=data["label_count"],
        )
