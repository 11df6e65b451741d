"""Reading one image file into a uint8 tensor: torchvision.io first, Pillow for the formats it lacks (BMP, TIFF).

Used by folder datasets (training, eval) and by prediction, so an image becomes the same pixels on every path.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cnnctl.errors import DataError

if TYPE_CHECKING:
    import torch

# torchvision 0.29 deprecates torchvision.io's decoders in favour of torchcodec; they still work. Say nothing.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_PILLOW_ONLY = frozenset({".bmp", ".tif", ".tiff"})  # torchvision.io cannot decode these


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if not text or ".cpp" in text:  # torchvision's C++ errors name their source line, not the problem
        return "unknown format or corrupt data"
    return " ".join(text.split())[:100]


def _read_with_pillow(data: bytes, path: Path, channels: int) -> torch.Tensor:
    import io

    import numpy as np
    import torch

    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow is a torchvision dependency
        raise DataError(f"{path}: reading {path.suffix} files needs Pillow", hint="pip install pillow") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            from PIL import ImageOps

            converted = ImageOps.exif_transpose(image.convert("L" if channels == 1 else "RGB"))
            array = np.asarray(converted, dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for broken files
        raise DataError(f"{path}: not a readable image ({_reason(error)})") from error
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(path: str | Path, channels: int = 3, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode ``path`` as uint8 ``channels``×H×W (1: grey, 3: RGB; alpha is dropped, palettes are expanded).

    Grey comes from :func:`to_grey`, so a grey image gives the same pixels whichever way it is read. ``size``
    (H, W) is the size the caller will resize to: a JPEG at least twice as large on both sides is then decoded
    at reduced scale (see :func:`_read_jpeg_reduced`); the result is still at least ``size``. Raises
    ``DataError`` naming the file if it cannot be read or decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: not a readable image ({error.strerror or type(error).__name__})") from error
    return decode_image_bytes(data, path, channels, size=size)


def decode_image_bytes(data: bytes, path: Path, channels: int = 3, *, size: tuple[int, int] | None = None
                       ) -> torch.Tensor:
    """:func:`read_image` for a file already read (``path`` names it in errors and picks the decoder)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise DataError(f"{path}: not a readable image (empty file)")
    reduced = _read_jpeg_reduced(data, size) if size is not None and data[:2] == _JPEG_MAGIC else None
    if reduced is not None:
        image = reduced
    elif path.suffix.lower() in _PILLOW_ONLY:
        image = _read_with_pillow(data, path, 3)
    else:
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                 apply_exif_orientation=True)
        except (RuntimeError, ValueError, OSError) as error:
            # A file whose suffix lies (a BMP saved as .png) still gets a chance with Pillow.
            try:
                image = _read_with_pillow(data, path, 3)
            except DataError:
                raise DataError(f"{path}: not a readable image ({_reason(error)})") from error
        if image.dtype != torch.uint8:  # 16-bit PNGs
            from torchvision.transforms.v2 import functional as TF

            image = TF.to_dtype(image, torch.uint8, scale=True)
    return to_grey(image) if channels == 1 else image


_JPEG_MAGIC = b"\xff\xd8"


def _read_jpeg_reduced(data: bytes, size: tuple[int, int]) -> torch.Tensor | None:
    """A JPEG decoded at 1/2, 1/4 or 1/8 scale with libjpeg's DCT scaling (Pillow's ``draft``), as RGB uint8
    3×H×W with both sides still ≥ ``max(size)`` (so EXIF rotation cannot make a side too small); None when the
    file is not at least twice that size on both sides (decode it normally) or Pillow cannot read it.

    DCT scaling skips most of the decoding work: a 12-megapixel photo for a 224×224 model decodes ~8× faster.
    """
    import io

    import numpy as np
    import torch

    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - Pillow is a torchvision dependency
        return None
    side = max(size)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or min(image.size) < 2 * side:
                return None
            image.draft("RGB", (side, side))
            upright = ImageOps.exif_transpose(image.convert("RGB"))
            array = np.asarray(upright, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - anything odd: the normal decoder reports it properly
        return None
    # left channels-last: torch's antialiased uint8 resize is several times faster on that layout
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def is_grey(images: torch.Tensor) -> torch.Tensor:
    """Per image of uint8 (N×)3×H×W: True where R, G and B are equal everywhere."""
    same = (images[..., 0, :, :] == images[..., 1, :, :]) & (images[..., 1, :, :] == images[..., 2, :, :])
    return same.flatten(-2).all(-1)


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """RGB (N×)3×H×W → (N×)1×H×W: the shared channel of grey images exactly, luminance for colour ones."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    if images.shape[-3] == 1:
        return images
    grey = is_grey(images)
    if bool(grey.all()):
        return images[..., :1, :, :].contiguous()
    luminance = TF.rgb_to_grayscale(images[..., :3, :, :], num_output_channels=1)
    return torch.where(grey.view(*grey.shape, 1, 1, 1), images[..., :1, :, :], luminance).contiguous()


def resize_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 C×H×W (or N×C×H×W) to ``size`` (H, W) with antialiasing; unchanged if it already fits."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, list(size), antialias=True)
