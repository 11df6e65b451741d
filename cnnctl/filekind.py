"""What kind of file a user passed, from its first bytes (and, for zip archives, the names inside): so that a
file of the wrong kind is named in the message (``best.onnx is an ONNX model``) instead of being reported in
the terms of the format that was expected (a safetensors header length, Pillow's "cannot identify image file").

Only a bounded prefix is read, and only from regular files (never a FIFO or a device).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

PREFIX_BYTES = 512
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

ONNX = "onnx"
TORCHSCRIPT = "torchscript"
TORCH_SAVE = "torch-save"
PICKLE = "pickle"
SAFETENSORS = "safetensors"
IMAGE = "image"
TEXT = "text"

_DESCRIPTIONS = {
    ONNX: "an ONNX model",
    TORCHSCRIPT: "a TorchScript model",
    TORCH_SAVE: "a PyTorch file written by torch.save",
    PICKLE: "a Python pickle",
    SAFETENSORS: "a safetensors file",
    IMAGE: "an image",
    TEXT: "a text file",
    "json": "a JSON file",
    "html": "an HTML page",
    "pdf": "a PDF document",
    "zip": "a zip archive",
    "gzip": "a gzip file",
    "numpy": "a NumPy array file",
    "hdf5": "an HDF5 file (Keras weights?)",
    "empty": "an empty file",
}

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def describe(kind: str) -> str:
    """``an ONNX model``, ``a text file``, ...: how messages name a kind."""
    return _DESCRIPTIONS.get(kind, kind)


def read_prefix(path: str | os.PathLike[str], size: int = PREFIX_BYTES) -> bytes | None:
    """The first ``size`` bytes of a regular file; None for anything else or a file that cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def sniff_bytes(data: bytes) -> str | None:
    """The kind of a file from its first bytes, or None when they say nothing cnnctl knows. Zip archives are
    ``zip`` here; :func:`sniff` looks inside them."""
    if not data:
        return "empty"
    if any(data.startswith(magic) for magic in _IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return IMAGE
    if data.startswith(b"PK\x03\x04"):
        return "zip"
    if data.startswith(b"\x1f\x8b"):
        return "gzip"
    if data.startswith(b"%PDF"):
        return "pdf"
    if data.startswith(b"\x93NUMPY"):
        return "numpy"
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return PICKLE
    if _looks_like_onnx(data):
        return ONNX
    if _looks_like_safetensors(data):
        return SAFETENSORS
    text = _as_text(data)
    if text is not None:
        stripped = text.lstrip().lower()
        if stripped.startswith(("<!doctype html", "<html")):
            return "html"
        if stripped.startswith(("{", "[")):
            return "json"
        return TEXT
    return None


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The kind of the file at ``path`` (None: unknown, or not a readable regular file). A zip archive written
    by PyTorch is told apart by its members: TorchScript keeps its code in ``code/``, torch.save does not."""
    data = read_prefix(path)
    if data is None:
        return None
    kind = sniff_bytes(data)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return kind
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            return TORCHSCRIPT
        if any(name.endswith("data.pkl") for name in names):
            return TORCH_SAVE
    return kind


def _looks_like_onnx(data: bytes) -> bool:
    """An ONNX ModelProto as exporters write it: field 1 (ir_version, a small varint), then field 2
    (producer_name) or another early field."""
    return len(data) > 4 and data[0] == 0x08 and 0 < data[1] < 64 and data[2] in (0x12, 0x1a, 0x22, 0x3a)


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON object."""
    return len(data) > 9 and int.from_bytes(data[:8], "little") < 2**31 and data[8:9] == b"{"


def _as_text(data: bytes) -> str | None:
    """``data`` as text when it is UTF-8 (possibly cut mid-character at the end) of printable characters."""
    for cut in range(4):
        try:
            text = data[:len(data) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return text if text and printable >= 0.95 * len(text) else None


def exported_from(path: Path) -> Path | None:
    """The checkpoint an exported file sits beside (``best.onnx``, ``best.torchscript.pt`` →
    ``best.safetensors``), when it is there."""
    stem = path.name.split(".", 1)[0]
    candidate = path.with_name(f"{stem}.safetensors")
    return candidate if candidate.is_file() else None
