"""A ``--class-weights`` FILE: class name → weight, as JSON (``{"cat": 1.0, "dog": 4.0}``) or text lines
``name,weight`` / ``name weight``; a class it does not name keeps weight 1. Read before any work, and checked
against the data's class names as soon as they are known. (The weights themselves are cnnctl/engine/imbalance.py's.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from cnnctl.errors import UsageError


def read_class_weights_file(path: str | Path) -> dict[str, float]:
    """Class name → weight from a JSON object or ``name,weight`` lines; every value a finite number >= 0."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"--class-weights {path}: cannot read it ({error.strerror or error})",
                         hint="pass auto, or a JSON/CSV file of class name → weight") from error
    values: dict[str, object]
    if text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError as error:
            raise UsageError(f"--class-weights {path}: not valid JSON ({error})") from error
        values = dict(loaded)
    else:
        values = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [part.strip() for part in (line.split(",") if "," in line else line.split())]
            if len(parts) != 2:
                raise UsageError(f"--class-weights {path}:{number}: expected 'name,weight', got {line!r}")
            if parts[0] in values:
                raise UsageError(f"--class-weights {path}:{number}: class {parts[0]!r} is given twice")
            values[parts[0]] = parts[1]
    weights: dict[str, float] = {}
    for name, value in values.items():
        try:
            weight = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"--class-weights {path}: the weight of {name!r} is not a number: {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise UsageError(f"--class-weights {path}: the weight of {name!r} is {value}; weights must be finite "
                             "and >= 0")
        weights[str(name)] = weight
    if weights and not any(weights.values()):
        raise UsageError(f"--class-weights {path}: every weight is 0")
    return weights


def check_class_names(value: str | None, classes: Sequence[str]) -> dict[str, float]:
    """The weights a ``--class-weights`` FILE gives, refused if it names a class the data does not have (called
    as soon as the class names are known: a folder's right after it is scanned, before decoding)."""
    if value is None or value == "auto":
        return {}
    given = read_class_weights_file(value)
    unknown = sorted(set(given) - set(classes))
    if unknown:
        known = ", ".join(classes[:10]) + (" …" if len(classes) > 10 else "")
        raise UsageError(f"--class-weights {value}: unknown class(es) {', '.join(map(repr, unknown[:5]))}; the "
                         f"classes are {known}")
    return given
