"""Decoding a JPEG at reduced size (DCT scaling) for a small target: same picture, upright, big enough."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cnnctl.data.images import decode_image_bytes, read_image, resize_to


def _photo(width: int, height: int, orientation: int | None = None) -> bytes:
    """A smooth colour gradient with a bright square top-left, as JPEG (optionally with an EXIF orientation)."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    array[: height // 4, : width // 4] = 255
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if orientation is None:
        image.save(buffer, format="JPEG", quality=92)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def test_reduced_decode_matches_full_decode_after_resize(tmp_path):
    data = _photo(1600, 1200)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    reduced = read_image(path, size=(224, 224))
    full = decode_image_bytes(data, path)
    assert full.shape == (3, 1200, 1600)
    assert min(reduced.shape[1:]) >= 224 and reduced.shape[2] < 1600  # decoded smaller, still big enough
    difference = (resize_to(reduced, (224, 224)).float() - resize_to(full, (224, 224)).float()).abs()
    assert difference.mean() < 2.0 and difference.max() < 40


def test_reduced_and_full_decode_both_apply_exif_orientation(tmp_path):
    data = _photo(1600, 1200, orientation=6)  # stored landscape, shown rotated 90° clockwise: portrait
    path = tmp_path / "rotated.jpg"
    reduced = decode_image_bytes(data, path, size=(100, 100))
    full = decode_image_bytes(data, path)
    assert full.shape[1] > full.shape[2] and reduced.shape[1] > reduced.shape[2]
    # the bright corner ends up top-right after a clockwise turn, in both
    for image in (full, reduced):
        h, w = image.shape[1:]
        assert image[:, : h // 10, -w // 10:].float().mean() > 240
        assert image[:, : h // 10, : w // 10].float().mean() < 200
    small = resize_to(reduced, (120, 90)).float() - resize_to(full, (120, 90)).float()
    assert small.abs().mean() < 2.0


def test_small_jpeg_and_png_decode_unchanged(tmp_path):
    data = _photo(300, 200)
    path = tmp_path / "small.jpg"
    assert torch.equal(decode_image_bytes(data, path, size=(224, 224)), decode_image_bytes(data, path))
