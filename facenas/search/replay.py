"""Exact replay of the authors' search runs through facenas's own strategy.

A log of one of the authors' runs (`../shared/data/egnas-replay/*.json`, or the raw `Searchlog.txt` their code
wrote) becomes a table evaluator: the i-th candidate facenas's search proposes is scored with the i-th logged
candidate's curves, after checking that it *is* that candidate (phase, depth, width, ops, kernels, epoch budget,
and parameter count). The search itself is the ordinary `run_search` with an in-memory journal, so a replay tests
exactly the code a real search runs.
"""

from __future__ import annotations

import ast
import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from facenas.config import DepthConfig, MicroConfig, SearchSpec, WidthConfig
from facenas.errors import DataError, ReplayDivergence
from facenas.search.evaluator import EpochCallback, EpochMetrics, Metrics
from facenas.search.executor import CandidateFailed, Completion, Task
from facenas.search.journal import CandidateRecord, SQLiteJournal
from facenas.search.run import SearchEvents, run_search
from facenas.search.strategy import Candidate, SearchResult
from facenas.space.arch import Arch, Profile
from facenas.space.count import count_params

#: (input channels, classes) of the datasets the authors searched on.
DATASET_PROFILES = {
    "CIFAR10": (3, 10), "CIFAR100": (3, 100), "FashionMNIST": (1, 10), "KMNIST": (1, 10), "EMNIST": (1, 47),
    "MNIST": (1, 10),
}


@dataclass(frozen=True)
class LoggedCandidate:
    candidate: Candidate
    params_m: float
    train_curve: tuple[float, ...]
    val_curve: tuple[float, ...]
    best_train: float
    best_val: float
    wall_s: Optional[float] = None  # from the log's time stamps, where it has them

    def metrics(self) -> Metrics:
        epochs = tuple(EpochMetrics(epoch=i, train_acc=t, val_acc=v)
                       for i, (t, v) in enumerate(zip(self.train_curve, self.val_curve)))
        return Metrics(epochs, extra={"replayed": True})


@dataclass(frozen=True)
class AuthorsLog:
    source: str
    args: dict[str, Any]
    candidates: tuple[LoggedCandidate, ...]
    final: dict[str, Any]

    @property
    def dataset(self) -> str:
        return str(self.args.get("dataset", ""))


