"""What ``cnnctl serve`` is told: address, batching and every limit. The options are declared once, in
``cnnctl/recipe/commands.py`` (``SERVE``): the command's flags and :class:`ServeSettings`' fields come from there,
with the same names, defaults and range checks.

The limits bound what one client can make the server hold: a request body is at most ``max_body_mb`` (the server
reads no further), at most ``limit_concurrency`` connections are served at once (more are answered 503 by
uvicorn), so request bodies in memory stay under ``limit_concurrency × max_body_mb``; decoded images wait in a
queue of ``queue_size`` images (a request that does not fit is answered 503), and an image header declaring more
than ``max_pixels`` pixels is refused before any pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from cnnctl.errors import UsageError
from cnnctl.recipe.commands import SERVE, command_values
from cnnctl.recipe.options import label, naming

DEFAULTS = {option.name: option.stored_default for option in SERVE}


@dataclass(frozen=True)
class ServeSettings:
    """``cnnctl serve``'s options (``cnnctl serve --help`` says what each does)."""

    host: str = DEFAULTS["host"]
    port: int = DEFAULTS["port"]
    batch_size: int = DEFAULTS["batch_size"]
    max_wait_ms: float = DEFAULTS["max_wait_ms"]
    queue_size: int = DEFAULTS["queue_size"]
    max_body_mb: float = DEFAULTS["max_body_mb"]
    max_pixels: int = DEFAULTS["max_pixels"]
    max_images: int = DEFAULTS["max_images"]
    limit_concurrency: int = DEFAULTS["limit_concurrency"]
    header_timeout: float = DEFAULTS["header_timeout"]
    body_timeout: float = DEFAULTS["body_timeout"]
    keep_alive: int = DEFAULTS["keep_alive"]
    decode_threads: int = DEFAULTS["decode_threads"]
    topk: int = DEFAULTS["topk"]
    reject_below: float | None = DEFAULTS["reject_below"]
    device: str = DEFAULTS["device"]
    threads: int | None = DEFAULTS["threads"]
    access_log: bool = DEFAULTS["access_log"]

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def check(self, style: str = "param") -> ServeSettings:
        """The settings with every value converted and range-checked, or a ``UsageError`` naming the first one out
        of range (as ``style`` says: ``param`` for Python, ``flag`` for the command line)."""
        values = command_values(SERVE, dataclasses.asdict(self), style=style)
        with naming(style):
            if values["queue_size"] < values["batch_size"]:
                raise UsageError(f"{label('queue_size')} ({values['queue_size']}) must hold at least one batch "
                                 f"({label('batch_size')} {values['batch_size']})")
        return ServeSettings(**values)

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"
