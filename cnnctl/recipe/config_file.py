"""``--config FILE`` for ``cnnctl train``: YAML, TOML or JSON holding any TrainConfig option.

Precedence: TrainConfig's defaults < the file < options given on the command line. Keys are the options' names
(cnnctl/recipe/options.py), written ``batch_size`` or ``batch-size``; older names (``data_dir``) are accepted. Each
value is checked against the option's type and range, so a wrong key or value is
one clear line before any work starts. A run folder's ``config.yaml`` is such a file: passing it back
reproduces the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError, first_line
from cnnctl.fsutil import atomic_write_text
from cnnctl.recipe.config import TrainConfig, config_from_options
from cnnctl.recipe.options import coerce_mapping

MAX_CONFIG_BYTES = 1_000_000  # a configuration is a few hundred bytes; anything near this is not one
MAX_CONFIG_DEPTH = 8  # options are flat; arch_args adds one level


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping, keys as written (checked by :func:`coerce_options`). The file is untrusted input:
    its size and nesting are limited and YAML aliases (which can expand a small file into millions of values)
    are refused."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UsageError(f"--config {path}: {size:,} bytes is too large for a configuration "
                             f"(at most {MAX_CONFIG_BYTES:,})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--config {path}: cannot read it ({error})") from error
    try:
        if suffix in (".yaml", ".yml"):
            data = _yaml().load(text, Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass
        elif suffix == ".toml":
            data = _toml().loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"--config {path}: unknown format {suffix or '(no suffix)'}",
                             hint="use a .yaml, .yml, .toml or .json file")
    except UsageError as error:
        if error.message.startswith("--config"):
            raise
        raise UsageError(f"--config {path}: {error.message}", hint=error.hint) from error
    except RecursionError as error:
        raise UsageError(f"--config {path}: nested too deeply (at most {MAX_CONFIG_DEPTH} levels)") from error
    except Exception as error:  # each parser has its own error type; all mean "not valid syntax"
        raise UsageError(f"--config {path}: not valid {suffix[1:].upper()} ({first_line(error)})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    if _depth(data) > MAX_CONFIG_DEPTH:
        raise UsageError(f"--config {path}: nested too deeply (at most {MAX_CONFIG_DEPTH} levels)")
    return data


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_CONFIG_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level)
    return level


_LOADER: Any = None


def _no_alias_loader() -> Any:
    """PyYAML's SafeLoader, refusing aliases (``*name``) and nesting deeper than MAX_CONFIG_DEPTH while parsing,
    so neither an alias bomb nor a deep file costs more than reading it."""
    global _LOADER
    if _LOADER is None:
        yaml = _yaml()

        class NoAliasSafeLoader(yaml.SafeLoader):
            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(yaml.AliasEvent):
                    raise UsageError("YAML aliases (*name) are not accepted in a configuration",
                                     hint="write the value out")
                self._depth = getattr(self, "_depth", 0) + 1
                try:
                    if self._depth > MAX_CONFIG_DEPTH:
                        raise UsageError(f"nested too deeply (at most {MAX_CONFIG_DEPTH} levels)")
                    return super().compose_node(parent, index)
                finally:
                    self._depth -= 1

        _LOADER = NoAliasSafeLoader
    return _LOADER


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
    """Check every key names an option (any spelling: ``batch-size``, or an older name such as ``data_dir``) and
    convert and range-check each value; the result is keyed by the options' names."""
    return coerce_mapping(values, source)


def build_train_config(options: dict[str, Any], config_file: str | Path | None = None, *,
                       source: str = "the command line") -> TrainConfig:
    """TrainConfig from ``options`` (given explicitly: on the command line, or to ``cnnctl.train()``) over
    ``config_file``; ``source`` names where the options came from in error messages."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(coerce_options(read_config_file(config_file), source=str(config_file)))
    given = coerce_options(options, source=source)
    if "dropout" in given and "arch_args" in values:  # the command line's --dropout wins over the file's
        values["arch_args"] = {k: v for k, v in (values["arch_args"] or {}).items() if k != "dropout"}
    values.update(given)
    if not values.get("arch"):
        raise UsageError("name an architecture to train", hint="e.g. `cnnctl train lenet5`, or put `arch:` in --config")
    config = config_from_options(TrainConfig, values)
    config.validate()
    return config


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
    config.save(run_dir / "config.json")
    text = dump_yaml(config)
    if text is not None:
        atomic_write_text(run_dir / "config.yaml", text)