def parse_namespace(text: str) -> dict[str, Any]:
    """`Namespace(a=1, b='x', ...)` as printed by argparse -> dict (values read as Python literals)."""
    body = text.strip()
    if body.startswith("Namespace(") and body.endswith(")"):
        body = body[len("Namespace("):-1]
    try:
        node = ast.parse(f"f({body})", mode="eval").body
        return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}  # type: ignore[attr-defined]
    except (SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read the run's arguments {text[:80]!r}: {exc}") from exc


def profile_for(dataset: str) -> Profile:
    if dataset not in DATASET_PROFILES:
        raise DataError(f"unknown dataset {dataset!r} in the log; known: {', '.join(DATASET_PROFILES)}")
    in_channels, classes = DATASET_PROFILES[dataset]
    return Profile.paper(in_channels, classes)


def spec_from_args(args: dict[str, Any]) -> SearchSpec:
    """The authors' command line -> facenas's search spec (their code hard-codes 0.05, 2 micro epochs, k=5)."""
    return SearchSpec(
        depth=DepthConfig(min=args["min_depth"], max=args["max_depth"], start_epochs=args["epochs"],
                          epoch_step=args["add_epochs"], accept_gain=args["dp_add_tolerance"], drop_tolerance=0.05,
                          break_count=args["dp_break_tolerance"]),
        width=WidthConfig(max=args["max_width"], min=args["min_width"], step=args["width_resolution"],
                          epoch_step=args["add_epochs_w"], tolerance=0.0, break_count=args["ch_break_tolerance"]),
        micro=MicroConfig(epochs=2, param_slack_m=0.01, kernels=(5,)),
        target_accuracy=args["target_acc"], target_tolerance=args["target_acc_tolerance"],
        score_dtype="float32",
    )


_STAMP_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


def _digits(value: Any) -> Any:
    """Per-layer values as a list, or as a string of digits (the compact transcriptions)."""
    return [int(ch) for ch in value] if isinstance(value, str) else value


def _wall_s(raw: dict[str, Any]) -> Optional[float]:
    """A candidate's wall time: `wall_s`, or `ended` - `started` (the log's time stamps)."""
    if raw.get("wall_s") is not None:
        return float(raw["wall_s"])
    if raw.get("started") and raw.get("ended"):
        seconds = (datetime.strptime(raw["ended"], _STAMP_FORMAT)
                   - datetime.strptime(raw["started"], _STAMP_FORMAT)).total_seconds()
        if seconds < 0:
            raise ValueError(f"it ends ({raw['ended']}) before it starts ({raw['started']})")
        return seconds
    return None


def _logged_candidate(raw: dict[str, Any], profile: Profile, where: str) -> LoggedCandidate:
    """One candidate of a log. Its curves may be absent (a compact transcription): the best values stand in, and
    they are all the strategy reads."""
    try:
        arch = Arch(raw["width"], raw["depth"], _digits(raw["ops"]), _digits(raw["kernels"]), profile)
        best_train, best_val = float(raw["best_train"]), float(raw["best_val"])
        return LoggedCandidate(
            Candidate(raw["phase"], arch, int(raw["epochs"])), float(raw["params_m"]),
            tuple(map(float, raw.get("train_curve") or [best_train])),
            tuple(map(float, raw.get("val_curve") or [best_val])), best_train, best_val, _wall_s(raw),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed candidate ({exc})") from exc


def load_log(path: str | Path) -> AuthorsLog:
    """Read a replay log: the shared JSON format, or the authors' raw `Searchlog.txt`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"replay log {path} does not exist")
    text = path.read_text(errors="replace")
    if not text.lstrip().startswith("{"):
        from facenas.search.egnas_log import parse_search_log

        data = parse_search_log(text, str(path))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("args", "candidates", "final"):
        if key not in data:
            raise DataError(f"{path}: a replay log needs '{key}'")
    args = data["args"] if isinstance(data["args"], dict) else parse_namespace(str(data["args"]))
    profile = profile_for(str(args.get("dataset")))
    candidates = tuple(_logged_candidate(c, profile, f"{path}: candidate {i}")
                       for i, c in enumerate(data["candidates"]))
    final = {k: _digits(v) if k in ("ops", "kernels") else v for k, v in dict(data["final"]).items()}
    return AuthorsLog(str(path), args, candidates, final)


class LogEvaluator:
    """The log as an evaluator, for the tools that want one: `describe` names the log; nothing is trained."""

    def __init__(self, log: AuthorsLog) -> None:
        self.log = log

    def describe(self) -> dict[str, Any]:
        return {"name": "replay", "log": self.log.source}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[EpochCallback] = None) -> Metrics:
        raise ReplayDivergence(-1, f"E={epochs} {arch.short()}", "a replay scores candidates from its log only")


def _logged_at(log: AuthorsLog, index: int, candidate: Candidate) -> Optional[LoggedCandidate]:
    """The logged candidate at `index` if it is `candidate`, else None."""
    if index < len(log.candidates) and log.candidates[index].candidate.same_as(candidate):
        return log.candidates[index]
    return None


def stand_in_seconds(log: AuthorsLog) -> Callable[[Candidate, int], float]:
    """Seconds for a candidate the log did not time or does not hold (work off the logged path).

    Epochs x parameters (M) stands in for time, scaled by the median seconds per epoch x M-parameter of the logged
    candidates where the log has time stamps (in a log without times the figures are then in those units).
    """
    timed = [c.wall_s / (c.candidate.epochs * c.params_m) for c in log.candidates
             if c.wall_s is not None and c.candidate.epochs * c.params_m > 0]
    rate = statistics.median(timed) if timed else 1.0
    return lambda candidate, params: candidate.epochs * params / 1e6 * rate


class SimulatedPool:
    """`workers` slots in simulated time: a task ends its duration after it starts, results arrive in the order of
    their simulated end (ties: start order). Logged candidates take their logged time and get their logged scores;
    anything else is work off the logged path: it takes its stand-in time and fails (the strategy never reads it
    unless the replay diverges, which the replay then reports)."""

    def __init__(self, log: AuthorsLog, workers: int) -> None:
        self.log = log
        self.slots = workers
        self.now = 0.0
        self.seconds = stand_in_seconds(log)
        self._running: dict[int, tuple[float, int, Task, float]] = {}  # id -> (end, order, task, start)
        self._order = 0
        self.spent: dict[int, float] = {}  # task id -> seconds it occupied a worker

    def duration(self, task: Task) -> float:
        logged = _logged_at(self.log, task.index, task.candidate)
        if logged is not None and logged.wall_s is not None:
            return logged.wall_s
        return self.seconds(task.candidate, count_params(task.candidate.arch))

    def submit(self, task: Task) -> None:
        self._order += 1
        self._running[task.id] = (self.now + self.duration(task), self._order, task, self.now)

    def wait(self, on_epoch: Callable[[Task, EpochMetrics], None]) -> list[Completion]:
        end, _, task, start = min(self._running.values())
        del self._running[task.id]
        self.now = end
        self.spent[task.id] = end - start
        logged = _logged_at(self.log, task.index, task.candidate)
        if logged is None:
            return [Completion(task, CandidateFailed("not in the replayed log (work off its path)"))]
        metrics = logged.metrics()
        for epoch in metrics.epochs:
            on_epoch(task, epoch)
        return [Completion(task, metrics)]

    def cancel(self, task_id: int) -> None:
        entry = self._running.pop(task_id, None)
        if entry is not None:
            self.spent[task_id] = self.now - entry[3]

    def close(self) -> None:
        for task_id in list(self._running):
            self.cancel(task_id)


class _FollowTheLog(SearchEvents):
    """Checks each candidate the strategy reaches against the log, in the strategy's order."""

    def __init__(self, log: AuthorsLog) -> None:
        self.log = log
        self.matched = 0

    def on_candidate_end(self, index: int, record: CandidateRecord) -> None:
        proposed = f"E={record.candidate.epochs} {record.candidate.arch.short()}"
        if index >= len(self.log.candidates):
            raise ReplayDivergence(index, proposed, "no further candidate (the logged search ended)")
        logged = self.log.candidates[index]
        if not record.candidate.same_as(logged.candidate):
            want = logged.candidate
            raise ReplayDivergence(index, f"{record.candidate.phase} {proposed}",
                                   f"{want.phase} E={want.epochs} {want.arch.short()}")
        ours = round(record.params / 1e6, 6)
        if abs(ours - logged.params_m) > 5e-7:
            raise ReplayDivergence(index, f"{proposed} with {ours:.6f} M parameters",
                                   f"{logged.params_m:.6f} M parameters")
        self.matched += 1


@dataclass
class ReplayReport:
    log: AuthorsLog
    candidates_matched: int
    result: Optional[SearchResult] = None
    divergence: Optional[ReplayDivergence] = None
    final_mismatches: list[str] = field(default_factory=list)
    workers: int = 1
    serial_seconds: float = 0.0
    parallel_seconds: float = 0.0
    wasted_seconds: float = 0.0
    timed: bool = False  # the log has time stamps (else the seconds are epochs x M parameters)

    @property
    def ok(self) -> bool:
        return (self.divergence is None and not self.final_mismatches
                and self.candidates_matched == len(self.log.candidates))

    @property
    def speedup(self) -> float:
        return self.serial_seconds / self.parallel_seconds if self.parallel_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "log": self.log.source, "dataset": self.log.dataset, "ok": self.ok,
            "candidates_matched": self.candidates_matched, "candidates_total": len(self.log.candidates),
        }
        r = self.result
        out.update({
            "macro_depth": r.macro_depth if r else None, "macro_width": r.macro_width if r else None,
            "macro_epochs": r.macro_epochs if r else None, "micro_width": r.micro_width if r else None,
            "ops": list(r.ops) if r else None, "kernels": list(r.kernels) if r else None,
        })
        out.update({
            "workers": self.workers, "serial_seconds": round(self.serial_seconds, 3),
            "parallel_seconds": round(self.parallel_seconds, 3), "speedup": round(self.speedup, 3),
            "wasted_seconds": round(self.wasted_seconds, 3),
            "time_unit": "seconds" if self.timed else "epochs x M parameters (the log has no times)",
        })
        if self.divergence is not None:
            out["divergence"] = {"index": self.divergence.index, "proposed": self.divergence.proposed,
                                 "logged": self.divergence.logged}
        if self.final_mismatches:
            out["final_mismatches"] = self.final_mismatches
        return out


_FINAL_KEYS = ("macro_depth", "macro_width", "macro_epochs", "micro_width", "ops", "kernels")


def replay(log: AuthorsLog, workers: int = 1) -> ReplayReport:
    """Run facenas's search against the logged scores, on `workers` simulated workers, and compare every candidate
    the strategy reaches and the final result with the log.

    The scheduler is the one a real search runs (speculative for `workers` > 1); results arrive in the order of the
    logged wall times, so the report also says what the workers would have saved: `serial_seconds` (the logged
    candidates one after another), `parallel_seconds` (until the strategy is done) and `wasted_seconds` (time spent
    on work off the path, cancelled work included).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pool = SimulatedPool(log, workers)
    follow = _FollowTheLog(log)
    report = ReplayReport(log, 0, workers=workers, timed=all(c.wall_s is not None for c in log.candidates))
    with SQLiteJournal(":memory:") as journal:
        try:
            report.result = run_search(spec_from_args(log.args), profile_for(log.dataset), LogEvaluator(log), journal,
                                       pool, seed=int(log.args.get("seed", 0)), events=follow)
        except ReplayDivergence as exc:
            report.divergence = exc
        on_path = {r.id for r in journal.completed()}
    report.candidates_matched = follow.matched
    report.serial_seconds = sum(pool.duration(Task(0, i, c.candidate, 0)) for i, c in enumerate(log.candidates))
    report.parallel_seconds = pool.now
    report.wasted_seconds = sum(spent for task_id, spent in pool.spent.items() if task_id not in on_path)
    if report.divergence is None and report.candidates_matched < len(log.candidates):
        nxt = log.candidates[report.candidates_matched].candidate
        report.divergence = ReplayDivergence(report.candidates_matched, "no further candidate (search finished)",
                                             nxt.describe())
    if report.result is not None:
        got = report.result.to_dict()
        for key in _FINAL_KEYS:
            if key in log.final and list_or(got[key]) != list_or(log.final[key]):
                report.final_mismatches.append(f"{key}: facenas {got[key]}, log {log.final[key]}")
    return report


def list_or(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
