"""What a new user hit on the command line (issue 7): help screens, the search output, export's errors."""

from __future__ import annotations

import re

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.cli.progress import RichSearchEvents, print_search_summary
from facenas.search.journal import CandidateRecord
from facenas.search.strategy import Candidate, SearchResult
from facenas.space.arch import Arch, Profile

runner = CliRunner()
COMMANDS = [["search"], ["replay"], ["train-final"], ["arch", "show"], ["arch", "random"], ["train"], ["eval"],
            ["export"], ["serve"], ["demo"], ["data", "inspect"], ["data", "build-rec"], ["data", "build-bin"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_no_value_placeholder_on_plain_flags(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flags = re.findall(r"^\s+(?:-\w, )?(--[\w-]+)( <\w+>)?", result.output, re.M)
    assert ("--help", "") in flags  # a flag is listed without a value placeholder


def _record(index, phase, score, width=8):
    arch = Arch.uniform(width, 4, Profile.paper(1, 10))
    return CandidateRecord(index, index, Candidate(phase, arch, 2), 1000, 2000, 0, "finished", 0.0, 1.0, 1.0, score,
                           score, None, None)


def test_the_search_output_explains_its_marks_and_the_reported_width():
    console = Console(record=True, width=200)
    with RichSearchEvents(console) as events:
        for index, score in enumerate((60.0, 70.0, 65.0)):
            record = _record(index, "depth", score)
            events.on_candidate_start(index, record.candidate, 1000, 2000)
            events.on_candidate_end(index, record)
    text = console.export_text()
    assert "* marks the best score of its phase so far" in text and "not this mark" in text
    lines = [line for line in text.splitlines() if line.startswith("[")]
    assert [line.endswith("*") for line in lines] == [True, True, False]

    arch = Arch.uniform(8, 4, Profile.paper(1, 10))
    result = SearchResult(arch, 4, 8, 2, 6, (0,) * 4, (3,) * 4, 70.0, 68.0)
    summary = {"name": "s", "candidates": 3, "failed": 0, "phases": {}, "arch_short": arch.short(), "params": 1,
               "macs": 1, "protocol": "holdout", "seed": 0}
    run = type("Run", (), {"summary": summary, "result": result, "paths": type("P", (), {"best_arch": "b",
                                                                                       "summary": "s"})})
    console = Console(record=True, width=300)
    print_search_summary(console, run)
    text = console.export_text()
    assert "ran at width 6" in text and "reported at the macro width 8" in text


def test_export_of_a_missing_checkpoint_gives_the_real_error_first(tmp_path):
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert "nope.pt does not exist" in result.output and "calibration" not in result.output


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """torch.load(weights_only=False) would call os.system here; facenas loads checkpoints as data only."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"arch": {}, "model": {}, "x": Payload()}, tmp_path / "evil.pt")
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "evil.pt"), "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "not a readable facenas checkpoint" in result.output
    assert not marker.exists()
    from facenas.errors import TrainingError
    from facenas.train.final import FileCheckpoint

    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        FileCheckpoint(tmp_path / "evil.pt", {}, resume=True).load()
    assert not marker.exists()
