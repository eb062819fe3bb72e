"""Kill a real search in the middle of a candidate, resume it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, data: dict) -> Path:
    data = json.loads(json.dumps(data))
    data["search"]["depth"].update(start_epochs=2, epoch_step=1)
    data["run"]["executor"] = "subprocess"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def facenas(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "facenas.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def journal_rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT idx, status, arch, epochs, score, train_score, seed FROM candidates "
                          "ORDER BY idx, id").fetchall()
    finally:
        db.close()


def mid_candidate(path: Path) -> bool:
    """True once >= 3 candidates are done and the running one has logged an epoch but not finished."""
    if not path.exists():
        return False
    db = sqlite3.connect(path, timeout=1)
    try:
        done = db.execute("SELECT COUNT(*) FROM candidates WHERE status = 'finished'").fetchone()[0]
        running = db.execute("SELECT c.id, c.epochs, COUNT(e.epoch) FROM candidates c LEFT JOIN epochs e "
                             "ON e.candidate_id = c.id WHERE c.status = 'running' GROUP BY c.id").fetchall()
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()
    return done >= 3 and any(0 < logged < epochs for _, epochs, logged in running)


def test_kill_mid_candidate_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_config_data):
    config = write_config(tmp_path, tiny_config_data)
    full, killed = tmp_path / "full", tmp_path / "killed"

    proc = facenas("search", "-c", str(config), "--out", str(full))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output

    proc = facenas("search", "-c", str(config), "--out", str(killed), start_new_session=True)
    deadline = time.time() + 300
    while not mid_candidate(killed / "journal.sqlite"):
        assert proc.poll() is None, "the search ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its candidate's child process, at once
    proc.communicate(timeout=60)
    rows = journal_rows(killed / "journal.sqlite")
    assert rows[-1][1] == "running" and not (killed / "best_arch.json").exists()

    again = facenas("search", "-c", str(config), "--out", str(killed))  # without --resume: refused
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "--resume" in output

    resumed = facenas("search", "-c", str(config), "--out", str(killed), "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming: " in output and "1 interrupted" in output

    # the same architecture, and every candidate trained exactly as in the uninterrupted run
    assert json.loads((killed / "best_arch.json").read_text()) == json.loads((full / "best_arch.json").read_text())
    full_rows = [r for r in journal_rows(full / "journal.sqlite")]
    killed_rows = journal_rows(killed / "journal.sqlite")
    interrupted = [r for r in killed_rows if r[1] == "interrupted"]
    assert len(interrupted) == 1
    completed = [r for r in killed_rows if r[1] != "interrupted"]
    assert [r[0] for r in completed] == list(range(len(full_rows)))
    assert completed == full_rows
    # the interrupted candidate was restarted from scratch, with the same seed
    restarted = completed[interrupted[0][0]]
    assert restarted[2:4] == interrupted[0][2:4] and restarted[6] == interrupted[0][6]


def test_resume_with_a_changed_config_is_refused(tmp_path, tiny_config_data):
    config = write_config(tmp_path, tiny_config_data)
    out = tmp_path / "run"
    proc = facenas("search", "-c", str(config), "--out", str(out), "--set", "search.width.min=6",
                   "--set", "run.executor=inline")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    proc = facenas("search", "-c", str(config), "--out", str(out), "--resume")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "another configuration" in output and "Traceback" not in output
