"""Executors: results come back, candidate failures are recorded, fatal errors stop the search."""

from __future__ import annotations

import math
import os
import signal
from typing import Any, Optional

import pytest

from facenas.errors import DataError, NonFiniteLossError
from facenas.search.executor import CandidateFailed, InlineExecutor, SubprocessExecutor
from facenas.space.arch import Arch
from facenas.train.metrics import EpochMetrics, Metrics


class ScriptedEvaluator:
    """Behaves as told: returns metrics, raises, dies, or returns NaN losses (picklable, module level)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    def describe(self) -> dict[str, Any]:
        return {"name": "scripted"}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        if self.behaviour == "nan":
            raise NonFiniteLossError("training loss became nan at epoch 1, step 3")
        if self.behaviour == "raise":
            raise RuntimeError("CUDA out of memory (pretend)")
        if self.behaviour == "fatal":
            raise DataError("dataset vanished")
        if self.behaviour == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        epochs_out = []
        for e in range(epochs):
            m = EpochMetrics(e, train_acc=10.0 * e, val_acc=arch.width + e + seed % 2, train_loss=math.nan)
            epochs_out.append(m)
            if on_epoch:
                on_epoch(m)
        return Metrics(tuple(epochs_out), wall_s=0.01, extra={"pid": os.getpid()})


EXECUTORS = [InlineExecutor, SubprocessExecutor]


@pytest.mark.parametrize("make", EXECUTORS, ids=["inline", "subprocess"])
def test_metrics_and_epochs_come_back(make):
    seen: list[EpochMetrics] = []
    m = make().run(ScriptedEvaluator("ok"), Arch.uniform(8, 3), 3, seed=4, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [0, 1, 2]
    assert m.best_val == 10.0
    if make is SubprocessExecutor:
        assert m.extra["pid"] != os.getpid()


@pytest.mark.parametrize("make", EXECUTORS, ids=["inline", "subprocess"])
@pytest.mark.parametrize("behaviour, text", [("nan", "NonFiniteLossError: training loss became nan"),
                                              ("raise", "RuntimeError: CUDA out of memory")])
def test_candidate_failures_carry_their_error(make, behaviour, text):
    with pytest.raises(CandidateFailed) as err:
        make().run(ScriptedEvaluator(behaviour), Arch.uniform(8, 3), 2, seed=0)
    assert text in err.value.error


@pytest.mark.parametrize("make", EXECUTORS, ids=["inline", "subprocess"])
def test_fatal_errors_stop_the_search(make):
    with pytest.raises(DataError, match="dataset vanished"):
        make().run(ScriptedEvaluator("fatal"), Arch.uniform(8, 3), 2, seed=0)


def test_a_child_killed_by_a_signal_is_a_failed_candidate():
    with pytest.raises(CandidateFailed, match="killed by SIGKILL"):
        SubprocessExecutor().run(ScriptedEvaluator("die"), Arch.uniform(8, 3), 2, seed=0)


class SleepyEvaluator:
    """Writes its pid, then trains "forever"."""

    def __init__(self, pidfile: str) -> None:
        self.pidfile = pidfile

    def describe(self) -> dict[str, Any]:
        return {"name": "sleepy"}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        import time

        with open(self.pidfile, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(120)
        raise AssertionError("should have been killed")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_a_killed_search_leaves_no_candidate_training(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pidfile = tmp_path / "child.pid"
    driver = tmp_path / "driver.py"
    driver.write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\n"
        "from tests.search.test_executor import SleepyEvaluator\n"
        "from facenas.search.executor import SubprocessExecutor\n"
        "from facenas.space.arch import Arch\n"
        "if __name__ == '__main__':\n"
        f"    SubprocessExecutor(preload=()).run(SleepyEvaluator({str(pidfile)!r}), Arch.uniform(8, 3), 1, seed=0)\n")
    proc = subprocess.Popen([sys.executable, str(driver)])
    deadline = time.time() + 60
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the candidate's process outlived the killed search"
