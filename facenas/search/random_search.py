"""Random search at equal cost: the baseline a search strategy has to beat (`search.strategy: random`).

A search result means little until it beats what chance finds in the same space for the same compute. So this
strategy draws architectures of exactly the space the egnas strategy explores, trains each at the proxy budget the
egnas macro phases would give it, keeps the best held-out score, and stops at the compute a given egnas run spent.

- **Space.** Depth, per-layer operation and per-layer kernel are drawn uniformly by `draw_choices` over
  `space_from_spec` (search.depth.min..max raised to the profile's floor; separable and conv where the operation pass
  is on; 3 plus search.micro.kernels where the kernel pass is on). The width is drawn uniformly from the widths the
  egnas macro phases can choose: width.min, width.min + width.step, ..., up to width.first (the depth phase's width,
  the widest egnas trains; width.max unless width.start is set). That is the set egnas's result width comes from; the
  odd widths of its parameter-matched micro candidates are an artefact of matching, not a choice.
- **Budget per candidate.** `search.random.epochs` when set; otherwise what the egnas macro phases give a uniform net
  of that depth and width on the shortest way there: start_epochs at depth.first, plus depth.epoch_step per depth
  step needed to reach the depth (ceil((depth - first) / step), none below first), plus width.epoch_step per width
  step below width.first. (In a real egnas run the width phase continues from the last depth *tried*, which this
  formula cannot know; it is the lower bound.)
- **Determinism.** Candidate i's architecture comes from a numpy Generator seeded by `candidate_seed(run seed, i)`
  (on its own stream) and it trains with seed `candidate_seed(run seed, i)`, as egnas candidates do: a resumed run,
  and a run on any number of workers, trains exactly the same candidates.
- **Stopping.** Before candidate i starts: stop after `max_candidates`, stop once the summed candidate wall time has
  reached `max_wall_s`, and stop when candidate i's epochs x MACs would take the total past `max_epoch_macs` (the
  first draw that does not fit ends the run; smaller later draws are not picked instead, which would bias the sample
  towards small nets). `budget_from` reads both totals from an egnas run's journal: the sum over its completed
  on-path candidates (failures included: they were trained too). The budget is resolved once, when the run starts,
  and kept in the run's journal, so a resume stops where an uninterrupted run would even if the other run went on.
- **Constraints.** With `search.constraints`, a draw over budget is drawn again (from the candidate's own stream,
  attempt 1, 2, ...): every candidate lies within the budget, drawn uniformly from the part of the space inside it.
  Without constraints the first attempt is the only one, as before.
- **Result.** The best score (`Metrics.score`, the evaluator's held-out score) among finished candidates; a failed
  candidate never wins, and the earlier of two equal scores does.
- **Workers.** Draws are independent, so a pool trains the next candidates the deterministic limits admit while
  others run; candidates join the path in index order, and work past a wall-time stop is cancelled or kept off the
  path, as in the egnas scheduler. The path is the serial run's for the epoch x MACs and candidate limits; a wall-time
  limit depends on measured times, which several workers sharing a machine lengthen.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from facenas.config import Config, SearchSpec, parse_config
from facenas.errors import JournalError, SearchAborted
from facenas.search.constraints import Limits, limits_for
from facenas.search.evaluator import Evaluator
from facenas.search.executor import Executor, Pool, Task, as_pool
from facenas.search.journal import CandidateRecord, SQLiteJournal
from facenas.search.run import (
    JOURNAL_FILE,
    SearchEvents,
    cancel,
    candidate_seed,
    check_failures,
    epoch_logger,
    fingerprint_data,
    latency_book,
    launch,
    settle,
)
from facenas.search.strategy import Candidate, SearchResult
from facenas.space.arch import Arch, Profile
from facenas.space.count import count_macs
from facenas.space.sample import SearchSpace, draw_choices, space_from_spec

log = logging.getLogger(__name__)

PHASE = "random"
#: The journal meta key that holds the budget a random run was started with.
BUDGET_META = "random_budget"
#: Separates the architecture draws' random stream from the training seed's.
_DRAW_STREAM = 0x72616E64


# -- cost ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spent:
    """What a run's candidates cost: how many, their summed epochs x MACs, and their summed wall time."""

    candidates: int = 0
    epoch_macs: int = 0
    wall_s: float = 0.0

    @classmethod
    def of(cls, records: Sequence[CandidateRecord]) -> "Spent":
        return cls(len(records), sum(r.candidate.epochs * r.macs for r in records),
                   sum(r.wall_s or 0.0 for r in records))

    def plus(self, record: CandidateRecord) -> "Spent":
        return Spent(self.candidates + 1, self.epoch_macs + record.candidate.epochs * record.macs,
                     self.wall_s + (record.wall_s or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "epoch_macs": self.epoch_macs, "wall_s": round(self.wall_s, 3)}


@dataclass(frozen=True)
class Budget:
    """The limits a random run is held to (None: no such limit) and, with `budget_from`, what the other run spent."""

    epoch_macs: Optional[int] = None
    wall_s: Optional[float] = None
    candidates: Optional[int] = None
    source: Optional[dict[str, Any]] = None  # journal, candidates, epoch_macs, wall_s, same_setup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Budget":
        return cls(**data)

    def describe(self) -> str:
        parts = [f"{self.epoch_macs:,} epochs x MACs" if self.epoch_macs is not None else "",
                 f"{self.wall_s:,.1f} s of candidate time" if self.wall_s is not None else "",
                 f"{self.candidates} candidates" if self.candidates is not None else ""]
        text = ", ".join(p for p in parts if p)
        return text + (f" (spent by {self.source['journal']})" if self.source else "")


def stop_reason(budget: Budget, spent: Spent, next_epoch_macs: int) -> Optional[str]:
    """Why the run stops before a candidate costing `next_epoch_macs`, after `spent`: the limit reached, or None."""
    if budget.candidates is not None and spent.candidates >= budget.candidates:
        return "candidates"
    if budget.wall_s is not None and spent.wall_s >= budget.wall_s:
        return "wall_s"
    if budget.epoch_macs is not None and spent.epoch_macs + next_epoch_macs > budget.epoch_macs:
        return "epoch_macs"
    return None


def journal_path(path: Union[str, Path]) -> Path:
    """A run directory's journal, or the journal file itself."""
    p = Path(path)
    return p / JOURNAL_FILE if p.is_dir() else p


def read_spent(path: Union[str, Path]) -> tuple[Path, Spent, dict[str, Any]]:
    """(journal file, what its completed on-path candidates cost, its meta) of a search run, read without change.

    Every problem is one `JournalError` naming the path: the cost to match must come from a real run.
    """
    file = journal_path(path)
    what = "search.random.budget_from (--budget-from)"
    if not file.is_file():
        raise JournalError(f"{what}: {file} does not exist; give an egnas run directory or its {JOURNAL_FILE}")
    with open(file, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise JournalError(f"{what}: {file} is not a facenas journal (not an SQLite file)")
    try:
        db = sqlite3.connect(file)
        try:
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'candidates'"
                                   ).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{what}: {file} is not a readable facenas journal ({exc})") from None
    if not has_table:
        raise JournalError(f"{what}: {file} is not a facenas journal (it has no candidates table)")
    with SQLiteJournal(file) as journal:
        records, meta = journal.completed(), journal.meta()
    if not records:
        raise JournalError(f"{what}: {file} holds no finished candidate, so there is no cost to match")
    return file, Spent.of(records), meta


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """What must agree for two runs' costs to be comparable: everything but the name, seed and strategy."""
    data = dict(data, search={k: v for k, v in data["search"].items() if k not in ("strategy", "random")})
    data.pop("seed", None)
    return data


def resolve_budget(config: Config) -> Budget:
    """The limits of `config.search.random`: those read from `budget_from`, replaced by explicit keys."""
    r = config.search.random
    source: Optional[dict[str, Any]] = None
    epoch_macs, wall_s = r.max_epoch_macs, r.max_wall_s
    if r.budget_from is not None:
        file, spent, meta = read_spent(r.budget_from)
        same: Optional[bool] = None
        try:
            other = parse_config(meta["config"], f"{file} (meta)")
            same = _comparable(fingerprint_data(other)) == _comparable(fingerprint_data(config))
        except Exception:  # noqa: BLE001 - an older or foreign journal: comparability unknown, not an error
            pass
        if same is False:
            log.warning("%s was run with another data, model or training setup than this config: its epochs x MACs "
                        "and wall time are not the same compute here", file)
        source = {"journal": str(file.resolve()), **spent.to_dict(), "same_setup": same}
        if epoch_macs is None:
            epoch_macs = spent.epoch_macs
        if wall_s is None and spent.wall_s > 0:  # a run without recorded times sets no time limit
            wall_s = spent.wall_s
    return Budget(epoch_macs, wall_s, r.max_candidates, source)


def held_budget(journal: SQLiteJournal, config: Config, resolved: Optional[Budget] = None) -> Budget:
    """The budget this run is held to: the one its journal keeps (a resume), else `resolved` (or resolved now),
    which is then kept in the journal."""
    stored = journal.meta().get(BUDGET_META)
    if stored is not None:
        return Budget.from_dict(stored)
    budget = resolved if resolved is not None else resolve_budget(config)
    journal.set_meta({BUDGET_META: budget.to_dict()})
    return budget


# -- draws --------------------------------------------------------------------------------------------------------

def width_choices(spec: SearchSpec) -> tuple[int, ...]:
    """The widths the egnas macro phases can choose: width.min to width.first in steps of width.step."""
    return tuple(range(spec.width.min, spec.width.first + 1, spec.width.step))


def proxy_epochs(spec: SearchSpec, depth: int, width: int) -> int:
    """The epoch budget of a random candidate (see the module docstring)."""
    if spec.random.epochs is not None:
        return spec.random.epochs
    return macro_epochs(spec, depth, width)


def macro_epochs(spec: SearchSpec, depth: int, width: int) -> int:
    """What the egnas macro phases give a uniform net of this depth and width on the shortest way there: the proxy
    budget a search compares such a net at (also what `facenas noise --search-budget` trains each net for)."""
    d, w = spec.depth, spec.width
    depth_steps = max(0, math.ceil((depth - d.first) / d.step))
    width_steps = max(0, (w.first - width) // w.step)
    return d.start_epochs + depth_steps * d.epoch_step + width_steps * w.epoch_step


class Draws:
    """Candidate i of a random run, with its epochs x MACs: a pure function of the spec, profile, run seed and i."""

    def __init__(self, spec: SearchSpec, profile: Profile, seed: int, limits: Optional[Limits] = None,
                 attempts: int = 1000) -> None:
        self.spec, self.limits, self.attempts = spec, limits, attempts
        self.space: SearchSpace = space_from_spec(spec, profile)
        self.widths = width_choices(spec)
        self.seed = seed
        self._cache: dict[int, tuple[Candidate, int]] = {}

    def _draw(self, index: int) -> tuple[Candidate, int]:
        if index not in self._cache:
            for attempt in range(self.attempts):
                arch = self._arch(index, attempt)
                if self.limits is None or self.limits.over(arch) is None:
                    break
            else:
                raise SearchAborted(f"{self.attempts} random architectures in a row were over the search's budget "
                                    f"(the last: {arch.short()}, {self.limits.over(arch)}); raise search.constraints")
            candidate = Candidate(PHASE, arch, proxy_epochs(self.spec, arch.depth, arch.width))
            self._cache[index] = candidate, candidate.epochs * count_macs(arch)
        return self._cache[index]

    def _arch(self, index: int, attempt: int) -> Arch:
        stream = [_DRAW_STREAM, candidate_seed(self.seed, index)] + ([attempt] if attempt else [])
        rng = np.random.default_rng(stream)
        choices = draw_choices(self.space, rng)
        return choices.with_width(int(self.widths[int(rng.integers(len(self.widths)))]))

    def candidate(self, index: int) -> Candidate:
        return self._draw(index)[0]

    def epoch_macs(self, index: int) -> int:
        return self._draw(index)[1]


# -- result -------------------------------------------------------------------------------------------------------

def best_record(records: Sequence[CandidateRecord]) -> Optional[CandidateRecord]:
    """The finished candidate with the highest score (the earliest on a tie); failures never win."""
    best: Optional[CandidateRecord] = None
    for r in records:
        if r.status != "finished" or r.score is None or not math.isfinite(r.score):
            continue
        if best is None or r.score > best.score:  # type: ignore[operator]
            best = r
    return best


def result_of(record: CandidateRecord) -> SearchResult:
    """A random run's result in the egnas result's shape: one architecture, at its own width and budget."""
    a, score = record.candidate.arch, record.score
    return SearchResult(arch=a, macro_depth=a.depth, macro_width=a.width, macro_epochs=record.candidate.epochs,
                        micro_width=a.width, ops=a.ops, kernels=a.kernels, macro_score=score, micro_score=score)


def progress(spec: SearchSpec, profile: Profile, seed: int, budget: Budget, records: Sequence[CandidateRecord]
             ) -> tuple[Optional[str], Candidate]:
    """(the limit that ended the run, or None while it goes on; the next draw) after `records` (the path)."""
    draws = Draws(spec, profile, seed)
    return stop_reason(budget, Spent.of(records), draws.epoch_macs(len(records))), draws.candidate(len(records))


@dataclass(frozen=True)
class RandomRun:
    """A finished random run: its result, budget, cost, the limit that ended it, and the winning candidate."""

    result: SearchResult
    budget: Budget
    spent: Spent
    stopped_by: str
    best_index: int

    def summary(self) -> dict[str, Any]:
        """What `summary.json` adds for a random run."""
        return {"strategy": PHASE, "budget": self.budget.to_dict(), "spent": self.spent.to_dict(),
                "stopped_by": self.stopped_by, "best_index": self.best_index}


# -- the loop -----------------------------------------------------------------------------------------------------

def run_random_search(spec: SearchSpec, profile: Profile, evaluator: Evaluator, journal: SQLiteJournal,
                      executor: Union[Executor, Pool], *, budget: Budget, seed: int,
                      events: Optional[SearchEvents] = None, max_consecutive_failures: int = 0) -> RandomRun:
    """Run (or continue) a random search until a limit of `budget` stops it; every candidate goes to `journal`.

    The journal works as for the egnas strategy: candidates are begun off the path, join it in index order, and a
    resume continues from the path it holds (`max_consecutive_failures` as in `run_search`).
    """
    events = events or SearchEvents()
    pool = as_pool(evaluator, executor)
    latency = latency_book(spec, journal)
    draws = Draws(spec, profile, seed, limits_for(spec.constraints, latency))
    path = journal.completed()
    for r in path:
        if not r.candidate.same_as(draws.candidate(r.index)):
            raise JournalError(f"{journal.path}: the journal does not follow this random search (candidate {r.index} "
                               f"is {r.candidate.describe()}, the draw is {draws.candidate(r.index).describe()}); "
                               "resume with the config the run started with, or start a new run directory")
    known = {r.index: r for r in journal.off_path() if r.candidate.same_as(draws.candidate(r.index))}
    running: dict[int, Task] = {}
    spent = Spent.of(path)
    failures_in_a_row = 0
    on_epoch = epoch_logger(journal, events)

    try:
        while True:
            head = len(path)
            stopped = stop_reason(budget, spent, draws.epoch_macs(head))
            if stopped is None and head in known:  # the next candidate is trained: it joins the path
                record = known.pop(head)
                journal.adopt(record.id)
                record = journal.record(record.id)
                path.append(record)
                spent = spent.plus(record)
                events.on_candidate_end(head, record)
                failures_in_a_row = check_failures(record, failures_in_a_row, max_consecutive_failures)
                continue
            if stopped is not None:
                for task in running.values():
                    cancel(journal, events, pool, task)
                running.clear()
                break
            # fill free workers with the next draws the deterministic limits admit (times of running work unknown)
            index, ahead = head, spent
            while len(running) < pool.slots and stop_reason(budget, ahead, draws.epoch_macs(index)) is None:
                if index not in running and index not in known:
                    running[index] = launch(journal, events, pool, index, draws.candidate(index), seed, latency)
                ahead = Spent(ahead.candidates + 1, ahead.epoch_macs + draws.epoch_macs(index),
                              ahead.wall_s + ((known[index].wall_s or 0.0) if index in known else 0.0))
                index += 1
            for done in pool.wait(on_epoch):
                running.pop(done.task.index, None)
                known[done.task.index] = settle(journal, events, done)
    finally:
        pool.close()  # stopped by an error or Ctrl-C: records in flight stay `running`, a resume trains them again

    best = best_record(path)
    if best is None:
        if not path:
            raise SearchAborted(f"the budget ({budget.describe()}) admits no candidate: the first draw "
                                f"({draws.candidate(0).describe()}) costs {draws.epoch_macs(0):,} epochs x MACs; raise "
                                "the budget or lower search.random.epochs")
        raise SearchAborted(f"none of the {len(path)} random candidates finished with a score, so there is nothing to "
                            "choose; see their errors in the journal")
    result = result_of(best)
    events.on_done(result, path)
    return RandomRun(result, budget, spent, stopped, best.index)
