"""Random search as a baseline at equal cost: its draws, its limits, its journal, and an egnas run's budget."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Optional

import pytest
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.config import parse_config
from facenas.errors import ConfigError, JournalError, NonFiniteLossError, SearchAborted
from facenas.search.executor import InlineExecutor
from facenas.search.journal import SQLiteJournal
from facenas.search.random_search import (
    BUDGET_META,
    Budget,
    Draws,
    best_record,
    proxy_epochs,
    read_spent,
    resolve_budget,
    run_random_search,
    width_choices,
)
from facenas.search.run import SearchEvents, candidate_seed, fingerprint, fingerprint_data, run_search
from facenas.space.arch import OP_NAMES
from facenas.space.count import count_macs
from facenas.train.metrics import EpochMetrics, Metrics
from tests.search.test_parallel import PROFILE, HashEvaluator, ShuffledPool

runner = CliRunner()

SEARCH = {"depth": {"min": 3, "max": 9, "start_epochs": 2, "epoch_step": 1},
          "width": {"max": 10, "min": 4, "step": 2, "epoch_step": 1},
          "micro": {"epochs": 1, "kernels": [5, 7]}}


def config(budget_from: Any = None, seed: int = 0, **random_keys: Any):
    """A random-strategy config of the test space (a limit is required: max_candidates 1000 unless one is given)."""
    keys = {k: v for k, v in {"budget_from": str(budget_from) if budget_from else None, **random_keys}.items()
            if v is not None}
    if not set(keys) & {"budget_from", "max_epoch_macs", "max_wall_s", "max_candidates"}:
        keys["max_candidates"] = 1000
    return parse_config({"seed": seed, "search": {**SEARCH, "strategy": "random", "random": keys}})


def egnas_spec():
    return parse_config({"search": SEARCH}).search


class TimedEvaluator(HashEvaluator):
    """HashEvaluator whose candidates report a scripted wall time: 1 s per epoch."""

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        m = super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)
        return Metrics(m.epochs, wall_s=float(epochs))


class Ends(SearchEvents):
    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended: list[int] = []

    def on_candidate_start(self, index, candidate, params, macs):
        self.started.append(index)

    def on_candidate_end(self, index, record):
        self.ended.append(index)


def run(cfg, evaluator, journal=None, budget: Optional[Budget] = None, executor=None, events=None):
    """A random run on an in-memory journal (or `journal`): (RandomRun, path as comparable tuples)."""
    own = journal is None
    journal = journal or SQLiteJournal(":memory:")
    try:
        out = run_random_search(cfg.search, PROFILE, evaluator, journal, executor or InlineExecutor(),
                                budget=budget or resolve_budget(cfg), seed=cfg.seed, events=events)
        return out, path_of(journal)
    finally:
        if own:
            journal.close()


def first_draws_cost(n: int, seed: int = 0) -> int:
    """The epochs x MACs of the test space's first `n` draws: a budget that admits exactly them."""
    draws = Draws(config().search, PROFILE, seed)
    return sum(draws.epoch_macs(i) for i in range(n))


def same(a, b) -> bool:
    """Two random runs reached the same result (failed candidates' measured times aside)."""
    def key(r):
        return r.result, r.best_index, r.stopped_by, r.spent.candidates, r.spent.epoch_macs, r.budget
    return key(a) == key(b)


def path_of(journal: SQLiteJournal) -> list[tuple]:
    return [(r.index, r.candidate.key(), r.status, r.score, r.seed, r.macs) for r in journal.completed()]


def egnas_journal(tmp_path, evaluator=None) -> tuple[Any, list]:
    """A real egnas search on a journal file; returns the run directory and its completed records."""
    folder = tmp_path / "egnas"
    folder.mkdir()
    with SQLiteJournal(folder / "journal.sqlite") as journal:
        run_search(egnas_spec(), PROFILE, evaluator or HashEvaluator(3, fail_rate=0.2), journal, InlineExecutor(),
                   seed=0)
        return folder, journal.completed()


# -- draws ----------------------------------------------------------------------------------------------------

