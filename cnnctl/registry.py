"""Name → architecture / dataset registry.

Entries are plain metadata plus a builder, declared at import time by the file that implements them
(``@register_model`` / ``register_dataset``). Importing the registry never imports torch: builders import it
when called, so ``cnnctl list`` stays instant.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnctl.errors import UsageError

_PACKAGES_TO_SCAN = ("cnnctl.models", "cnnctl.data")


@dataclass(frozen=True)
class ModelSpec:
    """What an architecture is and how to build it.

    ``builder(num_classes=, in_channels=, **arch_args)`` returns an ``nn.Module``.
    ``input_size`` is the (H, W) the model was designed for; ``fixed_input`` means it only accepts that size
    (its classifier is sized for it), so data of another size is padded or resized to fit.
    """

    name: str
    builder: Callable[..., Any]
    description: str
    family: str
    input_size: tuple[int, int]
    in_channels: int = 1
    fixed_input: bool = False
    min_input: int = 1
    params: int | None = None  # at the default input and 10 classes; checked by the tests
    source: str = "cnnctl"  # "cnnctl" or "torchvision"
    classifier: str = "fc"  # prefix of the final layer's parameters (reset for a new number of classes)
    default_args: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()  # other names that resolve to this one (e.g. "tv:mobilenet_v3_small")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's metadata and loader.

    ``loader(root, split)`` returns an ``ImageTensors`` (uint8 N×C×H×W images and int64 labels) and
    ``files`` lists what ``cnnctl download`` fetches and verifies. ``extra["prepare"]``, if set, is called with
    the dataset's folder after a download (e.g. to unpack an archive) so the data is ready before first use;
    ``extra["download_hint"]`` is said when there is nothing to download.

    Datasets that are not fixed tensors (an image folder: classes, size and mean/std depend on the folder) give
    their own ``prepare(config, model_spec, log) -> PreparedData`` (training's train/val/test, fitted to the
    model) and ``eval_split(meta, split, *, root, mirror, data_dir, log) -> ImageTensors`` (the split a
    checkpoint is evaluated on, rebuilt as training chose it); without them :mod:`cnnctl.data.splits` loads
    ``loader``'s splits, holds out validation and rebuilds it the same way.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    loader: Callable[..., Any]
    files: tuple[Any, ...] = ()
    mirrors: tuple[str, ...] = ()
    default_val_split: int = 5000
    augment: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None  # folder under the data root; default: name (cifar100-coarse shares cifar100's)
    prepare: Callable[..., Any] | None = None
    eval_split: Callable[..., Any] | None = None

    @property
    def storage_name(self) -> str:
        return self.storage or self.name


_MODELS: dict[str, ModelSpec] = {}
_DATASETS: dict[str, DatasetSpec] = {}
# name prefix → function giving the spec of "prefix:NAME" on first use (libraries with thousands of models, timm)
_RESOLVERS: dict[str, Callable[[str], ModelSpec]] = {}
_loaded = False


def register_model(
    name: str, *, description: str, family: str, input_size: tuple[int, int], **metadata: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder`` under ``name``."""

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise ValueError(f"architecture {name!r} registered twice")
        _MODELS[name] = ModelSpec(
            name=name, builder=builder, description=description, family=family, input_size=input_size, **metadata
        )
        return builder

    return decorate


def add_model(spec: ModelSpec) -> None:
    """Register a ready-made spec (for families that register many names in a loop)."""
    if spec.name in _MODELS:
        raise ValueError(f"architecture {spec.name!r} registered twice")
    _MODELS[spec.name] = spec


def register_model_resolver(prefix: str, resolver: Callable[[str], ModelSpec]) -> None:
    """Register a family lazily: ``resolver(NAME)`` builds the spec of ``prefix + NAME`` when it is first asked
    for, so listing and ``--help`` never import the library behind it."""
    _RESOLVERS[prefix.lower()] = resolver


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _DATASETS:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    _DATASETS[spec.name] = spec
    return spec


def _load_all() -> None:
    """Import every module of the model and data packages so that they register themselves."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in _PACKAGES_TO_SCAN:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")


MAX_SUGGESTIONS = 8


def close_names(name: str, known: list[str]) -> list[str]:
    """The names ``name`` may have meant: those it begins (``resnet`` → every resnet, ``tv:resnet18`` too),
    then the closest spelling (``resnt18`` → resnet18)."""
    typed = name.strip().lower().replace("-", "_")
    begun = [candidate for candidate in known if len(typed) >= 2 and any(
        part.lower().replace("-", "_").startswith(typed) for part in (candidate, candidate.split(":")[-1]))]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return list(dict.fromkeys([*begun, *close]))


def _unknown(kind: str, name: str, known: list[str]) -> UsageError:
    close = close_names(name, known)
    if close:
        shown = ", ".join(close[:MAX_SUGGESTIONS]) + (" ..." if len(close) > MAX_SUGGESTIONS else "")
        return UsageError(f"unknown {kind} {name!r}: did you mean {shown}?")
    return UsageError(f"unknown {kind} {name!r}; choose one of: {', '.join(known)}")


def models() -> dict[str, ModelSpec]:
    _load_all()
    return dict(_MODELS)


def datasets() -> dict[str, DatasetSpec]:
    _load_all()
    return dict(_DATASETS)


def get_model_spec(name: str) -> ModelSpec:
    _load_all()
    key = name.strip()
    if key in _MODELS:
        return _MODELS[key]
    lowered = key.lower().replace("-", "_")
    for spec in _MODELS.values():
        if lowered in (candidate.lower().replace("-", "_") for candidate in (spec.name, *spec.aliases)):
            return spec
    for prefix, resolver in _RESOLVERS.items():
        if key.lower().startswith(prefix):
            spec = resolver(key[len(prefix):])
            _MODELS.setdefault(spec.name, spec)
            return _MODELS[spec.name]
    raise _unknown("architecture", name, sorted(_MODELS))


def get_dataset_spec(name: str) -> DatasetSpec:
    _load_all()
    key = name.strip().lower().replace("_", "-")
    if key in _DATASETS:
        return _DATASETS[key]
    raise _unknown("dataset", name, sorted(_DATASETS))


def suggest(name: str, choices: list[str], kind: str) -> UsageError:
    """An error for a value that is not among ``choices``, with a close match if there is one."""
    return _unknown(kind, name, choices)


def arch_options(spec: Any) -> set[str]:
    """The builder arguments an architecture accepts besides ``num_classes``/``in_channels``: its builder's
    named parameters, plus ``default_args`` for builders that pass options through (the torchvision zoo)."""
    import inspect

    named = {
        parameter.name for parameter in inspect.signature(spec.builder).parameters.values()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    return (named | set(spec.default_args)) - {"num_classes", "in_channels"}


def check_arch_args(spec: Any, arch_args: dict[str, Any]) -> None:
    """Refuse options the architecture does not have (``--dropout`` on a head without dropout) or out of range."""
    accepted = arch_options(spec)
    for key, value in arch_args.items():
        if key not in accepted:
            if key == "dropout":
                raise UsageError(f"{spec.name} has no dropout before its classifier, so --dropout cannot be set",
                                 hint="leave --dropout out, or pick an architecture whose head has dropout")
            raise suggest(key, sorted(accepted) or ["(none)"], f"option for {spec.name}:")
        if key == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UsageError(f"--dropout must be in [0, 1), got {value}")
