"""The HTTP application: ``POST /predict``, ``GET /health``, ``GET /model``, and the guard around them.

Every request passes through :class:`Guard` first: a body that says it is larger than the limit is refused before
a byte of it is read; a response sent before the request body was read to its end closes the connection (the
rest is never read); anything unexpected becomes a 500; and every refused request writes one line to the log.

``POST /predict`` takes one image as the raw body (``curl --data-binary @x.png``) or several as multipart files
(``curl -F image=@x.png -F image=@y.png``) and answers what ``cnnctl predict --json`` writes: one row per image
with ``path`` (the file name the client gave; never opened), ``label``, ``class_name``, ``probability``, ``topk``
and ``error``. Images are decoded in a small thread pool (the header first: too many pixels is refused
undecoded), then queued for the batching worker (:mod:`cnnctl.serve.batcher`). When no image of a request could
be read the answer is 4xx with the first image's reason; when some could, 200 with the others' ``error`` set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.data.images import TooManyPixels, UnknownImageFormat
from cnnctl.engine.predict import Prediction, decode_bytes, displayable_prediction
from cnnctl.errors import DataError, first_line
from cnnctl.serve.batcher import Batcher, QueueFull
from cnnctl.serve.settings import ServeSettings

if TYPE_CHECKING:
    import torch

    from cnnctl.engine.predict import Predictor

RAW_BODY_NAME = "body"  # the ``path`` of an image sent as the whole request body
JSON = b"application/json"


class Refused(Exception):
    """A request answered with ``status`` and a one-line ``reason`` (also its log line)."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` safe for one log line: control characters escaped (a client's file name cannot start a new
    line), at most ``limit`` characters."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_body(reason: str, **extra: Any) -> bytes:
    return json.dumps({"error": reason, **extra}).encode()


async def send_json(send: Callable[..., Any], status: int, body: bytes,
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestInfo:
    """What the application tells the guard about a request: why it was refused, how many images it held."""

    __slots__ = ("images", "reason")

    def __init__(self) -> None:
        self.reason = ""
        self.images = 0


class Guard:
    """Pure ASGI middleware around the application (see the module docstring)."""

    def __init__(self, app: Any, settings: ServeSettings, logger: logging.Logger) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_body_mb = settings.max_body_mb
        self.access_log = settings.access_log
        self.logger = logger

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = scope["cnnctl"] = RequestInfo()
        headers = dict(scope.get("headers") or [])
        length_text = headers.get(b"content-length")
        length = int(length_text) if length_text is not None and length_text.isdigit() else None
        body_done = not (b"transfer-encoding" in headers or (length or 0) > 0)
        status = 0

        async def guarded_receive() -> dict[str, Any]:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not body_done:  # the rest of the body is never read: the connection cannot be reused
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            if length is not None and length > self.max_body:
                raise Refused(413, f"body of {length:,} bytes (Content-Length) is larger than the limit of "
                                   f"{self.max_body_mb:g} MiB (--max-body-mb); not read")
            await self.app(scope, guarded_receive, guarded_send)
        except Refused as refused:
            info.reason = refused.reason
            if not status:
                await send_json(guarded_send, refused.status, error_body(refused.reason), refused.headers)
        except Exception as error:  # noqa: BLE001 - the server stays up; the log says what happened in one line
            info.reason = f"internal error: {type(error).__name__}: {first_line(error)}"
            if not status:
                await send_json(guarded_send, 500, error_body(info.reason))
        if status >= 400 or info.reason or self.access_log:
            client = scope.get("client")
            where = f"{client[0]}:{client[1]}" if client else "-"
            images = f" {info.images} image{'s' if info.images != 1 else ''}" if info.images else ""
            reason = f" {info.reason}" if info.reason else ""
            self.logger.warning(one_line(f"{where} {scope['method']} {scope['path']} {status}{images} "
                                         f"{(time.perf_counter() - started) * 1000:.1f} ms{reason}"))


# ------------------------------------------------------------------------------------------ reading a request

async def read_body(stream: Any, limit: int, limit_mb: float, timeout: float) -> bytes:
    """The whole body, or :class:`Refused`: 413 as soon as more than ``limit`` bytes arrived (the rest is
    never read), 408 when it takes longer than ``timeout`` seconds."""
    import anyio
    from starlette.requests import ClientDisconnect

    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"body larger than the limit of {limit_mb:g} MiB (--max-body-mb); stopped "
                                       f"reading after {size:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"body not complete within {timeout:g} s (--body-timeout); {size:,} bytes arrived"
                      ) from None
    except ClientDisconnect:
        raise Refused(499, f"client closed the connection after {size:,} bytes of its body") from None
    return b"".join(chunks)


