"""What ``cnnctl serve`` is told: address, batching and every limit, with their defaults, checked in one place.

The limits bound what one client can make the server hold: a request body is at most ``max_body_mb`` (the server
reads no further), at most ``limit_concurrency`` connections are served at once (more are answered 503 by
uvicorn), so request bodies in memory stay under ``limit_concurrency × max_body_mb``; decoded images wait in a
queue of ``queue_size`` images (a request that does not fit is answered 503), and an image header declaring more
than ``max_pixels`` pixels is refused before any pixel is decoded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cnnctl.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# 16 megapixels (4096 x 4096): a photo from a phone fits, a decompression bomb does not; 48 MB decoded as RGB.
SERVE_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ServeSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    batch_size: int = 16  # images per forward pass, gathered from concurrent requests
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_body_mb: float = 8.0  # request body limit, in MiB
    max_pixels: int = SERVE_MAX_PIXELS  # per image, read from the header before decoding
    max_images: int = 64  # images in one request
    queue_size: int = 256  # decoded images waiting for the model; a request that does not fit: 503
    limit_concurrency: int = 64  # connections served at once; more: 503 (uvicorn's limit_concurrency)
    header_timeout_s: float = 10.0  # a connection must send a complete request head within this (else 408)
    body_timeout_s: float = 30.0  # and its body within this once the head arrived (else 408)
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
    decode_threads: int = 2  # threads decoding images (the model runs in one more)
    topk: int = 5
    device: str = "auto"
    threads: int | None = None  # torch's CPU threads for the model [default: the CPUs this process may use]
    access_log: bool = False  # one line per request, not only per refused one

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def check(self) -> ServeSettings:
        """Itself, or a ``UsageError`` naming the first option out of range (as its command-line flag)."""
        minimums = {"port": 0, "batch_size": 1, "max_wait_ms": 0, "max_pixels": 1, "max_images": 1, "queue_size": 1,
                    "limit_concurrency": 1, "header_timeout_s": 0.001, "body_timeout_s": 0.001, "keep_alive_s": 1,
                    "decode_threads": 1, "topk": 1, "threads": 1}
        for name, low in minimums.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise UsageError(f"{flag(name)} must be at least {low:g}, not {value:g}")
        if not 0 < self.max_body_mb <= 4096:
            raise UsageError(f"--max-body-mb must be above 0 and at most 4096, not {self.max_body_mb:g}")
        if self.port > 65535:
            raise UsageError(f"--port must be at most 65535, not {self.port}")
        if self.queue_size < self.batch_size:
            raise UsageError(f"--queue-size ({self.queue_size}) must hold at least one batch "
                             f"(--batch-size {self.batch_size})")
        return self

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def flag(name: str) -> str:
    """The command-line flag of a setting: ``header_timeout_s`` → ``--header-timeout``."""
    for suffix in ("_s",):
        name = name.removesuffix(suffix)
    return "--" + name.replace("_", "-")


