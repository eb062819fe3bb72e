from __future__ import annotations

import sqlite3

import pytest

from facenas.errors import JournalError
from facenas.search.journal import SQLiteJournal
from facenas.search.strategy import Candidate
from facenas.space.arch import Arch
from facenas.train.metrics import EpochMetrics, Metrics


def cand(width: int = 8) -> Candidate:
    return Candidate("depth", Arch.uniform(width, 3), 2)


def metrics(*vals: float) -> Metrics:
    return Metrics(tuple(EpochMetrics(i, train_acc=v - 1, val_acc=v) for i, v in enumerate(vals)), wall_s=1.5)


@pytest.fixture(params=["memory", "file"])
def journal(request, tmp_path):
    path = ":memory:" if request.param == "memory" else tmp_path / "journal.sqlite"
    with SQLiteJournal(path) as j:
        yield j


def test_records_are_written_before_and_after(journal):
    rid = journal.begin(0, cand(), params=10, macs=20, seed=3)
    assert journal.record(rid).status == "running" and journal.history() == []
    journal.log_epoch(rid, EpochMetrics(0, 50.0, 60.0))
    journal.finish(rid, metrics(60.0, 70.0))
    rec = journal.record(rid)
    assert rec.status == "finished" and rec.score == 70.0 and rec.train_score == 69.0 and rec.seed == 3
    assert rec.metrics.best_val == 70.0 and len(rec.metrics.epochs) == 2
    assert journal.epochs(rid)[0].val_acc == 60.0
    (c, outcome), = journal.history()
    assert c == cand() and outcome.score == 70.0 and not outcome.failed


def test_failures_keep_their_error_and_score_as_failures(journal):
    rid = journal.begin(0, cand(), params=1, macs=1, seed=0)
    journal.fail(rid, "NonFiniteLossError: loss became nan")
    rec = journal.record(rid)
    assert rec.status == "failed" and "nan" in rec.error and rec.outcome.failed


def test_recover_marks_running_candidates_interrupted_and_keeps_them(journal):
    done = journal.begin(0, cand(), params=1, macs=1, seed=0)
    journal.finish(done, metrics(50.0))
    journal.begin(1, cand(6), params=1, macs=1, seed=0)
    assert journal.recover() == 1
    assert [r.status for r in journal.records()] == ["finished", "interrupted"]
    assert len(journal.history()) == 1
    again = journal.begin(1, cand(6), params=1, macs=1, seed=0)
    journal.finish(again, metrics(55.0))
    assert [c.arch.width for c, _ in journal.history()] == [8, 6]


def test_journal_survives_reopening(tmp_path):
    path = tmp_path / "j.sqlite"
    with SQLiteJournal(path) as j:
        j.set_meta({"seed": 5, "config": {"a": [1, 2]}})
        j.finish(j.begin(0, cand(), params=1, macs=1, seed=0), metrics(42.0))
    with SQLiteJournal(path) as j:
        assert j.meta() == {"seed": 5, "config": {"a": [1, 2]}}
        assert j.history()[0][1].score == 42.0


def test_a_gap_in_the_history_is_an_error(journal):
    journal.finish(journal.begin(1, cand(), params=1, macs=1, seed=0), metrics(1.0))
    with pytest.raises(JournalError, match="candidate 0 is missing"):
        journal.history()


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    bad = tmp_path / "not.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="not a usable facenas journal"):
        SQLiteJournal(bad)


def test_status_values_are_constrained(journal):
    with pytest.raises(sqlite3.IntegrityError):
        journal._db.execute("INSERT INTO candidates (idx, phase, arch, epochs, params, macs, seed, status, "
                            "started_at) VALUES (0, 'depth', '{}', 1, 1, 1, 0, 'weird', 0)")


def test_speculative_results_stay_off_the_history_until_adopted(journal):
    ahead = journal.begin(1, cand(6), params=1, macs=1, seed=0, on_path=False)
    journal.finish(ahead, metrics(70.0))
    head = journal.begin(0, cand(), params=1, macs=1, seed=0, on_path=False)
    stray = journal.begin(1, cand(4), params=1, macs=1, seed=0, on_path=False)
    journal.finish(head, metrics(60.0))
    assert journal.history() == [] and {r.id for r in journal.off_path()} == {ahead, head}
    journal.adopt(head)
    journal.adopt(ahead)
    journal.cancel(stray)
    assert [c.arch.width for c, _ in journal.history()] == [8, 6]
    assert journal.off_path() == [] and journal.record(stray).status == "cancelled"
    assert journal.record(stray).wall_s is not None


def test_retry_failed_keeps_later_results_off_the_path_for_reuse(journal):
    for i, (width, score) in enumerate([(8, 50.0), (6, None), (4, 55.0)]):
        rid = journal.begin(i, cand(width), params=1, macs=1, seed=0)
        journal.fail(rid, "boom") if score is None else journal.finish(rid, metrics(score))
    assert journal.retry_failed() == 2  # the failure discarded, the candidate after it moved off the path
    assert [c.arch.width for c, _ in journal.history()] == [8]
    assert [r.candidate.arch.width for r in journal.off_path()] == [4]


def test_a_journal_written_before_speculation_is_migrated(tmp_path):
    """A version-1 journal (no on_path column, no 'cancelled' status) opens with its records on the path."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE candidates (id INTEGER PRIMARY KEY AUTOINCREMENT, idx INTEGER NOT NULL, phase TEXT NOT NULL,
            arch TEXT NOT NULL, epochs INTEGER NOT NULL, params INTEGER NOT NULL, macs INTEGER NOT NULL,
            seed INTEGER NOT NULL, status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed',
            'interrupted', 'discarded')), started_at REAL NOT NULL, finished_at REAL, wall_s REAL, score REAL,
            train_score REAL, metrics TEXT, error TEXT);
        CREATE INDEX candidates_idx ON candidates (idx, status);
        CREATE TABLE epochs (candidate_id INTEGER NOT NULL REFERENCES candidates (id), epoch INTEGER NOT NULL,
            data TEXT NOT NULL, PRIMARY KEY (candidate_id, epoch));
    """)
    db.execute("INSERT INTO candidates (id, idx, phase, arch, epochs, params, macs, seed, status, started_at, score, "
               "train_score) VALUES (7, 0, 'depth', ?, 2, 1, 1, 0, 'finished', 0, 61.0, 50.0)",
               (cand().arch.to_json(),))
    db.execute("INSERT INTO epochs VALUES (7, 0, '{\"epoch\": 0, \"train_acc\": 50.0, \"val_acc\": 61.0}')")
    db.commit()
    db.close()
    with SQLiteJournal(path) as j:
        (c, outcome), = j.history()
        assert outcome.score == 61.0 and j.record(7).on_path and j.epochs(7)[0].val_acc == 61.0
        rid = j.begin(1, cand(6), params=1, macs=1, seed=0, on_path=False)
        j.cancel(rid)  # the new status is allowed
        assert j.record(rid).status == "cancelled"
    with SQLiteJournal(path) as j:  # migrating again is a no-op
        assert len(j.records()) == 2
