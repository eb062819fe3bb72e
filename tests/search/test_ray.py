"""The search on a local Ray cluster: the serial result, and a worker killed mid-candidate changes nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from facenas.config import RayConfig
from facenas.search.journal import SQLiteJournal
from facenas.search.run import run_search
from tests.search.test_parallel import PROFILE, HashEvaluator, path_of, serial, small_spec

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'facenas[ray]')")

from facenas.search.ray_pool import RayPool  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=80 * 1024 * 1024)
    yield
    ray.shutdown()


class KillableEvaluator(HashEvaluator):
    """The first attempt at one chosen candidate writes its pid to `pidfile` and waits to be killed; a later attempt
    (Ray's retry) trains normally."""

    def __init__(self, salt: int, pidfile: str, victim_depth: int) -> None:
        super().__init__(salt, fail_rate=0.0)
        self.pidfile = pidfile
        self.victim_depth = victim_depth

    def evaluate(self, arch, epochs, *, seed, on_epoch: Optional[Any] = None):
        if arch.depth == self.victim_depth and arch.width == 10 and not os.path.exists(self.pidfile):
            Path(self.pidfile + ".tmp").write_text(str(os.getpid()))
            os.replace(self.pidfile + ".tmp", self.pidfile)
            time.sleep(60)  # killed long before this ends
        return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)


def test_a_ray_search_gives_the_serial_path_and_result(cluster):
    spec = small_spec(break_count=1)
    evaluator = HashEvaluator(salt=21, fail_rate=0.1)
    want_result, want_path = serial(spec, evaluator)
    pool = RayPool(evaluator, None, RayConfig(cpus_per_candidate=1))
    assert pool.slots == 2  # the cluster's CPUs, one per candidate
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, pool, seed=0)
        assert result == want_result and path_of(journal) == want_path
        first, second = journal.completed()[:2]
        assert second.started_at < first.finished_at  # the second candidate was launched ahead of the strategy


def test_a_worker_killed_mid_candidate_is_retried_and_the_result_is_unchanged(cluster, tmp_path):
    spec = small_spec(break_count=1)
    pidfile = str(tmp_path / "victim.pid")
    evaluator = KillableEvaluator(salt=5, pidfile=pidfile, victim_depth=4)
    want_result, want_path = serial(spec, HashEvaluator(salt=5, fail_rate=0.0))
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not os.path.exists(pidfile):
            time.sleep(0.05)
        if os.path.exists(pidfile):
            pid = int(Path(pidfile).read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    pool = RayPool(evaluator, 2, RayConfig(max_retries=2))
    with SQLiteJournal(":memory:") as journal:
        result = run_search(spec, PROFILE, evaluator, journal, pool, seed=0)
        assert killed, "the victim candidate never started"
        assert result == want_result and path_of(journal) == want_path
        assert journal.count(("failed",)) == 0  # the retry trained it; nothing was recorded as failed
    thread.join(timeout=5)


def test_an_unreachable_cluster_is_one_clear_error_naming_it():
    from facenas.errors import ConfigError
    from facenas.search.ray_pool import check_reachable

    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1 .*ray start --head"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(ConfigError, match="is not host:port"):
        check_reachable("my-cluster")


def test_cli_search_without_ray_says_how_to_install_it(tmp_path, tiny_config_data, monkeypatch):
    import sys

    import yaml
    from typer.testing import CliRunner

    from facenas.cli.main import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_data))
    result = CliRunner().invoke(app, ["search", "-c", str(config), "--out", str(tmp_path / "run"), "--executor",
                                      "ray"])
    assert result.exit_code != 0 and "pip install 'facenas[ray]'" in result.output
    assert "Traceback" not in result.output
