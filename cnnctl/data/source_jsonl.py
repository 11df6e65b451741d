"""``--data labels.jsonl``: JSON Lines, one object per image with the fields of a CSV label file: ``path``,
``label`` (a name, or a list of names for multi-label data), and optionally ``split`` and ``weight``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cnnctl.data.items import Log, RowReader, Source, SourceScan, check_label_file, register_source
from cnnctl.errors import DataError


def scan_jsonl(path: Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
               min_classes: int = 2) -> SourceScan:
    check_label_file(path)
    reader = RowReader(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number}: not JSON ({error.msg})",
                                    hint="one JSON object per line: {\"path\": ..., \"label\": ...}") from error
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number}: not a JSON object",
                                    hint="one JSON object per line: {\"path\": ..., \"label\": ...}")
                for required in ("path", "label"):
                    if required not in row:
                        raise DataError(f"{path} line {number}: no {required!r} field (it has "
                                        f"{', '.join(map(repr, row)) or 'none'})",
                                        hint="every line needs \"path\" and \"label\"")
                reader.row(f"line {number}", row["path"], row["label"], row.get("split"), row.get("weight"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})", hint="save the file as UTF-8") from error
    return reader.scan(kind="jsonl", classes=classes, log=log, min_classes=min_classes)


SOURCE = register_source(Source(
    name="jsonl", description="JSON Lines (labels.jsonl: {path, label[, split][, weight]})",
    claims=lambda path: path.suffix.lower() in (".jsonl", ".ndjson"), scan=scan_jsonl, priority=10))
