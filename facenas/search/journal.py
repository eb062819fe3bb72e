"""The search journal: every candidate in SQLite, written before and after it trains.

A record is written with status `running` before a candidate starts and updated to `finished` or `failed` after
it ends, each in its own transaction, so a crash or a kill at any moment leaves a journal from which the search
can continue: finished and failed candidates are not trained again, and a record still `running` is marked
`interrupted` (kept for the audit trail) and its candidate restarted from scratch. Per-epoch metrics are written as
they arrive, for live monitoring. The same class serves replays and tests with the path ":memory:".

Speculative execution (several candidates training at once, `facenas.search.speculate`) adds one column: `on_path`.
A candidate is begun off the path and adopted onto it (`adopt`) only when the strategy reaches it in order; until
then, and for good if the strategy never proposes it, its result is a cached answer that the strategy has not seen.
Work that stops being needed while it trains is `cancelled`. The history the strategy folds its state from is the
on-path records only, so a journal of a parallel search reads like that of a serial one.

A deployment-aware search (`search.constraints`) journals a candidate over budget as `skipped` (on the path, never
trained, the reason in `error`), and keeps each architecture's measured latency in the `latency` table, keyed by
the architecture and the target's settings, so that a resume decides with the same figures.
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

SCHEMA_VERSION = "3"
STATUSES = ("running", "finished", "failed", "interrupted", "discarded", "cancelled", "skipped")
HISTORY = ("finished", "failed", "skipped")  # what the strategy has seen, on the path

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
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted', 'discarded',
                                           'cancelled', 'skipped')),
    started_at REAL NOT NULL,
    finished_at REAL,
    wall_s REAL,
    score REAL,
    train_score REAL,
    metrics TEXT,
    error TEXT,
    on_path INTEGER NOT NULL DEFAULT 1,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS candidates_idx ON candidates (idx, status);
CREATE TABLE IF NOT EXISTS epochs (
    candidate_id INTEGER NOT NULL REFERENCES candidates (id),
    epoch INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (candidate_id, epoch)
);
CREATE TABLE IF NOT EXISTS latency (
    arch TEXT NOT NULL,
    target TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (arch, target)
);
"""
_COLUMNS = ("id, idx, phase, arch, epochs, params, macs, seed, status, started_at, finished_at, wall_s, score, "
            "train_score, metrics, error, on_path, latency_ms")


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
    on_path: bool = True
    latency_ms: Optional[float] = None  # median on the search's target, where it measures latencies

    @property
    def outcome(self) -> Outcome:
        if self.status == "failed":
            return Outcome.failure()
        if self.status == "skipped":
            return Outcome.skip()
        return Outcome(self.score, self.train_score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "phase": self.candidate.phase, "epochs": self.candidate.epochs,
            "arch": self.candidate.arch.to_dict(), "params": self.params, "macs": self.macs, "seed": self.seed,
            "status": self.status, "wall_s": self.wall_s, "score": self.score, "train_score": self.train_score,
            "metrics": self.metrics.to_dict() if self.metrics else None, "error": self.error,
            "on_path": self.on_path, "latency_ms": self.latency_ms,
        }


