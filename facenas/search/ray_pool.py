"""Candidates as Ray tasks: one search on many machines (`run.executor: ray`, `facenas search --executor ray`).

Ray schedules each candidate onto a node with the CPUs and GPUs `run.ray` asks for, retries it on another worker when
its worker process or node dies (`run.ray.max_retries`), and kills it when the search cancels it. The driver, where
`facenas search` runs, keeps the journal: it stays the truth, so a search whose driver stops resumes with `--resume`
as any other, and a candidate Ray could not finish is a failed candidate like one whose child process died.

How data reaches the workers:
- facenas's evaluators carry only the run's config; each task reads its data where the config points
  (`data.root`, `faces.data.source`), so that path must be one every node sees (a shared file system) or a copy at the
  same path on each node. Generated sets (digits, synthetic faces) need nothing.
- The evaluator object itself goes into Ray's object store once (`ray.put`) and every task on a node shares that copy,
  so an evaluator that holds its data in memory (arrays loaded in the driver) ships it to each node once.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from typing import Any, Callable, Optional

from facenas.config import RayConfig
from facenas.errors import ConfigError
from facenas.search.evaluator import EpochMetrics, Evaluator
from facenas.search.executor import CandidateFailed, Completion, Placement, Task, describe_failure, is_fatal, place
from facenas.space.arch import Arch

log = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("run.executor = ray needs Ray, which is not installed: pip install 'facenas[ray]' (or use "
                          "run.executor = subprocess with run.workers = N on one machine)") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the address, where nothing listens at a cluster's host:port: `ray.init` itself would retry
    for minutes. `auto` (the cluster this node belongs to) and `ray://` client addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"run.ray.address = {address!r} is not host:port (e.g. 10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one there "
                          "with `ray start --head --port PORT`, or leave run.ray.address unset for a local "
                          "cluster") from None


def _train(evaluator: Evaluator, arch: Arch, epochs: int, seed: int, placement: Placement) -> tuple[str, Any]:
    """The body of a candidate's Ray task: ("done", metrics), ("failed", text) or ("fatal", exception)."""
    try:
        return "done", place(evaluator, placement).evaluate(arch, epochs, seed=seed)
    except BaseException as exc:  # noqa: BLE001 - a candidate's own failure is data, not a task error to retry
        return ("fatal", exc) if is_fatal(exc) else ("failed", describe_failure(exc))


class RayPool:
    """Up to `workers` candidates at once as Ray tasks (default: as many as the cluster's CPUs, or GPUs, allow)."""

    def __init__(self, evaluator: Evaluator, workers: Optional[int], settings: RayConfig) -> None:
        ray = self._ray = import_ray()
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            if settings.address:
                check_reachable(settings.address)
            try:
                ray.init(address=settings.address, num_cpus=None if settings.address else settings.num_cpus,
                         include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray cluster"
                raise ConfigError(f"cannot start or join {where}: {exc}".splitlines()[0]) from None
        resources = ray.cluster_resources()
        fits = math.floor(resources.get("CPU", 1) / settings.cpus_per_candidate)
        if settings.gpus_per_candidate:
            fits = min(fits, math.floor(resources.get("GPU", 0) / settings.gpus_per_candidate))
            if fits < 1:
                self.close()
                raise ConfigError(f"run.ray.gpus_per_candidate = {settings.gpus_per_candidate} but the Ray cluster "
                                  f"has {resources.get('GPU', 0):g} GPUs")
        self.slots = workers or max(1, fits)
        self._remote = ray.remote(_train).options(
            num_cpus=settings.cpus_per_candidate, num_gpus=settings.gpus_per_candidate,
            max_retries=settings.max_retries, retry_exceptions=False)
        self._placement = Placement(threads=max(1, int(settings.cpus_per_candidate)),
                                    device="cuda" if settings.gpus_per_candidate else None)
        self._evaluator = ray.put(evaluator)
        self._running: dict[Any, tuple[Task, float]] = {}  # object ref -> (task, start)
        log.info("Ray: %d candidates at once on %s", self.slots,
                 ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")))

    def submit(self, task: Task) -> None:
        c = task.candidate
        ref = self._remote.remote(self._evaluator, c.arch, c.epochs, task.seed, self._placement)
        self._running[ref] = (task, time.perf_counter())

    def wait(self, on_epoch: Callable[[Task, EpochMetrics], None]) -> list[Completion]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        done = []
        for ref in ready:
            task, started = self._running.pop(ref)
            try:
                kind, payload = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:  # the worker or node died more often than retries allow
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                done.append(Completion(task, CandidateFailed(f"Ray: {type(exc).__name__}: {first}",
                                                             time.perf_counter() - started)))
                continue
            if kind == "done":
                for epoch in payload.epochs:
                    on_epoch(task, epoch)
                done.append(Completion(task, payload))
            elif kind == "fatal":
                done.append(Completion(task, payload))
            else:
                done.append(Completion(task, CandidateFailed(payload, time.perf_counter() - started)))
        return done

    def cancel(self, task_id: int) -> None:
        for ref, (task, _) in list(self._running.items()):
            if task.id == task_id:
                del self._running[ref]
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        for ref in list(self._running):
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()
