"""Speculative parallel search: any number of workers and any completion order give the serial path and result."""

from __future__ import annotations

import collections
import hashlib
import random
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facenas.config import DepthConfig, MicroConfig, NoiseConfig, SearchSpec, WidthConfig
from facenas.errors import NonFiniteLossError
from facenas.search.executor import (
    CandidateFailed,
    Completion,
    InlineExecutor,
    Placement,
    ProcessPool,
    Task,
    local_devices,
    local_placements,
)
from facenas.search.journal import SQLiteJournal
from facenas.search.run import SearchEvents, run_search
from facenas.search.speculate import plan, task_key
from facenas.search.strategy import Candidate, Outcome, next_step
from facenas.space.arch import Arch, Profile
from facenas.train.metrics import EpochMetrics, Metrics

PROFILE = Profile.paper(1, 10)


def small_spec(break_count: int = 1, micro_gain_z: float = 0.0) -> SearchSpec:
    return SearchSpec(depth=DepthConfig(min=3, max=9, start_epochs=2, epoch_step=1, break_count=break_count),
                      width=WidthConfig(max=10, min=4, step=2, epoch_step=1, break_count=break_count),
                      micro=MicroConfig(epochs=1, kernels=(5, 7)),
                      noise=NoiseConfig(std=1.0, micro_gain_z=micro_gain_z))


class HashEvaluator:
    """Scores are a pseudo-random function of (salt, candidate, seed): the same candidate at the same place in the
    search always scores the same, whichever worker trains it and whenever. Some candidates fail."""

    def __init__(self, salt: int, fail_rate: float = 0.1) -> None:
        self.salt = salt
        self.fail_rate = fail_rate

    def describe(self) -> dict[str, Any]:
        return {"name": "hash", "salt": self.salt}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        digest = hashlib.sha256(f"{self.salt}/{arch.short()}/{epochs}/{seed}".encode()).digest()
        rng = random.Random(digest)
        if rng.random() < self.fail_rate:
            raise NonFiniteLossError("training loss became nan (scripted)")
        score = 80.0 + 4.0 * rng.random() + 0.3 * arch.depth - 0.1 * (16 - arch.width)
        out = []
        for e in range(epochs):
            m = EpochMetrics(e, train_acc=score - 5, val_acc=score - (epochs - 1 - e) * 0.5)
            out.append(m)
            if on_epoch:
                on_epoch(m)
        return Metrics(tuple(out))


class ShuffledPool:
    """`slots` workers whose results arrive in a random order: each wait completes one running task chosen at
    random (trained inline), and may first report epochs of others."""

    def __init__(self, evaluator: HashEvaluator, slots: int, rng: random.Random) -> None:
        self.evaluator, self.slots, self.rng = evaluator, slots, rng
        self.running: dict[int, Task] = {}
        self.cancelled: list[Task] = []
        self.submitted: list[Task] = []

    def submit(self, task: Task) -> None:
        assert len(self.running) < self.slots, "the scheduler overfilled the pool"
        self.running[task.id] = task
        self.submitted.append(task)

    def wait(self, on_epoch) -> list[Completion]:
        task = self.running.pop(self.rng.choice(sorted(self.running)))
        try:
            metrics = InlineExecutor().run(self.evaluator, task.candidate.arch, task.candidate.epochs, seed=task.seed,
                                           on_epoch=lambda m: on_epoch(task, m))
        except CandidateFailed as failure:
            return [Completion(task, failure)]
        return [Completion(task, metrics)]

    def cancel(self, task_id: int) -> None:
        self.cancelled.append(self.running.pop(task_id))

    def close(self) -> None:
        self.running.clear()


class PathEvents(SearchEvents):
    def __init__(self) -> None:
        self.path: list[int] = []

    def on_candidate_end(self, index, record):
        self.path.append(index)


def path_of(journal: SQLiteJournal) -> list[tuple]:
    return [(r.index, r.candidate.key(), r.status, r.score, r.seed) for r in journal.completed()]


def serial(spec: SearchSpec, evaluator: HashEvaluator, seed: int = 0):
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, InlineExecutor(), seed=seed)
        return result, path_of(journal)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(salt=st.integers(0, 10_000), workers=st.integers(2, 6), order=st.integers(0, 2**32 - 1),
       break_count=st.integers(0, 2), micro_gain_z=st.sampled_from([0.0, 0.5]), fail_rate=st.sampled_from([0.0, 0.2]))
