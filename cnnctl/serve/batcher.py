"""Dynamic batching: images from concurrent requests share one forward pass, in a thread of its own.

A request hands its decoded images to :meth:`Batcher.submit` and gets a ``concurrent.futures.Future`` of their
predictions. One worker thread takes the waiting images, up to ``batch_size``; while fewer are waiting and another
request is on its way (announced with :meth:`Batcher.incoming` while it is read and decoded), it waits for more,
at most ``max_wait_s``; then it runs them through the model as one batch. A lone request is not kept waiting for
company that is not coming. The event loop never runs the model. The queue is bounded by images: a request whose
images do not fit is refused at once (:class:`QueueFull`), so the server answers 503 instead of holding ever more
memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cnnctl.engine.predict import Prediction, Predictor


class QueueFull(Exception):
    """The images of a request do not fit in the queue now."""


@dataclass
class _Request:
    future: Future[list[Prediction]]
    results: list[Any]
    remaining: int


@dataclass
class _Item:
    request: _Request
    index: int
    name: str
    image: torch.Tensor


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class Batcher:
    def __init__(self, predictor: Predictor, *, batch_size: int, max_wait_s: float, capacity: int) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.stats = BatchStats()
        self._items: deque[_Item] = deque()
        self._incoming = 0  # requests announced (being read or decoded) that have not submitted yet
        self._stopping = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cnnctl-batcher", daemon=True)

    @property
    def waiting(self) -> int:
        """Images in the queue."""
        return len(self._items)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join(timeout)

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around the reading and decoding of a request: while any request is on its way, the worker waits
        (up to ``max_wait_s``) for it to fill the batch; while none is, it runs what it has at once."""
        with self._ready:
            self._incoming += 1
        try:
            yield
        finally:
            with self._ready:
                self._incoming -= 1
                self._ready.notify_all()

    def submit(self, names: Sequence[str], images: Sequence[torch.Tensor]) -> Future[list[Prediction]]:
        """A future of one prediction per image, in order; :class:`QueueFull` when they do not fit now."""
        future: Future[list[Prediction]] = Future()
        if not images:
            future.set_result([])
            return future
        request = _Request(future, [None] * len(images), len(images))
        with self._ready:
            if len(self._items) + len(images) > self.capacity:
                raise QueueFull(f"{len(self._items)} images are waiting for the model (--queue-size "
                                f"{self.capacity})")
            self._items.extend(_Item(request, index, name, image)
                               for index, (name, image) in enumerate(zip(names, images)))
            self._ready.notify_all()
        return future

    def _gather(self) -> list[_Item] | None:
        """The next batch; None once stopped with nothing left."""
        with self._ready:
            while not self._items and not self._stopping:
                self._ready.wait()
            if not self._items:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._items) < self.batch_size and self._incoming and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            return [self._items.popleft() for _ in range(min(self.batch_size, len(self._items)))]

    def _run(self) -> None:
        import torch

        while (batch := self._gather()) is not None:
            self.stats.add(len(batch))
            try:
                predictions = self.predictor.classify([item.name for item in batch],
                                                      torch.stack([item.image for item in batch]))
            except Exception as error:  # noqa: BLE001 - every waiting request is told, the thread goes on
                for request in {id(item.request): item.request for item in batch}.values():
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            for item, prediction in zip(batch, predictions):
                request = item.request
                request.results[item.index] = prediction
                request.remaining -= 1
                if request.remaining == 0 and not request.future.done():
                    request.future.set_result(request.results)
