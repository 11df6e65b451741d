"""``--data table.parquet`` or ``--data hf_folder/``: images held in an Arrow table, as Hugging Face ``datasets``
writes them (``Dataset.save_to_disk``, ``DatasetDict.save_to_disk``, ``Dataset.to_parquet``).

The image column is ``image`` (or ``img``, or the first column of image bytes): PNG/JPEG/... bytes, or the
``{bytes, path}`` struct of the ``datasets.Image`` feature (a row with only a ``path`` names a file, which must be
inside the table's folder). The label column is ``label`` (or ``labels``): names, or integers that the
``ClassLabel`` names stored with the table turn into names; a list per row is a multi-label target. Optional
``split`` and ``weight`` columns as in a label file; a ``DatasetDict`` folder's ``train``, ``validation`` and
``test`` sub-folders are those splits.

Only pyarrow is needed (the ``parquet`` extra; imported here, when such a table is read): a ``save_to_disk``
folder is Arrow IPC stream files listed in its ``state.json``, which pyarrow reads as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnctl.data.items import (
    SPLIT_NAMES,
    EmbeddedImage,
    Item,
    Log,
    RowReader,
    Source,
    SourceScan,
    register_source,
    row_split,
    row_target,
    row_weight,
    scan_items,
)
from cnnctl.errors import DataError, UsageError

IMAGE_COLUMNS = ("image", "img", "picture", "pixels")
LABEL_COLUMNS = ("label", "labels", "target", "class")


def _is_hf_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _is_hf_dict(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file()


def claims(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return True
    return path.is_dir() and (_is_hf_dataset(path) or _is_hf_dict(path))


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - imported for pyarrow.parquet below
    except ImportError as error:
        raise UsageError("reading a Parquet file or a Hugging Face datasets folder needs pyarrow",
                         hint="pip install 'cnnctl[parquet]'") from error
    return pyarrow


def _inside(root: Path, name: str, where: str) -> Path:
    """A file a ``state.json`` lists: a plain name in the dataset's own folder."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"{where}: data file {name!r} is not a file name inside {root}; not read",
                        hint="save the dataset again with save_to_disk")
    return root / name


def _read_hf_dataset(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The table of a ``Dataset.save_to_disk`` folder and its features (``dataset_info.json``)."""
    pa = _pyarrow()
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text())
        info = json.loads((folder / "dataset_info.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{state_file}: not a datasets state file ({error})",
                        hint="save the dataset again with save_to_disk") from error
    tables = []
    for name in names:
        path = _inside(folder, name, str(state_file))
        try:
            with pa.memory_map(str(path)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"{path}: not an Arrow file ({error})",
                            hint="save the dataset again with save_to_disk") from error
    if not tables:
        raise DataError(f"{state_file} lists no data files", hint="save the dataset again with save_to_disk")
    return pa.concat_tables(tables), dict(info.get("features") or {})


def _read_parquet(path: Path) -> tuple[Any, dict[str, Any]]:
    pa = _pyarrow()
    try:
        table = pa.parquet.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as error:
        raise DataError(f"{path}: not a Parquet file ({error})", hint="write it with pyarrow, pandas or "
                                                                      "datasets' to_parquet") from error
    features: dict[str, Any] = {}
    metadata = table.schema.metadata or {}
    if b"huggingface" in metadata:
        try:
            features = dict(json.loads(metadata[b"huggingface"])["info"]["features"])
        except (ValueError, KeyError, TypeError):
            features = {}
    return table, features


def _column(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    lowered = {name.lower(): name for name in names}
    return next((lowered[name] for name in wanted if name in lowered), None)


def _class_names(feature: Any) -> list[str] | None:
    """``ClassLabel`` names of a label feature (also inside a ``Sequence``/list feature)."""
    if isinstance(feature, dict):
        if feature.get("_type") == "ClassLabel" and feature.get("names"):
            return [str(name) for name in feature["names"]]
        inner = feature.get("feature")
        if inner is not None:
            return _class_names(inner)
    if isinstance(feature, list) and feature:
        return _class_names(feature[0])
    return None


def _table_items(table: Any, features: dict[str, Any], where: str, split: str | None,
                 reader: RowReader) -> list[Item]:
    names = list(table.column_names)
    image_column = _column(names, IMAGE_COLUMNS)
    label_column = _column(names, LABEL_COLUMNS)
    for required, found in (("image", image_column), ("label", label_column)):
        if found is None:
            raise DataError(f"{where}: no {required} column (it has {', '.join(map(repr, names)) or 'none'})",
                            hint="name the columns image and label")
    class_names = _class_names(features.get(label_column))
    split_column, weight_column = _column(names, ("split",)), _column(names, ("weight",))
    images = table.column(image_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    splits = table.column(split_column).to_pylist() if split_column else [split] * len(images)
    weights = table.column(weight_column).to_pylist() if weight_column else [None] * len(images)
    items = []
    for row, (image, label, row_split_value, weight) in enumerate(zip(images, labels, splits, weights)):
        here = f"{where} row {row}"
        if class_names is not None:
            label = _named(label, class_names, here)
        data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (image, None)
        if data is None and path:  # the datasets Image feature of a file not embedded: a file next to the table
            ref: Any = reader.confine(str(path), here)
        elif isinstance(data, (bytes, bytearray)) and data:
            ref = EmbeddedImage(here, bytes(data))
        else:
            raise DataError(f"{here}: the image is empty", hint="store the image's bytes, or remove the row")
        key = str(path) if path else f"{row:012d}"
        items.append(Item(ref, row_target(label, here), row_split(row_split_value, here),
                          row_weight(weight, here), here, key))
    return items


def _named(label: Any, class_names: list[str], where: str) -> Any:
    """A ClassLabel integer (or a list of them) → its name(s)."""
    if isinstance(label, list):
        return [_named(value, class_names, where) for value in label]
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(class_names):
            raise DataError(f"{where}: label {label} is not one of the {len(class_names)} class numbers",
                            hint="fix the label, or remove the row")
        return class_names[label]
    return label


def scan_arrow(path: Path, *, classes: Sequence[str] | None = None, log: Log = lambda _: None,
               min_classes: int = 2) -> SourceScan:
    folder = path if path.is_dir() else path.parent
    reader = RowReader(folder / "_")  # images a table names by path must be inside the table's folder
    items: list[Item] = []
    if path.is_dir() and _is_hf_dict(path):
        try:
            split_names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path / 'dataset_dict.json'}: not a datasets DatasetDict file ({error})",
                            hint="save the dataset again with save_to_disk") from error
        for name in split_names:
            split = SPLIT_NAMES.get(str(name).lower())
            if split is None:
                raise DataError(f"{path / 'dataset_dict.json'}: split {name!r} is not train, validation or test",
                                hint="name the splits train, validation and test")
            part = _inside(path, str(name), str(path / "dataset_dict.json"))
            table, features = _read_hf_dataset(part)
            items += _table_items(table, features, str(part), split, RowReader(part / "_"))
    elif path.is_dir():
        table, features = _read_hf_dataset(path)
        items = _table_items(table, features, str(path), None, reader)
    else:
        if not path.is_file():
            raise UsageError(f"{path} does not exist")
        table, features = _read_parquet(path)
        items = _table_items(table, features, str(path), None, reader)
    return scan_items(path, items, kind="arrow", classes=classes, min_classes=min_classes, where=str(path))


SOURCE = register_source(Source(
    name="arrow", description="a Parquet file or a Hugging Face datasets folder (image and label columns)",
    claims=claims, scan=scan_arrow, priority=20))