class SQLiteJournal:
    """Journal in one SQLite file (WAL mode), or in memory with path ":memory:"."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{self.path}: not a usable facenas journal ({exc})") from exc

    # -- plumbing -------------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring a journal written by an earlier facenas to this schema: the candidates table gains `on_path` (every
        old record is on the path; speculative execution), the `cancelled` and `skipped` statuses (constraints).
        SQLite cannot alter a CHECK constraint, so the table is copied (ids kept, so the epochs table still points at
        its candidates)."""
        row = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'candidates'").fetchone()
        if row is None or "'skipped'" in row[0]:
            return
        old_columns = ", ".join(r[1] for r in self._db.execute("PRAGMA table_info(candidates)"))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ALTER TABLE candidates RENAME TO candidates_v1")
            self._db.execute("DROP INDEX IF EXISTS candidates_idx")
            self._db.executescript(_SCHEMA.split("CREATE TABLE IF NOT EXISTS epochs")[0].replace(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);", ""))
            self._db.execute(f"INSERT INTO candidates ({old_columns}) SELECT {old_columns} FROM candidates_v1")
            self._db.execute("DROP TABLE candidates_v1")

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
    def begin(self, index: int, candidate: Candidate, *, params: int, macs: int, seed: int,
              on_path: bool = True, latency_ms: Optional[float] = None) -> int:
        """Record a candidate as running; a scheduler that trains ahead of the strategy begins it off the path."""
        return self._write(
            "INSERT INTO candidates (idx, phase, arch, epochs, params, macs, seed, status, started_at, on_path, "
            "latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (index, candidate.phase, candidate.arch.to_json(), candidate.epochs, params, macs, seed, time.time(),
             int(on_path), latency_ms),
        )

    def skip(self, index: int, candidate: Candidate, *, params: int, macs: int, reason: str,
             latency_ms: Optional[float] = None) -> int:
        """Record a candidate over the search's budget, on the path: the strategy has decided it, nothing trains."""
        now = time.time()
        return self._write(
            "INSERT INTO candidates (idx, phase, arch, epochs, params, macs, seed, status, started_at, finished_at, "
            "wall_s, error, on_path, latency_ms) VALUES (?, ?, ?, ?, ?, ?, 0, 'skipped', ?, ?, 0, ?, 1, ?)",
            (index, candidate.phase, candidate.arch.to_json(), candidate.epochs, params, macs, now, now, reason,
             latency_ms),
        )

    def latency(self, arch: Arch, target: str) -> Optional[dict[str, Any]]:
        """The latency measured for `arch` on `target` (the target's settings as JSON), or None."""
        row = self._db.execute("SELECT data FROM latency WHERE arch = ? AND target = ?",
                               (arch.to_json(), target)).fetchone()
        return json.loads(row[0]) if row else None

    def set_latency(self, arch: Arch, target: str, data: dict[str, Any]) -> None:
        """Keep a measurement; the first one stays (a resume must decide with the figures the run decided with)."""
        self._write("INSERT OR IGNORE INTO latency (arch, target, data) VALUES (?, ?, ?)",
                    (arch.to_json(), target, json.dumps(data)))

    def latencies(self, target: str) -> dict[str, dict[str, Any]]:
        """Every measurement on `target`, by architecture JSON."""
        return {a: json.loads(d) for a, d in self._db.execute("SELECT arch, data FROM latency WHERE target = ?",
                                                               (target,))}

    def adopt(self, record_id: int) -> None:
        """Put a finished (or failed) candidate on the path: the strategy has reached it and now sees its outcome."""
        self._write("UPDATE candidates SET on_path = 1 WHERE id = ? AND status IN ('finished', 'failed')",
                    (record_id,))

    def cancel(self, record_id: int) -> None:
        """A running candidate that the search no longer needs was stopped."""
        self._write("UPDATE candidates SET status = 'cancelled', finished_at = ?, wall_s = ? - started_at "
                    "WHERE id = ? AND status = 'running'", (time.time(), time.time(), record_id))

    def off_path(self) -> list["CandidateRecord"]:
        """Finished and failed candidates the strategy has not reached: results a scheduler may still adopt."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM candidates WHERE on_path = 0 AND status IN "
                                "('finished', 'failed') ORDER BY idx, id").fetchall()
        return [self._record(row) for row in rows]

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
            for table in ("epochs", "candidates", "meta", "latency"):
                self._db.execute(f"DELETE FROM {table}")

    def recover(self) -> int:
        """Mark candidates left `running` by a crash or kill as `interrupted`; returns how many."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("UPDATE candidates SET status = 'interrupted', finished_at = ? "
                                   "WHERE status = 'running'", (time.time(),))
        return cur.rowcount

    def retry_failed(self) -> int:
        """Train failed candidates again: discard every failed one (so it is trained anew) and take the candidates
        after the first failure on the path off it; returns how many records changed.

        The strategy chose the later candidates knowing that the failed one had failed, so they leave the path; their
        results stay in the journal, off the path, and are adopted again without training wherever the strategy
        proposes the same candidate at the same place (its seed depends only on that place).
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            first = self._db.execute("SELECT MIN(idx) FROM candidates WHERE status = 'failed' AND on_path = 1"
                                     ).fetchone()[0]
            discarded = self._db.execute("UPDATE candidates SET status = 'discarded' WHERE status = 'failed'").rowcount
            if first is None:
                return discarded
            moved = self._db.execute("UPDATE candidates SET on_path = 0 WHERE idx > ? AND on_path = 1 AND status = "
                                     "'finished'", (first,)).rowcount
        return discarded + moved

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
        """Finished, failed and skipped candidates on the path, in search order: the history the strategy folds its
        state from."""
        records = [r for r in self.records(HISTORY) if r.on_path]
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
         metrics, error, on_path, latency_ms) = row
        candidate = Candidate(phase, Arch.from_json(arch), epochs)
        return CandidateRecord(
            id=rid, index=idx, candidate=candidate, params=params, macs=macs, seed=seed, status=status,
            started_at=started, finished_at=finished, wall_s=wall, score=score, train_score=train,
            metrics=Metrics.from_dict(json.loads(metrics)) if metrics else None, error=error, on_path=bool(on_path),
            latency_ms=latency_ms,
        )
