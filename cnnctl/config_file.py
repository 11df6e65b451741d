"""``--config FILE`` for ``cnnctl train``: YAML, TOML or JSON holding any TrainConfig option.

Precedence: TrainConfig's defaults < the file < options given on the command line. Keys may be written
``batch_size`` or ``batch-size``. Each value is checked against the option's type, so a wrong key or value is
one clear line before any work starts. A run folder's ``config.yaml`` is such a file: passing it back
reproduces the run.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from cnnctl.config import TrainConfig
from cnnctl.errors import UsageError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping, keys normalised to field names (not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--config {path}: cannot read it ({error})") from error
    try:
        if suffix in (".yaml", ".yml"):
            data = _yaml().safe_load(text)
        elif suffix == ".toml":
            data = _toml().loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"--config {path}: unknown format {suffix or '(no suffix)'}",
                             hint="use a .yaml, .yml, .toml or .json file")
    except UsageError:
        raise
    except Exception as error:  # each parser has its own error type; all mean "not valid syntax"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--config {path}: not valid {suffix[1:].upper()} ({first})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as error:
        raise UsageError("reading YAML needs PyYAML",
                         hint="pip install pyyaml, or use a .toml or .json file") from error
    return yaml


def _toml() -> Any:
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib  # Python 3.10
        except ImportError as error:
            raise UsageError("reading TOML on Python 3.10 needs tomli",
                             hint="pip install tomli, or use a .yaml or .json file") from error
    return tomllib


def coerce_options(values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Check every key names a TrainConfig field and convert each value to the field's type."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    result = {}
    for key, value in values.items():
        if key not in known:
            from cnnctl.registry import suggest

            raise suggest(key, sorted(known), f"option in {source}:")
        result[key] = _coerce(value, hints[key], f"{source}: {key}")
    return result


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float):
        try:
            number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if annotation is int:
            if number is None or not number.is_integer():
                raise UsageError(f"{where} must be a whole number, got {value!r}")
            return int(value) if isinstance(value, int) else int(number)
        if number is None:
            raise UsageError(f"{where} must be a number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where} must be a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [item for item in value.replace(" ", "").split(",") if item]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {value!r}")
        return [_coerce(item, args[0], where) for item in value]
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise UsageError(f"{where} must be a mapping, got {value!r}")
    return value


def build_train_config(options: dict[str, Any], config_file: str | Path | None = None, *,
                       source: str = "the command line") -> TrainConfig:
    """TrainConfig from ``options`` (given explicitly: on the command line, or to ``cnnctl.train()``) over
    ``config_file``; ``source`` names where the options came from in error messages."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(coerce_options(read_config_file(config_file), source=str(config_file)))
    values.update(coerce_options(options, source=source))
    if not values.get("arch"):
        raise UsageError("name an architecture to train", hint="e.g. `cnnctl train lenet5`, or put `arch:` in --config")
    return TrainConfig(**values)


def dump_yaml(config: TrainConfig) -> str | None:
    """The configuration as YAML (None without PyYAML)."""
    try:
        import yaml
    except ImportError:
        return None
    header = "# cnnctl train configuration; `cnnctl train --config <this file>` runs it again\n"
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def save_run_config(config: TrainConfig, run_dir: Path) -> None:
    """``config.json`` (always) and ``config.yaml`` (with PyYAML) in the run folder."""
    from cnnctl.fsutil import atomic_write_text

    config.save(run_dir / "config.json")
    text = dump_yaml(config)
    if text is not None:
        atomic_write_text(run_dir / "config.yaml", text)
