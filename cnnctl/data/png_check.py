"""A PNG whose header promises more pixels than its data holds crashes torchvision's decoder (libpng reports
"Not enough image data", then the process dies with a segmentation fault in torchvision 0.29). Such a file is
found here first, by inflating its image data (in bounded pieces, the output discarded) and comparing the
length with what the header promises."""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PIECE = 1 << 20


def _raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines the image data must inflate to (a filter byte starts each row)."""
    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits_per_pixel + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x + dx - 1) // dx if width > x else 0, (height - y + dy - 1) // dy if height > y else 0)
               for x, y, dx, dy in ADAM7)


def png_problem(data: bytes) -> str | None:
    """Why a PNG's image data cannot fill the size its header gives, or None (also for what is not a PNG, or a
    PNG too damaged to tell: the decoder reports those)."""
    if not data.startswith(SIGNATURE):
        return None
    offset = len(SIGNATURE)
    header: tuple[int, int, int, int, int] | None = None
    inflater = zlib.decompressobj()
    inflated = 0
    expected = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            if colour not in CHANNELS:
                return None
            header = (width, height, depth, colour, interlace)
            expected = _raw_size(width, height, depth * CHANNELS[colour], interlace == 1)
        elif kind == b"IDAT" and header is not None:
            try:
                while body and inflated < expected:
                    inflated += len(inflater.decompress(body, PIECE))
                    body = inflater.unconsumed_tail
            except zlib.error:
                return None
        elif kind == b"IEND":
            break
    if header is None or inflated >= expected:
        return None
    width, height = header[:2]
    return (f"truncated: its header says {width}x{height} pixels but its image data ends after "
            f"{inflated * 100 // expected}% of them")
