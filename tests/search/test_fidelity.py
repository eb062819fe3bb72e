"""`facenas fidelity`: rank correlation of proxy and long scores, resumable run by run."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional

import pytest
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.config import parse_config
from facenas.errors import ConfigError, NonFiniteLossError, SearchAborted
from facenas.search.fidelity import choose_archs, measures_of, rank_correlation, run_fidelity, table, untrained
from facenas.space.arch import Arch, Profile
from facenas.space.count import count_params
from facenas.space.sample import SearchSpace
from facenas.train.metrics import EpochMetrics, Metrics

PROFILE = Profile.paper(1, 10)
ARCHS = [Arch.uniform(w, d, PROFILE) for w, d in ((8, 3), (10, 4), (6, 5), (12, 3), (16, 6))]


def proxy_score(arch: Arch) -> float:
    """Distinct for every architecture in ARCHS, in no particular order of their place in the list."""
    return 50.0 + (7 * arch.width + 3 * arch.depth) % 23


class Scripted:
    """The proxy score depends on the architecture; the long one is `long(proxy score)`."""

    def __init__(self, long: Callable[[float], float], stop_after: Optional[int] = None) -> None:
        self.long, self.stop_after, self.calls = long, stop_after, []

    def describe(self) -> dict[str, Any]:
        return {"name": "scripted"}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt  # a kill in the middle of a long run
        self.calls.append((arch.short(), epochs, seed))
        score = proxy_score(arch) if epochs == 2 else self.long(proxy_score(arch))
        return Metrics(tuple(EpochMetrics(e, 60.0, score - (epochs - 1 - e), extra={"heldout_auc": 100 - score})
                             for e in range(epochs)), reduce="last")


@pytest.mark.parametrize("long, tau", [(lambda s: 2 * s + 10, 1.0), (lambda s: math.exp(-s / 10), -1.0)])
def test_rank_correlations_of_monotone_and_reversed_long_scores(tmp_path, long, tau):
    evaluator = Scripted(long)
    data = run_fidelity(evaluator, ARCHS, 2, 8, seed=0, path=tmp_path / "f.json")
    c = data["correlations"]
    assert c["score"]["n"] == 5
    assert c["score"]["kendall_tau"] == pytest.approx(tau) and c["score"]["spearman_rho"] == pytest.approx(tau)
    # the face measure is reduced like the score (last epoch) and ranks the other way round
    assert c["heldout_auc"]["kendall_tau"] == pytest.approx(tau)
    assert [e["proxy"]["measures"]["heldout_auc"] for e in data["archs"]] == pytest.approx(
        [100 - proxy_score(a) for a in ARCHS])
    # proxies first, then the long runs, each architecture with the same seed at both budgets
    assert [epochs for _, epochs, _ in evaluator.calls] == [2] * 5 + [8] * 5
    seeds = [seed for _, _, seed in evaluator.calls]
    assert seeds[:5] == seeds[5:] and len(set(seeds)) == 5
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["correlations"] == c and saved["archs"][0]["params"] == count_params(ARCHS[0])
    assert all(e["proxy"]["wall_s"] >= 0 and e["long"]["epochs"] == 8 for e in saved["archs"])


def test_a_killed_run_resumes_without_training_anything_twice(tmp_path):
    path = tmp_path / "f.json"
    with pytest.raises(KeyboardInterrupt):
        run_fidelity(Scripted(lambda s: s, stop_after=7), ARCHS, 2, 8, seed=3, path=path)
    saved = json.loads(path.read_text())
    assert sum(e["proxy"] is not None for e in saved["archs"]) == 5
    assert sum(e["long"] is not None for e in saved["archs"]) == 2
    second = Scripted(lambda s: s)
    data = run_fidelity(second, ARCHS, 2, 8, seed=3, path=path)
    assert len(second.calls) == 3 and [e for _, e, _ in second.calls] == [8, 8, 8]
    assert data["correlations"]["score"]["kendall_tau"] == pytest.approx(1.0)
    third = Scripted(lambda s: s)
    assert run_fidelity(third, ARCHS, 2, 8, seed=3, path=path) == data and third.calls == []
    with pytest.raises(ConfigError, match="other settings .*long_epochs"):
        run_fidelity(third, ARCHS, 2, 6, seed=3, path=path)


class Reversed:
    """A two-slot pool whose runs end in the reverse order of their start, as parallel runs of unequal length do."""

    slots = 2

    def __init__(self, evaluator: Scripted) -> None:
        self.evaluator, self.pending, self.started, self.closed = evaluator, [], [], False

    def submit(self, task: Any) -> None:
        assert len(self.pending) < self.slots
        self.pending.append(task)
        self.started.append(task.candidate.epochs)

    def wait(self, on_epoch: Any) -> list[Any]:
        from facenas.search.executor import Completion

        done = [Completion(t, self.evaluator.evaluate(t.candidate.arch, t.candidate.epochs, seed=t.seed))
                for t in reversed(self.pending)]
        self.pending = []
        return done

    def cancel(self, task_id: int) -> None:
        raise AssertionError("a fidelity check cancels nothing")

    def close(self) -> None:
        self.closed = True


def test_a_pool_trains_several_runs_at_once_with_the_serial_result(tmp_path):
    serial = run_fidelity(Scripted(lambda s: 100 - s), ARCHS, 2, 8, seed=4, path=tmp_path / "serial.json")
    pool = Reversed(Scripted(lambda s: 100 - s))
    parallel = run_fidelity(Scripted(lambda s: 0.0), ARCHS, 2, 8, seed=4, path=tmp_path / "pool.json",
                            executor=pool)
    assert parallel == serial and pool.closed
    assert pool.started == [2] * 5 + [8] * 5  # the proxies first, two at a time


def test_failed_runs_are_recorded_and_left_out(tmp_path):
    class Fails(Scripted):
        def evaluate(self, arch, epochs, *, seed, on_epoch=None):
            if arch.width == 6 and epochs == 8:
                raise NonFiniteLossError("training loss became nan")
            return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)

    data = run_fidelity(Fails(lambda s: -s), ARCHS, 2, 8, seed=0, path=tmp_path / "f.json")
    failed = data["archs"][2]["long"]
    assert failed["status"] == "failed" and failed["score"] is None and "nan" in failed["error"]
    assert data["correlations"]["score"]["n"] == 4 and data["correlations"]["score"]["kendall_tau"] == -1.0


def test_a_broken_setup_stops_and_failed_runs_train_again_when_asked(tmp_path):
    class Broken(Scripted):
        def evaluate(self, arch, epochs, *, seed, on_epoch=None):
            raise NonFiniteLossError("no module named 'cv2'")

    path = tmp_path / "f.json"
    with pytest.raises(SearchAborted, match="3 trainings in a row failed .*cv2.*--retry-failed"):
        run_fidelity(Broken(lambda s: s), ARCHS, 2, 8, seed=0, path=path, max_consecutive_failures=3)
    assert [e["proxy"] and e["proxy"]["status"] for e in json.loads(path.read_text())["archs"]] == [
        "failed"] * 3 + [None] * 2
    fixed = Scripted(lambda s: s)
    kept = run_fidelity(fixed, ARCHS, 2, 8, seed=0, path=path)  # failed runs stay failed without retry_failed
    assert len(fixed.calls) == 2 + 5 and kept["correlations"]["score"]["n"] == 2
    retried = Scripted(lambda s: s)
    data = run_fidelity(retried, ARCHS, 2, 8, seed=0, path=path, retry_failed=True)
    assert [e for _, e, _ in retried.calls] == [2, 2, 2]  # their long runs trained in the second call
    assert data["correlations"]["score"]["n"] == 5


def test_rank_correlation_needs_two_finite_pairs():
    assert rank_correlation([1.0], [2.0])["kendall_tau"] is None
    assert rank_correlation([1.0, None, 3.0], [1.0, 5.0, float("nan")])["n"] == 1
    assert rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["kendall_tau"] is None  # constant: undefined


def test_measures_are_reduced_like_the_score():
    epochs = tuple(EpochMetrics(e, 0.0, 50.0 + e, extra={"heldout_auc": v, "other": 1.0})
                   for e, v in enumerate((90.0, 95.0, 91.0)))
    assert measures_of(Metrics(epochs, reduce="max")) == {"heldout_auc": 95.0}
    assert measures_of(Metrics(epochs, reduce="mean_last", last_k=2)) == {"heldout_auc": 93.0}


def test_architectures_are_distinct_in_the_searchs_widths_and_reproducible():
    space = SearchSpace(Profile.paper(1, 10, 8), 3, 12, kernels=(3, 5))
    spread = choose_archs(space, 6, 0, widths=(8, 16))
    assert len(set(spread)) == 6 and all(8 <= a.width <= 16 for a in spread)
    sizes = [count_params(a) for a in spread]
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0]
    assert choose_archs(space, 6, 0, widths=(8, 16)) == spread and choose_archs(space, 6, 1, widths=(8, 16)) != spread
    same = choose_archs(space, 4, 0, widths=(8, 16), params=50_000)
    assert len(set(same)) == 4 and all(abs(count_params(a) - 50_000) <= 1500 for a in same)


def _cli_fidelity(tmp_path, config_data, *budget: str) -> tuple[list[str], Any, dict[str, Any]]:
    """`facenas fidelity` on a tiny config with `budget` options: (its arguments, the result, fidelity.json)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_data))
    args = ["fidelity", "-c", str(config), "--proxy-epochs", "1", *budget, "--out", str(tmp_path / "fid")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return args, result, json.loads((tmp_path / "fid" / "fidelity.json").read_text())


def test_cli_fidelity_on_a_tiny_digits_config(tmp_path, tiny_config_data):
    args, result, data = _cli_fidelity(tmp_path, tiny_config_data, "--archs", "3", "--factor", "2")
    assert [(e["proxy"]["epochs"], e["long"]["epochs"]) for e in data["archs"]] == [(1, 2)] * 3
    assert data["settings"]["proxy_epochs"] == 1 and data["correlations"]["score"]["n"] == 3
    assert (tmp_path / "fid" / "fidelity.png").stat().st_size > 0 and "Kendall tau" in result.output
    assert "| architecture | params | MMACs | convs | train / score at 1 epochs |" in result.output
    assert sum(line.startswith("| D") for line in result.output.splitlines()) == 3
    assert result.output.count(" proxy (1 epochs)") == 3
    cfg = parse_config(tiny_config_data)
    widths = (cfg.search.width.min, cfg.search.width.max)
    assert all(widths[0] <= e["spec"]["width"] <= widths[1] for e in data["archs"])
    again = CliRunner().invoke(app, args)  # resumes: nothing left to train
    assert again.exit_code == 0 and "proxy (1 epochs)" not in again.output
    assert json.loads((tmp_path / "fid" / "fidelity.json").read_text()) == data


def test_long_epochs_set_the_long_budget_and_the_rules_can_change_without_orphaning_the_run(tmp_path,
                                                                                            tiny_config_data):
    args, _, data = _cli_fidelity(tmp_path, tiny_config_data, "--archs", "2", "--long-epochs", "3")
    assert [(e["proxy"]["epochs"], e["long"]["epochs"]) for e in data["archs"]] == [(1, 3)] * 2
    assert data["settings"]["long_epochs"] == 3 and data["settings"]["factor"] is None
    # measuring the noise later changes the search's rules, not how a candidate trains, and more workers change
    # where it trains: the run still resumes
    again = CliRunner().invoke(app, args + ["--set", "search.noise.std=2.5", "--workers", "2", "--set",
                                            "run.executor=subprocess"])
    assert again.exit_code == 0 and "epochs)" not in again.output, again.output
    # a change to training does orphan it, with a message naming the setting
    other = CliRunner().invoke(app, args + ["--set", "train.lr=0.5"])
    assert other.exit_code != 0 and "config" in other.output
    short = CliRunner().invoke(app, ["fidelity", "-c", str(tmp_path / "c.yaml"), "--archs", "2", "--proxy-epochs",
                                     "3", "--long-epochs", "3", "--out", str(tmp_path / "fid2")])
    assert short.exit_code != 0 and "must exceed the proxy budget" in short.output


def test_the_table_marks_runs_that_did_not_train():
    def entry(index, depth, long_train):
        spec = {"depth": depth, "ops": [1, 0] * (depth // 2) + [0] * (depth % 2)}
        run = {"score": 60.0, "train_score": 30.0, "error": None}
        return {"index": index, "arch": f"D{depth}", "params": 1000 * depth, "macs": 2e6, "spec": spec,
                "proxy": run, "long": {**run, "train_score": long_train, "score": 80.0}}

    data = {"settings": {"proxy_epochs": 3, "long_epochs": 20}, "archs": [entry(0, 12, 40.0), entry(1, 4, 90.0)]}
    rows = table(data)
    assert rows[2].startswith("| D4 ") and rows[3].startswith("| D12 ")  # by depth
    assert "| 90.0 / 80.0 |" in rows[2] and "| **40.0** / 80.0 |" in rows[3] and "| 6 |" in rows[3]
    assert [e["index"] for e in untrained(data)] == [0]
