"""The gallery: subjects and their enrolled faces in SQLite (WAL), searched in memory.

Every change is one transaction, so a restart or a kill in the middle of an enrolment keeps every committed
enrolment and none half-written. Each face stores the id (sha256) of the model that embedded it; a gallery made
by another model is refused at start.

Identification multiplies the query by an in-memory matrix of normalised embeddings (built from SQLite at start,
kept in step with every commit), then picks the best subjects from the top rows (argpartition: no Python loop
over the faces). From `faiss_min_faces` faces on (off by default), where faiss is installed, the top rows come
from `faiss.knn` over the same matrix instead: a stateless function, so there is no index to keep in step or to
lock. Both are exact; `bench/gallery_scale.py` measures them side by side (at 100,000 faces of 512 values on two
cores the matrix answered in 11.8 ms at the median and faiss in 17.6 ms, so the matrix is the default).

Concurrency and scale: the matrix (and the subject code of each row) is a buffer that doubles when full, so an
enrolment appends in amortised O(1) instead of copying every face. Rows below the published count are never
written again (a deletion compacts into new buffers), so a writer grows, copies and writes rows outside the
index lock and only publishes (buffer, codes, count) under it, and identification takes that snapshot under the
same lock (held for microseconds) and computes outside it: enrolments and identifications run side by side. The
writer connection is used under the writers' lock only; every reading thread has its own connection, so it never
sees another thread's uncommitted transaction.

Several processes (`facenas serve --workers N`) share one gallery file. Every enrolment and deletion also appends
a row to the `changes` table in its own transaction, and each process applies the rows it has not seen to its
matrix, in order: before every identification and every size it reports, if SQLite's `PRAGMA data_version` (on a
connection of its own, a read of a shared-memory counter) says another connection committed since; and inside
each of its own write transactions (which hold SQLite's write lock, so nothing commits in between). An enrolment
answered by one worker is therefore seen by the next identification on every worker: the bound is one
identification, not a polling period. A killed worker loses nothing committed: its replacement builds its matrix
from SQLite.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facenas.serve.errors import Conflict, GalleryError, NotFound, ServiceError

SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_subject ON faces (subject_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('enrol', 'delete')),
    subject_id TEXT NOT NULL,
    first_face INTEGER,
    last_face INTEGER
);
"""


@dataclass(frozen=True)
class Match:
    subject: str
    similarity: float


def check_subject_id(subject: str) -> str:
    if not SUBJECT_ID.match(subject or ""):
        raise ServiceError("subject id must be 1-64 characters: letters, digits, '_', '.', '-' (starting with a "
                           "letter or digit)")
    return subject


