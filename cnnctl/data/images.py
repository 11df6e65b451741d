"""Reading one image file into a uint8 tensor, the same way on every path (training folders, eval, predict, plots).

What an image file becomes, in order:

1. **Only regular files are read**, and at most ``MAX_FILE_BYTES``: a FIFO named ``x.png`` is refused without
   being opened (it would block forever), a symlink to ``/dev/zero`` is refused as a device.
2. **The header is checked before anything is decoded**: more than ``max_pixels`` pixels (default Pillow's
   ``MAX_IMAGE_PIXELS``, 89,478,485; ``--max-pixels`` changes it) is refused, so a 30,000×30,000 PNG of a few
   kB cannot take gigabytes.
3. **Decoding**: PNG and JPEG with torchvision.io, every other format (GIF, WebP, BMP, TIFF) with Pillow.
   An animated GIF (or WebP, TIFF) gives its first frame only. **A large JPEG is decoded at reduced size** when
   the caller says what it will resize the image to (``target``, a :class:`ResizeTarget`) and that is at most
   half the stored size in both directions: libjpeg's DCT scaling through Pillow's ``draft()`` decodes it at 1/2
   or 1/4 scale, keeping at least ``REDUCING_GAP`` times the pixels the resize needs (the shorter side for a
   shorter-side resize, both sides for a plain resize, counted after EXIF orientation), so the antialiased resize
   that follows sees nearly what it would see from the full decode. Training folders, eval and predict all
   decode this way, so one file gives them the same pixels. ``REDUCED_JPEG_DECODE = False`` turns it off.
4. **EXIF orientation is applied** (a phone photo is stored sideways with a tag saying how to turn it), exactly
   as ``PIL.ImageOps.exif_transpose`` does, for every format.
5. **Channels**: RGB (alpha dropped, palettes expanded); grey, where asked, is ``L = (19595 R + 38470 G + 7471 B
   + 2^15) >> 16``, Pillow's ``convert("L")`` (ITU-R 601-2 luma, rounded); an image whose R, G and B are equal
   keeps that channel exactly.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl import filekind
from cnnctl.data.png_check import png_problem
from cnnctl.errors import DataError

if TYPE_CHECKING:
    import torch

# torchvision 0.29 deprecates torchvision.io's decoders in favour of torchcodec; they still work. Say nothing.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: a 0.25 GiB 24-bit image (~9,459 x 9,459)
MAX_FILE_BYTES = 256 * 2**20  # larger image files are refused unread: no photo or scan we train on comes close
_TORCHVISION_FORMATS = frozenset({"PNG", "JPEG"})  # decoded by torchvision.io (faster), EXIF included
_ORIENTATION_TAG = 0x0112
# Decode a JPEG at 1/2 or 1/4 scale when the consumer resizes it far smaller (see the module docstring); the
# decoded image keeps at least REDUCING_GAP times the pixels the resize needs (Pillow's thumbnail() default).
REDUCED_JPEG_DECODE = True
REDUCING_GAP = 2.0
# libjpeg's 1/8 scale (one pixel per 8x8 block) came out 2-2.7 grey levels from the full decode after a resize to
# 64x64, where 1/2 and 1/4 stay within 0.5, and it decodes only ~12% faster than 1/4: 1/4 is the smallest scale.
MAX_JPEG_REDUCTION = 4


class UnknownImageFormat(DataError):
    """Bytes whose header no decoder recognises: not an image, or not one cnnctl can read."""


class TooManyPixels(DataError):
    """An image whose header declares more pixels than the limit: refused before any pixel is decoded."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding its pixels."""

    format: str  # Pillow's name: PNG, JPEG, GIF, WEBP, BMP, TIFF, ...
    width: int
    height: int
    mode: str  # Pillow's mode: L, RGB, RGBA, P, 1, I;16, ...
    animated: bool
    orientation: int = 1  # JPEG's EXIF orientation (1-8; other formats: 1); 5-8 turn it by 90°, H and W swap

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(H, W) once EXIF orientation is applied."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)


@dataclass(frozen=True)
class ResizeTarget:
    """What a decoded image is resized to (``resize_and_crop``'s arguments): ``size`` (H, W)
    directly, or with ``resize`` the shorter side to ``resize`` and then a centre crop to ``size``."""

    size: tuple[int, int]
    resize: int | None = None
    interpolation: str = "bilinear"  # torchvision's InterpolationMode value (always antialiased)

    def minimum(self) -> tuple[int, int]:
        """(H, W) the oriented image must keep for the resize to see nearly what the full image gives it."""
        if self.resize is not None:  # the shorter side becomes ``resize``: both sides at least that
            side = math.ceil(self.resize * REDUCING_GAP)
            return side, side
        return math.ceil(self.size[0] * REDUCING_GAP), math.ceil(self.size[1] * REDUCING_GAP)


