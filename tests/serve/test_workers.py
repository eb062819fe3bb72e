"""`facenas serve --workers 2`: two uvicorn worker processes on one port and one gallery. An enrolment answered by
one worker is seen by the next identification on the other; a worker killed during a stream of enrolments is
restarted, and every acknowledged enrolment is there afterwards."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker pids from /proc")]


def workers_of(server: Server) -> set[int]:
    """The pids of the uvicorn workers: the server process's children (Linux /proc) that multiprocessing spawned
    (not its resource tracker)."""
    pid = server.proc.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    found = set()
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except FileNotFoundError:  # it ended meanwhile
            pass
    return found


def at_once(request, count: int = 12) -> list[httpx.Response]:
    """`request(client)` on `count` fresh connections at once. Connections made one after another all land on the
    same idle worker (the kernel wakes the last waiter); concurrent ones spread over the busy workers."""
    def one(_: int) -> httpx.Response | None:
        try:
            with httpx.Client(timeout=20) as client:
                return request(client)
        except httpx.HTTPError:
            return None

    with ThreadPoolExecutor(count) as pool:
        return [r for r in pool.map(one, range(count)) if r is not None]


def wait_for_workers(server: Server, count: int, crop: bytes, timeout: float = 90) -> set[int]:
    """Wait until `count` workers run and each answers."""
    deadline = time.time() + timeout
    embed = lambda c: c.post(server.url + "/v1/embed", files=[("files", ("a.png", crop))])  # noqa: E731
    while time.time() < deadline:
        pids = workers_of(server)
        if len(pids) == count:
            seen = {r.headers["x-facenas-worker"] for r in at_once(embed) if r.status_code == 200}
            if len(seen) == count:
                return pids
        time.sleep(0.3)
    raise AssertionError(f"{count} ready workers not seen in {timeout} s: {server.output()[-2000:]}")


def other_worker(than: str, request) -> httpx.Response:
    """A response to `request(client)` from a worker other than `than`."""
    for _ in range(30):
        for r in at_once(request):
            if r.headers["x-facenas-worker"] != than:
                return r
    raise AssertionError(f"only worker {than} answered")


def test_an_enrolment_on_one_worker_is_identified_on_the_other(exported, tmp_path, crops):
    model, _ = exported
    with Server("--model", str(model), "--db", str(tmp_path / "g.sqlite"), "--workers", "2",
                "--log-level", "warning") as server:
        wait_for_workers(server, 2, crops[0])
        with httpx.Client(timeout=10) as client:  # one connection: one worker
            assert client.post(server.url + "/v1/subjects", json={"id": "alice"}).status_code == 201
            r = client.post(server.url + "/v1/subjects/alice/faces", files=[("files", ("a.png", crops[0]))])
            assert r.status_code == 201, r.text
        enrolled_on = r.headers["x-facenas-worker"]
        identified: list[str] = []

        def identify(c: httpx.Client) -> httpx.Response:
            answer = c.post(server.url + "/v1/identify", files={"image": ("q.png", crops[0])})
            identified.append(answer.headers["x-facenas-worker"])
            return answer

        seen = other_worker(enrolled_on, identify)
        assert seen.status_code == 200 and seen.json()["subject"] == "alice", seen.text
        # a deletion answered by one worker: the other's next identification no longer finds the subject
        with httpx.Client(timeout=10) as client:
            r = client.delete(server.url + "/v1/subjects/alice")
            assert r.status_code == 204
        deleted_on = r.headers["x-facenas-worker"]
        gone = other_worker(deleted_on, identify)
        assert gone.json()["subject"] is None and gone.json()["candidates"] == [], gone.text
        # /metrics, from whichever worker answers, counts the requests of both (prometheus_client multiprocess)
        assert len(set(identified)) == 2
        metrics = httpx.get(server.url + "/metrics").text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("facenas_requests_total{") and 'route="/v1/identify"' in line)
        assert counted == len(identified), metrics
        assert "facenas_gallery_faces 0.0" in metrics and "facenas_gallery_subjects 0.0" in metrics


def test_a_killed_worker_is_restarted_and_no_acknowledged_enrolment_is_lost(exported, tmp_path, crops):
    model, _ = exported
    db = tmp_path / "g.sqlite"
    # no rate limit: the stream of enrolments would spend the loopback client's allowance before the identifications
    with Server("--model", str(model), "--db", str(db), "--workers", "2", "--log-level", "warning",
                "--rate-limit", "0") as server:
        before = wait_for_workers(server, 2, crops[0])
        assert httpx.post(server.url + "/v1/subjects", json={"id": "bob"}).status_code == 201
        acknowledged: list[int] = []
        refused = 0
        stop = threading.Event()

        def enrol_stream() -> None:
            nonlocal refused
            while not stop.is_set():
                try:
                    with httpx.Client(timeout=10) as client:  # a new connection each time: both workers enrol
                        r = client.post(server.url + "/v1/subjects/bob/faces",
                                        files=[("files", ("a.png", crops[3])), ("files", ("b.png", crops[4]))])
                except httpx.HTTPError:  # the killed worker's connection: not acknowledged
                    refused += 1
                    continue
                if r.status_code == 201:
                    acknowledged.extend(r.json()["face_ids"])

        stream = threading.Thread(target=enrol_stream)
        stream.start()
        time.sleep(3)
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(3)
        stop.set()
        stream.join(timeout=60)
        after = wait_for_workers(server, 2, crops[0])  # the supervisor replaced the dead worker
        assert victim not in after and len(after - before) == 1
        assert len(acknowledged) >= 10
        stored = {row[0] for row in sqlite3.connect(db).execute("SELECT id FROM faces WHERE subject_id = 'bob'")}
        assert set(acknowledged) <= stored  # every acknowledged face is committed
        # and both workers, the new one included, identify against every committed face
        listing = httpx.get(server.url + "/v1/subjects").json()["subjects"]
        assert listing == [{"id": "bob", "name": "bob", "faces": len(stored)}]
        tokens: set[str] = set()
        for _ in range(30):
            for r in at_once(lambda c: c.post(server.url + "/v1/identify", files={"image": ("q.png", crops[3])})):
                assert r.status_code == 200 and r.json()["subject"] == "bob", r.text
                tokens.add(r.headers["x-facenas-worker"])
            if len(tokens) == 2:
                break
        assert len(tokens) == 2
