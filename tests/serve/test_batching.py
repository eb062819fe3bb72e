"""Dynamic batching: concurrent requests share model calls, and each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from facenas.serve.batching import BatchingEmbedder


class SlowModel:
    """Doubles its input; each call takes a while, as a model does, and records its batch size."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.batches = seconds, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        time.sleep(self.seconds)
        return 2 * x


def test_concurrent_callers_share_calls_and_get_their_own_rows():
    model = SlowModel()
    batcher = BatchingEmbedder(model, max_batch=64, max_wait_s=0.005)
    results: dict[int, np.ndarray] = {}

    def call(k: int) -> None:
        results[k] = batcher.embed(np.full((2, 3), k, np.float32))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert all(np.array_equal(results[k], np.full((2, 3), 2 * k)) for k in range(24))
    assert sum(model.batches) == 48 and len(model.batches) < 24  # fewer model calls than requests
    assert batcher.faces == 48 and batcher.calls == len(model.batches)


def test_a_batch_stops_growing_at_max_faces():
    model = SlowModel(0.05)
    batcher = BatchingEmbedder(model, max_batch=4, max_wait_s=0.05)
    futures = [batcher.submit(np.zeros((1, 2), np.float32)) for _ in range(10)]
    for f in futures:
        f.result(timeout=10)
    batcher.close()
    assert max(model.batches) <= 4 and sum(model.batches) == 10


def test_a_model_error_reaches_every_request_of_the_batch_and_the_worker_goes_on():
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime failed")
        return x

    batcher = BatchingEmbedder(flaky, max_wait_s=0.05)
    first = [batcher.submit(np.ones((1, 2), np.float32)) for _ in range(3)]
    for f in first:
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            f.result(timeout=10)
    assert np.array_equal(batcher.embed(np.ones((1, 2), np.float32)), np.ones((1, 2)))
    batcher.close()


def test_awaiting_from_the_event_loop():
    batcher = BatchingEmbedder(SlowModel(0.01), max_wait_s=0.01)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.aembed(np.full((1, 2), k, np.float32)) for k in range(5)))

    out = asyncio.run(main())
    batcher.close()
    assert [float(o[0, 0]) for o in out] == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(np.zeros((1, 2), np.float32))


def test_a_lone_request_never_waits_and_an_announced_one_is_waited_for():
    model = SlowModel(0.0)
    batcher = BatchingEmbedder(model, max_batch=64, max_wait_s=1.0)
    began = time.perf_counter()
    batcher.embed(np.zeros((1, 2), np.float32))
    assert time.perf_counter() - began < 0.5  # nothing announced: no wait for more

    def late() -> None:
        with batcher.coming():  # decoding its image...
            time.sleep(0.1)
            future = batcher.submit(np.ones((1, 2), np.float32))
        future.result(timeout=10)

    with batcher.coming():
        worker = threading.Thread(target=late)
        worker.start()
        time.sleep(0.02)
        early = batcher.submit(np.zeros((1, 2), np.float32))
    early.result(timeout=10)
    worker.join()
    batcher.close()
    assert model.batches == [1, 2]  # the early request waited for the announced one: one call for both
