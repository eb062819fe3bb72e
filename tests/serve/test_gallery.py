"""The gallery keeps every committed enrolment, none half-written, and refuses another model's embeddings."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from facenas.serve.errors import GalleryError
from facenas.serve.gallery import Gallery


def unit(rng, n, dim=8):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identify_ranks_subjects_by_their_best_face(tmp_path):
    rng = np.random.default_rng(0)
    g = Gallery(tmp_path / "g.sqlite", "model-a", 8)
    g.create_subject("alice")
    g.create_subject("bob")
    a, b = unit(rng, 3), unit(rng, 2)
    g.enrol("alice", a)
    g.enrol("bob", b)
    matches = g.identify(a[1], 5)
    assert matches[0].subject == "alice" and matches[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert [m.subject for m in matches] == ["alice", "bob"]
    g.close()
    again = Gallery(tmp_path / "g.sqlite", "model-a", 8)  # rebuilt from SQLite at start
    assert again.size == 5 and again.identify(b[0], 1)[0].subject == "bob"


def test_another_models_gallery_is_refused(tmp_path):
    g = Gallery(tmp_path / "g.sqlite", "model-a" * 8, 8)
    g.create_subject("alice")
    g.enrol("alice", unit(np.random.default_rng(1), 1))
    g.close()
    with pytest.raises(GalleryError, match="embeddings made by another model"):
        Gallery(tmp_path / "g.sqlite", "model-b" * 8, 8)


def test_faiss_is_used_for_large_galleries_and_agrees_with_the_matrix(tmp_path):
    pytest.importorskip("faiss", reason="faiss is optional (pip install facenas[large-gallery])")
    rng = np.random.default_rng(2)
    big = Gallery(tmp_path / "big.sqlite", "m", 8, faiss_min_faces=50)
    small = Gallery(tmp_path / "small.sqlite", "m", 8, faiss_min_faces=10**9)
    for k in range(20):
        faces = unit(rng, 4)
        for g in (big, small):
            g.create_subject(f"s{k}")
            g.enrol(f"s{k}", faces)
    assert big.engine == "faiss" and small.engine == "matrix"
    for query in unit(rng, 10):
        a, b = big.identify(query, 5), small.identify(query, 5)
        assert [m.subject for m in a] == [m.subject for m in b]
        assert np.allclose([m.similarity for m in a], [m.similarity for m in b], atol=1e-5)


ENROLLER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from facenas.serve.gallery import Gallery
g = Gallery({db!r}, "model-a", 8)
g.create_subject("s")
rng = np.random.default_rng(0)
print("ready", flush=True)
while True:
    x = rng.normal(size=(5, 8)).astype(np.float32)
    g.enrol("s", x / np.linalg.norm(x, axis=1, keepdims=True))
"""


def test_a_kill_during_enrolment_loses_no_committed_enrolment_and_leaves_no_half(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    db = tmp_path / "g.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", ENROLLER.format(root=root, db=str(db))], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    faces = sqlite3.connect(db).execute("SELECT COUNT(*), COUNT(DISTINCT created_at) FROM faces").fetchone()
    assert faces[0] > 0 and faces[0] == 5 * faces[1]  # whole enrolments of five, never part of one
    g = Gallery(db, "model-a", 8)
    assert g.size == faces[0] and np.allclose(np.linalg.norm(g.matrix, axis=1), 1, atol=1e-5)


def _unit_rows(n, dim=8, seed=0):
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_enrolment_appends_in_amortised_constant_time(tmp_path):
    g = Gallery(tmp_path / "g.sqlite", "m", 8)
    g.create_subject("a")
    buffers = set()
    for k in range(300):
        g.enrol("a", _unit_rows(1, seed=k))
        buffers.add(id(g._buffer))
    assert g.size == 300 and len(buffers) <= 6  # doubling from 16: 16 -> 32 -> ... -> 512, not a copy per face
    np.testing.assert_allclose(g.matrix[-1], _unit_rows(1, seed=299)[0])
    assert not g.matrix.flags.writeable


def test_identification_runs_while_another_thread_holds_the_lock(tmp_path):
    import threading

    g = Gallery(tmp_path / "g.sqlite", "m", 8)
    g.create_subject("a")
    rows = _unit_rows(40)
    g.enrol("a", rows)
    found = []
    with g._lock:  # an enrolment in progress
        worker = threading.Thread(target=lambda: found.extend(g.identify(rows[3], 1)))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()  # the product ran outside the lock
    assert found[0].subject == "a" and found[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_readers_never_see_another_threads_uncommitted_transaction(tmp_path):
    import threading

    g = Gallery(tmp_path / "g.sqlite", "m", 8)
    g.create_subject("a")
    g._db.execute("BEGIN IMMEDIATE")  # the writer, mid-transaction
    g._db.execute("INSERT INTO subjects (id, name, created_at) VALUES ('half', 'half', 0)")
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(s["id"] for s in g.subjects()))
    reader.start()
    reader.join(timeout=10)
    assert seen == ["a"]
    g._db.execute("COMMIT")
    assert [s["id"] for s in g.subjects()] == ["a", "half"]


