"""bench/gpu_check.sh, the GPU checks in one script: its plan (--dry-run) names only what exists, and the face
steps benchmark it runs works end to end (here on the CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"


@pytest.mark.parametrize("gpus, expected", [("2", {"ddp_train", "ddp_reload_1gpu"}), ("1", {"ddp_gloo_tests"})])
def test_the_dry_run_lists_every_step_and_runs_nothing(tmp_path, gpus, expected):
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "GPUS": gpus})
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^\[([\w.-]+)\] \(limit (\d+)s\)$", done.stdout, re.M)
    names = {name for name, _ in steps}
    assert {"tests", "proxy_throughput-fp32-cloff", "proxy_throughput-fp16-cloff", "proxy_throughput-fp16-clon",
            "face_steps", "face_steps-compile", "parallel_search"} | expected == names
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    for path in re.findall(r"\b((?:bench|configs|tests)/[\w/.-]+\.(?:py|yaml))\b", done.stdout):
        assert (ROOT / path).exists(), path


def test_an_unknown_option_is_refused_with_a_message():
    done = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr


def test_face_steps_times_streamed_training_and_the_bare_step(tmp_path):
    """4 training people x 4 faces in batches of 8: 2 steps an epoch, so the 3 steps run over two epochs."""
    results = tmp_path / "face_steps.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "face_steps.py"), "--device", "cpu", "--workers",
                           "0,1", "--steps", "2", "--warmup", "1", "--batch-size", "8", "--width", "4", "--depth",
                           "4", "--identities", "24", "--per-identity", "4", "--out", str(tmp_path / "rec"),
                           "--results", str(results)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(results.read_text())
    assert [row["workers"] for row in report["streamed"]] == [0, 1]
    for row in report["streamed"] + [report["bare"]]:
        assert row["steps"] == 2 and row["steps_per_second"] > 0
    assert all(0 < row["of_bare"] for row in report["streamed"])