def test_any_workers_and_completion_order_give_the_serial_path(salt, workers, order, break_count, micro_gain_z,
                                                               fail_rate):
    spec = small_spec(break_count, micro_gain_z)
    evaluator = HashEvaluator(salt, fail_rate)
    want_result, want_path = serial(spec, evaluator)
    pool = ShuffledPool(evaluator, workers, random.Random(order))
    events = PathEvents()
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, pool, seed=0, events=events)
        assert path_of(journal) == want_path
        assert result == want_result
        assert events.path == list(range(len(want_path)))  # the strategy saw results in its own order
        records = journal.records()
    # every training is accounted for: on the path, off it (kept, never read) or cancelled
    assert len(records) == len(pool.submitted)
    assert {r.status for r in records if not r.on_path} <= {"finished", "failed", "cancelled"}
    assert sum(r.status == "cancelled" for r in records) == len(pool.cancelled)


def test_speculation_keeps_every_worker_busy_on_the_likely_path():
    spec = small_spec(break_count=2)
    # before any result: the baseline, then deeper nets whatever the verdicts are
    p = plan(spec, PROFILE, [], {}, [], slots=4)
    depths = [c.arch.depth for _, c in p.launch]
    assert [i for i, _ in p.launch] == [0, 1, 2, 3] and depths == [3, 4, 5, 6]
    assert p.need[task_key(0, p.launch[0][1])] == 1.0
    # a result the strategy has not reached yet is used to look further, not to decide
    first = p.launch[0][1]
    p2 = plan(spec, PROFILE, [], {task_key(0, first): Outcome(85.0, 50.0)}, [task_key(i, c) for i, c in p.launch[1:]],
              slots=4)
    assert p2.step.index == 0 and len(p2.launch) == 0 + (4 - 3) and p2.cancel == ()


def test_work_off_the_path_is_cancelled_and_kept_out_of_the_history():
    spec = small_spec(break_count=0)
    head = next_step(spec, PROFILE, []).candidate
    history = [(head, Outcome(80.0, 50.0))]
    deeper = next_step(spec, PROFILE, history).candidate
    # a running candidate the strategy can no longer reach: index 1 with another architecture
    stray = Candidate("depth", Arch.uniform(10, 7, PROFILE), 3)
    p = plan(spec, PROFILE, history, {}, [task_key(1, stray), task_key(1, deeper)], slots=3)
    assert p.cancel == (task_key(1, stray),)


def test_a_failed_speculative_result_is_recorded_but_only_counts_once_reached():
    spec = small_spec(break_count=1)
    evaluator = HashEvaluator(salt=7, fail_rate=0.3)
    want_result, want_path = serial(spec, evaluator)
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, ShuffledPool(evaluator, 4, random.Random(1)), seed=0)
        off = [r for r in journal.records() if not r.on_path]
        assert result == want_result and path_of(journal) == want_path
    assert all(r.status in ("finished", "failed", "cancelled") for r in off)


def test_a_parallel_search_resumes_with_its_off_path_results(tmp_path):
    """Killed mid-search: the resumed run (with any number of workers) reuses what was trained, off the path or
    on it, and ends where a serial run ends."""
    spec = small_spec(break_count=1)
    evaluator = HashEvaluator(salt=3, fail_rate=0.0)
    want_result, want_path = serial(spec, evaluator)

    class Stop(Exception):
        pass

    class StopAfter(SearchEvents):
        def on_candidate_end(self, index, record):
            if index == 6:
                raise Stop

    path = tmp_path / "journal.sqlite"
    with SQLiteJournal(path) as journal, pytest.raises(Stop):
        run_search(spec, PROFILE, evaluator, journal, ShuffledPool(evaluator, 4, random.Random(5)), seed=0,
                   events=StopAfter())
    with SQLiteJournal(path) as journal:
        trained_before = {task_key(r.index, r.candidate) for r in journal.records(("finished", "failed"))}
        assert any(not r.on_path for r in journal.records(("finished",)))
        assert journal.recover() == 3  # the work in flight when it stopped, as a resume reports it
        pool = ShuffledPool(evaluator, 3, random.Random(9))
        result = run_search(spec, PROFILE, evaluator, journal, pool, seed=0)
        assert result == want_result and path_of(journal) == want_path
    assert not trained_before & {task_key(t.index, t.candidate) for t in pool.submitted}  # nothing trained twice


