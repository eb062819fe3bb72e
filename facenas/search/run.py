"""The search loop, and the run directory around it: the only place with side effects.

`run_search` asks the strategy for the next candidate, writes it to the journal, has the executor train it,
writes the result, and repeats. All state lives in the journal, so resuming is the same call on the same
journal. `search_from_config` wraps that with a run directory (resolved config, journal, `best_arch.json`,
summary).
Progress is reported through `SearchEvents`, which the CLI implements with progress bars; this code only logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from facenas import __version__
from facenas.config import EXECUTION_KEYS, Config, SearchSpec, resolved_dict, to_yaml
from facenas.errors import JournalError, SearchAborted
from facenas.search.constraints import LatencyBook, limits_for
from facenas.search.evaluator import EpochMetrics, Evaluator
from facenas.search.executor import CandidateFailed, Completion, Executor, Pool, Task, as_pool
from facenas.search.journal import HISTORY, CandidateRecord, SQLiteJournal
from facenas.search.speculate import TaskKey, plan, task_key
from facenas.search.strategy import Candidate, Done, HistoryMismatch, Outcome, OverBudget, SearchResult, walk
from facenas.space.arch import Profile
from facenas.space.count import count_macs, count_params

if TYPE_CHECKING:
    from facenas.search.random_search import Budget

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite"
BEST_ARCH_FILE = "best_arch.json"
SUMMARY_FILE = "summary.json"


class SearchEvents:
    """Progress hooks; every method is a no-op so a subclass overrides only what it shows.

    With several workers, candidates start and stop in any order, some ahead of the strategy (speculatively);
    `on_candidate_end` still comes once per candidate on the path, in the strategy's order.
    """

    def on_resume(self, completed: int, interrupted: int) -> None: ...

    def on_candidate_start(self, index: int, candidate: Candidate, params: int, macs: int) -> None: ...

    def on_epoch(self, index: int, candidate: Candidate, epoch: EpochMetrics) -> None: ...

    def on_candidate_stop(self, index: int, candidate: Candidate, status: str) -> None:
        """A training ended: finished, failed or cancelled (no longer needed)."""

    def on_candidate_end(self, index: int, record: CandidateRecord) -> None: ...

    def on_done(self, result: SearchResult, records: list[CandidateRecord]) -> None: ...


def candidate_seed(run_seed: int, index: int) -> int:
    """A per-candidate seed that depends only on the run seed and the candidate's place in the search.

    So a resumed run trains candidate i exactly as an uninterrupted run would, and a candidate trained ahead of the
    strategy (speculatively) exactly as it would be trained when the strategy reaches it.
    """
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


# -- the steps both strategies' loops take (egnas here, random in random_search.py) -------------------------------

def latency_book(spec: SearchSpec, journal: SQLiteJournal) -> Optional[LatencyBook]:
    """Where a search measures and keeps latencies: when a latency budget or `search.target.measure` asks."""
    if spec.constraints.max_latency_ms is None and not spec.target.measure:
        return None
    return LatencyBook(journal, spec.target)


def launch(journal: SQLiteJournal, events: SearchEvents, pool: Pool, index: int, candidate: Candidate,
           run_seed: int, latency: Optional[LatencyBook] = None) -> Task:
    """Begin candidate `index` in the journal (off the path until the strategy reaches it) and submit it; where the
    search measures latencies, its latency is measured (or read from the journal) first."""
    latency_ms = None if latency is None else latency(candidate.arch)
    params, macs = count_params(candidate.arch), count_macs(candidate.arch)
    cseed = candidate_seed(run_seed, index)
    task = Task(journal.begin(index, candidate, params=params, macs=macs, seed=cseed, on_path=False,
                              latency_ms=latency_ms), index, candidate, cseed)
    events.on_candidate_start(index, candidate, params, macs)
    pool.submit(task)
    return task


def cancel(journal: SQLiteJournal, events: SearchEvents, pool: Pool, task: Task) -> None:
    """Stop a training that is no longer needed; the journal keeps it as cancelled."""
    pool.cancel(task.id)
    journal.cancel(task.id)
    events.on_candidate_stop(task.index, task.candidate, "cancelled")


def settle(journal: SQLiteJournal, events: SearchEvents, done: Completion) -> CandidateRecord:
    """Journal a training that ended (finished or failed) and return its record. A fatal error (missing data, a bad
    config: no candidate can get past it, and this one never trained) abandons the record and is raised."""
    task, result = done.task, done.result
    if isinstance(result, CandidateFailed):
        log.debug("candidate %d failed: %s", task.index, result.error.splitlines()[0])
        journal.fail(task.id, result.error, result.wall_s)
        status = "failed"
    elif isinstance(result, BaseException):
        journal.abandon(task.id)
        raise result
    else:
        journal.finish(task.id, result)
        status = "finished"
    events.on_candidate_stop(task.index, task.candidate, status)
    return journal.record(task.id)


def check_failures(record: CandidateRecord, failures_in_a_row: int, limit: int) -> int:
    """The count of failures in a row on the path once `record` joins it; `limit` (> 0) of them stop the search
    (`SearchAborted`): a broken setup (a missing library, a full disk) rather than bad candidates."""
    if record.status != "failed":
        return 0
    failures_in_a_row += 1
    error = (record.error or "failed").splitlines()[0]
    log.warning("candidate %d failed: %s", record.index, error)
    if limit and failures_in_a_row >= limit:
        raise SearchAborted(f"{failures_in_a_row} candidates in a row failed (the last: {error}); this looks like a "
                            "broken setup rather than bad candidates. "
                            "Fix the cause, then run the same command with --resume --retry-failed")
    return failures_in_a_row


def epoch_logger(journal: SQLiteJournal, events: SearchEvents) -> Callable[[Task, EpochMetrics], None]:
    """What a pool calls after each epoch of a task: the journal keeps the epoch, the events show it."""

    def on_epoch(task: Task, epoch: EpochMetrics) -> None:
        journal.log_epoch(task.id, epoch)
        events.on_epoch(task.index, task.candidate, epoch)

    return on_epoch


def skip(journal: SQLiteJournal, events: SearchEvents, index: int, candidate: Candidate, reason: str,
         latency: Optional[LatencyBook] = None) -> CandidateRecord:
    """Journal a candidate over budget as skipped, on the path; nothing trains (nor is measured for it)."""
    rid = journal.skip(index, candidate, params=count_params(candidate.arch), macs=count_macs(candidate.arch),
                       reason=reason, latency_ms=None if latency is None else latency.known(candidate.arch))
    record = journal.record(rid)
    events.on_candidate_end(index, record)
    return record


def run_search(spec: SearchSpec, profile: Profile, evaluator: Evaluator, journal: SQLiteJournal,
               executor: Union[Executor, Pool], *, seed: int, events: Optional[SearchEvents] = None,
               max_consecutive_failures: int = 0, latency: Optional[LatencyBook] = None) -> SearchResult:
    """Run (or continue) a search until the strategy is done; returns its result.

    `executor` trains one candidate at a time, or is a `Pool` whose free slots the speculative scheduler
    (`facenas.search.speculate`) fills with the candidates most likely to be needed. Either way the strategy sees
    results in its own order, so the path and the result do not depend on the number of workers.

    With `max_consecutive_failures` > 0 the search stops (`SearchAborted`) after that many failures in a row on the
    path: that is a broken setup (a missing library, a full disk) rather than bad candidates, and training on would
    only fill the journal with failures.

    With `search.constraints`, candidates over budget are journaled as skipped; latencies come from `latency`
    (default: measured on `search.target` and kept in the journal).
    """
    events = events or SearchEvents()
    latency = latency or latency_book(spec, journal)
    limits = limits_for(spec.constraints, latency)
    pool = as_pool(evaluator, executor)
    history = journal.history()
    known = {task_key(r.index, r.candidate): r for r in journal.off_path()}
    running: dict[TaskKey, Task] = {}
    failures_in_a_row = 0
    on_epoch = epoch_logger(journal, events)

    try:
        while True:
            try:
                head = walk(spec, profile, history, limits).step
            except HistoryMismatch as exc:
                raise JournalError(
                    f"{journal.path}: the journal does not follow this search configuration ({exc}); resume with the "
                    "config the run started with, or start a new run directory"
                ) from None
            if not isinstance(head, Done) and isinstance(head.judge, OverBudget):
                skip(journal, events, head.index, head.candidate, head.judge.reason, latency)
                history.append((head.candidate, Outcome.skip()))
                continue
            if not isinstance(head, Done) and task_key(head.index, head.candidate) in known:
                # the strategy has reached a result it has: adopt it onto the path and look again
                record = known.pop(task_key(head.index, head.candidate))
                journal.adopt(record.id)
                history.append((record.candidate, record.outcome))
                events.on_candidate_end(head.index, journal.record(record.id))
                failures_in_a_row = check_failures(record, failures_in_a_row, max_consecutive_failures)
                continue
            decided = plan(spec, profile, history, {k: r.outcome for k, r in known.items()}, running, pool.slots,
                           limits=limits)
            for key in decided.cancel:
                cancel(journal, events, pool, running.pop(key))
            if isinstance(head, Done):
                events.on_done(head.result, journal.completed())
                return head.result
            for index, candidate in decided.launch:
                running[task_key(index, candidate)] = launch(journal, events, pool, index, candidate, seed, latency)
            for done in pool.wait(on_epoch):
                running.pop(task_key(done.task.index, done.task.candidate), None)
                known[task_key(done.task.index, done.task.candidate)] = settle(journal, events, done)
    finally:
        # stopped by an error or Ctrl-C: the work in flight stops, and its records stay `running` so that a resume
        # reports them interrupted and trains them again as it would a serial run's
        pool.close()


# -- run directories ---------------------------------------------------------------------------------------------

def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def fingerprint_data(config: Config) -> dict[str, Any]:
    """What `fingerprint` hashes: everything that changes which candidates a run proposes or how they score.

    Where to write (`run`), and how many threads or which device, do not enter: a run may resume elsewhere.
    Keys left unset (None) do not enter either, so that a key a later version adds (unset by default) does not
    orphan the runs started before it.
    """
    data = _without_none(config.model_dump(mode="json"))
    data.pop("name", None)
    data.pop("run", None)
    data.pop("final", None)
    for key in EXECUTION_KEYS:
        data["train"].pop(key, None)
        data["faces"]["train"].pop(key, None)
    data["data"].pop("root", None)
    data["data"].pop("download", None)
    if data["search"].get("strategy") == "egnas":
        # keys added with the random strategy, without effect on an egnas run: its hash stays what it was before them
        data["search"].pop("strategy")
        data["search"].pop("random", None)
    # deployment keys (issue 20): without constraints they change nothing a run proposes, and runs started before
    # them keep their hash; the target enters only when a latency budget makes its measurements decide
    constraints = data["search"].pop("constraints", {})
    target = data["search"].pop("target", {})
    if constraints:
        data["search"]["constraints"] = constraints
    if "max_latency_ms" in constraints:
        data["search"]["target"] = {k: v for k, v in target.items() if k != "measure"}
    return data


def fingerprint(config: Config) -> str:
    """A short hash of `fingerprint_data`: a run resumes only under the configuration it started with."""
    return hashlib.sha256(json.dumps(fingerprint_data(config), sort_keys=True).encode()).hexdigest()[:16]


def training_fingerprint(config: Config) -> str:
    """`fingerprint` of what one training depends on, leaving out the search section (its rules and ranges): a
    fidelity or noise measurement keeps its trainings when, say, `search.noise.std` is set from its result."""
    return fingerprint(config.model_copy(update={"search": SearchSpec()}))


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def best_arch(self) -> Path:
        return self.root / BEST_ARCH_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE


def open_journal(config: Config, resume: bool, evaluator_info: dict[str, Any]) -> tuple[SQLiteJournal, int, int]:
    """Create or reopen the run's journal; returns it with the counts of completed and interrupted candidates."""
    paths = RunPaths(config.out_dir())
    exists = paths.journal.exists()
    paths.root.mkdir(parents=True, exist_ok=True)
    journal = SQLiteJournal(paths.journal)
    if exists and not journal.count(("finished", "failed")):
        # a run that never finished a candidate (stopped by missing data, say) holds nothing worth keeping
        log.info("%s never finished a candidate; starting it afresh", paths.root)
        journal.reset()
    elif exists and not resume:
        journal.close()
        raise JournalError(
            f"{paths.root} already holds a search; pass --resume to continue it, or choose another --out"
        )
    if resume and not exists:
        log.info("nothing to resume in %s; starting a new search", paths.root)
    meta = journal.meta()
    if meta:
        if meta.get("fingerprint") != fingerprint(config):
            journal.close()
            raise JournalError(
                f"{paths.journal} was started with another configuration (see {paths.config}); resume with that "
                "config, or choose another --out for this one"
            )
    else:
        journal.set_meta({
            "fingerprint": fingerprint(config), "seed": config.seed, "name": config.name,
            "config": resolved_dict(config), "facenas_version": __version__,
            "created_at": time.time(), "python": platform.python_version(), "evaluator": evaluator_info,
        })
        paths.config.write_text(to_yaml(config))
    interrupted = journal.recover()
    if resume and config.run.retry_failed:
        discarded = journal.retry_failed()
        if discarded:
            log.info("discarded %d candidates from the first failed one on; they will be trained again", discarded)
    return journal, len(journal.completed()), interrupted