def test_draws_cover_the_egnas_space_and_depend_only_on_seed_and_index():
    spec = config().search
    draws = Draws(spec, PROFILE, seed=5)
    candidates = [draws.candidate(i) for i in range(300)]
    assert width_choices(spec) == (4, 6, 8, 10)  # width.min..width.first on the egnas grid
    assert {c.arch.width for c in candidates} == {4, 6, 8, 10}
    assert {c.arch.depth for c in candidates} == set(range(3, 10))
    assert {o for c in candidates for o in c.arch.ops} == set(OP_NAMES)
    assert {k for c in candidates for k in c.arch.kernels} == {3, 5, 7}
    assert all(c.phase == "random" and c.epochs == proxy_epochs(spec, c.arch.depth, c.arch.width)
               for c in candidates)
    # candidate i is the same whatever was drawn before it, and another run seed draws other architectures
    assert Draws(spec, PROFILE, seed=5).candidate(123) == candidates[123]
    other = [Draws(spec, PROFILE, seed=6).candidate(i) for i in range(20)]
    assert [c.arch for c in other] != [c.arch for c in candidates[:20]]
    assert draws.epoch_macs(7) == candidates[7].epochs * count_macs(candidates[7].arch)


def test_the_proxy_budget_is_the_egnas_macro_budget_or_a_fixed_one():
    spec = config().search  # start_epochs 2 at depth 3, +1 per depth step; +1 per width step below 10
    assert proxy_epochs(spec, 3, 10) == 2
    assert proxy_epochs(spec, 5, 10) == 4
    assert proxy_epochs(spec, 5, 6) == 4 + 2
    assert proxy_epochs(spec, 9, 4) == 2 + 6 + 3
    # egnas's own candidates get exactly this budget where the depth phase went no further than they are
    walked = [c for c, _ in _egnas_candidates() if c.phase == "depth"]
    assert all(c.epochs == proxy_epochs(spec, c.arch.depth, c.arch.width) for c in walked)
    assert proxy_epochs(config(epochs=7).search, 9, 4) == 7


def _egnas_candidates():
    with SQLiteJournal(":memory:") as journal:
        run_search(egnas_spec(), PROFILE, HashEvaluator(1, fail_rate=0.0), journal, InlineExecutor(), seed=0)
        return journal.history()


# -- limits ---------------------------------------------------------------------------------------------------

def test_the_budget_is_read_from_an_egnas_journal_and_the_run_stops_before_exceeding_it(tmp_path):
    folder, records = egnas_journal(tmp_path, TimedEvaluator(3, fail_rate=0.2))
    assert any(r.status == "failed" for r in records)  # failures were trained too, and count
    want = sum(r.candidate.epochs * count_macs(r.candidate.arch) for r in records)
    file, spent, _ = read_spent(folder)
    assert file == folder / "journal.sqlite" and spent.epoch_macs == want and spent.candidates == len(records)
    assert read_spent(file)[1] == spent  # the journal file itself works too

    cfg = config(folder)
    budget = resolve_budget(cfg)
    assert budget.epoch_macs == want and budget.wall_s == pytest.approx(spent.wall_s) and budget.wall_s > 0
    out, path = run(cfg, HashEvaluator(4, fail_rate=0.0), budget=budget)
    draws = Draws(cfg.search, PROFILE, cfg.seed)
    assert out.spent.epoch_macs == sum(draws.epoch_macs(i) for i in range(len(path))) <= want
    assert out.spent.epoch_macs + draws.epoch_macs(len(path)) > want  # the next draw would have gone past it
    assert out.stopped_by == "epoch_macs" and len(path) > 3


def test_the_first_draw_that_does_not_fit_ends_the_run_even_if_a_later_one_would(tmp_path):
    draws = Draws(config().search, PROFILE, 0)
    k = next(i for i in range(1, 200) if draws.epoch_macs(i + 1) < draws.epoch_macs(i))
    before = sum(draws.epoch_macs(i) for i in range(k))
    cfg = config(max_epoch_macs=before + draws.epoch_macs(k) - 1)  # k does not fit, k + 1 alone would
    out, path = run(cfg, HashEvaluator(0, fail_rate=0.0))
    assert len(path) == k and out.stopped_by == "epoch_macs" and out.spent.epoch_macs == before


