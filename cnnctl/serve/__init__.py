"""``cnnctl serve``: a checkpoint behind an HTTP server (FastAPI on uvicorn, the ``serve`` extra).

One way down: ``server`` (socket, logging, uvicorn) -> ``app`` (the routes and the guard around them) ->
``batcher`` (the worker thread that batches images from concurrent requests) -> ``settings`` (the options and
their limits). Everything below the HTTP layer is cnnctl's own inference (``engine/predict.py``), so a file gives
the same prediction here as with ``cnnctl predict --json``. FastAPI, uvicorn and torch are imported when a server
starts; importing this package imports only the settings (the command line reads their defaults)::

    from cnnctl.serve import ServeSettings
    from cnnctl.serve.server import serve

    serve("runs/lenet5-mnist/1", ServeSettings(port=8080, batch_size=32))
"""

from __future__ import annotations

from cnnctl.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
