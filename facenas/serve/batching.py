"""Dynamic batching: the faces of concurrent requests go through the model in one onnxruntime call.

One worker thread owns the model's calls. A request announces itself when it starts decoding (`coming()`), puts
its crops on a queue and waits on a future; the worker takes everything queued at the moment it is free (what
arrived while the previous batch ran) and, while the batch is short of `max_batch` faces and announced requests
are still decoding, waits at most `max_wait_s` for them; then it runs one call and hands each request its rows.
Under load the batches fill by themselves; a lone request never waits. One call at a time also keeps
onnxruntime's intra-op threads from competing with each other (and with the HTTP work) for the cores.

Written here rather than taken from a serving framework (Triton, Ray Serve, BentoML): the service must stay a
single `pip install` without PyTorch, and the whole mechanism is one queue and one thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import numpy as np

_STOP = object()


class BatchingEmbedder:
    """Thread-safe `embed(crops)` that batches concurrent callers; `await aembed(crops)` from the event loop."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_s: float = 0.002) -> None:
        self._embed, self.max_batch, self.max_wait_s = embed, max_batch, max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self.calls = 0  # model calls made, and faces embedded: the mean batch is faces / calls
        self.faces = 0
        self._coming = 0  # requests decoding faces that they will submit
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="facenas-batcher", daemon=True)
        self._worker.start()

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Around a request's decoding: a batch short of faces waits (max_wait_s at most) only while some are."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1

    def submit(self, crops: np.ndarray) -> Future:
        if not self._worker.is_alive():
            raise RuntimeError("the batching worker has stopped")
        future: Future = Future()
        self._queue.put((crops, future))
        return future

    def embed_here(self, crops: np.ndarray) -> np.ndarray:
        """The model on `crops` in the calling thread, beside the batches (onnxruntime sessions are thread-safe):
        for work so small that the hop to the batching thread would cost more than batching saves."""
        out = self._embed(crops)
        with self._lock:
            self.calls += 1
            self.faces += len(crops)
        return out

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.submit(crops).result()

    async def aembed(self, crops: np.ndarray) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(crops))

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join(timeout=10)

    def _take(self) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        """The next batch: what is queued now, topped up for at most max_wait_s; and whether to stop after it."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch, faces = [first], len(first[0])
        deadline = time.perf_counter() + self.max_wait_s
        while faces < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                wait = remaining > 0 and self._coming > 0
                item = self._queue.get(timeout=remaining) if wait else self._queue.get_nowait()
            except queue.Empty:
                if self._coming > 0 and deadline > time.perf_counter():
                    continue
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
            faces += len(item[0])
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            live = [(crops, f) for crops, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                out: Optional[np.ndarray] = self._embed(np.concatenate([c for c, _ in live]))
            except BaseException as exc:  # noqa: BLE001 - every waiting request gets the model's error
                for _, future in live:
                    future.set_exception(exc)
                continue
            start = 0
            for crops, future in live:
                future.set_result(out[start:start + len(crops)])
                start += len(crops)
            with self._lock:
                self.calls += 1
                self.faces += start
