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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from facenas.config import DepthConfig, MicroConfig, SearchSpec, WidthConfig
from facenas.errors import DataError, ReplayDivergence
from facenas.search.evaluator import EpochCallback, EpochMetrics, Metrics
from facenas.search.executor import InlineExecutor
from facenas.search.journal import SQLiteJournal
from facenas.search.run import run_search
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


def _logged_candidate(raw: dict[str, Any], profile: Profile, where: str) -> LoggedCandidate:
    try:
        arch = Arch(raw["width"], raw["depth"], raw["ops"], raw["kernels"], profile)
        return LoggedCandidate(
            Candidate(raw["phase"], arch, int(raw["epochs"])), float(raw["params_m"]),
            tuple(map(float, raw["train_curve"])), tuple(map(float, raw["val_curve"])),
            float(raw["best_train"]), float(raw["best_val"]),
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
    return AuthorsLog(str(path), args, candidates, dict(data["final"]))


class LogEvaluator:
    """Scores the i-th proposal with the i-th logged candidate, after checking it is the same candidate."""

    def __init__(self, log: AuthorsLog) -> None:
        self.log = log
        self.calls = 0

    def describe(self) -> dict[str, Any]:
        return {"name": "replay", "log": self.log.source}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[EpochCallback] = None) -> Metrics:
        index = self.calls
        proposed = f"E={epochs} {arch.short()}"
        if index >= len(self.log.candidates):
            raise ReplayDivergence(index, proposed, "no further candidate (the logged search ended)")
        logged = self.log.candidates[index]
        want = logged.candidate
        if (arch.width, arch.depth, arch.ops, arch.kernels, epochs) != (
                want.arch.width, want.arch.depth, want.arch.ops, want.arch.kernels, want.epochs):
            raise ReplayDivergence(index, proposed, f"E={want.epochs} {want.arch.short()}")
        ours = round(count_params(arch) / 1e6, 6)
        if abs(ours - logged.params_m) > 5e-7:
            raise ReplayDivergence(index, f"{proposed} with {ours:.6f} M parameters",
                                   f"{logged.params_m:.6f} M parameters")
        self.calls += 1
        metrics = logged.metrics()
        if on_epoch is not None:
            for epoch in metrics.epochs:
                on_epoch(epoch)
        return metrics


@dataclass
class ReplayReport:
    log: AuthorsLog
    candidates_matched: int
    result: Optional[SearchResult] = None
    divergence: Optional[ReplayDivergence] = None
    final_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.divergence is None and not self.final_mismatches
                and self.candidates_matched == len(self.log.candidates))

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
        if self.divergence is not None:
            out["divergence"] = {"index": self.divergence.index, "proposed": self.divergence.proposed,
                                 "logged": self.divergence.logged}
        if self.final_mismatches:
            out["final_mismatches"] = self.final_mismatches
        return out


_FINAL_KEYS = ("macro_depth", "macro_width", "macro_epochs", "micro_width", "ops", "kernels")


def replay(log: AuthorsLog) -> ReplayReport:
    """Run facenas's search against the logged scores and compare every proposal and the final result."""
    evaluator = LogEvaluator(log)
    report = ReplayReport(log, 0)
    with SQLiteJournal(":memory:") as journal:
        try:
            report.result = run_search(spec_from_args(log.args), profile_for(log.dataset), evaluator, journal,
                                       InlineExecutor(), seed=int(log.args.get("seed", 0)))
        except ReplayDivergence as exc:
            report.divergence = exc
        completed = journal.completed()
    report.candidates_matched = evaluator.calls
    # The evaluator cannot see phases; check them against the log here.
    for record, logged in zip(completed, log.candidates):
        if record.candidate.phase != logged.candidate.phase and report.divergence is None:
            report.divergence = ReplayDivergence(record.index, record.candidate.describe(),
                                                 logged.candidate.describe())
            report.candidates_matched = record.index
            break
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