def _reason(error: BaseException, data: bytes | None = None) -> str:
    """Why a file could not be decoded, in words: what the file is when it is not an image (``a text file``,
    ``an ONNX model``), else the decoder's reason without the Python object reprs some of them print."""
    import re

    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):  # "cannot identify image file <_io.BytesIO object at 0x...>"
        kind = filekind.sniff_bytes(data[:filekind.PREFIX_BYTES]) if data is not None else None
        if kind is not None and kind != filekind.IMAGE:
            return f"it is {filekind.describe(kind)}"
        return "not an image format cnnctl can read (PNG, JPEG, BMP, GIF, WebP, TIFF)"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))
    text = " ".join(text.split()).strip(" :")
    if not text or ".cpp" in text or "/csrc/" in text:  # torchvision's C++ errors name their source, not the problem
        return "unknown format or corrupt data"
    return text[:100]


def read_file_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else (a FIFO, a device, a folder, a larger
    file) is a ``DataError`` naming it, raised before reading (a FIFO is not even opened)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise DataError(f"{path}: not a readable image ({error.strerror or type(error).__name__})") from error
    _check_regular(path, info, max_bytes)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise DataError(f"{path}: not a readable image ({error.strerror or type(error).__name__})") from error
    with os.fdopen(descriptor, "rb") as handle:
        _check_regular(path, os.fstat(handle.fileno()), max_bytes)  # the file opened is the file checked
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{path}: larger than {max_bytes / 2**20:.0f} MiB; not read")
    return data


