"""Deployment-aware search (`search.constraints`): candidates over budget are journaled as skipped and never
trained, the result lies within the budget, and the journal, resume and parallel scheduling behave as without."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from typing import Any

import pytest

from facenas.config import ConstraintsConfig, SearchSpec, TargetConfig, load_config
from facenas.errors import ConfigError
from facenas.search.constraints import LatencyBook, Limits
from facenas.search.executor import InlineExecutor
from facenas.search.journal import SQLiteJournal
from facenas.search.random_search import Budget, run_random_search
from facenas.search.run import fingerprint, run_search
from facenas.search.strategy import Candidate, next_step
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params
from tests.search.test_parallel import PROFILE, HashEvaluator, ShuffledPool, path_of, small_spec


@dataclass(frozen=True)
class FakeLatency:
    median_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "q25_ms": self.median_ms, "q75_ms": self.median_ms, "spread_ms": 0.0}


class MacsClock:
    """A latency proportional to MACs (1 ms per million), counting its measurements."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, arch: Arch, target: TargetConfig) -> FakeLatency:
        self.calls.append(arch.short())
        return FakeLatency(count_macs(arch) / 1e6)


def constrained(spec: SearchSpec, **limits: Any) -> SearchSpec:
    return spec.model_copy(update={"constraints": ConstraintsConfig(**limits)})


def uniform_params(width: int, depth: int) -> int:
    return count_params(Arch.uniform(width, depth, PROFILE))


def test_the_depth_phase_stops_growing_at_the_budget_and_nothing_over_it_trains():
    budget = (uniform_params(10, 3) + uniform_params(10, 4)) // 2  # D3 fits, D4 does not
    spec = constrained(small_spec(), max_params=budget)
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, HashEvaluator(3, fail_rate=0.0), journal, InlineExecutor(), seed=0)
        records = journal.completed()
    skipped = [r for r in records if r.status == "skipped"]
    trained = [r for r in records if r.status != "skipped"]
    assert count_params(result.arch) <= budget
    assert all(r.params <= budget for r in trained)
    assert skipped and all(r.params > budget and r.wall_s == 0 and "max_params" in r.error for r in skipped)
    depth = [r for r in records if r.candidate.phase == "depth"]
    assert [(r.candidate.arch.depth, r.status) for r in depth] == [(3, "finished"), (4, "skipped")]
    assert max(r.candidate.arch.depth for r in trained) == 3


def test_without_constraints_the_path_is_the_unconstrained_one():
    """Limits that nothing exceeds give the same journal as no limits (and no skipped record)."""
    spec = small_spec()
    paths = []
    for s in (spec, constrained(spec, max_params=10**9, max_macs=10**12)):
        with SQLiteJournal(":memory:") as journal:
            run_search(s, PROFILE, HashEvaluator(5), journal, InlineExecutor(), seed=0)
            paths.append(path_of(journal))
    assert paths[0] == paths[1] and all(status != "skipped" for _, _, status, _, _ in paths[0])


def test_a_latency_budget_is_measured_once_per_architecture_journaled_and_kept_on_resume(tmp_path):
    clock = MacsClock()
    first = Arch.uniform(10, 3, PROFILE)
    budget_ms = count_macs(Arch.uniform(10, 6, PROFILE)) / 1e6 * 0.99  # D6 and deeper are over
    spec = constrained(small_spec(), max_latency_ms=budget_ms)
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        book = LatencyBook(journal, spec.target, measure=clock)
        result = run_search(spec, PROFILE, HashEvaluator(7, fail_rate=0.0), journal, InlineExecutor(), seed=0,
                            latency=book)
        serial = path_of(journal)
        measured = journal.latencies(book.key)
        trained = [r for r in journal.completed() if r.status == "finished"]
    assert all(r.latency_ms == pytest.approx(r.macs / 1e6) for r in trained)  # beside params and MACs
    assert count_macs(result.arch) / 1e6 <= budget_ms
    assert len(clock.calls) == len(set(clock.calls)) == len(measured)  # each architecture once
    assert first.to_json() in measured
    assert any(status == "skipped" for _, _, status, _, _ in serial)
    # a second process reads the journal's figures: nothing measured again, the same path; a clock that now reads
    # every net as over budget changes nothing
    with SQLiteJournal(tmp_path / "j.sqlite") as journal:
        again = LatencyBook(journal, spec.target, measure=lambda a, t: FakeLatency(1e9))
        assert Limits(spec.constraints, again).over(first) is None


