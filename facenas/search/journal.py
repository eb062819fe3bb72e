"""The search journal: every candidate in SQLite, written before and after it trains.

A record is written with status `running` before a candidate starts and updated to `finished` or `failed` after
it ends, each in its own transaction, so a crash or a kill at any moment leaves a journal from which the search
can continue: finished and failed candidates are not trained again, and a record still `running` is marked
`interrupted` (kept for the audit trail) and its candidate restarted from scratch. `retry_failed` marks the first
failed candidate and everything after it `discarded`, so that the search continues from there. Per-epoch metrics are
written
as they arrive, for live monitoring. The same class serves replays and tests with the path ":memory:".
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from facenas.errors import JournalError
from facenas.search.evaluator import EpochMetrics, Metrics
from facenas.search.strategy import Candidate, Outcome
from facenas.space.arch import Arch

SCHEMA_VERSION = "1"
STATUSES = ("running", "finished", "failed", "interrupted", "discarded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idx INTEGER NOT NULL,
    phase TEXT NOT NULL,
    arch TEXT NOT NULL,
    epochs INTEGER NOT NULL,
    params INTEGER NOT NULL,
    macs INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted', 'discarded')),
    started_at REAL NOT NULL,
    finished_at REAL,
    wall_s REAL,
    score REAL,
    train_score REAL,
    metrics TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS candidates_idx ON candidates (idx, status);
CREATE TABLE IF NOT EXISTS epochs (
    candidate_id INTEGER NOT NULL REFERENCES candidates (id),
    epoch INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (candidate_id, epoch)
);
"""
_COLUMNS = ("id, idx, phase, arch, epochs, params, macs, seed, status, started_at, finished_at, wall_s, score, "
            "train_score, metrics, error")


@dataclass(frozen=True)
class CandidateRecord:
    """One row of the journal."""

    id: int
    index: int
    candidate: Candidate
    params: int
    macs: int
    seed: int
    status: str
    started_at: float
    finished_at: Optional[float]
    wall_s: Optional[float]
    score: Optional[float]
    train_score: Optional[float]
    metrics: Optional[Metrics]
    error: Optional[str]

    @property
    def outcome(self) -> Outcome:
        if self.status == "failed":
            return Outcome.failure()
        return Outcome(self.score, self.train_score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "phase": self.candidate.phase, "epochs": self.candidate.epochs,
            "arch": self.candidate.arch.to_dict(), "params": self.params, "macs": self.macs, "seed": self.seed,
            "status": self.status, "wall_s": self.wall_s, "score": self.score, "train_score": self.train_score,
            "metrics": self.metrics.to_dict() if self.metrics else None, "error": self.error,
        }