def test_wall_time_and_candidate_limits():
    out, path = run(config(max_wall_s=10.0), TimedEvaluator(0, fail_rate=0.0))
    walls = [Draws(config().search, PROFILE, 0).candidate(i).epochs for i in range(len(path))]  # 1 s per epoch
    assert out.stopped_by == "wall_s" and sum(walls) >= 10.0 > sum(walls[:-1])  # stopped once it reached 10 s
    out, path = run(config(max_candidates=3, max_wall_s=1e9), TimedEvaluator(0, fail_rate=0.0))
    assert len(path) == 3 and out.stopped_by == "candidates"


def test_explicit_limits_replace_those_read_from_the_journal(tmp_path):
    folder, records = egnas_journal(tmp_path, TimedEvaluator(3))
    budget = resolve_budget(config(folder, max_epoch_macs=123, max_candidates=4))
    assert budget.epoch_macs == 123 and budget.candidates == 4
    assert budget.wall_s == pytest.approx(sum(r.wall_s or 0.0 for r in records))
    assert budget.source["epoch_macs"] == sum(r.candidate.epochs * r.macs for r in records)


# -- result ---------------------------------------------------------------------------------------------------

class LateFailures(HashEvaluator):
    """Every third candidate reports a perfect epoch and then fails: it must never win."""

    def __init__(self) -> None:
        super().__init__(9, fail_rate=0.0)

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        if seed % 3 == 0:
            if on_epoch:
                on_epoch(EpochMetrics(0, train_acc=100.0, val_acc=100.0))
            raise NonFiniteLossError("training loss became nan (scripted)")
        return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)


def test_the_best_score_wins_and_failures_never_do():
    events = Ends()
    with SQLiteJournal(":memory:") as journal:
        out, path = run(config(max_candidates=12), LateFailures(), journal, events=events)
        records = journal.completed()
        assert journal.epochs(next(r.id for r in records if r.status == "failed"))[0].val_acc == 100.0
    failed = [r for r in records if r.status == "failed"]
    finished = [r for r in records if r.status == "finished"]
    assert failed and finished and len(records) == 12
    best = max(finished, key=lambda r: r.score)
    assert out.best_index == best.index and out.result.arch == best.candidate.arch
    assert out.result.macro_score == best.score == max(r.score for r in finished)
    assert events.started == list(range(12)) and events.ended == list(range(12))
    assert [r.seed for r in records] == [candidate_seed(0, i) for i in range(12)]


def test_ties_go_to_the_earlier_candidate_and_all_failures_abort():
    with SQLiteJournal(":memory:") as journal:
        run(config(max_candidates=4), HashEvaluator(0, fail_rate=0.0), journal)
        records = journal.completed()
    tied = [dataclasses.replace(r, score=50.0) for r in records]
    assert best_record(tied).index == 0
    with pytest.raises(SearchAborted, match="none of the 3 random candidates finished"):
        run(config(max_candidates=3), HashEvaluator(0, fail_rate=1.0))
    with pytest.raises(SearchAborted, match="admits no candidate"):
        run(config(max_epoch_macs=1), HashEvaluator(0, fail_rate=0.0))


# -- journal, resume, workers ---------------------------------------------------------------------------------

class Interrupts(HashEvaluator):
    """Ctrl-C in the middle of the `at`-th training."""

    def __init__(self, at: int) -> None:
        super().__init__(2, fail_rate=0.1)
        self.calls, self.at = 0, at

    def evaluate(self, arch, epochs, *, seed, on_epoch=None):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().evaluate(arch, epochs, seed=seed, on_epoch=on_epoch)


