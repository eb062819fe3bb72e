"""The strategy's rules (method.md section 3), driven by scoring functions instead of training."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from facenas.config import DepthConfig, MicroConfig, SearchSpec, WidthConfig
from facenas.search.strategy import Candidate, Done, HistoryMismatch, Outcome, Propose, SearchResult, next_step
from facenas.space.arch import Profile
from facenas.space.count import params_m

PROFILE = Profile.paper(1, 10)
Score = Callable[[Candidate], Outcome]


def drive(spec: SearchSpec, score: Score, limit: int = 500) -> tuple[list[Candidate], SearchResult]:
    history: list[tuple[Candidate, Outcome]] = []
    for _ in range(limit):
        step = next_step(spec, PROFILE, history)
        if isinstance(step, Done):
            return [c for c, _ in history], step.result
        assert isinstance(step, Propose) and step.index == len(history)
        history.append((step.candidate, score(step.candidate)))
    raise AssertionError("search did not finish")


def small_spec(**micro) -> SearchSpec:
    return SearchSpec(depth=DepthConfig(min=3, max=20, start_epochs=3, epoch_step=1),
                      width=WidthConfig(max=16, min=8, step=2, epoch_step=2),
                      micro=MicroConfig(**{"epochs": 2, **micro}))


def by_phase(cands, phase):
    return [c for c in cands if c.phase == phase]


def test_depth_phase_accepts_gains_and_stops_on_the_third_clear_drop():
    depth_scores = {3: 90.0, 4: 90.2, 5: 90.25, 6: 90.5, 7: 90.3, 8: 90.3, 9: 90.44, 10: 90.0}

    def score(c: Candidate) -> Outcome:
        return Outcome(depth_scores.get(c.arch.depth, 80.0) if c.phase == "depth" else 50.0, 60.0)

    cands, result = drive(small_spec(ops=False, kernel_pass=False), score)
    depth = by_phase(cands, "depth")
    # 4 (+0.2: accepted), 5 (+0.05: tolerated), 6 (+0.3: accepted), 7 and 8 (clear drops 1 and 2),
    # 9 (-0.06, below the 0.05 tolerance: the third clear drop stops the phase)
    assert [c.arch.depth for c in depth] == [3, 4, 5, 6, 7, 8, 9]
    assert [c.epochs for c in depth] == [3, 4, 5, 6, 7, 8, 9]  # E grows with every depth *tried*
    assert result.macro_depth == 6
    # the width phase continues the epoch counter from the last depth tried, at the macro depth
    width = by_phase(cands, "width")
    assert width[0].arch.depth == 6 and width[0].arch.width == 14 and width[0].epochs == 11


def test_tolerated_scores_do_not_count_as_failures():
    def score(c: Candidate) -> Outcome:
        # every deeper net scores within (best - 0.05, best + 0.1): the phase runs to max depth
        return Outcome(90.0 + (0.02 if c.arch.depth % 2 else -0.03), 50.0)

    spec = small_spec(ops=False, kernel_pass=False).model_copy(
        update={"depth": DepthConfig(min=3, max=9, start_epochs=1)})
    cands, result = drive(spec, score)
    assert [c.arch.depth for c in by_phase(cands, "depth")] == [3, 4, 5, 6, 7, 8, 9]
    assert result.macro_depth == 3


def test_depth_stops_at_target_accuracy_and_at_full_train_accuracy():
    cands, _ = drive(small_spec(ops=False, kernel_pass=False), lambda c: Outcome(99.95, 99.0))
    assert len(by_phase(cands, "depth")) == 1
    cands, _ = drive(small_spec(ops=False, kernel_pass=False), lambda c: Outcome(90.0, 100.0))
    assert len(by_phase(cands, "depth")) == 1


def test_width_phase_accepts_ties_and_stops_after_three_failures():
    width_scores = {22: 91.0, 20: 91.0, 18: 91.0, 16: 91.0, 14: 91.5, 12: 91.5, 10: 91.49}

    def score(c: Candidate) -> Outcome:
        if c.phase == "depth":
            return Outcome(91.0 if c.arch.depth == 3 else 80.0, 50.0)
        if c.phase != "width":
            return Outcome(5.0, 5.0)
        return Outcome(width_scores.get(c.arch.width, 80.0), 50.0)

    spec = small_spec(ops=False, kernel_pass=False).model_copy(
        update={"width": WidthConfig(max=24, min=2, step=2, epoch_step=2)})
    cands, result = drive(spec, score)
    width = by_phase(cands, "width")
    assert [c.arch.width for c in width] == [22, 20, 18, 16, 14, 12, 10, 8, 6]
    assert result.macro_width == 12  # ties are accepted; 10 (-0.01), 8 and 6 are the three failures
    assert result.macro_epochs == width[5].epochs


def test_micro_candidates_are_parameter_matched_and_kept_only_on_strict_improvement():
    def score(c: Candidate) -> Outcome:
        if c.phase in ("depth", "width"):
            return Outcome(90.0 if c.arch.depth == 3 and c.arch.width == 16 else 10.0, 50.0)
        if c.phase == "ops":
            return Outcome(50.0 + (1.0 if c.arch.ops[1] == 1 else 0.0) + (1.0 if c.arch.ops[2] == 1 else 0.0))
        return Outcome(52.0 + (0.5 if c.arch.kernels[0] == 5 else 0.0))  # tie unless layer 0 gets k=5

    cands, result = drive(small_spec(), score)
    ops = by_phase(cands, "ops")
    base = ops[0].arch
    assert ops[0].arch.ops == (0, 0, 0) and ops[0].epochs == 2  # the macro result re-scored at the micro budget
    budget = params_m(base)
    for c in ops[1:]:
        assert c.epochs == 2 and params_m(c.arch) <= budget + 0.01
        # the widest width that fits: one channel more would exceed the budget
        assert params_m(c.arch.with_width(c.arch.width + 1)) > budget + 0.01 or c.arch.width == base.width
    op_result = [c.arch for c in ops if c.arch.ops == result.ops][-1]
    kernel_budget = params_m(op_result)  # the kernel pass matches the op-pass result's parameters
    for c in by_phase(cands, "kernels"):
        assert c.epochs == 2 and params_m(c.arch) <= kernel_budget + 0.01
        assert c.arch.width <= op_result.width
    assert result.ops == (0, 1, 1)
    assert result.kernels == (5, 3, 3)
    assert result.arch.width == result.macro_width == 16  # the final model uses the macro width
    assert result.micro_width <= 16


def test_failed_candidates_are_never_accepted():
    def score(c: Candidate) -> Outcome:
        if c.phase == "depth" and c.arch.depth == 4:
            return Outcome.failure()
        if c.phase == "ops" and c.arch.ops[0] == 1:
            return Outcome.failure()
        if c.phase == "depth":
            return Outcome(90.0 if c.arch.depth == 3 else 80.0, 50.0)
        return Outcome(90.0 if c.phase == "width" else 40.0, 50.0)

    cands, result = drive(small_spec(kernel_pass=False), score)
    assert result.macro_depth == 3 and result.ops[0] == 0
    assert len(by_phase(cands, "depth")) == 4  # 4 failed (drop 1); 5 and 6 are drops 2 and 3


def test_score_comparisons_follow_float32_like_the_authors():
    incumbent, challenger = 93.158943, 93.258942
    assert (np.float32(challenger) >= np.float32(incumbent) + np.float32(0.1)) != (challenger >= incumbent + 0.1)

    def score(c: Candidate) -> Outcome:
        return Outcome({3: incumbent, 4: challenger}.get(c.arch.depth, 10.0) if c.phase == "depth" else 5.0, 50.0)

    spec32 = small_spec(ops=False, kernel_pass=False)
    spec64 = spec32.model_copy(update={"score_dtype": "float64"})
    assert drive(spec32, score)[1].macro_depth == 4
    assert drive(spec64, score)[1].macro_depth == 3


def test_next_step_is_a_pure_function_of_the_history():
    spec = small_spec()
    history = [(Candidate("depth", next_step(spec, PROFILE, []).candidate.arch, 3), Outcome(90.0, 50.0))]
    first = next_step(spec, PROFILE, history)
    again = next_step(spec, PROFILE, list(history))
    assert first == again and first.candidate.arch.depth == 4 and first.candidate.epochs == 4


def test_a_history_from_another_search_is_rejected():
    spec = small_spec()
    wrong = next_step(spec, PROFILE, []).candidate.arch.with_width(10)
    with pytest.raises(HistoryMismatch, match="candidate 0"):
        next_step(spec, PROFILE, [(Candidate("depth", wrong, 3), Outcome(90.0))])


def test_a_history_longer_than_the_search_is_rejected():
    spec = small_spec(ops=False, kernel_pass=False)
    cands, _ = drive(spec, lambda c: Outcome(90.0, 50.0))
    history = [(c, Outcome(90.0, 50.0)) for c in cands] + [(cands[-1], Outcome(90.0, 50.0))]
    with pytest.raises(HistoryMismatch, match="search finished"):
        next_step(spec, PROFILE, history)
