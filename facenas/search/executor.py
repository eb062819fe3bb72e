"""Executors run candidates through an evaluator: here, in a child process, or several at once.

An `Executor` trains one candidate and blocks. A `Pool` trains several at once for the speculative scheduler
(`run_search` with `run.workers` > 1): it takes tasks, reports epochs and completions as they arrive, and stops a task
the search no longer needs. `SerialPool` wraps an executor (one slot), `ProcessPool` keeps N child processes busy on
this machine (CPU threads split between them, GPUs assigned round-robin), and `facenas.search.ray_pool.RayPool` runs
each candidate as a Ray task on a cluster.

`SubprocessExecutor` is the default for real searches: every candidate trains in a fresh child process, so memory
(host or GPU) cannot leak from one candidate into the next, and a candidate that crashes the interpreter (a
segfault, the OOM killer) is recorded as failed instead of ending the search. Children are forked from a
forkserver that has already imported torch, so starting one costs milliseconds, not the seconds of an import.

Exceptions are sorted into two kinds: `CandidateFailed` (this candidate cannot be trained: NaN loss, an exception
in training, a dead child) and everything else deriving from `FacenasError` other than `TrainingError`
(missing data, a bad config, a replay divergence), which no candidate can get past and which stops the search.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Union

from facenas.errors import FacenasError, TrainingError
from facenas.search.evaluator import EpochCallback, EpochMetrics, Evaluator, Metrics
from facenas.search.strategy import Candidate
from facenas.space.arch import Arch


class CandidateFailed(Exception):
    """A candidate could not be trained; `error` is the text recorded in the journal."""

    def __init__(self, error: str, wall_s: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.wall_s = wall_s


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, FacenasError) and not isinstance(exc, TrainingError)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TrainingError):
        return f"{type(exc).__name__}: {exc}"
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"


class Executor(Protocol):
    def run(self, evaluator: Evaluator, arch: Arch, epochs: int, *, seed: int,
            on_epoch: Optional[EpochCallback] = None) -> Metrics:
        """Train and score one candidate; raise `CandidateFailed` for a candidate-level failure."""
        ...


class InlineExecutor:
    """Runs the evaluator in this process: for replays, tests and debugging."""

    def run(self, evaluator: Evaluator, arch: Arch, epochs: int, *, seed: int,
            on_epoch: Optional[EpochCallback] = None) -> Metrics:
        start = time.perf_counter()
        try:
            return evaluator.evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)
        except Exception as exc:  # noqa: BLE001 - sorted into fatal / candidate failure
            if is_fatal(exc):
                raise
            raise CandidateFailed(describe_failure(exc), time.perf_counter() - start) from exc


def _watch_lifeline(lifeline: Any) -> None:
    """Exit as soon as the search process is gone (killed or crashed): its end of the lifeline then closes.

    A forkserver child outlives its parent otherwise (the forkserver itself stays up while any child runs), and a
    killed search would leave a candidate training on in the background.
    """
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


@dataclass(frozen=True)
class Placement:
    """Where a candidate trains: CPU threads (None: as configured) and device (None: as configured)."""

    threads: Optional[int] = None
    device: Optional[str] = None


def place(evaluator: Evaluator, placement: Placement) -> Evaluator:
    """Apply a placement in the process that trains: torch's thread count and current CUDA device, and the
    evaluator's own settings where it offers `placed(threads=, device=)` (facenas's evaluators do)."""
    if placement.threads is None and placement.device is None:
        return evaluator
    import torch

    if placement.threads:
        torch.set_num_threads(placement.threads)
    if placement.device and placement.device.startswith("cuda:"):
        torch.cuda.set_device(int(placement.device.split(":", 1)[1]))
    placed = getattr(evaluator, "placed", None)
    return placed(threads=placement.threads, device=placement.device) if callable(placed) else evaluator


def _child_main(evaluator: Evaluator, arch: Arch, epochs: int, seed: int, conn: Any, lifeline: Any,
                placement: Placement = Placement()) -> None:
    """Runs in the child: trains, streams epochs back, then sends the result or the error."""
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    try:
        evaluator = place(evaluator, placement)
        metrics = evaluator.evaluate(arch, epochs, seed=seed, on_epoch=lambda m: conn.send(("epoch", m)))
        conn.send(("done", metrics))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        try:
            conn.send(("fatal" if is_fatal(exc) else "failed", exc if is_fatal(exc) else describe_failure(exc)))
        except Exception:  # the exception itself may not pickle
            conn.send(("failed", describe_failure(exc)))
    finally:
        conn.close()


def _exit_description(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"child process was killed by {name}{hint}"
    return (f"child process exited with code {code} before reporting a result (its traceback, if any, was printed "
            "above)")


class _Child:
    """One candidate in a child process: its result pipe, its lifeline, and how to end it."""

    def __init__(self, ctx: Any, evaluator: Evaluator, arch: Arch, epochs: int, seed: int,
                 placement: Placement) -> None:
        self.started = time.perf_counter()
        self.conn, child = ctx.Pipe(duplex=False)
        lifeline_r, self._lifeline = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child_main, args=(evaluator, arch, epochs, seed, child, lifeline_r, placement),
                                daemon=True)
        self.proc.start()
        child.close()
        lifeline_r.close()

    def receive(self) -> tuple[str, Any]:
        """The child's next message: ("epoch", m), ("done", metrics), ("fatal", exc) or ("failed", CandidateFailed)."""
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self.proc.join()
            return "failed", CandidateFailed(_exit_description(self.proc.exitcode), self.elapsed())
        if kind == "failed":
            return kind, CandidateFailed(payload, self.elapsed())
        return kind, payload

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def close(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        self.conn.close()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self._lifeline.close()


def _context(start_method: str | None, preload: tuple[str, ...]) -> Any:
    methods = mp.get_all_start_methods()
    method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(preload))
    return ctx