def test_an_interrupted_run_resumes_to_the_result_of_an_uninterrupted_one(tmp_path):
    cfg = config(max_epoch_macs=first_draws_cost(8))
    want, want_path = run(cfg, HashEvaluator(2, fail_rate=0.1))
    with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, Interrupts(at=4), journal)
        assert [r.status for r in journal.records()][-1] == "running" and len(journal.completed()) == 3
        assert journal.recover() == 1  # what opening the run for --resume does
        got, path = run(cfg, HashEvaluator(2, fail_rate=0.1), journal)
        assert [r.status for r in journal.records()].count("interrupted") == 1

        class Refuses(HashEvaluator):
            def evaluate(self, *a, **k):
                raise AssertionError("a finished run trains nothing on resume")

        again, _ = run(cfg, Refuses(0), journal)
    assert path == want_path and same(got, want) and same(again, want) and len(path) == 8


def test_a_run_seed_makes_it_deterministic_and_a_journal_of_another_seed_is_refused():
    first, path = run(config(max_candidates=6, seed=1), HashEvaluator(0))
    second, again = run(config(max_candidates=6, seed=1), HashEvaluator(0))
    assert path == again and same(first, second)
    _, other = run(config(max_candidates=6, seed=2), HashEvaluator(0))
    assert [p[1] for p in other] != [p[1] for p in path]
    with SQLiteJournal(":memory:") as journal:
        run(config(max_candidates=3, seed=1), HashEvaluator(0), journal)
        with pytest.raises(JournalError, match="does not follow this random search"):
            run(config(max_candidates=3, seed=2), HashEvaluator(0), journal)


@pytest.mark.parametrize("workers, order", [(2, 0), (3, 1), (4, 2)])
def test_several_workers_give_the_serial_path_under_the_deterministic_limits(workers, order):
    cfg = config(max_epoch_macs=first_draws_cost(7), max_candidates=9)
    want, want_path = run(cfg, HashEvaluator(5, fail_rate=0.2))
    pool = Watched(HashEvaluator(5, fail_rate=0.2), workers, random.Random(order))
    events = Ends()
    with SQLiteJournal(":memory:") as journal:
        got, path = run(cfg, pool.evaluator, journal, executor=pool, events=events)
        assert len(journal.records()) == len(pool.submitted) == len(path)  # nothing trained past the limits
    assert path == want_path and len(path) == 7 and same(got, want) and events.ended == list(range(7))
    assert pool.peak == workers  # they did train at once


class Watched(ShuffledPool):
    """A ShuffledPool that remembers how many tasks ran at once."""

    peak = 0

    def submit(self, task):
        super().submit(task)
        self.peak = max(self.peak, len(self.running))


def test_work_past_a_wall_time_stop_is_cancelled_or_kept_off_the_path():
    pool = ShuffledPool(TimedEvaluator(5, fail_rate=0.0), 4, random.Random(3))
    with SQLiteJournal(":memory:") as journal:
        out, path = run(config(max_wall_s=12.0), pool.evaluator, journal, executor=pool)
        records = journal.records()
    on = [r for r in records if r.on_path]
    assert out.stopped_by == "wall_s" and sum(r.wall_s for r in on) >= 12.0 > sum(r.wall_s for r in on[:-1])
    assert len(records) == len(pool.submitted) > len(on)  # it trained ahead, and what was past the stop is off it
    assert all(not r.on_path and r.index >= len(on) for r in records if r not in on)


# -- configuration and errors ---------------------------------------------------------------------------------

def test_egnas_stays_the_default_and_its_fingerprint_ignores_the_random_keys():
    cfg = parse_config({})
    assert cfg.search.strategy == "egnas"
    assert "strategy" not in fingerprint_data(cfg)["search"] and "random" not in fingerprint_data(cfg)["search"]
    assert fingerprint(parse_config({"search": {"strategy": "egnas"}})) == fingerprint(cfg)
    assert fingerprint(config(max_candidates=3)) != fingerprint(config(max_candidates=4))  # a random run's limits


def test_the_random_strategy_needs_a_limit_and_its_keys_need_the_strategy():
    with pytest.raises(ConfigError, match="search.strategy: random needs a budget: search.random.budget_from"):
        parse_config({"search": {"strategy": "random"}})
    with pytest.raises(ConfigError, match="search.random.max_candidates only apply to search.strategy: random"):
        parse_config({"search": {"random": {"max_candidates": 3}}})
    assert parse_config({"search": {"strategy": "random", "random": {"max_wall_s": 60}}}).search.random.max_wall_s == 60