class SQLiteJournal:
    """Journal in one SQLite file (WAL mode), or in memory with path ":memory:"."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: not a usable facenas journal ({exc})") from exc

    # -- plumbing -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SQLiteJournal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._db:  # one transaction per write
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(sql, params)
        return int(cur.lastrowid or 0)

    # -- metadata -------------------------------------------------------------------------------------------
    def set_meta(self, values: dict[str, Any]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for key, value in values.items():
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    # -- candidates -----------------------------------------------------------------------------------------
    def begin(self, index: int, candidate: Candidate, *, params: int, macs: int, seed: int) -> int:
        return self._write(
            "INSERT INTO candidates (idx, phase, arch, epochs, params, macs, seed, status, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (index, candidate.phase, candidate.arch.to_json(), candidate.epochs, params, macs, seed, time.time()),
        )

    def log_epoch(self, record_id: int, epoch: EpochMetrics) -> None:
        self._write("INSERT OR REPLACE INTO epochs (candidate_id, epoch, data) VALUES (?, ?, ?)",
                    (record_id, epoch.epoch, json.dumps(epoch.to_dict())))

    def finish(self, record_id: int, metrics: Metrics) -> None:
        self._write(
            "UPDATE candidates SET status = 'finished', finished_at = ?, wall_s = ?, score = ?, train_score = ?, "
            "metrics = ? WHERE id = ? AND status = 'running'",
            (time.time(), metrics.wall_s, metrics.score, metrics.best_train, json.dumps(metrics.to_dict()),
             record_id),
        )

    def fail(self, record_id: int, error: str, wall_s: float | None = None) -> None:
        self._write(
            "UPDATE candidates SET status = 'failed', finished_at = ?, wall_s = ?, error = ? "
            "WHERE id = ? AND status = 'running'",
            (time.time(), wall_s, error, record_id),
        )

    def abandon(self, record_id: int) -> None:
        """Remove a candidate that never really started (a setup error stopped the search before it trained): a
        resume then begins it afresh instead of piling up attempts."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM epochs WHERE candidate_id = ?", (record_id,))
            self._db.execute("DELETE FROM candidates WHERE id = ?", (record_id,))

    def count(self, statuses: tuple[str, ...] = STATUSES) -> int:
        marks = ",".join("?" * len(statuses))
        return int(self._db.execute(f"SELECT COUNT(*) FROM candidates WHERE status IN ({marks})",
                                    statuses).fetchone()[0])

    def reset(self) -> None:
        """Empty the journal (candidates, epochs and metadata) for a fresh start in the same file."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for table in ("epochs", "candidates", "meta"):
                self._db.execute(f"DELETE FROM {table}")

    def recover(self) -> int:
        """Mark candidates left `running` by a crash or kill as `interrupted`; returns how many."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("UPDATE candidates SET status = 'interrupted', finished_at = ? "
                                   "WHERE status = 'running'", (time.time(),))
        return cur.rowcount

    def retry_failed(self) -> int:
        """Discard the first failed candidate and all later ones, so they are trained again; returns how many.

        Later candidates must go too: the strategy chose them knowing that the failed one had failed.
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            first = self._db.execute("SELECT MIN(idx) FROM candidates WHERE status = 'failed'").fetchone()[0]
            if first is None:
                return 0
            cur = self._db.execute("UPDATE candidates SET status = 'discarded' WHERE idx >= ? AND status IN "
                                   "('finished', 'failed')", (first,))
        return cur.rowcount

    def records(self, statuses: tuple[str, ...] = STATUSES) -> list[CandidateRecord]:
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM candidates WHERE status IN ({marks}) ORDER BY idx, id",
            statuses,
        ).fetchall()
        return [self._record(row) for row in rows]

    def record(self, record_id: int) -> CandidateRecord:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM candidates WHERE id = ?", (record_id,)).fetchone()
        if row is None:
            raise JournalError(f"{self.path}: no candidate record {record_id}")
        return self._record(row)

    def epochs(self, record_id: int) -> list[EpochMetrics]:
        rows = self._db.execute("SELECT data FROM epochs WHERE candidate_id = ? ORDER BY epoch", (record_id,))
        return [EpochMetrics.from_dict(json.loads(r[0])) for r in rows]

    def completed(self) -> list[CandidateRecord]:
        """Finished and failed candidates in search order: the history the strategy folds its state from."""
        records = self.records(("finished", "failed"))
        for expected, record in enumerate(records):
            if record.index != expected:
                raise JournalError(
                    f"{self.path}: candidate {expected} is missing from the journal (found index {record.index}); "
                    "the file was edited or belongs to another run"
                )
        return records

    def history(self) -> list[tuple[Candidate, Outcome]]:
        return [(r.candidate, r.outcome) for r in self.completed()]

    def __iter__(self) -> Iterator[CandidateRecord]:
        return iter(self.records())

    @staticmethod
    def _record(row: tuple[Any, ...]) -> CandidateRecord:
        (rid, idx, phase, arch, epochs, params, macs, seed, status, started, finished, wall, score, train,
         metrics, error) = row
        candidate = Candidate(phase, Arch.from_json(arch), epochs)
        return CandidateRecord(
            id=rid, index=idx, candidate=candidate, params=params, macs=macs, seed=seed, status=status,
            started_at=started, finished_at=finished, wall_s=wall, score=score, train_score=train,
            metrics=Metrics.from_dict(json.loads(metrics)) if metrics else None, error=error,
        )