def read_item_bytes(image: Any, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a dataset item's image: a file (:func:`read_file_bytes`), or an object that reads itself
    (``read(max_bytes)``: bytes held in a table row, a member of a tar shard)."""
    if isinstance(image, (str, os.PathLike)):
        return read_file_bytes(image, max_bytes)
    return image.read(max_bytes)


def _check_regular(path: Path, info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                or stat.S_ISBLK(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode) else "a socket"
                if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise DataError(f"{path}: not a regular file ({kind}); not read")
    if info.st_size > max_bytes:
        raise DataError(f"{path}: {info.st_size / 2**20:,.0f} MiB, larger than the {max_bytes / 2**20:.0f} MiB "
                        "an image file may have; not read")


def read_header(data: bytes, path: Path, max_pixels: int | None = None) -> ImageHeader:
    """Parse the header (no pixels decoded) and refuse an image of more than ``max_pixels`` pixels."""
    import io

    from PIL import Image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise DataError(f"{path}: not a readable image (empty file)")
    _pillow_limit_off()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            header = ImageHeader(image.format or "?", width, height, image.mode,
                                 bool(getattr(image, "is_animated", False)), _orientation(image))
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for broken files
        raise UnknownImageFormat(f"{path}: not a readable image ({_reason(error, data)})") from error
    if width * height > limit:
        raise TooManyPixels(f"{path}: {width:,}x{height:,} = {width * height:,} pixels, more than the limit of "
                            f"{limit:,}; not decoded", hint="pass --max-pixels N to allow larger images")
    return header


def _orientation(image: Any) -> int:
    """The EXIF orientation ``PIL.ImageOps.exif_transpose`` would apply (1 where there is none or it is broken),
    read for JPEGs only: their EXIF block is read with the header, where Pillow's ``getexif()`` on a PNG without
    one decodes the whole image to look for it."""
    if image.format != "JPEG":
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: exif_transpose fails on it too, decoding reports it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pillow_limit_off() -> None:
    """Pillow refuses images above its own MAX_IMAGE_PIXELS (×2) with its own message and limit; cnnctl checks
    every header against ``max_pixels`` itself (:func:`read_header`), so that is the limit that applies."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _read_with_pillow(data: bytes, path: Path) -> torch.Tensor:
    """RGB uint8 3×H×W through Pillow: first frame, EXIF orientation applied."""
    import io

    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            oriented = ImageOps.exif_transpose(image)
            array = np.asarray(oriented.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for broken files
        raise DataError(f"{path}: not a readable image ({_reason(error, data)})") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _read_reduced_jpeg(data: bytes, header: ImageHeader, target: ResizeTarget) -> torch.Tensor | None:
    """RGB uint8 3×H×W of a JPEG decoded at 1/2 or 1/4 scale (still at least ``target.minimum()`` after EXIF
    orientation), orientation applied; None where no scale of at least 2 keeps enough pixels, for colour modes
    other than RGB and L (CMYK), and where Pillow cannot decode it (the full decode then says why, or succeeds).

    The tensor is a view of the decoder's H×W×3 rows (channels-last strides), not a CHW copy: torch's antialiased
    uint8 resize is fastest on that layout, and the copy alone cost as much as the resize."""
    import io

    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return None
    need_height, need_width = target.minimum()
    if header.orientation in (5, 6, 7, 8):  # stored sideways: the stored rows become columns
        need_height, need_width = need_width, need_height
    fits = min(header.width // need_width, header.height // need_height, MAX_JPEG_REDUCTION)
    if fits < 2:
        return None
    scale = 4 if fits >= 4 else 2
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (header.width // scale, header.height // scale))  # libjpeg decodes at 1/scale
            ImageOps.exif_transpose(image, in_place=True)
            array = np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - the full decode reports the problem in the usual way
        return None
    return torch.from_numpy(array).permute(2, 0, 1)


def read_image(path: str | Path, channels: int = 3, *, max_pixels: int | None = None) -> torch.Tensor:
    """Decode ``path`` as uint8 ``channels``×H×W (1: grey, 3: RGB) as the module docstring describes.

    Raises ``DataError`` naming the file if it is not a regular file, too large, or cannot be decoded.
    """
    path = Path(path)
    return decode_image_bytes(read_file_bytes(path), path, channels, max_pixels=max_pixels)


def decode_image_bytes(data: bytes, path: Path, channels: int = 3, *, max_pixels: int | None = None
                       ) -> torch.Tensor:
    """:func:`read_image` for a file already read (``path`` names it in errors)."""
    image, _ = decode_with_header(data, path, max_pixels=max_pixels)
    return to_grey(image) if channels == 1 else image


def decode_to_target(data: bytes, path: Path, target: ResizeTarget, channels: int = 3, *,
                     max_pixels: int | None = None) -> torch.Tensor:
    """uint8 ``channels``×H×W at ``target.size``: :func:`decode_image_bytes` then :func:`resize_and_crop`, with
    a large JPEG decoded at reduced size (module docstring, step 3)."""
    image, header = decode_with_header(data, path, max_pixels=max_pixels, target=target)
    if channels == 1:
        image = to_grey(image)
    return fit_to_target(image, header, target)


def resize_and_crop(images: torch.Tensor, size: tuple[int, int], resize: int | None = None,
                    interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 (N×)C×H×W to ``size``: without ``resize``, resized to it (antialiased bilinear); with it, the shorter
    side resized to ``resize`` (aspect ratio kept) and the centre cropped to ``size`` — exactly
    ``weights.transforms()``'s resize and crop (torchvision's functional ops, on uint8)."""
    height, width = size
    if resize is None:
        if tuple(images.shape[-2:]) == (height, width):
            return images
        from torchvision.transforms.v2 import functional as TF

        return TF.resize(images, [height, width], antialias=True)
    # torchvision.transforms.functional, not .v2: the functions weights.transforms() calls (their uint8 resize
    # kernels differ by a grey level from v2's)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if min(images.shape[-2:]) != resize:
        images = TF.resize(images, [resize], interpolation=InterpolationMode(interpolation), antialias=True)
    if tuple(images.shape[-2:]) != (height, width):
        images = TF.center_crop(images, [height, width])
    return images


def decode_file(path: Path, max_pixels: int | None, target: ResizeTarget | None = None
                ) -> tuple[torch.Tensor, ImageHeader]:
    """One folder image, oriented RGB uint8, and its header: the decode both the cache and streaming use. With
    ``target`` (what the image will be resized to), a large JPEG is decoded at reduced size, as predict does, so
    that training, eval and predict see the same pixels from the same file (``fit_to_target`` then resizes it)."""
    return decode_with_header(read_item_bytes(path), path, max_pixels=max_pixels, target=target)


def fit_to_target(image: torch.Tensor, header: ImageHeader, target: ResizeTarget) -> torch.Tensor:
    """An image from :func:`decode_with_header` resized (and cropped) to ``target.size``, contiguous. For a
    shorter-side resize of a reduced decode, the long side comes from the stored image's proportions, as the
    full decode would give it, so the centre crop covers the same region."""
    if target.resize is not None and tuple(image.shape[-2:]) != header.oriented_size:
        height, width = header.oriented_size
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        # torchvision's rule for resize(image, [side]) (int, floored), applied to the full image's size
        resized = ([target.resize, int(target.resize * width / height)] if height <= width
                   else [int(target.resize * height / width), target.resize])
        image = TF.resize(image, resized, interpolation=InterpolationMode(target.interpolation), antialias=True)
    return resize_and_crop(image, target.size, target.resize, target.interpolation).contiguous()


def decode_with_header(data: bytes, path: Path, *, max_pixels: int | None = None,
                       target: ResizeTarget | None = None) -> tuple[torch.Tensor, ImageHeader]:
    """RGB uint8 3×H×W (oriented) and the file's header; the header is checked against ``max_pixels`` first. With
    ``target`` (what the image will be resized to), a JPEG it allows to decode smaller comes at 1/2 or 1/4 of its
    stored size (module docstring, step 3), else every image comes at its stored size."""
    header = read_header(data, path, max_pixels)
    image = _read_reduced_jpeg(data, header, target) if target is not None and REDUCED_JPEG_DECODE else None
    return (_decode_full(data, path, header) if image is None else image), header


def _decode_full(data: bytes, path: Path, header: ImageHeader) -> torch.Tensor:
    """RGB uint8 3×H×W (oriented) of a file whose header was checked, at its stored size."""
    import torch

    if header.format not in _TORCHVISION_FORMATS:
        return _read_with_pillow(data, path)
    from torchvision.io import ImageReadMode, decode_image

    if problem := png_problem(data):  # torchvision's decoder would crash the process on this one
        raise DataError(f"{path}: not a readable image ({problem})")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError) as error:
        try:  # Pillow names the problem ("image file is truncated") where torchvision names its source line
            image = _read_with_pillow(data, path)
        except DataError as pillow_error:
            raise pillow_error from error
    if image.dtype != torch.uint8:  # 16-bit PNGs
        from torchvision.transforms.v2 import functional as TF

        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def is_grey(images: torch.Tensor) -> torch.Tensor:
    """Per image of uint8 (N×)3×H×W: True where R, G and B are equal everywhere."""
    same = (images[..., 0, :, :] == images[..., 1, :, :]) & (images[..., 1, :, :] == images[..., 2, :, :])
    return same.flatten(-2).all(-1)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N×)3×H×W → (N×)1×H×W by Pillow's ``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``
    in integers (ITU-R 601-2 luma with rounding; truncating would make about half the pixels one level darker)."""
    import torch

    rgb = images[..., :3, :, :].to(torch.int32)
    grey = (rgb[..., 0:1, :, :] * 19595 + rgb[..., 1:2, :, :] * 38470 + rgb[..., 2:3, :, :] * 7471 + 32768) >> 16
    return grey.to(torch.uint8)


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """RGB (N×)3×H×W → (N×)1×H×W by :func:`luminance` (the weights sum to 2^16, so an image whose R, G and B are
    equal keeps that channel exactly)."""
    if images.shape[-3] == 1:
        return images
    return luminance(images).contiguous()


def resize_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 C×H×W (or N×C×H×W) to ``size`` (H, W) with antialiasing; unchanged if it already fits."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, list(size), antialias=True)


PHASH_SIDE = 32  # the image is shrunk to 32x32 grey, and its 8x8 lowest DCT frequencies make the 64-bit hash


def _grey_array(image: torch.Tensor) -> Any:
    """H×W uint8 numpy grey of an RGB uint8 3×H×W image, by :func:`luminance`'s integer formula, in numpy: the
    hashes are computed per image, where torch's per-operation cost (and, on a busy machine, its thread pool)
    would cost more than the arithmetic."""
    import numpy as np

    rgb = image.numpy().astype(np.int32)
    return ((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 32768) >> 16).astype(np.uint8)


def perceptual_hash(image: torch.Tensor) -> int:
    """The 64-bit DCT perceptual hash of an RGB uint8 3×H×W image, as imagehash's ``phash`` computes it: grey
    (Pillow's ``convert("L")``), resized to 32×32 with Lanczos, 2-D DCT-II, the 8×8 lowest frequencies compared
    with their median; as an int. Near-identical images (re-compressed, slightly resized or brightened) differ in
    a few bits; unrelated photos in about half of them."""
    import numpy as np
    from PIL import Image

    small = Image.fromarray(_grey_array(image)).resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)
    dct = _dct_matrix(PHASH_SIDE)
    low = (dct @ np.asarray(small, dtype=np.float64) @ dct.T)[:8, :8].flatten()
    bits = low > np.median(low)
    return sum(1 << position for position, bit in enumerate(bits.tolist()) if bit)


def thumbnail(image: torch.Tensor, side: int = 16) -> bytes:
    """A ``side``×``side`` grey uint8 copy of an RGB uint8 3×H×W image (Pillow's antialiased bilinear): what
    near-duplicate candidates are compared on once their perceptual hashes matched."""
    from PIL import Image

    return Image.fromarray(_grey_array(image)).resize((side, side), Image.Resampling.BILINEAR).tobytes()


@functools.cache
def _dct_matrix(size: int) -> Any:
    """The (unnormalised) DCT-II matrix: ``D @ x`` is scipy's ``dct(x, type=2)`` up to a factor 2."""
    import numpy as np

    k = np.arange(size, dtype=np.float64)[:, None]
    n = np.arange(size, dtype=np.float64)[None, :]
    return np.cos(math.pi * k * (2 * n + 1) / (2 * size))
