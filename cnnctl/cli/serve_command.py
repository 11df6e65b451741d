"""``cnnctl serve``."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint
from cnnctl.serve.settings import ServeSettings

D = ServeSettings()  # the defaults, declared once; ServeSettings.check() refuses values out of range in one line
LIMITS = "Limits"
BATCHING = "Batching"


@command()
def serve(
    checkpoint_path: Annotated[str | None, typer.Argument(
        metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint, show_default=False)] = None,
    host: Annotated[str, typer.Option(help="address to listen on; another than 127.0.0.1 makes the server "
                                           "reachable from other machines")] = D.host,
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (the log says which)")
                    ] = D.port,
    batch_size: Annotated[int, typer.Option(help="images per forward pass, gathered from concurrent requests",
                                            rich_help_panel=BATCHING)] = D.batch_size,
    max_wait_ms: Annotated[float, typer.Option(help="how long the first image of a batch waits for more",
                                               rich_help_panel=BATCHING)] = D.max_wait_ms,
    queue_size: Annotated[int, typer.Option(help="images waiting for the model; a request that does not fit "
                                                        "is answered 503", rich_help_panel=BATCHING)] = D.queue_size,
    max_body_mb: Annotated[float, typer.Option(help="largest request body in MiB; the server reads no further (413)",
                                               rich_help_panel=LIMITS)] = D.max_body_mb,
    max_pixels: Annotated[int, typer.Option(help="refuse images with more pixels, read from the header "
                                                        "before decoding (413)", rich_help_panel=LIMITS)
                          ] = D.max_pixels,
    max_images: Annotated[int, typer.Option(help="images in one request (413 beyond)", rich_help_panel=LIMITS)
                          ] = D.max_images,
    limit_concurrency: Annotated[int, typer.Option(help="connections served at once; more are answered 503",
                                                   rich_help_panel=LIMITS)] = D.limit_concurrency,
    header_timeout: Annotated[float, typer.Option(help="seconds a connection has to send a request head "
                                                                  "(408 and closed after)", rich_help_panel=LIMITS)
                              ] = D.header_timeout_s,
    body_timeout: Annotated[float, typer.Option(help="seconds a request has to send its body (408)",
                                                rich_help_panel=LIMITS)] = D.body_timeout_s,
    keep_alive: Annotated[int, typer.Option(help="seconds an idle keep-alive connection stays open",
                                            rich_help_panel=LIMITS)] = D.keep_alive_s,
    decode_threads: Annotated[int, typer.Option(help="threads decoding images")] = D.decode_threads,
    topk: Annotated[int, typer.Option(help="how many top classes per image")] = D.topk,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = D.device,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for the model \\[default: the CPUs this process may use]")] = D.threads,
    access_log: Annotated[bool, typer.Option("--access-log", help="log every request, not only refused ones")
                          ] = D.access_log,
) -> None:
    """Serve a checkpoint over HTTP: POST /predict, GET /health, GET /model.

    POST an image as the body (curl --data-binary @x.png http://127.0.0.1:8000/predict) or several as multipart \
files (curl -F image=@x.png -F image=@y.png ...); the answer is what predict --json writes. Requests are batched \
together; every limit below answers with its HTTP status and one log line."""
    from cnnctl.serve.server import serve as run_server

    settings = ServeSettings(
        host=host, port=port, batch_size=batch_size, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
        max_pixels=max_pixels, max_images=max_images, queue_size=queue_size, limit_concurrency=limit_concurrency,
        header_timeout_s=header_timeout, body_timeout_s=body_timeout, keep_alive_s=keep_alive,
        decode_threads=decode_threads, topk=topk, device=device, threads=threads, access_log=access_log,
    ).check()
    run_server(checkpoint_argument(checkpoint_path), settings)