async def images_of(content_type: str, body: bytes, max_images: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image: the parts of a multipart form, else the body itself."""
    if not content_type.lower().startswith("multipart/form-data"):
        return [(RAW_BODY_NAME, body)]
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=max_images,
                             max_fields=max_images, max_part_size=len(body) + 1)
    parser.spool_max_size = len(body) + 1  # parts stay in memory (they are already): no temporary files
    try:
        form = await parser.parse()
    except MultiPartException as error:
        message = str(error)
        if message.startswith("Too many files"):
            raise Refused(413, f"more than {max_images} images in one request (--max-images)") from None
        raise Refused(400, f"malformed multipart body: {message}") from None
    images = []
    try:
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise Refused(400, f"form field {field!r} is not a file: send images as files "
                                   "(curl -F image=@photo.png)")
            images.append((value.filename or field, await value.read()))
    finally:
        await form.close()
    return images


def decode_all(items: Sequence[tuple[str, bytes]], predictor: Predictor
               ) -> list[torch.Tensor | tuple[int, str]]:
    """Each image decoded to the checkpoint's input, or ``(status, reason)``: 400 empty, 413 more pixels than
    ``--max-pixels`` (from the header, undecoded), 415 not an image, 422 a damaged image."""
    decoded: list[torch.Tensor | tuple[int, str]] = []
    for name, data in items:
        if not data:
            decoded.append((400, f"{name}: empty image (0 bytes)"))
            continue
        try:
            decoded.append(decode_bytes(data, Path(name), predictor.preprocessing, max_pixels=predictor.max_pixels))
        except TooManyPixels as error:
            decoded.append((413, error.message))
        except UnknownImageFormat as error:
            decoded.append((415, error.message))
        except DataError as error:
            decoded.append((422, error.message))
    return decoded


def rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """The rows ``cnnctl predict --json`` writes."""
    return [displayable_prediction(p).as_dict() for p in predictions]


# ------------------------------------------------------------------------------------------ the application

def create_app(predictor: Predictor, batcher: Batcher, settings: ServeSettings, logger: logging.Logger,
               *, checkpoint: str = "") -> Guard:
    """The ASGI application (FastAPI inside :class:`Guard`)."""
    import anyio
    from fastapi import FastAPI, Request, Response

    app = FastAPI(title="cnnctl serve", docs_url=None, redoc_url=None, openapi_url=None)
    decoders = anyio.CapacityLimiter(settings.decode_threads)
    meta = predictor.meta

    def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(data), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(Refused)
    async def refused(request: Request, refused: Refused) -> Response:
        request.scope["cnnctl"].reason = refused.reason
        return Response(error_body(refused.reason), status_code=refused.status, media_type="application/json",
                        headers={name.decode(): value.decode() for name, value in refused.headers})

    @app.get("/health")
    async def health() -> Response:
        stats = batcher.stats
        return json_response({"status": "ok", "queued": batcher.waiting, "batches": stats.batches,
                              "images": stats.images, "largest_batch": stats.largest,
                              "mean_batch": round(stats.images / stats.batches, 2) if stats.batches else 0})

    @app.get("/model")
    async def model() -> Response:
        return json_response({
            "checkpoint": Path(checkpoint).name, "arch": meta.arch, "classes": meta.classes,
            "num_classes": meta.num_classes, "input_shape": list(meta.preprocessing.input_shape),
            "preprocessing": meta.preprocessing.to_dict(), "metrics": meta.metrics or {}, "dataset": meta.dataset,
            "epoch": meta.epoch, "versions": meta.versions or {},
            **({"task": "multilabel", "thresholds": predictor.thresholds,
                "label_count": list(predictor.label_count) if predictor.label_count else None}
               if predictor.multilabel else {}),
            "serving": {"batch_size": settings.batch_size, "max_wait_ms": settings.max_wait_ms,
                        "topk": predictor.topk, "reject_below": predictor.reject_below,
                        "max_body_mb": settings.max_body_mb,
                        "max_pixels": settings.max_pixels, "max_images": settings.max_images,
                        "device": str(predictor.device)},
        })

    async def read_and_queue(request: Request, info: RequestInfo) -> tuple[list[tuple[str, bytes]], list[Any], Any]:
        """The request's images, each decoded or its ``(status, reason)``, and the future of the readable ones'
        predictions (None when there are none)."""
        body = await read_body(request.stream(), settings.max_body_bytes, settings.max_body_mb,
                               settings.body_timeout)
        if not body:
            raise Refused(400, "empty body: send an image (curl --data-binary @x.png) or multipart files "
                               "(curl -F image=@x.png)")
        items = await images_of(request.headers.get("content-type", ""), body, settings.max_images)
        del body
        if not items:
            raise Refused(400, "no image in the multipart body")
        info.images = len(items)
        decoded = await anyio.to_thread.run_sync(decode_all, items, predictor, limiter=decoders)
        good = [i for i, item in enumerate(decoded) if not isinstance(item, tuple)]
        if not good:
            return items, decoded, None
        if len(good) > batcher.capacity:  # would never fit: not a matter of trying again
            raise Refused(413, f"{len(good)} images in one request, more than the queue holds (--queue-size "
                               f"{batcher.capacity})")
        try:
            return items, decoded, batcher.submit([items[i][0] for i in good], [decoded[i] for i in good])
        except QueueFull as full:
            raise Refused(503, f"busy: {full}; try again", [(b"retry-after", b"1")]) from None

    async def predict(request: Request) -> Response:
        info: RequestInfo = request.scope["cnnctl"]
        with batcher.incoming():  # the batching worker may wait for this request's images
            items, decoded, future = await read_and_queue(request, info)
        results = [Prediction(name, error=None) for name, _ in items]
        good = [i for i, item in enumerate(decoded) if not isinstance(item, tuple)]
        if future is not None:
            for i, prediction in zip(good, await asyncio.wrap_future(future)):
                results[i] = prediction
        failed = [(i, item) for i, item in enumerate(decoded) if isinstance(item, tuple)]
        for i, (_, reason) in failed:
            results[i] = Prediction(items[i][0], error=reason)
        if failed and not good:
            status, reason = failed[0][1]  # type: ignore[misc]
            info.reason = reason if len(items) == 1 else f"no image readable; the first: {reason}"
            return json_response({"error": info.reason, "predictions": rows(results)}, status)
        if failed:
            info.reason = f"{len(failed)} of {len(items)} images unreadable; the first: {failed[0][1][1]}"
        return json_response(rows(results))

    # a Starlette route: it takes the request itself (FastAPI would read the parameter's type from the annotation)
    app.add_route("/predict", predict, methods=["POST"])
    return Guard(app, settings, logger)