class Gallery:
    def __init__(self, path: str | Path, model_id: str, dim: int, faiss_min_faces: Optional[int] = None) -> None:
        self.path, self.model_id, self.dim = str(path), model_id, dim
        self.faiss_min_faces = faiss_min_faces
        self._lock = threading.RLock()  # writers: one SQLite transaction at a time
        self._index_lock = threading.Lock()  # the in-memory index's publication: held for microseconds
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: not a usable gallery database ({exc})") from None
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'model_id'").fetchone()
        others = self._db.execute("SELECT DISTINCT model_id FROM faces WHERE model_id != ?", (model_id,)).fetchall()
        if (stored and stored[0] != model_id) or others:
            other = stored[0] if stored and stored[0] != model_id else others[0][0]
            raise GalleryError(
                f"{self.path} holds embeddings made by another model (sha256 {other[:12]}...), not by this one "
                f"({model_id[:12]}...); embeddings of different models cannot be compared. Use another --db, or "
                "re-enrol the faces with this model")
        if not stored:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('model_id', ?)", (model_id,))
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._faiss: Any = None  # the faiss module, looked for once, where the gallery reaches faiss_min_faces
        self._faiss_looked = False
        self._names: list[str] = []  # subject of each code; codes are never reused
        self._code_of: dict[str, int] = {}
        self._seq = 0  # the last change applied to the matrix
        self._watch = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._watch_lock = threading.Lock()
        self._data_version = self._version()
        self._rebuild()

    def close(self) -> None:
        for connection in self._reader_connections:
            connection.close()
        self._watch.close()
        self._db.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL: it sees committed transactions only)."""
        connection = getattr(self._readers, "db", None)
        if connection is None:
            uri = Path(self.path).absolute().as_uri() + "?mode=ro"
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            self._readers.db = connection
            with self._lock:
                self._reader_connections.append(connection)
        return connection

    # -- the in-memory index ----------------------------------------------------------------------------------
    def _code(self, subject: str) -> int:
        code = self._code_of.get(subject)
        if code is None:
            code = self._code_of[subject] = len(self._names)
            self._names.append(subject)
        return code

    def _rebuild(self) -> None:
        """The matrix from SQLite (at start), and the last change it holds, read in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            rows = self._db.execute("SELECT subject_id, embedding FROM faces ORDER BY id").fetchall()
            self._seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        buffer, codes = self._buffers(max(16, 2 * len(rows)))
        for i, (subject, blob) in enumerate(rows):
            buffer[i] = np.frombuffer(blob, np.float32)
            codes[i] = self._code(subject)
        self._publish(buffer, codes, len(rows))

    # -- other processes' changes ---------------------------------------------------------------------------
    def _version(self) -> int:
        with self._watch_lock:
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def sync(self) -> None:
        """Apply what other processes committed since the last look. Nothing committed: one pragma. Only this
        process's own commits (which it has applied): one more read, and still no wait for a writer of this process,
        so identifications keep running beside enrolments. Changes of others: applied under the writers' lock."""
        version = self._version()
        if version == self._data_version:
            return
        with self._watch_lock:
            newest = int(self._watch.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        if newest <= self._seq:  # everything committed up to `version` is applied
            self._data_version = version
            return
        with self._lock:
            self._data_version = version
            self._catch_up()

    def _catch_up(self) -> None:
        """Apply the changes after the last applied one, in order (under the writers' lock)."""
        for seq, kind, subject, first, last in self._db.execute(
                "SELECT seq, kind, subject_id, first_face, last_face FROM changes WHERE seq > ? ORDER BY seq",
                (self._seq,)).fetchall():
            if kind == "delete":
                self._remove(subject)
            else:  # faces deleted since are gone from the table; their deletion follows in the changes
                blobs = self._db.execute("SELECT embedding FROM faces WHERE subject_id = ? AND id BETWEEN ? AND ? "
                                         "ORDER BY id", (subject, first, last)).fetchall()
                if blobs:
                    self._append(np.stack([np.frombuffer(b[0], np.float32) for b in blobs]), subject)
            self._seq = seq

    def _record(self, kind: str, subject: str, first: Optional[int] = None, last: Optional[int] = None) -> int:
        """Log one change in the open write transaction, after applying the others' (none can commit meanwhile);
        its number becomes the last applied once the transaction commits (a rolled-back number may be reused)."""
        self._catch_up()
        cur = self._db.execute("INSERT INTO changes (kind, subject_id, first_face, last_face) VALUES (?, ?, ?, ?)",
                               (kind, subject, first, last))
        return int(cur.lastrowid)

    def _buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Empty room for `rows` faces: their embeddings and their subjects' codes."""
        return np.zeros((rows, self.dim), np.float32), np.zeros(rows, np.int32)

    def _publish(self, buffer: np.ndarray, codes: np.ndarray, count: int) -> None:
        with self._index_lock:  # a snapshot taken before keeps the old objects
            self._buffer, self._codes, self._count = buffer, codes, count

    def _append(self, embeddings: np.ndarray, subject: str) -> None:
        """Add rows at the end, doubling the buffers when full; called under the writers' lock. The copy and the
        new rows are written outside the index lock: readers look at rows below the published count only."""
        buffer, codes, count = self._buffer, self._codes, self._count
        need = count + len(embeddings)
        if need > len(buffer):
            grown, grown_codes = self._buffers(max(need, 2 * len(buffer)))
            grown[:count], grown_codes[:count] = buffer[:count], codes[:count]
            buffer, codes = grown, grown_codes
        buffer[count:need] = embeddings
        codes[count:need] = self._code(subject)
        self._publish(buffer, codes, need)

    def _remove(self, subject: str) -> None:
        """Drop a subject's rows into new, compacted buffers (called under the writers' lock)."""
        code = self._code_of.pop(subject, None)
        if code is None:
            return
        keep = np.flatnonzero(self._codes[:self._count] != code)
        buffer, codes = self._buffers(max(16, 2 * len(keep)))
        buffer[:len(keep)], codes[:len(keep)] = self._buffer[keep], self._codes[keep]
        self._publish(buffer, codes, len(keep))

    @property
    def engine(self) -> str:
        """What ranks the rows at the present size: "faiss" or "matrix"."""
        return "faiss" if self._use_faiss(self._count) else "matrix"

    def _use_faiss(self, count: int) -> bool:
        return self.faiss_min_faces is not None and count >= self.faiss_min_faces and self._faiss_module() is not None

    def _faiss_module(self) -> Any:
        if not self._faiss_looked:
            self._faiss_looked = True
            try:
                import faiss

                self._faiss = faiss
            except ImportError:
                self._faiss = None
        return self._faiss

    @property
    def size(self) -> int:
        self.sync()
        return self._count

    @property
    def matrix(self) -> np.ndarray:
        """The enrolled embeddings, one row per face in enrolment order (a read-only view)."""
        view = self._buffer[:self._count]
        view.flags.writeable = False
        return view

    # -- subjects -----------------------------------------------------------------------------------------------
    def create_subject(self, subject: str, name: Optional[str] = None) -> dict:
        check_subject_id(subject)
        with self._lock:
            try:
                self._db.execute("INSERT INTO subjects (id, name, created_at) VALUES (?, ?, ?)",
                                 (subject, name or subject, time.time()))
            except sqlite3.IntegrityError:
                raise Conflict(f"subject {subject!r} already exists") from None
        return {"id": subject, "name": name or subject, "faces": 0}

    def subjects(self) -> list[dict]:
        rows = self._reader().execute(
            "SELECT s.id, s.name, COUNT(f.id) FROM subjects s LEFT JOIN faces f ON f.subject_id = s.id "
            "GROUP BY s.id ORDER BY s.id").fetchall()
        return [{"id": r[0], "name": r[1], "faces": r[2]} for r in rows]

    def subject_count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM subjects").fetchone()[0])

    def _require(self, subject: str) -> None:
        if self._db.execute("SELECT 1 FROM subjects WHERE id = ?", (subject,)).fetchone() is None:
            raise NotFound(f"subject {subject!r} does not exist")

    def delete_subject(self, subject: str) -> None:
        check_subject_id(subject)
        with self._lock:
            self._require(subject)
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM faces WHERE subject_id = ?", (subject,))
                self._db.execute("DELETE FROM subjects WHERE id = ?", (subject,))
                seq = self._record("delete", subject)
            self._seq = seq
            self._remove(subject)

    # -- faces --------------------------------------------------------------------------------------------------
    def enrol(self, subject: str, embeddings: np.ndarray) -> list[int]:
        """Add faces to a subject, all or none (one transaction)."""
        check_subject_id(subject)
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(embeddings) == 0:
            raise ServiceError(f"embeddings must be (n, {self.dim}) with n >= 1")
        with self._lock:
            self._require(subject)
            now = time.time()
            ids = []
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for emb in embeddings:
                    cur = self._db.execute("INSERT INTO faces (subject_id, model_id, embedding, created_at) "
                                           "VALUES (?, ?, ?, ?)", (subject, self.model_id, emb.tobytes(), now))
                    ids.append(int(cur.lastrowid))
                seq = self._record("enrol", subject, ids[0], ids[-1])
            self._seq = seq
            self._append(embeddings, subject)
        return ids

    def identify(self, query: np.ndarray, top_k: int) -> list[Match]:
        """Best similarity per subject, best subjects first."""
        query = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
        self.sync()
        with self._index_lock:  # microseconds: never waits for an enrolment's SQLite transaction or copy
            buffer, codes, count, names = self._buffer, self._codes, self._count, self._names
        if count == 0:
            return []
        rows, row_codes = buffer[:count], codes[:count]
        use_faiss, sims = self._use_faiss(count), None
        k = min(count, max(64, 8 * top_k))
        while True:  # widen the top rows until they hold top_k subjects (a subject may own many of them)
            if use_faiss and k < count:
                _, idx = self._faiss.knn(query.reshape(1, -1), rows, k, metric=self._faiss.METRIC_INNER_PRODUCT)
                order = idx[0][idx[0] >= 0]
            else:
                sims = rows @ query if sims is None else sims  # one product per identification, however wide
                order = _best_first(sims, k)
            _, first = np.unique(row_codes[order], return_index=True)
            if len(first) >= top_k or k == count:
                break
            k = min(count, 4 * k)
        best = order[np.sort(first)[:top_k]]
        return [Match(names[row_codes[i]], float(rows[i] @ query)) for i in best]


def _best_first(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest similarities, largest first (argpartition, then a sort of those k only)."""
    if k >= len(sims):
        return np.argsort(-sims, kind="stable")
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top], kind="stable")]
