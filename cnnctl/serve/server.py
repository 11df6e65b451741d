"""Running the server: load the checkpoint, open the socket, start the batching worker, hand over to uvicorn.

uvicorn gives the concurrency limit (``limit_concurrency``: more connections are answered 503), the idle
keep-alive timeout and h11's limit on the size of a request head. It has no limit on how long a client may take
to send its request head, so :func:`protocol_class` adds one (a slow client sending a byte a second is answered
408 and closed); the time to send the body is limited by the application (``--body-timeout``).

The log is one line per event on stderr: the start, each refused request (with its status and reason), and
uvicorn's own warnings, reworded to say which limit refused what.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.engine.predict import Predictor, load_for_inference
from cnnctl.engine.threads import threads_for_this_process
from cnnctl.errors import CnnctlError, first_line, require_packages
from cnnctl.serve.app import create_app, one_line
from cnnctl.serve.batcher import Batcher
from cnnctl.serve.settings import ServeSettings

LOGGER_NAME = "cnnctl.serve"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers (h11's limit; uvicorn answers 400 beyond it)
BACKLOG = 4096  # connections the kernel queues before accept(); Linux caps it at net.core.somaxconn


class _OneLine(logging.Formatter):
    """``2026-12-07 13:02:03 message``: one line per record, an exception as its type and first line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message = f"{message} ({type(error).__name__}: {first_line(error)})"
        return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.created))} {one_line(message, 500)}"


class _Reworded(logging.Filter):
    """uvicorn's warnings in the server's words, naming the option that set the limit."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__()
        self.words = {
            "Exceeded concurrency limit.": f"503 refused a request: {settings.limit_concurrency} connections are "
                                           "open (--limit-concurrency)",
            "Invalid HTTP request received.": "400 invalid HTTP request, or a request head still incomplete "
                                              f"after {MAX_HEAD_BYTES // 1024} KiB; connection closed",
        }

    def filter(self, record: logging.LogRecord) -> bool:
        text = self.words.get(record.getMessage())
        if text is not None:
            record.msg, record.args = text, ()
        return True


def server_logger(settings: ServeSettings, stream: Any = None) -> logging.Logger:
    """The server's logger, and uvicorn's warnings, as one line each on ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_OneLine())
    handler.addFilter(_Reworded(settings))
    logger = logging.getLogger(LOGGER_NAME)
    for name, level in ((LOGGER_NAME, logging.INFO), ("uvicorn.error", logging.WARNING),
                        ("uvicorn.access", logging.WARNING)):
        each = logging.getLogger(name)
        each.handlers[:] = [handler]
        each.setLevel(level)
        each.propagate = False
    return logger


def protocol_class(header_timeout: float, logger: logging.Logger) -> type:
    """uvicorn's h11 protocol with a deadline for the request head: a connection that has not sent a complete
    request line and headers within ``header_timeout`` of connecting (or of its previous response) is
    answered 408 and closed, however slowly it keeps sending."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps({"error": f"no complete request head within {header_timeout:g} s"}).encode()
    answer = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    class HeadDeadlineProtocol(H11Protocol):  # type: ignore[misc]
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered; its body has the application's own deadline
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            logger.warning(f"{client} 408 no complete request head within {header_timeout:g} s "
                           "(--header-timeout); connection closed")
            self.transport.write(answer)
            self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadlineProtocol


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CnnctlError(f"cannot listen on {host}: {error.strerror}", hint="pass --host 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise CnnctlError(f"cannot listen on {host}:{port}: the port is in use",
                              hint="choose another --port, or --port 0 for a free one") from None
        raise CnnctlError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def _more_open_files(wanted: int) -> None:
    """Raise this process's limit on open files towards ``wanted`` (each connection holds one)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def prepare(checkpoint: str | Path, settings: ServeSettings) -> Predictor:
    """The model, loaded and run once, with the threads it may use."""
    import torch

    model, _ = load_for_inference(checkpoint, device=settings.device)
    torch.set_num_threads(settings.threads or threads_for_this_process().threads)
    predictor = Predictor(model, model.cnnctl_meta, batch_size=settings.batch_size, topk=settings.topk,
                          max_pixels=settings.max_pixels, reject_below=settings.reject_below)
    predictor.import_decoders()
    height, width = predictor.preprocessing.image_size  # decoded images' size, before the padding
    predictor.classify(["warm-up"], torch.zeros(1, predictor.preprocessing.channels, height, width,
                                                dtype=torch.uint8))
    predictor.timings = {"decode_s": 0.0, "inference_s": 0.0}
    return predictor


def serve(checkpoint: str | Path, settings: ServeSettings, *, log: Callable[[str], None] | None = None) -> None:
    """Serve ``checkpoint`` over HTTP until interrupted (Ctrl+C, SIGTERM). ``log``: where the start line goes
    (the server's log by default)."""
    require_packages(("fastapi", "uvicorn", "multipart"), "serve", "cnnctl serve")
    import uvicorn

    settings = settings.check()
    logger = server_logger(settings)
    sock = listen(settings.host, settings.port)  # first: a port in use is said before the model loads
    try:
        predictor = prepare(checkpoint, settings)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    # connections beyond --limit-concurrency are accepted (and answered 503): each holds a file until then
    _more_open_files(max(65_536, settings.limit_concurrency * 2 + 256))
    batcher = Batcher(predictor, batch_size=settings.batch_size, max_wait_s=settings.max_wait_ms / 1000,
                      capacity=settings.queue_size).start()
    app = create_app(predictor, batcher, settings, logger, checkpoint=str(checkpoint))
    config = uvicorn.Config(
        app, lifespan="off", access_log=False, log_config=None, server_header=False,
        http=protocol_class(settings.header_timeout, logger), limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive, timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, backlog=BACKLOG,
    )
    meta = predictor.meta
    shape = "x".join(map(str, meta.preprocessing.input_shape))
    shown_host = f"[{host}]" if ":" in host else host
    (log or logger.info)(
        f"serving {meta.arch} ({meta.num_classes} classes, input {shape}, {predictor.device}) on "
        f"http://{shown_host}:{port} - POST /predict, GET /health, GET /model; batches of up to "
        f"{settings.batch_size} within {settings.max_wait_ms:g} ms, bodies up to {settings.max_body_mb:g} MiB, "
        f"{settings.limit_concurrency} connections; Ctrl+C stops")
    if not settings.is_loopback():
        logger.warning(f"warning: {settings.host} is reachable from other machines, and the server asks no one "
                       "for a password")
    # uvicorn shuts down gracefully on Ctrl+C and SIGTERM, then raises the signal again once it has: here that
    # ends run(), and the server says it stopped (a SIGTERM would otherwise end the process on the spot)
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        batcher.stop()
        sock.close()
    logger.info("stopped")


class _Stopped(Exception):
    """SIGTERM arrived."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped
