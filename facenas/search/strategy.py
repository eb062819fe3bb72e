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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Sequence, Union

import numpy as np

from facenas.config import SearchSpec, decision_rules, micro_epochs
from facenas.space.arch import OP_CONV, Arch, Profile
from facenas.space.count import params_m

PHASES = ("depth", "width", "ops", "kernels")


@dataclass(frozen=True)
class Candidate:
    """One architecture to train for a given epoch budget, in a given phase."""

    phase: str
    arch: Arch
    epochs: int

    def same_as(self, other: "Candidate") -> bool:
        """Equal as a proposal: phase, epochs, width, depth, ops and kernels (the profile is the run's)."""
        return (self.phase == other.phase and self.epochs == other.epochs
                and self.arch.width == other.arch.width and self.arch.depth == other.arch.depth
                and self.arch.ops == other.arch.ops and self.arch.kernels == other.arch.kernels)

    def describe(self) -> str:
        return f"{self.phase} E={self.epochs} {self.arch.short()}"


@dataclass(frozen=True)
class Outcome:
    """What the strategy needs back: the score (best validation accuracy, %) and the best train accuracy."""

    score: float | None
    train_score: float | None = None
    failed: bool = False

    @classmethod
    def failure(cls) -> "Outcome":
        return cls(None, None, True)


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


class _Scores:
    """Score arithmetic in the dtype the spec asks for (float32 by default, as the authors' tensors)."""

    def __init__(self, dtype: str) -> None:
        self.t = np.float32 if dtype == "float32" else np.float64

    def __call__(self, value: float) -> np.floating:
        return self.t(value)

    def of(self, outcome: Outcome) -> np.floating:
        return self.t(-np.inf) if outcome.failed or outcome.score is None else self.t(outcome.score)

    def train_of(self, outcome: Outcome) -> np.floating:
        return self.t(0.0) if outcome.failed or outcome.train_score is None else self.t(outcome.train_score)


def _match_params(arch: Arch, budget_m: float, slack_m: float) -> Arch | None:
    """Lower the width one channel at a time until params <= budget + slack (float64 millions, as the authors)."""
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


def search(spec: SearchSpec, profile: Profile) -> Generator[Candidate, Outcome, SearchResult]:
    """The whole search as a coroutine: yields candidates, receives outcomes, returns the result."""
    s = _Scores(spec.score_dtype)
    d, w, m = spec.depth, spec.width, spec.micro
    rules = decision_rules(spec)

    # -- 1. depth ---------------------------------------------------------------------------------------------
    depth = d.first
    epochs = d.start_epochs
    out = yield Candidate("depth", Arch.uniform(w.first, depth, profile), epochs)
    best_depth, best_val, best_train = depth, s.of(out), s.train_of(out)
    fails = 0
    target = s(spec.target_accuracy - spec.target_tolerance)
    while best_val < target and depth < d.max:
        if best_train == s(100):
            break
        epochs += d.epoch_step
        depth = min(depth + d.step, d.max)
        out = yield Candidate("depth", Arch.uniform(w.first, depth, profile), epochs)
        val = s.of(out)
        if not out.failed and val >= best_val + s(rules.depth_gain):
            best_depth, best_val, best_train, fails = depth, val, s.train_of(out), 0
        elif not out.failed and val >= best_val - s(rules.depth_drop):
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
        epochs += w.epoch_step
        out = yield Candidate("width", Arch.uniform(width, best_depth, profile), epochs)
        val = s.of(out)
        if not out.failed and val >= best_val - s(rules.width_tolerance):
            best_val, best_train = val, s.train_of(out)
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
        out = yield Candidate("ops", macro, m_epochs)
        current_val = s.of(out)
        for layer in range(best_depth):
            trial = _match_params(current.with_width(macro_width).with_op(layer, OP_CONV), budget, m.param_slack_m)
            if trial is None:
                continue
            out = yield Candidate("ops", trial, m_epochs)
            val = s.of(out)
            if not out.failed and val > current_val + s(rules.micro_gain):
                current, current_val, micro_width = trial, val, trial.width

    # -- 4. kernels -------------------------------------------------------------------------------------------
    if m.kernel_pass:
        if not m.ops:
            out = yield Candidate("kernels", macro, m_epochs)
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
                out = yield Candidate("kernels", trial, m_epochs)
                val = s.of(out)
                if not out.failed and val > current_val + s(rules.micro_gain):
                    base, current_val, micro_width = base.with_kernel(layer, k), val, trial.width

        current = base
    final = Arch(macro_width, best_depth, current.ops, current.kernels, profile)
    return SearchResult(
        arch=final, macro_depth=best_depth, macro_width=macro_width, macro_epochs=macro_epochs,
        micro_width=micro_width, ops=final.ops, kernels=final.kernels,
        macro_score=_as_float(macro_score), micro_score=_as_float(current_val),
    )


def next_step(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]]) -> Step:
    """The next candidate after `history` (finished candidates in order), or the result when the search is done.

    Raises `HistoryMismatch` where the history is not a path this strategy could have taken.
    """
    gen = search(spec, profile)
    consumed = 0
    try:
        proposal = next(gen)
        while consumed < len(history):
            recorded, outcome = history[consumed]
            if not proposal.same_as(recorded):
                raise HistoryMismatch(consumed, proposal, recorded)
            consumed += 1
            proposal = gen.send(outcome)
    except StopIteration as stop:
        if consumed < len(history):
            raise HistoryMismatch(consumed, None, history[consumed][0]) from None
        return Done(stop.value, consumed)
    return Propose(proposal, consumed)
