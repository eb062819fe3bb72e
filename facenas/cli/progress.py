"""Progress bars and summaries for the CLI (rich). Core code reports through `SearchEvents` only."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from facenas.search.journal import CandidateRecord
from facenas.search.run import SearchEvents, SearchRun
from facenas.search.strategy import Candidate, SearchResult
from facenas.train.metrics import EpochMetrics


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _phase_total(candidate: Candidate) -> Optional[int]:
    """Candidates a phase will train, where that is known in advance (the micro passes)."""
    if candidate.phase == "ops":
        return candidate.arch.depth + 1
    return None


class _Bars:
    """Progress bars shown while the `with` block runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = _bar(console)

    def __enter__(self) -> Any:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


LEGEND = ("one line per candidate: index, phase, depth D, width C, epochs E, parameters, MACs, latency if measured, "
          "validation score, train accuracy, time; * marks the best score of its phase so far (the phase's "
          "acceptance rules, not this mark, decide which candidate is kept)")


class RichSearchEvents(_Bars, SearchEvents):
    """A bar for the phase, a bar per candidate in training, and one summary line per candidate on the path.

    With several workers, candidates ahead of the strategy train at the same time, each with its own bar; the
    summary lines still come in the strategy's order.
    """

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.phase: Optional[str] = None
        self.phase_task: Any = None
        self.cand_tasks: dict[tuple, Any] = {}
        self.best: dict[str, float] = {}

    def on_resume(self, completed: int, interrupted: int) -> None:
        self.console.print(f"resuming: {completed} candidates already done"
                           + (f", {interrupted} interrupted (restarted from scratch)" if interrupted else ""))

    def _enter_phase(self, candidate: Candidate) -> None:
        if self.phase is None:
            self.console.print(LEGEND, highlight=False)
        if candidate.phase != self.phase:
            if self.phase_task is not None:
                self.progress.remove_task(self.phase_task)
            self.phase = candidate.phase
            self.phase_task = self.progress.add_task(f"{candidate.phase} phase", total=_phase_total(candidate))

    def on_candidate_start(self, index: int, candidate: Candidate, params: int, macs: int) -> None:
        if self.phase is None:
            self._enter_phase(candidate)
        self.cand_tasks[(index, candidate.key())] = self.progress.add_task(
            f"  [{index:3d}] {candidate.arch.short()[:60]} {params / 1e6:.3f}M", total=candidate.epochs)

    def on_epoch(self, index: int, candidate: Candidate, epoch: EpochMetrics) -> None:
        task = self.cand_tasks.get((index, candidate.key()))
        if task is not None:
            self.progress.update(task, completed=epoch.epoch + 1,
                                 description=f"  [{index:3d}] {candidate.arch.short()[:60]} val {epoch.val_acc:.2f}")

    def on_candidate_stop(self, index: int, candidate: Candidate, status: str) -> None:
        task = self.cand_tasks.pop((index, candidate.key()), None)
        if task is not None:
            self.progress.remove_task(task)

    def on_candidate_end(self, index: int, record: CandidateRecord) -> None:
        c = record.candidate
        self._enter_phase(c)
        self.progress.advance(self.phase_task)
        if record.status == "failed":
            first = (record.error or "").splitlines()[0] if record.error else "failed"
            self.console.print(f"[{index:3d}] {c.phase:7s} {c.arch.short()}  E={c.epochs}  [red]FAILED[/]: {first}",
                               highlight=False)
            return
        size = f"{record.params / 1e6:.3f}M {record.macs / 1e6:.1f}MMAC"
        if record.latency_ms is not None:
            size += f" {record.latency_ms:.2f}ms"
        if record.status == "skipped":
            self.console.print(f"[{index:3d}] {c.phase:7s} D{c.arch.depth} C{c.arch.width} E={c.epochs:<3d} {size}  "
                               f"[yellow]skipped[/], over budget: {record.error}", highlight=False)
            return
        score = record.score or 0.0
        mark = ""
        if score > self.best.get(c.phase, float("-inf")):
            self.best[c.phase] = score
            mark = " *"
        self.console.print(
            f"[{index:3d}] {c.phase:7s} D{c.arch.depth} C{c.arch.width} E={c.epochs:<3d} "
            f"{size}  val {score:6.2f}  train {record.train_score or 0:6.2f}  {record.wall_s or 0:6.1f}s{mark}",
            highlight=False)

    def on_done(self, result: SearchResult, records: list[CandidateRecord]) -> None:
        for task in [*self.cand_tasks.values(), self.phase_task]:
            if task is not None:
                self.progress.remove_task(task)
        self.cand_tasks.clear()
        self.phase_task = None


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def print_search_summary(console: Console, run: SearchRun) -> None:
    s = run.summary
    table = Table(title=f"search {s['name']}: {s['candidates']} candidates ({s['failed']} failed)")
    for col in ("phase", "candidates", "failed", "epochs", "time"):
        table.add_column(col, justify="right")
    for phase, p in s["phases"].items():
        table.add_row(phase, str(p["candidates"]), str(p["failed"]), str(p["epochs"]), f"{p['wall_s']:.0f}s")
    console.print(table)
    r = run.result
    console.print(f"found: [bold]{s['arch_short']}[/]", highlight=False)
    if s.get("strategy") == "random":
        _print_random_summary(console, run)
        return
    console.print(f"  macro depth {r.macro_depth}, width {r.macro_width} (epochs {r.macro_epochs}, score "
                  f"{_pct(r.macro_score)}); micro width {r.micro_width} (score {_pct(r.micro_score)})",
                  highlight=False)
    if r.micro_width != r.macro_width:
        console.print(f"  note: the operation and kernel candidates ran at width {r.micro_width} (parameter-matched "
                      f"to the macro net); the result is reported at the macro width {r.macro_width} with their ops "
                      "and kernels, as the authors did, so no candidate scored exactly this architecture",
                      highlight=False)
    console.print(f"  parameters {s['params']:,} ({s['params'] / 1e6:.3f} M), MACs {s['macs']:,}; "
                  f"protocol {s['protocol']}; seed {s['seed']}", highlight=False)
    console.print(f"  wrote {run.paths.best_arch} and {run.paths.summary}", highlight=False)


