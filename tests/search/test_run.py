"""The search loop against scripted evaluators: failures are recorded and the search goes on."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from facenas.config import DepthConfig, MicroConfig, SearchSpec, WidthConfig
from facenas.errors import NonFiniteLossError
from facenas.search.executor import InlineExecutor
from facenas.search.journal import SQLiteJournal
from facenas.search.run import SearchEvents, candidate_seed, run_search
from facenas.space.arch import Arch, Profile
from facenas.train.metrics import EpochMetrics, Metrics

SPEC = SearchSpec(depth=DepthConfig(min=3, max=6, start_epochs=2, epoch_step=1),
                  width=WidthConfig(max=8, min=4, step=2, epoch_step=1), micro=MicroConfig(epochs=1))
PROFILE = Profile.paper(1, 10)


class TableEvaluator:
    """Scores depend on the architecture; depth 4 goes NaN, and one op candidate raises."""

    def describe(self) -> dict[str, Any]:
        return {"name": "table"}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        if arch.depth == 4 and arch.ops == (0,) * 4:
            raise NonFiniteLossError("training loss became nan at epoch 1, step 2")
        if arch.ops[1] == 1:
            raise RuntimeError("boom")
        score = 50.0 + arch.depth + arch.width / 10 + sum(arch.ops)
        out = []
        for e in range(epochs):
            m = EpochMetrics(e, train_acc=score - 1, val_acc=score - (epochs - 1 - e))
            out.append(m)
            if on_epoch:
                on_epoch(m)
        return Metrics(tuple(out))


class Recorder(SearchEvents):
    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended: list[str] = []
        self.epochs = 0

    def on_candidate_start(self, index, candidate, params, macs):
        self.started.append(index)

    def on_epoch(self, index, candidate, epoch):
        self.epochs += 1

    def on_candidate_end(self, index, record):
        self.ended.append(record.status)


def test_failures_are_recorded_with_their_error_and_the_search_goes_on():
    events = Recorder()
    with SQLiteJournal(":memory:") as journal:
        result = run_search(SPEC, PROFILE, TableEvaluator(), journal, InlineExecutor(), seed=1, events=events)
        records = journal.records()
    failed = [r for r in records if r.status == "failed"]
    assert {r.candidate.arch.depth for r in failed if r.candidate.phase == "depth"} == {4}
    assert any("NonFiniteLossError" in r.error for r in failed)
    assert any("RuntimeError: boom" in r.error for r in failed)
    assert result.ops[1] == 0 and result.macro_depth == 6
    assert events.started == list(range(len(records))) and events.ended.count("failed") == len(failed)
    assert events.epochs == sum(r.candidate.epochs for r in records if r.status == "finished")
    assert [r.seed for r in records] == [candidate_seed(1, i) for i in range(len(records))]
    assert all(r.params > 0 and r.macs > 0 for r in records)


def test_candidate_seeds_depend_on_run_seed_and_index_only():
    assert candidate_seed(0, 3) == candidate_seed(0, 3)
    assert len({candidate_seed(s, i) for s in range(3) for i in range(50)}) == 150


def test_a_finished_search_resumes_to_the_same_result_without_training():
    with SQLiteJournal(":memory:") as journal:
        first = run_search(SPEC, PROFILE, TableEvaluator(), journal, InlineExecutor(), seed=0)
        count = len(journal.records())

        class Refuses(TableEvaluator):
            def evaluate(self, *a, **k):
                raise AssertionError("nothing should be trained again")

        again = run_search(SPEC, PROFILE, Refuses(), journal, InlineExecutor(), seed=0)
        assert again == first and len(journal.records()) == count


@pytest.mark.parametrize("kwargs", [{"ops": False}, {"kernel_pass": False}, {"ops": False, "kernel_pass": False}])
def test_micro_passes_can_be_switched_off(kwargs):
    spec = SPEC.model_copy(update={"micro": MicroConfig(epochs=1, **kwargs)})
    with SQLiteJournal(":memory:") as journal:
        run_search(spec, PROFILE, TableEvaluator(), journal, InlineExecutor(), seed=0)
        phases = {r.candidate.phase for r in journal.records()}
    assert ("ops" in phases) == kwargs.get("ops", True)
    assert ("kernels" in phases) == kwargs.get("kernel_pass", True)


class BrokenThenFixed(TableEvaluator):
    """Every candidate fails until `fixed` is set (a missing library, a full disk...)."""

    fixed = False

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        if not BrokenThenFixed.fixed and arch.depth >= 5:
            raise OSError("No space left on device")
        return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)


def test_a_run_of_failures_stops_the_search_and_retry_failed_resumes_it():
    from facenas.errors import SearchAborted

    BrokenThenFixed.fixed = False
    spec = SPEC.model_copy(update={"depth": DepthConfig(min=3, max=9, start_epochs=2, epoch_step=1, break_count=9)})
    with SQLiteJournal(":memory:") as journal:
        with pytest.raises(SearchAborted, match="3 candidates in a row failed .*No space left on device"):
            run_search(spec, PROFILE, BrokenThenFixed(), journal, InlineExecutor(), seed=0,
                       max_consecutive_failures=3)
        assert [r.status for r in journal.records()][-3:] == ["failed"] * 3
        BrokenThenFixed.fixed = True
        assert journal.retry_failed() == 3
        result = run_search(spec, PROFILE, BrokenThenFixed(), journal, InlineExecutor(), seed=0)
        records = journal.records()
    with SQLiteJournal(":memory:") as fresh:
        clean = run_search(spec, PROFILE, BrokenThenFixed(), fresh, InlineExecutor(), seed=0)
    assert result == clean
    assert [r.status for r in records].count("discarded") == 3
    kept_errors = [r.error for r in records if r.status == "failed"]
    assert kept_errors and not any("No space left" in e for e in kept_errors)  # only the candidates' own failures


def test_a_search_stopped_by_missing_data_can_simply_be_started_again(tiny_face_config_data, tmp_path):
    """Issue 7: candidate 0 stayed "running", the same command was refused, and each --resume added a row."""
    from facenas.config import parse_config
    from facenas.errors import DataError
    from facenas.search.run import search_from_config

    out = tmp_path / "run"
    missing = {**tiny_face_config_data, "run": {"executor": "inline", "out": str(out)},
               "faces": {**tiny_face_config_data["faces"],
                         "data": {**tiny_face_config_data["faces"]["data"], "source": str(tmp_path / "nowhere")}}}
    for resume in (False, False, True, True):
        missing["run"]["resume"] = resume
        with pytest.raises(DataError, match="nowhere"):
            search_from_config(parse_config(missing))
        with SQLiteJournal(out / "journal.sqlite") as journal:
            assert journal.records() == []  # no candidate was trained, none is recorded
    fixed = parse_config({**tiny_face_config_data, "run": {"executor": "inline", "out": str(out)}})
    run = search_from_config(fixed)  # another source: the fingerprint differs, but nothing was kept to protect
    assert run.records[0].index == 0 and [r.status for r in run.records] == ["finished"] * len(run.records)


def test_the_fingerprint_ignores_unset_keys_and_follows_set_ones(tiny_face_config_data):
    from facenas.config import parse_config
    from facenas.search.run import fingerprint, fingerprint_data

    base = parse_config(tiny_face_config_data)
    assert base.faces.data.test_pairs_per_fold is None and base.search.noise.std is None

    def values(tree):
        return [x for v in tree.values() for x in (values(v) if isinstance(v, dict) else [v])]

    # a key a later version adds, unset (None), must not change the hash and orphan runs resumed after the upgrade
    assert None not in values(fingerprint_data(base)) and values(fingerprint_data(base))
    data = {**tiny_face_config_data, "faces": {**tiny_face_config_data["faces"], "data": {
        **tiny_face_config_data["faces"]["data"], "test_pairs_per_fold": 7}}}
    assert fingerprint(parse_config(data)) != fingerprint(base)