def test_without_faiss_a_large_gallery_is_never_rebuilt(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    g = Gallery(tmp_path / "g.sqlite", "m", 8, faiss_min_faces=10)
    g.create_subject("a")
    g.create_subject("b")
    rebuilds = []
    monkeypatch.setattr(g, "_rebuild", lambda: rebuilds.append(1))
    for k in range(30):
        g.enrol("a" if k % 3 else "b", _unit_rows(1, seed=k))
    g.delete_subject("b")  # compacts in memory: no reload from SQLite either
    assert rebuilds == [] and g.engine == "matrix" and g.size == 20
    assert g.identify(_unit_rows(1, seed=29)[0], 1)[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert g.identify(_unit_rows(1, seed=3)[0], 5) == [g.identify(_unit_rows(1, seed=3)[0], 1)[0]]  # only "a"


@pytest.mark.parametrize("faiss_min_faces", [10**9, 1])
def test_a_subject_owning_all_the_top_rows_does_not_hide_the_others(tmp_path, faiss_min_faces):
    """The best subjects come from the top rows; where one subject owns more of them than are looked at, the
    search widens until it holds top_k subjects, and agrees with the exhaustive per-subject maximum."""
    if faiss_min_faces == 1:
        pytest.importorskip("faiss", reason="faiss is optional")
    rng = np.random.default_rng(4)
    query = _unit_rows(1, dim=16, seed=99)[0]
    g = Gallery(tmp_path / "g.sqlite", "m", 16, faiss_min_faces=faiss_min_faces)
    crowd = query + 0.05 * rng.normal(size=(300, 16)).astype(np.float32)  # 300 faces closer than anyone else
    g.create_subject("crowd")
    g.enrol("crowd", crowd / np.linalg.norm(crowd, axis=1, keepdims=True))
    others = {}
    for k in range(10):
        rows = _unit_rows(5, dim=16, seed=k)
        g.create_subject(f"s{k}")
        g.enrol(f"s{k}", rows)
        others[f"s{k}"] = float((rows @ query).max())
    matches = g.identify(query, 4)
    expected = sorted(others.items(), key=lambda kv: -kv[1])[:3]
    assert [m.subject for m in matches] == ["crowd"] + [name for name, _ in expected]
    np.testing.assert_allclose([m.similarity for m in matches[1:]], [v for _, v in expected], atol=1e-5)


def test_a_growing_buffer_is_copied_outside_the_index_lock(tmp_path, monkeypatch):
    """The doubling copy of a large gallery must not stall identification: the index lock only publishes."""
    g = Gallery(tmp_path / "g.sqlite", "m", 8)
    g.create_subject("a")
    g.enrol("a", _unit_rows(16))  # the first buffer (16 rows) is full: the next enrolment grows it
    held_during_copy = []
    real_zeros = np.zeros

    def watching_zeros(*args, **kwargs):
        held_during_copy.append(g._index_lock.locked())
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(np, "zeros", watching_zeros)
    g.enrol("a", _unit_rows(1, seed=5))
    monkeypatch.undo()
    assert held_during_copy and not any(held_during_copy) and g.size == 17


# -- several processes on one gallery (facenas serve --workers N) ------------------------------------------------

def test_two_workers_galleries_follow_each_others_enrolments_and_deletions(tmp_path):
    """Two Gallery objects on one file stand for two worker processes (each has its own connections and matrix):
    what one commits, the other's next identification sees, with no reload of the whole gallery."""
    rng = np.random.default_rng(3)
    a, b = Gallery(tmp_path / "g.sqlite", "model-a", 8), Gallery(tmp_path / "g.sqlite", "model-a", 8)
    alice, bob = unit(rng, 3), unit(rng, 2)
    a.create_subject("alice")
    a.enrol("alice", alice)
    assert b.identify(alice[2], 1)[0].subject == "alice" and b.size == 3  # enrolled on a, seen by b
    b.create_subject("bob")
    b.enrol("bob", bob)
    a.enrol("alice", alice[:1])  # a applies b's enrolment inside its own transaction, then its own
    assert [m.subject for m in a.identify(bob[0], 2)] == ["bob", "alice"] and a.size == b.size == 6
    assert np.array_equal(np.sort(a.matrix, 0), np.sort(b.matrix, 0))
    a.delete_subject("bob")
    assert [m.subject for m in b.identify(bob[0], 5)] == ["alice"] and b.size == 4
    rebuilt = Gallery(tmp_path / "g.sqlite", "model-a", 8)  # a restarted worker: from SQLite
    assert np.array_equal(np.sort(rebuilt.matrix, 0), np.sort(a.matrix, 0))
    b.enrol("alice", alice[1:2])
    assert rebuilt.size == a.size == 5
    for g in (a, b, rebuilt):
        g.close()


def test_a_rolled_back_enrolment_is_no_change_for_anyone(tmp_path, monkeypatch):
    """A transaction that fails leaves neither a face nor a change behind, in either process's matrix."""
    rng = np.random.default_rng(4)
    a, b = Gallery(tmp_path / "g.sqlite", "model-a", 8), Gallery(tmp_path / "g.sqlite", "model-a", 8)
    a.create_subject("alice")
    faces = unit(rng, 2)
    monkeypatch.setattr(a, "_append", lambda *args: (_ for _ in ()).throw(AssertionError("not after a rollback")))
    real_record = a._record

    def fails_after_logging(*args, **kwargs):
        real_record(*args, **kwargs)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(a, "_record", fails_after_logging)
    with pytest.raises(sqlite3.OperationalError):
        a.enrol("alice", faces)
    monkeypatch.undo()
    assert a.size == b.size == 0
    b.enrol("alice", faces)  # takes the change number the failed one had used
    assert a.identify(faces[0], 1)[0].subject == "alice" and a.size == 2
    a.close()
    b.close()
