"""The search space: ``--param NAME=SPEC`` and ``--space FILE``, checked against the ``cnnctl train`` options.

A SPEC is ``loguniform:LOW:HIGH``, ``uniform:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``, ``logint:LOW:HIGH`` or
``choice:A,B,...``; NAME is any train option (``lr``, ``batch-size``, ``optimizer``, ``dropout``, ...). Each
parameter becomes one Optuna distribution (``trial.suggest_float``/``suggest_int``/``suggest_categorical``).
Everything that can be checked without training is checked here, so a bad space is one line before any trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError
from cnnctl.recipe.config_file import _toml, coerce_options
from cnnctl.recipe.options import CONFIG_OPTIONS, OPTION_BY_NAME, canonical_name
from cnnctl.registry import suggest

KINDS = ("loguniform", "uniform", "int", "logint", "choice")
@dataclass(frozen=True)
class Param:
    """One searched option (by its name in cnnctl/recipe/options.py) and its distribution."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        """The SPEC string this parameter was given as (for tables, JSON and tune.json)."""
        if self.kind == "choice":
            return "choice:" + ",".join(_render(value) for value in self.choices)
        parts = [self.kind, _render(self.low), _render(self.high)] + ([_render(self.step)] if self.step else [])
        return ":".join(parts)

    def suggest(self, trial: Any) -> Any:
        """The value Optuna's sampler picks for this trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.kind == "logint")
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.kind == "loguniform")

    def extremes(self) -> list[Any]:
        """The values at the edges of the range (every choice): checked against the options before any trial."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "logint"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def apply_params(options: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Train options with the searched ``values`` put in."""
    return {**options, **values}


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1 or value == 0 else f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------ option types
def option_type(name: str) -> type:
    """The type of train option ``name`` (from its declaration in cnnctl/recipe/options.py): bool, int, float, str, list
    or dict. Unknown or unsearchable names are one line, with the closest option name."""
    canonical = canonical_name(name) or name
    option = OPTION_BY_NAME.get(canonical)
    if option is not None and option.unsearchable:
        raise UsageError(f"--param {name}: cannot be searched: {option.unsearchable}")
    if canonical not in OPTION_BY_NAME or not OPTION_BY_NAME[canonical].config:
        searchable = sorted(o.name for o in CONFIG_OPTIONS if not o.unsearchable)
        raise suggest(name, searchable, "option in --param (not a `cnnctl train` option):")
    return OPTION_BY_NAME[canonical].type


