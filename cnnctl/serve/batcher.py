"""Dynamic batching: images from concurrent requests share one forward pass, in a thread of its own.

A request hands its decoded images to :meth:`Batcher.submit` and gets a ``concurrent.futures.Future`` of their
predictions. One worker thread takes the first waiting image, then more until it holds ``batch_size`` of them or
``max_wait_s`` has passed since it took the first, and runs them through the model as one batch. The event loop
never runs the model. The queue is bounded by images: a request whose images do not fit is refused at once
(:class:`QueueFull`), so the server answers 503 instead of holding ever more memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
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


_STOP = object()


class Batcher:
    def __init__(self, predictor: Predictor, *, batch_size: int, max_wait_s: float, capacity: int) -> None:
        self.predictor = predictor
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting = 0  # images in the queue, counted under the lock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cnnctl-batcher", daemon=True)

    @property
    def waiting(self) -> int:
        return self._waiting

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def submit(self, names: Sequence[str], images: Sequence[torch.Tensor]) -> Future[list[Prediction]]:
        """A future of one prediction per image, in order; :class:`QueueFull` when they do not fit now."""
        future: Future[list[Prediction]] = Future()
        if not images:
            future.set_result([])
            return future
        request = _Request(future, [None] * len(images), len(images))
        with self._lock:
            if self._waiting + len(images) > self.capacity:
                raise QueueFull(f"{self._waiting} images are waiting for the model (--queue-size {self.capacity})")
            self._waiting += len(images)
            for index, (name, image) in enumerate(zip(names, images)):
                self._queue.put(_Item(request, index, name, image))
        return future

    def _take(self, block: bool, timeout: float | None = None) -> Any:
        item = self._queue.get(block, timeout)
        if item is not _STOP:
            with self._lock:
                self._waiting -= 1
        return item

    def _gather(self) -> tuple[list[_Item], bool]:
        """The next batch, and whether the batcher was asked to stop while gathering it."""
        first = self._take(True)
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._take(remaining > 0, remaining if remaining > 0 else None)
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        import torch

        stopping = False
        while not stopping:
            batch, stopping = self._gather()
            if not batch:
                continue
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