def _print_random_summary(console: Console, run: SearchRun) -> None:
    """The random baseline's result, and the budget it was held to next to what it spent."""
    s, r = run.summary, run.result
    budget, spent = s["budget"], s["spent"]
    console.print(f"  the best of {spent['candidates']} random candidates (#{s['best_index']}, {r.macro_epochs} "
                  f"epoch{'s' * (r.macro_epochs != 1)}, score {_pct(r.macro_score)})", highlight=False)
    for key, unit, fmt in (("epoch_macs", "epochs x MACs", ",.0f"), ("wall_s", "s of candidate time", ",.1f")):
        if budget.get(key) is not None:
            console.print(f"  spent {spent[key]:{fmt}} of {budget[key]:{fmt}} {unit} "
                          f"({100 * spent[key] / budget[key]:.0f} %)", highlight=False)
    source = budget.get("source")
    console.print(f"  stopped by the {s['stopped_by']} limit"
                  + (f"; budget read from {source['journal']}" if source else ""), highlight=False)
    console.print(f"  parameters {s['params']:,} ({s['params'] / 1e6:.3f} M), MACs {s['macs']:,}; "
                  f"protocol {s['protocol']}; seed {s['seed']}", highlight=False)
    console.print(f"  wrote {run.paths.best_arch} and {run.paths.summary}", highlight=False)


class RichEpochs(_Bars):
    """One bar over the epochs of a training run."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        super().__init__(console)
        self.label = label
        self.task = self.progress.add_task(label[:70], total=total)

    def update(self, epoch: EpochMetrics) -> None:
        self.progress.update(self.task, completed=epoch.epoch + 1,
                             description=f"{self.label[:50]} val {epoch.val_acc:.2f}")


class RichCounter(_Bars):
    """A bar that follows (label, done, total) updates; total 0 means unknown."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.tasks: dict[str, Any] = {}

    def update(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total or None)
        self.progress.update(self.tasks[label], completed=done, total=total or None)
