"""``cnnctl serve``."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from cnnctl.cli._common import CHECKPOINT_HELP, checkpoint_argument, command, complete_checkpoint
from cnnctl.cli.params import declare
from cnnctl.recipe.commands import SERVE, command_values
from cnnctl.serve.settings import ServeSettings


def serve(checkpoint_path: str | None = None, **params: Any) -> None:
    """Serve a checkpoint over HTTP: POST /predict, GET /health, GET /model.

    POST an image as the body (curl --data-binary @x.png http://127.0.0.1:8000/predict) or several as multipart \
files (curl -F image=@x.png -F image=@y.png ...); the answer is what predict --json writes. Requests are batched \
together; every limit answers with its HTTP status and one log line. docs/serve.md says more."""
    from cnnctl.serve.server import serve as run_server

    settings = ServeSettings(**command_values(SERVE, params)).check(style="flag")
    run_server(checkpoint_argument(checkpoint_path), settings)


declare(serve, SERVE, leading=[
    inspect.Parameter("checkpoint_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        str | None, typer.Argument(metavar="CHECKPOINT", help=CHECKPOINT_HELP, autocompletion=complete_checkpoint,
                                   show_default=False)])])
command()(serve)