def test_process_pool_trains_in_child_processes_with_the_serial_result():
    spec = small_spec(break_count=1)
    evaluator = HashEvaluator(salt=11, fail_rate=0.1)
    want_result, want_path = serial(spec, evaluator)
    epochs: list[int] = []

    class Epochs(SearchEvents):
        def on_epoch(self, index, candidate, epoch):
            epochs.append(index)

    pool = ProcessPool(evaluator, 2, preload=())
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, pool, seed=0, events=Epochs())
        assert result == want_result and path_of(journal) == want_path
        finished = journal.records(("finished",))
        # every finished candidate's epochs streamed from its child (cancelled ones may have streamed some too)
        streamed = collections.Counter(epochs)
        assert all(streamed[r.index] >= r.candidate.epochs for r in finished)
        assert all(len(journal.epochs(r.id)) == r.candidate.epochs for r in finished)


class ThreadsEvaluator(HashEvaluator):
    """Reports the torch threads and evaluator settings it trained with."""

    def __init__(self) -> None:
        super().__init__(salt=0, fail_rate=0.0)

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        import torch

        metrics = super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)
        return Metrics(metrics.epochs, extra={"threads": torch.get_num_threads()})


def test_local_workers_split_the_threads_and_take_gpus_round_robin():
    assert local_placements(4, 8, ["cuda:0", "cuda:1"]) == [
        Placement(2, "cuda:0"), Placement(2, "cuda:1"), Placement(2, "cuda:0"), Placement(2, "cuda:1")]
    assert local_placements(3, 2, []) == [Placement(1, None)] * 3  # never below one thread
    assert local_devices("cpu") == ["cpu"] and local_devices("cuda:3") == ["cuda:3"]


def test_a_child_trains_on_its_placement():
    pool = ProcessPool(ThreadsEvaluator(), 1, [Placement(threads=3)], preload=())
    pool.submit(Task(1, 0, Candidate("depth", Arch.uniform(8, 3, PROFILE), 1), seed=0))
    (done,) = pool.wait(lambda task, epoch: None)
    pool.close()
    assert done.result.extra["threads"] == 3


def test_facenas_evaluators_take_a_workers_threads_and_device(tiny_config_data, tiny_face_config_data):
    from facenas.config import Config
    from facenas.train.evaluators import ClassificationEvaluator, FaceEvaluator

    placed = ClassificationEvaluator(Config.model_validate(tiny_config_data)).placed(threads=2, device="cuda:1")
    assert (placed.config.train.threads, placed.config.train.device) == (2, "cuda:1")
    faces = FaceEvaluator(Config.model_validate(tiny_face_config_data)).placed(threads=1)
    assert isinstance(faces, FaceEvaluator) and faces.config.faces.train.threads == 1


def test_inline_executor_refuses_several_workers():
    from pydantic import ValidationError

    from facenas.config import Config

    with pytest.raises(ValidationError, match="run.executor = inline trains one candidate at a time"):
        Config.model_validate({"run": {"executor": "inline", "workers": 3}})


def test_cli_search_on_two_workers_writes_the_serial_result(tmp_path, tiny_config_data):
    """A real (tiny) search through the CLI: --workers 2 gives the serial best_arch.json and path."""
    import json

    import torch
    import yaml
    from typer.testing import CliRunner

    from facenas.cli.main import app

    # one thread per candidate on both sides: a CPU score depends on the threads it trains with, not on the workers
    data = dict(tiny_config_data, train={"batch_size": 64, "threads": 1})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    threads = torch.get_num_threads()
    try:
        for out, extra in (("serial", []), ("two", ["--workers", "2", "--executor", "subprocess"])):
            result = runner.invoke(app, ["search", "-c", str(config), "--out", str(tmp_path / out), *extra])
            assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)  # the inline serial run set this process's threads
    assert (tmp_path / "serial" / "best_arch.json").read_text() == (tmp_path / "two" / "best_arch.json").read_text()
    paths = []
    for out in ("serial", "two"):
        with SQLiteJournal(tmp_path / out / "journal.sqlite") as journal:
            paths.append(path_of(journal))
    assert paths[0] == paths[1]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["workers"] == 2 and set(summary["off_path"]) == {"finished", "cancelled", "wall_s"}
