"""`facenas arch show` and `facenas arch random` (issue 8): the files written load back and count the same."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.space.arch import Arch
from facenas.space.count import count_params
from tests.conftest import ROOT

runner = CliRunner()
FACES = str(ROOT / "configs/search/faces-synthetic.yaml")
DIGITS = str(ROOT / "configs/search/digits.yaml")


def _random(*args: str):
    return runner.invoke(app, ["arch", "random", *args], env={"COLUMNS": "120"})


def test_random_prints_one_loadable_json_line_each_and_repeats_with_the_seed():
    result = _random("--params", "100000", "--seed", "3", "--count", "3", "-c", FACES)
    assert result.exit_code == 0, result.output
    archs = [Arch.from_json(line) for line in result.stdout.splitlines()]
    assert len(set(archs)) == 3
    assert all(abs(count_params(a) - 100_000) <= 3_000 and 4 <= a.depth <= 10 for a in archs)
    assert all(set(a.kernels) <= {3, 5} for a in archs)
    assert "depth 4..10, ops sep/conv, kernels 3/5" in result.stderr and "vs target" in result.stderr
    again = _random("--params", "100000", "--seed", "3", "--count", "3", "-c", FACES)
    assert again.stdout == result.stdout
    other = _random("--params", "100000", "--seed", "4", "--count", "3", "-c", FACES)
    assert other.stdout != result.stdout


def test_random_writes_files_that_arch_show_counts_the_same(tmp_path):
    out = tmp_path / "baselines"
    result = _random("--params", "50000", "--seed", "5", "--count", "2", "-c", FACES, "--out", str(out),
                     "--tolerance", "0.01")
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["random_5_0.json", "random_5_1.json"]
    assert result.stdout.split() == [str(f) for f in files]
    for f in files:
        arch = Arch.from_json(f.read_text())
        assert abs(count_params(arch) - 50_000) <= 500
        shown = runner.invoke(app, ["arch", "show", str(f), "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["params"] == count_params(arch)
        assert json.loads(shown.stdout)["arch"] == arch.to_dict()


def test_random_out_json_file_holds_one_architecture(tmp_path):
    target = tmp_path / "sub" / "baseline.json"
    result = _random("--params", "20000", "--seed", "0", "-c", DIGITS, "--out", str(target))
    assert result.exit_code == 0, result.output
    arch = Arch.from_json(target.read_text())
    assert 3 <= arch.depth <= 12 and arch.profile.head == "classifier"
    first = _random("--params", "20000", "--seed", "0", "-c", DIGITS, "--count", "3")
    assert Arch.from_json(first.stdout.splitlines()[0]) == arch  # the same draw as the first of a longer list
    refused = _random("--params", "20000", "--seed", "0", "-c", DIGITS, "--count", "2", "--out", str(target))
    assert refused.exit_code == 2 and "give a directory" in refused.stderr


def test_random_without_a_config_samples_the_face_defaults():
    result = _random("--params", "1000000", "--seed", "0")
    assert result.exit_code == 0, result.output
    arch = Arch.from_json(result.stdout)
    assert arch.profile.head == "embedding" and arch.profile.input_size == 112 and 10 <= arch.depth <= 100
    assert "the face defaults (no -c)" in result.stderr


def test_random_impossible_target_is_one_line_and_exit_2():
    result = _random("--params", "100", "--seed", "0", "-c", DIGITS)
    assert result.exit_code == 2
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot draw an architecture of 100 parameters")
    assert "smallest" in lines[0] and "depth 3" in lines[0]


def test_arch_without_a_subcommand_lists_show_and_random():
    result = runner.invoke(app, ["arch"])
    assert "show" in result.output and "random" in result.output


def test_random_under_a_latency_budget_measures_and_keeps_only_fast_architectures(monkeypatch):
    """--max-latency-ms: every architecture printed was measured under the budget (a MACs-proportional clock)."""
    from facenas.export import latency
    from facenas.space.count import count_macs
    from tests.search.test_constraints import FakeLatency

    monkeypatch.setattr(latency, "arch_latency", lambda arch, target: FakeLatency(count_macs(arch) / 1e6))
    free = [Arch.from_json(line) for line in _random("--params", "100000", "--seed", "3", "--count", "6", "-c",
                                                       FACES).stdout.splitlines()]
    budget = sorted(count_macs(a) / 1e6 for a in free)[2]
    result = _random("--params", "100000", "--seed", "3", "--count", "2", "-c", FACES, "--max-latency-ms",
                     f"{budget:.6f}")
    assert result.exit_code == 0, result.output
    archs = [Arch.from_json(line) for line in result.stdout.splitlines()]
    assert len(archs) == 2 and all(count_macs(a) / 1e6 <= budget + 1e-6 for a in archs) and " ms " in result.stderr
    bad = _random("--params", "100000", "--seed", "3", "-c", FACES, "--max-latency-ms", "0")
    assert bad.exit_code == 2 and "max_latency_ms" in bad.output and "Traceback" not in bad.output


def test_latency_times_an_architecture_and_a_scaled_backbone_on_the_target(tmp_path):
    """`facenas arch latency`: the figure a user sets max_latency_ms from, for a searched net or a hand design."""
    arch = json.loads(_random("--params", "20000", "--seed", "1", "-c", FACES).stdout.splitlines()[0])
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    result = runner.invoke(app, ["arch", "latency", str(path), "-c", FACES, "--repeats", "5", "--json"])
    assert result.exit_code == 0, result.output
    timed = json.loads(result.stdout)
    assert timed["params"] == count_params(Arch.from_dict(arch)) and timed["median_ms"] > 0
    assert timed["repeats"] == 5 and timed["threads"] == 1 and timed["runtime"] == "onnxruntime"
    mobile = runner.invoke(app, ["arch", "latency", "--backbone", "mobilefacenet", "--backbone-params", "30000",
                                 "-c", FACES, "--repeats", "5", "--threads", "2", "--json"])
    assert mobile.exit_code == 0, mobile.output
    timed = json.loads(mobile.stdout)
    assert timed["network"].startswith("mobilefacenet") and abs(timed["params"] - 30_000) <= 3_000
    assert timed["threads"] == 2


def test_latency_refuses_unclear_requests_with_a_message(tmp_path):
    for args, words in ((["-c", FACES], "one of the two"),
                        ([str(tmp_path / "missing.json")], "does not exist"),
                        (["--backbone", "mobilefacenet", "--precision", "int9"], "'fp32' or 'int8'"),
                        (["--backbone", "mobilefacenet", "--backbone-params", "9", "--backbone-width", "1"],
                         "give one")):
        result = runner.invoke(app, ["arch", "latency", *args])
        assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output, result.output