def test_resume_after_a_crash_and_parallel_workers_give_the_serial_path(tmp_path):
    budget = (uniform_params(10, 6) + uniform_params(10, 7)) // 2
    spec = constrained(small_spec(), max_params=budget)
    with SQLiteJournal(":memory:") as journal:
        serial_result = run_search(spec, PROFILE, HashEvaluator(11), journal, InlineExecutor(), seed=0)
        serial = path_of(journal)

    class Crash(BaseException):  # an interruption, not a failed candidate
        pass

    class CrashingEvaluator(HashEvaluator):
        trained = 0

        def evaluate(self, *a, **k):
            CrashingEvaluator.trained += 1
            if CrashingEvaluator.trained == 6:
                raise Crash
            return super().evaluate(*a, **k)

    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path) as journal, pytest.raises(Crash):
        run_search(spec, PROFILE, CrashingEvaluator(11), journal, InlineExecutor(), seed=0)
    with SQLiteJournal(path) as journal:
        journal.recover()
        resumed_result = run_search(spec, PROFILE, HashEvaluator(11), journal, InlineExecutor(), seed=0)
        assert path_of(journal) == serial and resumed_result == serial_result
    with SQLiteJournal(":memory:") as journal:
        pool = ShuffledPool(HashEvaluator(11), 4, random.Random(2))
        parallel_result = run_search(spec, PROFILE, HashEvaluator(11), journal, pool, seed=0)
        assert path_of(journal) == serial and parallel_result == serial_result
    assert all(count_params(t.candidate.arch) <= budget for t in pool.submitted)  # never trained, even ahead


def test_micro_changes_over_budget_are_skipped_not_trained():
    spec = small_spec()
    with SQLiteJournal(":memory:") as journal:
        free = run_search(spec, PROFILE, HashEvaluator(13, fail_rate=0.0), journal, InlineExecutor(), seed=0)
    macro = Arch.uniform(free.macro_width, free.macro_depth, PROFILE)
    spec = constrained(spec, max_macs=count_macs(macro))  # every micro change that costs MACs is over
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, HashEvaluator(13, fail_rate=0.0), journal, InlineExecutor(), seed=0)
        micro = [r for r in journal.completed() if r.candidate.phase in ("ops", "kernels")]
    assert count_macs(result.arch) <= count_macs(macro)
    assert all(r.macs <= count_macs(macro) for r in micro if r.status != "skipped")
    assert any(r.status == "skipped" and "max_macs" in r.error for r in micro)


def test_a_first_candidate_over_budget_is_a_clear_config_error():
    spec = constrained(small_spec(), max_params=10)
    with pytest.raises(ConfigError, match="first candidate, D3 C10.*over budget.*max_params"):
        next_step(spec, PROFILE, [], Limits(spec.constraints))


@pytest.mark.parametrize("key, value, words", [
    ("search.constraints.max_latency_ms", -1, "greater than 0"),
    ("search.constraints.max_params", 0, "greater than or equal to 1"),
    ("search.constraints.max_macs", "lots", "integer"),
    ("search.constraints.latency", 2, "max_latency_ms"),  # a misspelt key names the closest valid one
    ("search.target.precision", "fp16", "fp32"),
    ("search.target.threads", 0, "greater than or equal to 1"),
])
def test_bad_constraint_values_are_config_errors_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert key.split(".")[-1] in str(err.value) and words in str(err.value)


def test_constraints_enter_the_fingerprint_only_when_set():
    """Runs started before constraints existed resume; a budget makes a different run."""
    base = load_config(None, {})
    measured = load_config(None, {"search.target.measure": True})
    budget = load_config(None, {"search.constraints.max_latency_ms": 5})
    assert fingerprint(base) == fingerprint(measured) != fingerprint(budget)
    assert fingerprint(budget) != fingerprint(load_config(None, {"search.constraints.max_latency_ms": 5,
                                                                 "search.target.threads": 4}))


def test_random_search_draws_only_within_the_budget():
    spec = small_spec().model_copy(update={"strategy": "random"})
    budget = uniform_params(8, 5)
    spec = constrained(spec, max_params=budget)
    with SQLiteJournal(":memory:") as journal:
        run_random_search(spec, PROFILE, HashEvaluator(17, fail_rate=0.0), journal, InlineExecutor(),
                          budget=Budget(candidates=12), seed=0)
        records = journal.completed()
    assert len(records) == 12 and all(r.params <= budget for r in records)


def test_a_journal_from_before_constraints_is_migrated_and_keeps_its_records(tmp_path):
    path = tmp_path / "old.sqlite"
    with SQLiteJournal(path) as journal:
        journal.begin(0, Candidate("depth", Arch.uniform(10, 3, PROFILE), 2), params=1, macs=2, seed=3)
    db = sqlite3.connect(path)  # make it the schema before `skipped` existed
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'candidates'").fetchone()[0]
    db.executescript("ALTER TABLE candidates RENAME TO c_new; " + sql.replace(", 'skipped'", "") +
                     "; INSERT INTO candidates SELECT * FROM c_new; DROP TABLE c_new; DROP TABLE latency;")
    db.close()
    with SQLiteJournal(path) as journal:
        assert [r.seed for r in journal.records()] == [3]
        journal.skip(1, Candidate("depth", Arch.uniform(10, 4, PROFILE), 3), params=1, macs=2, reason="over")
        assert [r.status for r in journal.records()] == ["running", "skipped"]