# ------------------------------------------------------------------------------------------------ parsing
def parse_param(text: str) -> Param:
    """``NAME=SPEC`` (``--param lr=loguniform:1e-4:1e-1``) as a Param, or one line saying what is wrong."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise UsageError(f"--param {text!r}: expected NAME=SPEC",
                         hint="e.g. --param lr=loguniform:1e-4:1e-1 or --param batch_size=choice:64,128")
    return build_param(name, spec.strip())


def build_param(name: str, spec: Any) -> Param:
    """A Param from an option name and its SPEC: a string, or (in a --space file) a list of choices or a mapping
    ``{kind: ..., low: ..., high: ..., step: ..., choices: [...]}``."""
    name = name.strip().lstrip("-").replace("-", "_")
    where = f"--param {name}"
    kind_of_option = option_type(name)
    name = canonical_name(name) or name
    kind, arguments = _split_spec(spec, where)
    if kind not in KINDS:
        raise suggest(kind, list(KINDS), f"kind of range in {where}:")
    if kind_of_option in (list, dict):
        raise UsageError(f"{where}: cannot be searched (it takes a {kind_of_option.__name__})")
    if kind_of_option is bool and kind != "choice":
        raise UsageError(f"{where}: is an on/off flag and takes no {kind} range",
                         hint=f"search it with {name}=choice:true,false")
    if kind == "choice":
        return _choice(name, arguments, kind_of_option, where)
    if kind_of_option is str:
        raise UsageError(f"{where}: takes a name, not a number range", hint=f"use {name}=choice:A,B,...")
    if len(arguments) not in (2, 3) or (kind in ("loguniform", "logint") and len(arguments) != 2):
        shape = f"{kind}:LOW:HIGH" + ("" if kind in ("loguniform", "logint") else "[:STEP]")
        raise UsageError(f"{where}: {kind} takes {shape}, got {spec!r}")
    numbers = [_number(value, where) for value in arguments]
    low, high = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else None
    if kind in ("int", "logint"):
        if kind_of_option is not int:
            raise UsageError(f"{where}: takes any number, not only whole ones",
                             hint=f"use uniform:{_render(low)}:{_render(high)} or loguniform")
        if not all(float(n).is_integer() for n in numbers):
            raise UsageError(f"{where}: {kind} takes whole numbers, got {spec!r}")
    elif kind_of_option is int:
        raise UsageError(f"{where}: takes whole numbers", hint=f"use int:{_render(low)}:{_render(high)} or choice")
    if not low < high:
        raise UsageError(f"{where}: the range {_render(low)}..{_render(high)} is empty",
                         hint="LOW must be less than HIGH")
    if kind in ("loguniform", "logint") and low <= 0:
        raise UsageError(f"{where}: a {kind} range must be above 0, got LOW {_render(low)}",
                         hint="use uniform for a range that includes 0")
    if step is not None and not (0 < step <= high - low):
        raise UsageError(f"{where}: STEP must be in (0, HIGH-LOW], got {_render(step)}")
    return Param(name, kind, float(low), float(high), None if step is None else float(step))


def _split_spec(spec: Any, where: str) -> tuple[str, list[Any]]:
    if isinstance(spec, (list, tuple)):
        return "choice", list(spec)
    if isinstance(spec, dict):
        kind = str(spec.get("kind", spec.get("type", "")))
        if kind == "choice" or "choices" in spec:
            return "choice", list(spec.get("choices") or [])
        return kind, [spec[key] for key in ("low", "high", "step") if spec.get(key) is not None]
    if not isinstance(spec, str):
        raise UsageError(f"{where}: expected a SPEC such as loguniform:1e-4:1e-1 or choice:a,b, got {spec!r}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "choice":
        return kind, [item.strip() for item in rest.split(",") if item.strip()]
    return kind, [item.strip() for item in rest.split(":")] if rest else []


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"{where}: {value!r} is not a finite number")
    return number


def _choice(name: str, values: list[Any], kind_of_option: type, where: str) -> Param:
    if not values:
        raise UsageError(f"{where}: the choice is empty", hint=f"e.g. {name}=choice:A,B")
    coerced = [coerce_options({name: value}, source=where)[name] for value in values]
    if len(set(map(repr, coerced))) != len(coerced):
        raise UsageError(f"{where}: the choice repeats a value: {','.join(map(_render, coerced))}")
    if len(coerced) < 2:
        raise UsageError(f"{where}: a choice of one value is no search",
                         hint=f"pass --{name.replace('_', '-')} {_render(coerced[0])} as a train option instead")
    return Param(name, "choice", choices=tuple(coerced))


def read_space_file(path: str | Path) -> list[Param]:
    """``--space FILE``: a YAML, JSON or TOML mapping of option names to SPECs (strings, lists of choices, or
    ``{kind, low, high, step}`` mappings)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--space {path}: cannot read it ({error.__class__.__name__}: {error})") from error
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = _toml().loads(text)
        else:
            raise UsageError(f"--space {path}: unknown format {suffix or '(no suffix)'}",
                             hint="use a .yaml, .json or .toml file")
    except UsageError:
        raise
    except Exception as error:  # each parser has its own error type; all mean "not valid syntax"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"--space {path}: not valid {suffix[1:].upper()} ({first})") from error
    if not isinstance(data, dict) or not data:
        raise UsageError(f"--space {path}: expected a mapping of option names to ranges",
                         hint="e.g. lr: loguniform:1e-4:1e-1")
    return [build_param(str(name), spec) for name, spec in data.items()]


def build_space(params: list[str], space_file: str | Path | None) -> list[Param]:
    """The space from ``--space FILE`` and ``--param`` (which override the file's entries of the same name)."""
    space = {param.name: param for param in (read_space_file(space_file) if space_file else [])}
    for text in params:
        param = parse_param(text)
        space[param.name] = param
    if not space:
        raise UsageError("nothing to search", hint="give --param NAME=SPEC (e.g. lr=loguniform:1e-4:1e-1) or "
                                                   "--space FILE")
    return list(space.values())


def space_to_document(space: list[Param]) -> dict[str, str]:
    return {param.name: param.spec for param in space}


def space_from_document(document: dict[str, str]) -> list[Param]:
    return [build_param(name, spec) for name, spec in document.items()]