def test_a_bad_budget_journal_is_one_error_naming_the_path(tmp_path):
    (tmp_path / "text.sqlite").write_text("not a database")
    empty = tmp_path / "empty"
    empty.mkdir()
    SQLiteJournal(empty / "journal.sqlite").close()
    for path, words in [(tmp_path / "nowhere", "does not exist"), (tmp_path, "does not exist"),
                        (tmp_path / "text.sqlite", "not a facenas journal"), (empty, "holds no finished candidate")]:
        with pytest.raises(JournalError) as err:
            resolve_budget(config(path))
        target = path / "journal.sqlite" if path.is_dir() else path
        assert str(target) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "nowhere").exists()  # reading a budget creates nothing


# -- end to end: digits, the CLI and the report ---------------------------------------------------------------

def test_a_random_baseline_at_the_cost_of_a_real_egnas_digits_run(tmp_path, tiny_config_data):
    from facenas.search.report import load_run
    from facenas.search.run import search_from_config

    tiny = {**tiny_config_data, "search": {**tiny_config_data["search"], "depth": {
        "min": 3, "max": 5, "start_epochs": 1, "epoch_step": 1}}}
    egnas = search_from_config(parse_config({**tiny, "run": {"executor": "inline", "out": str(tmp_path / "e")}}))
    assert "strategy" not in egnas.summary  # the egnas summary is what it was
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny))

    result = runner.invoke(app, ["search", "-c", str(config_file), "--out", str(tmp_path / "r"), "--strategy",
                                 "random", "--budget-from", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert lines and all(line[6:12] == "random" for line in lines)  # one line per candidate, as egnas's
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    want = sum(r.candidate.epochs * r.macs for r in egnas.records)
    assert summary["strategy"] == "random" and summary["budget"]["epoch_macs"] == want
    assert summary["budget"]["source"]["same_setup"] is True
    assert summary["spent"]["epoch_macs"] <= want and summary["candidates"] == len(lines)
    assert summary["stopped_by"] in ("epoch_macs", "wall_s") and set(summary["phases"]) == {"random"}
    with SQLiteJournal(tmp_path / "r" / "journal.sqlite") as journal:
        records = journal.completed()
        assert journal.meta()[BUDGET_META]["epoch_macs"] == want
    scored = [r for r in records if r.status == "finished"]
    best = max(scored, key=lambda r: r.score)
    assert json.loads((tmp_path / "r" / "best_arch.json").read_text()) == best.candidate.arch.to_dict()
    assert summary["arch"] == best.candidate.arch.to_dict() and summary["best_index"] == best.index

    report = runner.invoke(app, ["report", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    run_report = load_run(tmp_path / "r")
    assert run_report.result is not None and run_report.result.arch == best.candidate.arch
    text = (tmp_path / "r" / "report.md").read_text()
    assert "### random" in text and "stopped by the" in text and f"`{best.candidate.arch.short()}`" in text

    again = runner.invoke(app, ["search", "-c", str(config_file), "--out", str(tmp_path / "r"), "--strategy",
                                "random", "--budget-from", str(tmp_path / "e"), "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["arch"] == summary["arch"]


def test_the_cli_errors_are_one_line(tmp_path, tiny_config_data):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config_data))
    out = tmp_path / "r"
    result = runner.invoke(app, ["search", "-c", str(config_file), "--out", str(out), "--strategy", "random",
                                 "--budget-from", str(tmp_path / "missing")])
    assert result.exit_code == 2 and str(tmp_path / "missing") in result.output and "Traceback" not in result.output
    assert not out.exists()
    result = runner.invoke(app, ["search", "-c", str(config_file), "--out", str(out), "--strategy", "random"])
    assert result.exit_code == 2 and "needs a budget" in result.output and not out.exists()
    result = runner.invoke(app, ["search", "-c", str(config_file), "--out", str(out), "--budget-from", str(tmp_path)])
    assert result.exit_code == 2 and "only apply to search.strategy: random" in result.output
