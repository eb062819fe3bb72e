"""The gallery: subjects and their enrolled faces in SQLite (WAL), searched in memory.

Every change is one transaction, so a restart or a kill in the middle of an enrolment keeps every committed
enrolment and none half-written. Each face stores the id (sha256) of the model that embedded it; a gallery made
by another model is refused at start. Identification multiplies the query by an in-memory matrix of normalised
embeddings, rebuilt from SQLite at start and kept in step with every commit; from `faiss_min_faces` faces on, a
faiss inner-product index is used where faiss is installed.

Concurrency and scale: the matrix is a buffer that doubles when full, so an enrolment appends in amortised O(1)
instead of copying every face. Rows below the published count are never written again (a deletion builds new
buffers), so identification takes a snapshot (buffer, count, owners) under a lock held for microseconds (not the
writers' lock, held through SQLite transactions) and multiplies outside it: enrolments and identifications run
side by side. The writer connection is used under the writers' lock only; every reading thread has its own
connection, so it never sees another thread's uncommitted transaction.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
    def __init__(self, path: str | Path, model_id: str, dim: int, faiss_min_faces: int = 50_000) -> None:
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
        self._faiss_missing = False  # looked for once: without faiss the matrix serves every size
        self._rebuild()

    def close(self) -> None:
        for connection in self._reader_connections:
            connection.close()
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
    def _rebuild(self) -> None:
        rows = self._db.execute("SELECT id, subject_id, embedding FROM faces ORDER BY id").fetchall()
        matrix = (np.stack([np.frombuffer(r[2], np.float32) for r in rows]) if rows
                  else np.zeros((0, self.dim), np.float32))
        buffer = np.zeros((max(16, 2 * len(rows)), self.dim), np.float32)
        buffer[:len(rows)] = matrix
        index = None
        if len(rows) >= self.faiss_min_faces and not self._faiss_missing:
            try:
                import faiss

                index = faiss.IndexFlatIP(self.dim)
                index.add(np.ascontiguousarray(matrix))
            except ImportError:
                self._faiss_missing = True
        with self._index_lock:  # new objects: a snapshot taken before keeps the old ones
            self._buffer, self._owners, self._count, self._faiss = buffer, [r[1] for r in rows], len(rows), index

    def _append(self, embeddings: np.ndarray, subject: str) -> None:
        """Add rows at the end, doubling the buffer when full (the old buffer stays intact for snapshots);
        called with `_index_lock` held."""
        need = self._count + len(embeddings)
        if need > len(self._buffer):
            grown = np.zeros((max(need, 2 * len(self._buffer)), self.dim), np.float32)
            grown[:self._count] = self._buffer[:self._count]
            self._buffer = grown
        self._buffer[self._count:need] = embeddings
        self._owners.extend([subject] * len(embeddings))
        self._count = need  # published last: a snapshot never sees a row being written

    @property
    def size(self) -> int:
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
            self._rebuild()

    # -- faces --------------------------------------------------------------------------------------------------
    def enrol(self, subject: str, embeddings: np.ndarray) -> list[int]:
        """Add faces to a subject, all or none (one transaction)."""
        check_subject_id(subject)
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ServiceError(f"embeddings must be (n, {self.dim})")
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
            with self._index_lock:
                self._append(embeddings, subject)
                if self._faiss is not None:
                    self._faiss.add(np.ascontiguousarray(embeddings))
            if self._faiss is None and self.size >= self.faiss_min_faces and not self._faiss_missing:
                self._rebuild()
        return ids

    def identify(self, query: np.ndarray, top_k: int) -> list[Match]:
        """Best similarity per subject, best subjects first."""
        query = np.asarray(query, np.float32).reshape(1, -1)
        with self._index_lock:  # never waits for an enrolment's SQLite transaction
            buffer, count, owners, index = self._buffer, self._count, self._owners, self._faiss
            if count == 0:
                return []
            if index is not None:  # faiss's index is not safe to search while another thread adds to it
                k = min(count, max(top_k * 20, 100))
                sims, idx = index.search(query, k)
                pairs = [(owners[i], float(s)) for s, i in zip(sims[0], idx[0]) if i >= 0]
        if index is None:  # outside the lock: rows below `count` are never written again
            sims = buffer[:count] @ query[0]
            pairs = list(zip(owners[:count], sims.tolist()))
        best: dict[str, float] = {}
        for owner, sim in pairs:
            if sim > best.get(owner, -2.0):
                best[owner] = sim
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return [Match(s, float(v)) for s, v in ranked]