def score_description(config: Config) -> str:
    """What a candidate's score is, in words, for the report's reader."""
    if config.task == "faces":
        s = config.faces.score
        reduce = {"max": "the best epoch", "last": "the last epoch",
                  "mean_last": f"the mean of the last {s.last_k} epochs"}[s.reduce]
        metric = f"TAR at FAR {s.far:g}" if s.metric == "tar" else s.metric
        return (f"{metric} on {s.pairs} pairs of {config.faces.data.heldout_identities} held-out identities, "
                f"{reduce}")
    split = "the test split (protocol paper)" if config.data.protocol == "paper" else "a held-out validation split"
    return f"accuracy (%) on {split}, the best epoch"


def write_outputs(config: Config, result: SearchResult, records: list[CandidateRecord],
                  evaluator_info: dict[str, Any], elapsed_s: float,
                  extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """`best_arch.json` (the architecture, loadable by `facenas train-final`) and `summary.json`."""
    paths = RunPaths(config.out_dir())
    arch = result.arch
    paths.best_arch.write_text(arch.to_json(indent=2) + "\n")
    phases: dict[str, dict[str, float]] = {}
    for r in records:
        p = phases.setdefault(r.candidate.phase, {"candidates": 0, "failed": 0, "skipped": 0, "wall_s": 0.0,
                                                  "epochs": 0})
        if r.status == "skipped":  # over budget: decided, never trained
            p["skipped"] += 1
            continue
        p["candidates"] += 1
        p["failed"] += r.status == "failed"
        p["wall_s"] += r.wall_s or 0.0
        p["epochs"] += r.candidate.epochs
    if config.task == "faces":
        dataset, protocol = config.faces.data.source, score_description(config)
    else:
        dataset, protocol = config.data.dataset, config.data.protocol
    summary = {
        "name": config.name, "task": config.task, "seed": config.seed, "protocol": protocol, "dataset": dataset,
        "evaluator": evaluator_info, "result": result.to_dict(), "arch": arch.to_dict(), "arch_short": arch.short(),
        "params": count_params(arch), "macs": count_macs(arch),
        "candidates": sum(r.status != "skipped" for r in records), "failed": sum(r.status == "failed" for r in records),
        "skipped": sum(r.status == "skipped" for r in records), "phases": phases,
        "candidate_wall_s": sum(r.wall_s or 0.0 for r in records), "session_wall_s": elapsed_s,
        "facenas_version": __version__, **(extra or {}),
    }
    paths.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass(frozen=True)
class SearchRun:
    result: SearchResult
    summary: dict[str, Any]
    records: list[CandidateRecord]
    paths: RunPaths


def search_from_config(config: Config, *, events: Optional[SearchEvents] = None,
                       executor: Optional[Union[Executor, Pool]] = None) -> SearchRun:
    """Run or resume (`run.resume`) the search a config describes, in its run directory: the egnas strategy, or
    the random baseline (`search.strategy: random`, `facenas.search.random_search`) in the same journal."""
    from facenas.search.evaluator import make_task
    from facenas.search.executor import make_pool

    began = time.perf_counter()
    if config.task == "faces" and config.search.noise.std is None:
        log.warning("search.noise.std is not set: the authors' point rules (tuned on CIFAR accuracy) decide. Measure "
                    "the score's noise on your data (facenas noise -c CONFIG) and set it, as "
                    "configs/search/faces-lfw-dev.yaml does")
    evaluator, profile = make_task(config)
    info = evaluator.describe()
    is_random = config.search.strategy == "random"
    budget: Optional[Budget] = None
    if is_random and not RunPaths(config.out_dir()).journal.exists():
        from facenas.search.random_search import resolve_budget

        budget = resolve_budget(config)  # a bad --budget-from fails before the run directory is made
    journal, completed, interrupted = open_journal(config, config.run.resume, info)
    extra: dict[str, Any] = {}
    with journal:
        if events is not None and (completed or interrupted):
            events.on_resume(completed, interrupted)
        if executor is None:
            train = config.faces.train if config.task == "faces" else config.train
            executor = make_pool(config.run, evaluator, train.threads, train.device)
        if is_random:
            from facenas.search.random_search import held_budget, run_random_search

            baseline = run_random_search(config.search, profile, evaluator, journal, executor,
                                         budget=held_budget(journal, config, budget), seed=config.seed, events=events,
                                         max_consecutive_failures=config.run.max_consecutive_failures)
            result, extra = baseline.result, baseline.summary()
        else:
            result = run_search(config.search, profile, evaluator, journal, executor, seed=config.seed, events=events,
                                max_consecutive_failures=config.run.max_consecutive_failures)
        records = journal.records()
    completed_records = [r for r in records if r.status in HISTORY and r.on_path]
    # speculative work (run.workers > 1) that the strategy never reached: trained to the end, or cancelled on the way
    ahead = [r for r in records if not r.on_path and r.status in ("finished", "failed", "cancelled")]
    attempts = {
        "interrupted_attempts": sum(r.status == "interrupted" for r in records),
        "discarded_attempts": sum(r.status == "discarded" for r in records),
        "workers": config.run.workers, "executor": config.run.executor,
        "off_path": {"finished": sum(r.status != "cancelled" for r in ahead),
                     "cancelled": sum(r.status == "cancelled" for r in ahead),
                     "wall_s": round(sum(r.wall_s or 0.0 for r in ahead), 3)},
    }
    summary = write_outputs(config, result, completed_records, info, time.perf_counter() - began,
                            {**attempts, **extra})
    return SearchRun(result, summary, completed_records, RunPaths(config.out_dir()))
