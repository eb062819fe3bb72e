"""Executors run one candidate through an evaluator: here, or in a child process.

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
import os
import signal
import threading
import time
import traceback
from typing import Any, Optional, Protocol

from facenas.errors import FacenasError, TrainingError
from facenas.search.evaluator import EpochCallback, Evaluator, Metrics
from facenas.space.arch import Arch


class CandidateFailed(Exception):
    """A candidate could not be trained; `error` is the text recorded in the journal."""

    def __init__(self, error: str, wall_s: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.wall_s = wall_s


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, FacenasError) and not isinstance(exc, TrainingError)


def _describe_failure(exc: BaseException) -> str:
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
            if _is_fatal(exc):
                raise
            raise CandidateFailed(_describe_failure(exc), time.perf_counter() - start) from exc


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


def _child_main(evaluator: Evaluator, arch: Arch, epochs: int, seed: int, conn: Any, lifeline: Any) -> None:
    """Runs in the child: trains, streams epochs back, then sends the result or the error."""
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    try:
        metrics = evaluator.evaluate(arch, epochs, seed=seed, on_epoch=lambda m: conn.send(("epoch", m)))
        conn.send(("done", metrics))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        try:
            conn.send(("fatal" if _is_fatal(exc) else "failed", exc if _is_fatal(exc) else _describe_failure(exc)))
        except Exception:  # the exception itself may not pickle
            conn.send(("failed", _describe_failure(exc)))
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


class SubprocessExecutor:
    """Runs each candidate in a fresh child process."""

    def __init__(self, start_method: str | None = None, preload: tuple[str, ...] = ("torch",)) -> None:
        methods = mp.get_all_start_methods()
        self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            self._ctx.set_forkserver_preload(list(preload))

    def run(self, evaluator: Evaluator, arch: Arch, epochs: int, *, seed: int,
            on_epoch: Optional[EpochCallback] = None) -> Metrics:
        start = time.perf_counter()
        parent, child = self._ctx.Pipe(duplex=False)
        lifeline_r, lifeline_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child_main, args=(evaluator, arch, epochs, seed, child, lifeline_r),
                                 daemon=True)
        proc.start()
        child.close()
        lifeline_r.close()
        try:
            while True:
                try:
                    kind, payload = parent.recv()
                except EOFError:
                    proc.join()
                    raise CandidateFailed(_exit_description(proc.exitcode), time.perf_counter() - start) from None
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(payload)
                elif kind == "done":
                    return payload
                elif kind == "fatal":
                    raise payload
                else:
                    raise CandidateFailed(payload, time.perf_counter() - start)
        except BaseException:
            if proc.is_alive():  # interrupted (Ctrl-C) or a fatal error: do not leave the child behind
                proc.kill()
            raise
        finally:
            parent.close()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            lifeline_w.close()


def make_executor(kind: str, evaluator: Optional[Evaluator] = None) -> Executor:
    """The executor a config names; a subprocess executor preloads the evaluator's module in its forkserver."""
    if kind == "inline":
        return InlineExecutor()
    if kind == "subprocess":
        preload = ("torch",) + ((type(evaluator).__module__,) if evaluator is not None else ())
        return SubprocessExecutor(preload=preload)
    raise ValueError(f"unknown executor {kind!r}; choose subprocess or inline")