class SubprocessExecutor:
    """Runs each candidate in a fresh child process."""

    def __init__(self, start_method: str | None = None, preload: tuple[str, ...] = ("torch",)) -> None:
        self._ctx = _context(start_method, preload)
        self.start_method = self._ctx.get_start_method()

    def run(self, evaluator: Evaluator, arch: Arch, epochs: int, *, seed: int,
            on_epoch: Optional[EpochCallback] = None) -> Metrics:
        child = _Child(self._ctx, evaluator, arch, epochs, seed, Placement())
        killed = True  # interrupted (Ctrl-C) or a fatal error: do not leave the child behind
        try:
            while True:
                kind, payload = child.receive()
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(payload)
                    continue
                killed = False
                if kind == "done":
                    return payload
                raise payload
        finally:
            child.close(kill=killed)


# -- pools: several candidates at once -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One candidate to train: `id` is its journal record, `index` its place in the search."""

    id: int
    index: int
    candidate: Candidate
    seed: int


@dataclass(frozen=True)
class Completion:
    """A task ended: `result` is its metrics, a `CandidateFailed`, or the fatal exception that stops the search."""

    task: Task
    result: Union[Metrics, CandidateFailed, BaseException]


TaskEpochCallback = Callable[[Task, EpochMetrics], None]


class Pool(Protocol):
    slots: int

    def submit(self, task: Task) -> None:
        """Start training `task` (the pool has a free slot)."""
        ...

    def wait(self, on_epoch: TaskEpochCallback) -> list[Completion]:
        """Block until at least one task ends; epochs reported meanwhile go to `on_epoch` (in this thread)."""
        ...

    def cancel(self, task_id: int) -> None:
        """Stop a task the search no longer needs; it produces no completion."""
        ...

    def close(self) -> None:
        """Stop everything still running."""
        ...


class SerialPool:
    """One slot, trained by an `Executor` when the scheduler waits: the serial search, with any executor."""

    slots = 1

    def __init__(self, evaluator: Evaluator, executor: Executor) -> None:
        self.evaluator = evaluator
        self.executor = executor
        self._pending: list[Task] = []

    def submit(self, task: Task) -> None:
        self._pending.append(task)

    def wait(self, on_epoch: TaskEpochCallback) -> list[Completion]:
        task = self._pending.pop(0)
        try:
            metrics = self.executor.run(self.evaluator, task.candidate.arch, task.candidate.epochs, seed=task.seed,
                                        on_epoch=lambda m: on_epoch(task, m))
        except CandidateFailed as failure:
            return [Completion(task, failure)]
        except FacenasError as exc:
            return [Completion(task, exc)]
        return [Completion(task, metrics)]

    def cancel(self, task_id: int) -> None:
        self._pending = [t for t in self._pending if t.id != task_id]

    def close(self) -> None:
        self._pending.clear()


def local_placements(workers: int, threads: Optional[int], devices: list[str]) -> list[Placement]:
    """One placement per worker slot: the CPU threads (`threads`, else all cores) split evenly, and the devices
    assigned round-robin (none: as configured)."""
    total = threads or os.cpu_count() or 1
    per_worker = max(1, total // workers)
    return [Placement(per_worker, devices[slot % len(devices)] if devices else None) for slot in range(workers)]


def local_devices(device: str) -> list[str]:
    """The devices local workers share: every GPU round-robin (cuda:0, cuda:1, ...) for `auto` or `cuda` on a CUDA
    machine; an explicit `cuda:N` or `cpu` pins every worker there."""
    if device not in ("auto", "cuda"):
        return [device]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] if count else ([] if device == "auto" else ["cuda"])


