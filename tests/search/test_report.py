"""`facenas report`: the decisions it shows are the strategy's, and it writes the plot and the markdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pytest
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.config import decision_rules, parse_config, to_yaml
from facenas.errors import NonFiniteLossError
from facenas.search.executor import InlineExecutor
from facenas.search.journal import SQLiteJournal
from facenas.search.report import decisions, load_run, markdown, noise_band, score_description, table_rows, write_report
from facenas.search.run import RunPaths, run_search, search_from_config
from facenas.space.arch import Arch, Profile
from facenas.train.metrics import EpochMetrics, Metrics

PROFILE = Profile.paper(1, 10)
SEARCH = {"depth": {"min": 3, "max": 20, "start_epochs": 3, "epoch_step": 1},
          "width": {"max": 16, "min": 8, "step": 2, "epoch_step": 2}, "micro": {"epochs": 2}}
DEPTH = {3: 90.0, 4: 90.2, 5: 90.25, 6: 90.5, 7: 90.3, 9: 90.44}  # 8 fails
WIDTH = {14: 90.5, 12: 90.4, 10: 90.6, 8: 80.0}


class Scripted:
    """Known scores: depths 4 and 6, widths 14 (a tie) and 10, conv at layer 1 and k5 at layer 0 are accepted."""

    def describe(self) -> dict[str, Any]:
        return {"name": "scripted"}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        if arch.width == 16 and arch.depth == 8:
            raise NonFiniteLossError("training loss became nan")
        if arch.ops == (0,) * arch.depth and arch.kernels == (3,) * arch.depth and epochs != 2:
            score = DEPTH.get(arch.depth, 80.0) if arch.width == 16 else WIDTH[arch.width]
        elif arch.kernels == (3,) * arch.depth:
            score = 50.0 + (arch.ops[1] == 1)
        else:
            score = 52.0 + 0.5 * (arch.kernels[0] == 5)
        return Metrics((EpochMetrics(0, train_acc=60.0, val_acc=score),))


def scripted_run(root: Path, noise: Optional[dict] = None, keep: Optional[int] = None):
    """A run directory (config.yaml and journal) of the scripted search, cut after `keep` candidates."""
    config = parse_config({"name": "scripted", "search": {**SEARCH, **({"noise": noise} if noise else {})},
                           "run": {"out": str(root)}})
    paths = RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(to_yaml(config))
    with SQLiteJournal(":memory:") as full:
        run_search(config.search, PROFILE, Scripted(), full, InlineExecutor(), seed=0)
        records = full.completed()[:keep]
    with SQLiteJournal(paths.journal) as journal:
        journal.set_meta({"seed": 0, "name": "scripted"})
        for r in records:
            rid = journal.begin(r.index, r.candidate, params=r.params, macs=r.macs, seed=r.seed)
            if r.status == "failed":
                journal.fail(rid, r.error or "", r.wall_s)
            else:
                journal.finish(rid, r.metrics)
    return config


def test_accepted_candidates_are_the_strategys_decisions(tmp_path):
    config = scripted_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    accepted = [(d.phase, d.depth if d.phase == "depth" else d.width) for d in run.decisions if d.accepted]
    assert [a for a in accepted if a[0] in ("depth", "width")] == [("depth", 4), ("depth", 6), ("width", 14),
                                                                   ("width", 10)]
    micro = [d for d in run.decisions if d.accepted and d.phase in ("ops", "kernels")]
    assert [(d.phase, d.words.split(" (")[0]) for d in micro] == [("ops", "ops: layer 1 conv"),
                                                                 ("kernels", "kernels: layer 0 k5")]
    assert [d.verdict for d in run.decisions if d.phase == "depth"] == [
        "baseline", "accepted", "rejected", "accepted", "rejected", "failed", "rejected"]
    # the result the strategy returned agrees with the last accepted candidates
    r = run.result
    assert r is not None and (r.macro_depth, r.macro_width) == (6, 10)
    assert r.ops[1] == 1 and r.kernels[0] == 5 and sum(r.ops) == 1 and sum(k == 5 for k in r.kernels) == 1
    words = {d.index: d.words for d in run.decisions}
    assert words[1] == "depth 4 accepted: 90.20 >= 90.00 + 0.10"
    assert words[2] == "depth 5 not accepted, tolerated: 90.25 < 90.20 + 0.10, >= 90.20 - 0.05"
    assert words[4] == "depth 7 rejected, a clear drop: 90.30 < 90.50 - 0.05"
    assert words[5] == "depth 8 failed: counted as a clear drop"
    assert [d.incumbent for d in run.decisions if d.phase == "width"] == pytest.approx([90.5, 90.5, 90.5, 90.6])
    assert all(d.band is None for d in run.decisions) and noise_band(run.decisions) == []
    rows = table_rows(run.decisions)
    assert rows[5][9:] == ("failed", "no") and rows[0][10] == "baseline" and rows[1][10] == "yes"
    text = markdown(run)
    assert "search finished" in text and "## Noise" not in text and "| 3 | depth | 6 | 16 |" in text
    assert config.search.depth.accept_gain == 0.1


def test_the_noise_band_is_the_rule_thresholds_around_the_incumbent(tmp_path):
    config = scripted_run(tmp_path / "run", noise={"std": 0.5})
    rules = decision_rules(config.search)
    se = 0.5 * math.sqrt(2)
    assert (rules.depth_gain, rules.depth_drop, rules.width_tolerance) == pytest.approx((2 * se, se, se))
    png, md = write_report(tmp_path / "run", tmp_path / "out")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    run = load_run(tmp_path / "run")
    # 2 standard errors (1.41) are needed now: no deeper net is accepted, all lie inside the band
    depth = [d for d in run.decisions if d.phase == "depth"]
    assert [d.verdict for d in depth[1:4]] == ["rejected"] * 3
    assert depth[1].band == pytest.approx((90.0 - se, 90.0 + 2 * se)) and depth[1].within_noise
    assert depth[1].z == pytest.approx(0.2 / se, rel=1e-5)
    for d in run.decisions:
        if d.verdict == "baseline" or d.incumbent is None:
            assert d.band is None
            continue
        below, above = {"depth": (se, 2 * se), "width": (se, se)}.get(d.phase, (se, se))
        assert d.band == pytest.approx((d.incumbent - below, d.incumbent + above))
    assert noise_band(run.decisions) == [(d.index, *d.band) for d in run.decisions if d.band is not None]
    text = md.read_text()
    assert "## Noise" in text and "inside the noise band" in text and "(z = +0.28)" in text


def test_an_unfinished_run_is_reported_as_such(tmp_path):
    scripted_run(tmp_path / "run", keep=5)
    run = load_run(tmp_path / "run")
    assert run.result is None and run.next_candidate is not None and len(run.decisions) == 5
    assert run.next_candidate.arch.depth == 8
    assert "search unfinished (next: depth E=8 D8" in markdown(run)


def test_report_of_a_tiny_digits_search(tmp_path, tiny_config_data):
    data = {**tiny_config_data, "run": {"executor": "inline", "out": str(tmp_path / "run")}}
    data["search"] = {**data["search"], "depth": {"min": 3, "max": 4, "start_epochs": 1, "epoch_step": 0},
                      "width": {"max": 8, "min": 6, "step": 2, "epoch_step": 0},
                      "micro": {"epochs": 1, "ops": False, "kernel_pass": False}}
    search = search_from_config(parse_config(data))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    png, md = tmp_path / "rep" / "trajectory.png", tmp_path / "rep" / "report.md"
    assert str(png) in result.output and str(md) in result.output and png.stat().st_size > 0
    run = load_run(tmp_path / "run")
    assert run.result == search.result
    depth = [d for d in run.decisions if d.phase == "depth"]
    best = [d.depth for d in depth if d.verdict in ("baseline", "accepted")][-1]
    assert best == search.result.macro_depth
    text = md.read_text()
    assert f"`{search.result.arch.short()}`" in text and "seed: 0" in text and "digits" in text
    assert len([line for line in text.splitlines() if line.startswith("| ") and "finished" in line]) == len(
        search.records)


def test_report_refuses_a_directory_without_a_journal(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no search journal" in result.output
    assert not (tmp_path / "journal.sqlite").exists()


def test_decisions_of_no_records_are_empty_and_a_face_score_is_described(tiny_face_config_data):
    assert decisions(parse_config({}).search, []) == []
    assert score_description(parse_config(tiny_face_config_data)) == (
        "accuracy on balanced pairs of 10 held-out identities, the best epoch")


def test_a_constrained_run_reports_skipped_candidates_and_score_against_latency(tmp_path):
    """Latency beside each candidate, the skipped ones with their reason, the front, and the plot."""
    from facenas.search.constraints import LatencyBook
    from facenas.search.report import latency_front
    from facenas.space.count import count_macs
    from tests.search.test_constraints import MacsClock

    budget = count_macs(Arch.uniform(16, 7, PROFILE)) / 1e6 * 0.99  # D7 and deeper are over
    root = tmp_path / "run"
    config = parse_config({"name": "latency", "search": {**SEARCH, "constraints": {"max_latency_ms": budget}},
                           "run": {"out": str(root)}})
    root.mkdir()
    RunPaths(root).config.write_text(to_yaml(config))
    with SQLiteJournal(RunPaths(root).journal) as journal:
        run_search(config.search, PROFILE, Scripted(), journal, InlineExecutor(), seed=0,
                   latency=LatencyBook(journal, config.search.target, measure=MacsClock()))
    run = load_run(root)
    skipped = [d for d in run.decisions if d.verdict == "skipped"]
    assert run.result is not None and [d.depth for d in skipped if d.phase == "depth"] == [7]
    assert all("over budget: latency" in d.words and "max_latency_ms" in d.words for d in skipped)
    trained = [d for d in run.decisions if d.verdict != "skipped"]
    assert all(d.latency_ms is not None and d.latency_ms <= budget for d in trained)
    front = latency_front(run.decisions)
    assert front and all(a.latency_ms <= b.latency_ms and a.score < b.score for a, b in zip(front, front[1:]))
    assert all(not (d.latency_ms < f.latency_ms and d.score > f.score) for d in trained for f in front)
    png, md = write_report(root)
    text = md.read_text()
    assert "## Score against latency" in text and f"max_latency_ms {budget:g}" in text
    assert (root / "latency.png").stat().st_size > 10_000 and "skipped, over budget" in text
