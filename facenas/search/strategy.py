"""The greedy macro-micro strategy of method.md section 3, as the authors' code runs it.

The strategy only decides. It is written as a generator that yields a `Candidate` and receives its `Outcome`,
and `next_step(spec, history)` runs that generator from the start over a finished history: the state (phase,
incumbent, fail counts, epoch counters) is folded out of the history and nothing is kept between calls. So a
resumed search, a replay of the authors' logs and a fresh search all go through exactly this code.

Exactness notes (all from the authors' code):
- accuracies were float32 tensors, and `best + 0.1` or `best - 0.05` were computed and compared in float32;
  `score_dtype: float32` does the same (one of the published runs takes another branch in float64);
- the epoch counter accumulates over every candidate tried, rejected ones included, and the width phase
  continues from the last depth *tried*; the macro epochs reported are those of the last accepted width (or of the
  last depth tried, when no narrower net is accepted);
- the depth loop stops when the last depth tried reaches the maximum, or when the incumbent reaches the target
  accuracy or 100 % train accuracy; the break counts allow `break_count` failures and stop on the next;
- the op pass first re-scores the macro result at the micro budget; micro candidates are parameter-matched by
  lowering the width one channel at a time from the macro width (op pass) or the op-pass width (kernel pass)
  until params <= budget + slack, compared in float64 millions as the authors did.

A failed candidate (NaN loss, exception) scores as a failure: it is never accepted, counts as a clear drop in the
macro phases and is reverted in the micro phases.

Budgets (`search.constraints`, `facenas.search.constraints.Limits`): a candidate over budget is proposed with the
`OverBudget` judge, which the runner journals as skipped without training it. The depth phase stops growing at the
first deeper net over budget; a narrower net over budget counts as a failure; a micro change over budget is
reverted. Skipped candidates do not advance the epoch counter. Without limits nothing is ever skipped, and every
path is the authors'.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator, Optional, Sequence, Union

import numpy as np

from facenas.config import SearchSpec, decision_rules, micro_epochs
from facenas.errors import ConfigError
from facenas.space.arch import OP_CONV, Arch, Profile
from facenas.space.count import params_m

if TYPE_CHECKING:
    from facenas.search.constraints import BudgetCheck

PHASES = ("depth", "width", "ops", "kernels")


@dataclass(frozen=True)
class Candidate:
    """One architecture to train for a given epoch budget, in a given phase."""

    phase: str
    arch: Arch
    epochs: int

    def same_as(self, other: "Candidate") -> bool:
        """Equal as a proposal: phase, epochs, width, depth, ops and kernels (the profile is the run's)."""
        return self.key() == other.key()

    def key(self) -> tuple:
        """What `same_as` compares, as a hashable value."""
        a = self.arch
        return self.phase, self.epochs, a.width, a.depth, a.ops, a.kernels

    def describe(self) -> str:
        return f"{self.phase} E={self.epochs} {self.arch.short()}"


@dataclass(frozen=True)
class Outcome:
    """What the strategy needs back: the score (best validation accuracy, %) and the best train accuracy."""

    score: float | None
    train_score: float | None = None
    failed: bool = False
    skipped: bool = False  # over budget: never trained

    @classmethod
    def failure(cls) -> "Outcome":
        return cls(None, None, True)

    @classmethod
    def skip(cls) -> "Outcome":
        return cls(None, None, False, True)


@dataclass(frozen=True)
class SearchResult:
    """The searched architecture: macro depth and width with the micro ops and kernels (method.md 3.5)."""

    arch: Arch
    macro_depth: int
    macro_width: int
    macro_epochs: int
    micro_width: int
    ops: tuple[int, ...]
    kernels: tuple[int, ...]
    macro_score: float | None
    micro_score: float | None

    def to_dict(self) -> dict:
        return {
            "macro_depth": self.macro_depth, "macro_width": self.macro_width, "macro_epochs": self.macro_epochs,
            "micro_width": self.micro_width, "ops": list(self.ops), "kernels": list(self.kernels),
            "macro_score": self.macro_score, "micro_score": self.micro_score,
        }


@dataclass(frozen=True)
class Propose:
    candidate: Candidate
    index: int
    judge: "Judge"


@dataclass(frozen=True)
class Done:
    result: SearchResult
    candidates: int = field(default=0)


Step = Union[Propose, Done]


class HistoryMismatch(Exception):
    """The history holds a candidate this strategy would not have proposed at that point."""

    def __init__(self, index: int, proposed: Candidate | None, recorded: Candidate | None) -> None:
        self.index = index
        self.proposed = proposed
        self.recorded = recorded
        p = proposed.describe() if proposed else "no further candidate (search finished)"
        r = recorded.describe() if recorded else "nothing"
        super().__init__(f"candidate {index}: strategy proposes {p}, history has {r}")


@dataclass(frozen=True)
class _Scores:
    """Score arithmetic in the dtype the spec asks for (float32 by default, as the authors' tensors)."""

    dtype: str

    @property
    def t(self) -> type:
        return np.float32 if self.dtype == "float32" else np.float64

    def __call__(self, value: float) -> np.floating:
        return self.t(value)

    def of(self, outcome: Outcome) -> np.floating:
        return self.t(-np.inf) if outcome.failed or outcome.score is None else self.t(outcome.score)

    def train_of(self, outcome: Outcome) -> np.floating:
        return self.t(0.0) if outcome.failed or outcome.train_score is None else self.t(outcome.train_score)


# -- judges: how the strategy will read a candidate's outcome ---------------------------------------------------
#
# Every candidate is proposed with the judge that will read its outcome. The strategy branches on the judge's
# verdict, so the judge is the one place where its comparisons live; and `probes` gives one outcome that reaches
# each verdict, which lets a scheduler ask the strategy what it would propose next under every outcome that matters
# before the outcome is known (speculative execution, `facenas.search.speculate`).

MEASURED, ACCEPT, KEEP, FAIL, REJECT, SKIP = "measured", "accept", "keep", "fail", "reject", "skip"


@dataclass(frozen=True)
class Judge:
    """A candidate that is only measured (the first of a phase): every outcome is `measured`."""

    kind: str
    scores: _Scores

    def verdict(self, outcome: Outcome) -> str:
        return MEASURED

    def _raw_probes(self) -> dict[str, Outcome]:
        return {MEASURED: Outcome(0.0)}

    def probes(self) -> dict[str, Outcome]:
        """One outcome per reachable verdict (a probe whose verdict differs, e.g. with zero tolerances, is left out)."""
        return {label: o for label, o in self._raw_probes().items() if self.verdict(o) == label}


@dataclass(frozen=True)
class DepthJudge(Judge):
    """Deeper net: accepted on a clear gain, kept going within the drop tolerance, else a failure."""

    best: np.floating
    gain: float
    drop: float

    def verdict(self, outcome: Outcome) -> str:
        val = self.scores.of(outcome)
        if not outcome.failed and val >= self.best + self.scores(self.gain):
            return ACCEPT
        if not outcome.failed and val >= self.best - self.scores(self.drop):
            return KEEP
        return FAIL

    def _raw_probes(self) -> dict[str, Outcome]:
        s = self.scores
        return {ACCEPT: Outcome(float(self.best + s(self.gain))), KEEP: Outcome(float(self.best - s(self.drop))),
                FAIL: Outcome.failure()}


@dataclass(frozen=True)
class WidthJudge(Judge):
    """Narrower net: accepted when it loses no more than the tolerance, else a failure."""

    best: np.floating
    tolerance: float

    def verdict(self, outcome: Outcome) -> str:
        if not outcome.failed and self.scores.of(outcome) >= self.best - self.scores(self.tolerance):
            return ACCEPT
        return FAIL

    def _raw_probes(self) -> dict[str, Outcome]:
        return {ACCEPT: Outcome(float(self.best - self.scores(self.tolerance))), FAIL: Outcome.failure()}


@dataclass(frozen=True)
class MicroJudge(Judge):
    """One micro change: kept only on a gain above the current net's score (strictly), else reverted."""

    current: np.floating
    gain: float

    def verdict(self, outcome: Outcome) -> str:
        if not outcome.failed and self.scores.of(outcome) > self.current + self.scores(self.gain):
            return ACCEPT
        return REJECT

    def _raw_probes(self) -> dict[str, Outcome]:
        bar = self.current + self.scores(self.gain)
        return {ACCEPT: Outcome(float(np.nextafter(bar, self.scores(np.inf)))), REJECT: Outcome.failure()}


@dataclass(frozen=True)
class OverBudget(Judge):
    """A candidate over the search's budget (`reason` says which): journaled as skipped, never trained."""

    reason: str

    def verdict(self, outcome: Outcome) -> str:
        return SKIP

    def _raw_probes(self) -> dict[str, Outcome]:
        return {SKIP: Outcome.skip()}


@dataclass(frozen=True)
class Proposal:
    """What the strategy yields: the candidate and the judge of its outcome."""

    candidate: Candidate
    judge: Judge


@functools.lru_cache(maxsize=1 << 16)
def _match_params(arch: Arch, budget_m: float, slack_m: float) -> Arch | None:
    """Lower the width one channel at a time until params <= budget + slack (float64 millions, as the authors).

    Memoised: a speculative scheduler walks the strategy over many hypothetical histories that share prefixes.
    """
    width = arch.width
    while params_m(arch.with_width(width)) > budget_m + slack_m:
        width -= 1
        if width < 1:
            return None
    return arch.with_width(width)


def _as_float(x: np.floating | None) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    return float(x)


def search(spec: SearchSpec, profile: Profile, limits: Optional[BudgetCheck] = None
           ) -> Generator[Proposal, Outcome, SearchResult]:
    """The whole search as a coroutine: yields proposals (candidate and judge), receives outcomes, returns the
    result. With `limits`, candidates over budget come with the `OverBudget` judge."""
    s = _Scores(spec.score_dtype)
    d, w, m = spec.depth, spec.width, spec.micro
    rules = decision_rules(spec)

    def over(arch: Arch) -> Optional[str]:
        return None if limits is None else limits.over(arch)

    # -- 1. depth ---------------------------------------------------------------------------------------------
    depth = d.first
    epochs = d.start_epochs
    first = Arch.uniform(w.first, depth, profile)
    if (reason := over(first)) is not None:
        raise ConfigError(f"search.constraints: the search's first candidate, {first.short()}, is already over "
                          f"budget ({reason}); raise the budget, or lower search.width.max or search.depth.min")
    out = yield Proposal(Candidate("depth", first, epochs), Judge("depth", s))
    best_depth, best_val, best_train = depth, s.of(out), s.train_of(out)
    fails = 0
    target = s(spec.target_accuracy - spec.target_tolerance)
    while best_val < target and depth < d.max:
        if best_train == s(100):
            break
        deeper = Arch.uniform(w.first, min(depth + d.step, d.max), profile)
        if (reason := over(deeper)) is not None:  # the depth phase stops growing at the budget
            yield Proposal(Candidate("depth", deeper, epochs + d.epoch_step), OverBudget("depth", s, reason))
            break
        epochs += d.epoch_step
        depth = deeper.depth
        judge = DepthJudge("depth", s, best_val, rules.depth_gain, rules.depth_drop)
        out = yield Proposal(Candidate("depth", deeper, epochs), judge)
        verdict = judge.verdict(out)
        if verdict == ACCEPT:
            best_depth, best_val, best_train, fails = depth, s.of(out), s.train_of(out), 0
        elif verdict == KEEP:
            continue
        elif fails != d.break_count:
            fails += 1
        else:
            break

    # -- 2. width ---------------------------------------------------------------------------------------------
    width = w.first
    macro_width, macro_epochs = width, epochs
    fails = 0
    while width > w.min:
        width -= w.step
        narrower = Arch.uniform(width, best_depth, profile)
        if (reason := over(narrower)) is not None:  # a failure (a latency measured over budget, say)
            yield Proposal(Candidate("width", narrower, epochs + w.epoch_step), OverBudget("width", s, reason))
            verdict = FAIL
        else:
            epochs += w.epoch_step
            judge = WidthJudge("width", s, best_val, rules.width_tolerance)
            out = yield Proposal(Candidate("width", narrower, epochs), judge)
            verdict = judge.verdict(out)
        if verdict == ACCEPT:
            best_val, best_train = s.of(out), s.train_of(out)
            macro_width, macro_epochs, fails = width, epochs, 0
        elif fails != w.break_count:
            fails += 1
        else:
            break
    macro_score = best_val
    m_epochs = micro_epochs(m, macro_epochs)

    # -- 3. operations ----------------------------------------------------------------------------------------
    macro = Arch.uniform(macro_width, best_depth, profile)
    current = macro
    micro_width = macro_width
    current_val = best_val
    if m.ops:
        budget = params_m(macro)
        out = yield Proposal(Candidate("ops", macro, m_epochs), Judge("ops", s))
        current_val = s.of(out)
        for layer in range(best_depth):
            trial = _match_params(current.with_width(macro_width).with_op(layer, OP_CONV), budget, m.param_slack_m)
            if trial is None:
                continue
            if (reason := over(trial)) is not None:
                yield Proposal(Candidate("ops", trial, m_epochs), OverBudget("ops", s, reason))
                continue
            judge = MicroJudge("ops", s, current_val, rules.micro_gain)
            out = yield Proposal(Candidate("ops", trial, m_epochs), judge)
            if judge.verdict(out) == ACCEPT:
                current, current_val, micro_width = trial, s.of(out), trial.width

    # -- 4. kernels -------------------------------------------------------------------------------------------
    if m.kernel_pass:
        if not m.ops:
            out = yield Proposal(Candidate("kernels", macro, m_epochs), Judge("kernels", s))
            current_val = s.of(out)
        ops_width = micro_width
        base = current.with_width(ops_width)
        budget = params_m(base)
        for layer in range(best_depth):
            trial_width = ops_width
            for k in m.kernels:
                trial = _match_params(base.with_width(trial_width).with_kernel(layer, k), budget,
                                      m.param_slack_m)
                if trial is None:
                    continue
                trial_width = trial.width
                if (reason := over(trial)) is not None:
                    yield Proposal(Candidate("kernels", trial, m_epochs), OverBudget("kernels", s, reason))
                    continue
                judge = MicroJudge("kernels", s, current_val, rules.micro_gain)
                out = yield Proposal(Candidate("kernels", trial, m_epochs), judge)
                if judge.verdict(out) == ACCEPT:
                    base, current_val, micro_width = base.with_kernel(layer, k), s.of(out), trial.width

        current = base
    final = Arch(macro_width, best_depth, current.ops, current.kernels, profile)
    return SearchResult(
        arch=final, macro_depth=best_depth, macro_width=macro_width, macro_epochs=macro_epochs,
        micro_width=micro_width, ops=final.ops, kernels=final.kernels,
        macro_score=_as_float(macro_score), micro_score=_as_float(current_val),
    )


@dataclass(frozen=True)
class Walk:
    """The strategy walked over a history: the next step, and the verdict it reached on each history entry."""

    step: Step
    verdicts: tuple[tuple[str, str], ...]  # (judge kind, verdict) per history entry, in order


def walk(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]],
         limits: Optional[BudgetCheck] = None) -> Walk:
    """Run the strategy over `history` (finished candidates in order): what it proposes next, or its result.

    Raises `HistoryMismatch` where the history is not a path this strategy could have taken.
    """
    gen = search(spec, profile, limits)
    consumed = 0
    verdicts: list[tuple[str, str]] = []
    try:
        proposal = next(gen)
        while consumed < len(history):
            recorded, outcome = history[consumed]
            if not proposal.candidate.same_as(recorded):
                raise HistoryMismatch(consumed, proposal.candidate, recorded)
            verdicts.append((proposal.judge.kind, proposal.judge.verdict(outcome)))
            consumed += 1
            proposal = gen.send(outcome)
    except StopIteration as stop:
        if consumed < len(history):
            raise HistoryMismatch(consumed, None, history[consumed][0]) from None
        return Walk(Done(stop.value, consumed), tuple(verdicts))
    return Walk(Propose(proposal.candidate, consumed, proposal.judge), tuple(verdicts))


def next_step(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]],
              limits: Optional[BudgetCheck] = None) -> Step:
    """The next candidate after `history` (finished candidates in order), or the result when the search is done.

    Raises `HistoryMismatch` where the history is not a path this strategy could have taken.
    """
    return walk(spec, profile, history, limits).step