class ProcessPool:
    """N candidates at once, each in a fresh child process (see `SubprocessExecutor` for why a child per
    candidate), each child on its own slot's placement."""

    def __init__(self, evaluator: Evaluator, workers: int, placements: Optional[list[Placement]] = None,
                 start_method: str | None = None, preload: tuple[str, ...] = ("torch",)) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.evaluator = evaluator
        self.slots = workers
        self.placements = placements or [Placement()] * workers
        self._ctx = _context(start_method, preload)
        self._running: dict[int, tuple[Task, _Child, int]] = {}  # task id -> (task, child, slot)

    def submit(self, task: Task) -> None:
        busy = {slot for _, _, slot in self._running.values()}
        slot = next(i for i in range(self.slots) if i not in busy)
        child = _Child(self._ctx, self.evaluator, task.candidate.arch, task.candidate.epochs, task.seed,
                       self.placements[slot])
        self._running[task.id] = (task, child, slot)

    def wait(self, on_epoch: TaskEpochCallback) -> list[Completion]:
        done: list[Completion] = []
        while not done:
            by_conn = {child.conn: task_id for task_id, (_, child, _) in self._running.items()}
            for conn in multiprocessing.connection.wait(list(by_conn)):
                task, child, _ = self._running[by_conn[conn]]
                kind, payload = child.receive()
                if kind == "epoch":
                    on_epoch(task, payload)
                    continue
                child.close()
                del self._running[task.id]
                done.append(Completion(task, payload))
        return done

    def cancel(self, task_id: int) -> None:
        entry = self._running.pop(task_id, None)
        if entry is not None:
            entry[1].close(kill=True)

    def close(self) -> None:
        for task_id in list(self._running):
            self.cancel(task_id)


def make_pool(run: Any, evaluator: Evaluator, threads: Optional[int], device: str) -> Pool:
    """The pool `run` (a `RunConfig`) asks for: `run.workers` local child processes on `threads` CPU threads and the
    `device` setting (`train.device`), Ray tasks, or one candidate at a time."""
    if run.executor == "ray":
        from facenas.search.ray_pool import RayPool

        return RayPool(evaluator, run.workers if run.workers > 1 else None, run.ray)
    if run.workers == 1:
        return SerialPool(evaluator, make_executor(run.executor, evaluator))
    return ProcessPool(evaluator, run.workers, local_placements(run.workers, threads, local_devices(device)),
                       preload=("torch", type(evaluator).__module__))


def as_pool(evaluator: Evaluator, executor: Union[Executor, Pool]) -> Pool:
    """A pool as given, or an executor wrapped in a one-slot `SerialPool`."""
    return executor if hasattr(executor, "submit") else SerialPool(evaluator, executor)  # type: ignore[arg-type]


def train_all(pool: Pool, runs: Sequence[tuple[Arch, int, int]],
              on_done: Callable[[int, Union[Metrics, CandidateFailed]], None], phase: str = "check") -> None:
    """Train every (architecture, epochs, seed) of `runs` on `pool`, as many at once as it has slots, in order.

    `on_done(i, result)` runs in this thread as the i-th run ends, with its metrics or its `CandidateFailed`; an
    exception it raises, or a fatal error from a run (missing data), stops the rest. The pool is always closed, so
    Ctrl-C or an error leaves no child process training behind. For measurements outside a search (fidelity,
    noise): no journal, no strategy.
    """
    queue = list(enumerate(runs))
    running = 0
    try:
        while queue or running:
            while queue and running < pool.slots:
                i, (arch, epochs, seed) = queue.pop(0)
                pool.submit(Task(i, i, Candidate(phase, arch, epochs), seed))
                running += 1
            for done in pool.wait(lambda task, epoch: None):
                running -= 1
                if isinstance(done.result, BaseException) and not isinstance(done.result, CandidateFailed):
                    raise done.result
                on_done(done.task.index, done.result)
    finally:
        pool.close()


def make_executor(kind: str, evaluator: Optional[Evaluator] = None) -> Executor:
    """The executor a config names; a subprocess executor preloads the evaluator's module in its forkserver."""
    if kind == "inline":
        return InlineExecutor()
    if kind == "subprocess":
        preload = ("torch",) + ((type(evaluator).__module__,) if evaluator is not None else ())
        return SubprocessExecutor(preload=preload)
    raise ValueError(f"unknown executor {kind!r}; choose subprocess or inline")
