"""``--data labels.csv``: a CSV label file with the columns ``path,label[,split][,weight]`` (any order, header
first). Paths are relative to the CSV's folder; ``a|b`` in the label column gives an image two labels; ``split``
is train, val or test (empty: training holds validation out); ``weight`` is the image's weight in the loss."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from cnnctl.data.items import Log, RowReader, Source, SourceScan, check_label_file, register_source
from cnnctl.errors import DataError

COLUMNS = ("path", "label", "split", "weight")


def header_columns(names: Sequence[str | None], label_file: Path, row: str = "row 1") -> dict[str, int]:
    """Column name → position; a header without ``path`` or ``label`` is an error naming what it has."""
    found = {str(name).strip().lower(): position for position, name in enumerate(names) if name is not None}
    for required in ("path", "label"):
        if required not in found:
            have = ", ".join(repr(str(name)) for name in names) or "nothing"
            raise DataError(f"{label_file} {row}: the header has no {required!r} column (it has {have})",
                            hint="the first row must name the columns: path,label[,split][,weight]")
    return {name: found[name] for name in COLUMNS if name in found}


def scan_csv(path: Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
             min_classes: int = 2) -> SourceScan:
    check_label_file(path)
    reader = RowReader(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: the label file is empty", hint="the first row must name the columns: "
                                                                         "path,label[,split][,weight]")
            columns = header_columns(header, path)
            for fields in rows:
                if not any(field.strip() for field in fields):
                    continue
                values = {name: fields[position] if position < len(fields) else None
                          for name, position in columns.items()}
                reader.row(f"row {rows.line_num}", values["path"], values["label"], values.get("split"),
                           values.get("weight"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})", hint="save the label file as UTF-8") from error
    except csv.Error as error:
        raise DataError(f"{path}: not a CSV file ({error})", hint="one row per image: path,label") from error
    return reader.scan(kind="csv", classes=classes, log=log, min_classes=min_classes)


SOURCE = register_source(Source(
    name="csv", description="a label file (labels.csv: path,label[,split][,weight])",
    claims=lambda path: path.suffix.lower() == ".csv", scan=scan_csv, priority=10))
