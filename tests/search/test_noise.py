"""`facenas noise`: the spread of the search's score over seeds, through the run's own evaluator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.search.noise import measure_noise, spread
from facenas.space.arch import Arch, Profile
from facenas.train.metrics import EpochMetrics, Metrics


class NoisyTable:
    """Score = 60 + depth + seeded noise of std 0.5: the noise and the signal are known."""

    def describe(self):
        return {"name": "noisy"}

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        rng = np.random.default_rng([arch.depth, seed])
        values = 60 + arch.depth + rng.normal(0, 0.5, epochs)
        return Metrics(tuple(EpochMetrics(e, 50.0, float(v), extra={"heldout_auc": float(v) + 10})
                             for e, v in enumerate(values)), reduce="last")


def test_a_run_that_fails_stops_the_measurement_keeping_the_finished_ones():
    from facenas.errors import NonFiniteLossError, SearchAborted

    class FailsOnSeed2(NoisyTable):
        def evaluate(self, arch, epochs, *, seed, on_epoch=None):
            if seed == 2:
                raise NonFiniteLossError("training loss became nan")
            return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)

    kept = []
    with pytest.raises(SearchAborted, match="D3 C8 ops 000 k 333 seed 2 failed to train .*nan.*every run"):
        measure_noise(FailsOnSeed2(), [Arch.uniform(8, 3, Profile.paper(1, 10))], range(4), 2, on_record=kept.append)
    assert [r["seed"] for r in kept] == [0, 1]


def test_spread_separates_the_noise_from_the_signal():
    archs = [Arch.uniform(8, d, Profile.paper(1, 10)) for d in (3, 5, 7)]
    report = measure_noise(NoisyTable(), archs, range(40), 2)
    assert report.score.pooled_std == pytest.approx(0.5, rel=0.2)
    assert report.score.arch_mean_std == pytest.approx(2.0, rel=0.1)  # means 63, 65, 67
    assert report.score.signal_to_noise == pytest.approx(4.0, rel=0.25)
    assert set(report.measures) == {"auc/max", "auc/last", "auc/mean_last2"}
    # the max over epochs is biased upwards: its mean exceeds the last epoch's
    assert report.measures["auc/max"].mean["D3 C8 ops 000 k 333"] > report.measures["auc/last"].mean[
        "D3 C8 ops 000 k 333"]


def test_spread_of_exact_values():
    s = spread({"a": [1.0, 3.0], "b": [5.0, 7.0]})
    assert s.mean == {"a": 2.0, "b": 6.0} and s.pooled_std == pytest.approx(math.sqrt(2))
    assert s.arch_mean_std == pytest.approx(math.sqrt(8)) and s.signal_to_noise == pytest.approx(2.0)


def test_cli_noise_on_a_tiny_face_config(tmp_path, tiny_face_config_data):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny_face_config_data, "faces": {
        **tiny_face_config_data["faces"], "score": {"metric": "auc", "pairs": "all", "reduce": "last"}}}))
    result = CliRunner().invoke(app, ["noise", "-c", str(config), "--seeds", "2", "--epochs", "1", "--json",
                                      str(tmp_path / "n.json")])
    assert result.exit_code == 0, result.output
    assert "search.noise.std" in result.output
    data = json.loads((tmp_path / "n.json").read_text())
    assert len(data["runs"]) == 4 and "dprime/last" in data["measures"]  # the tiny space has 2 distinct archs
    assert {r["seed"] for r in data["runs"]} == {0, 1}


def test_cli_noise_resumes_a_killed_measurement_and_runs_jobs_in_parallel(tmp_path, tiny_face_config_data,
                                                                          monkeypatch):
    """A killed `facenas noise --json` keeps every finished training; the same command trains only the rest (here
    on 2 jobs) and reports as an uninterrupted run would."""
    import facenas.search.noise as noise

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_face_config_data))
    args = ["noise", "-c", str(config), "--seeds", "2", "--epochs", "1", "--json", str(tmp_path / "n.json")]
    real = noise._record

    def killed_after_two(arch, seed, metrics):
        if killed_after_two.calls == 2:
            raise KeyboardInterrupt
        killed_after_two.calls += 1
        return real(arch, seed, metrics)

    killed_after_two.calls = 0
    monkeypatch.setattr(noise, "_record", killed_after_two)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130
    partial = json.loads((tmp_path / "n.json").read_text())
    assert len(partial["runs"]) == 2 and "score" not in partial
    monkeypatch.setattr(noise, "_record", real)
    second = CliRunner().invoke(app, args + ["--jobs", "2", "--set", "run.executor=subprocess"])
    assert second.exit_code == 0, second.output
    assert "2 trainings already in" in second.output and second.output.count(" seed ") == 2
    data = json.loads((tmp_path / "n.json").read_text())
    assert [(r["arch"], r["seed"]) for r in data["runs"]] == [(a, s) for a in dict.fromkeys(
        r["arch"] for r in data["runs"]) for s in (0, 1)] and len(data["runs"]) == 4  # 2 distinct architectures
    assert data["runs"][:2] == partial["runs"] and "train accuracy" in second.output
    other = CliRunner().invoke(app, args[:4] + ["3"] + args[5:])  # 3 seeds: another measurement
    assert other.exit_code == 2 and "holds another measurement" in other.output


def test_cli_noise_at_each_architectures_search_budget(tmp_path, tiny_face_config_data):
    """--search-budget trains each architecture for what the macro phases give its depth and width (a narrower net
    more epochs), the budget at which the search compares it."""
    from facenas.config import parse_config
    from facenas.search.random_search import macro_epochs

    search = tiny_face_config_data["search"]
    data = {**tiny_face_config_data, "search": {**search, "width": {**search["width"], "epoch_step": 1}}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["noise", "-c", str(config), "--seeds", "2", "--search-budget", "--json",
                                      str(tmp_path / "n.json")])
    assert result.exit_code == 0, result.output
    spec = parse_config(data).search
    data = json.loads((tmp_path / "n.json").read_text())
    wanted = {r["arch"]: macro_epochs(spec, int(r["arch"][1:].split()[0]), int(r["arch"].split()[1][1:]))
              for r in data["runs"]}
    assert data["epochs"] == wanted and len(set(wanted.values())) == 2  # the narrow net trains longer
    assert all(r["epochs"] == wanted[r["arch"]] == len(r["train_acc"]) for r in data["runs"])
    assert "each at its search budget" in result.output
    both = CliRunner().invoke(app, ["noise", "-c", str(config), "--search-budget", "--epochs", "2"])
    assert both.exit_code == 2 and "give one" in both.output
