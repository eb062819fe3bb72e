"""Speculative execution of the greedy search: what idle workers should train before the strategy asks for it.

The strategy is a pure function of the finished history (`walk`), and a candidate's training depends only on where
it stands in the search (its seed comes from the run seed and its index) and on what it is. So while some candidates
train, the candidates the strategy would propose next under each outcome that matters can be computed now: every
proposal comes with the judge of its outcome, whose `probes` reach each verdict it can give (accepted, kept, failed,
rejected). Training those early and keeping the results until the strategy reaches them changes nothing the strategy
sees: it reads results only in its own order, from the candidates it proposes. The path, every decision and the result
are those of a serial run, for any number of workers and any order in which results arrive.

`plan` expands hypothetical futures best-first by their probability. A verdict's probability is estimated per phase
from the verdicts the run has reached so far (Laplace's rule: one pseudo-count per verdict), so a phase that has
rejected nine micro changes in ten speculates on rejection. A candidate's probability of being needed is the total
probability of the futures that propose it at that index; idle workers take the most likely ones. Running work that no
explored future proposes any more is cancelled.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Mapping, Optional, Sequence

from facenas.config import SearchSpec
from facenas.search.strategy import Candidate, Done, Outcome, OverBudget, Propose, walk
from facenas.space.arch import Profile

if TYPE_CHECKING:
    from facenas.search.constraints import BudgetCheck

#: (index, candidate.key()): one unit of work. Two tasks with the same key train identically.
TaskKey = tuple[int, tuple]


def task_key(index: int, candidate: Candidate) -> TaskKey:
    return index, candidate.key()


@dataclass(frozen=True)
class Plan:
    """What to do now: the path's next step, work to start (most likely first) and running work to cancel."""

    step: Propose | Done
    launch: tuple[tuple[int, Candidate], ...]
    cancel: tuple[TaskKey, ...]
    need: Mapping[TaskKey, float]  # the probability that each explored candidate is needed


def verdict_odds(seen: Mapping[tuple[str, str], int], labels: Collection[str], kind: str) -> dict[str, float]:
    """P(verdict) for a judge of `kind` that can reach `labels`: Laplace's rule over the counts of the run's
    (judge kind, verdict) so far."""
    total = sum(seen.get((kind, label), 0) for label in labels) + len(labels)
    return {label: (seen.get((kind, label), 0) + 1) / total for label in labels}


@dataclass(order=True)
class _Node:
    priority: tuple[float, int, int]
    prob: float
    history: tuple[tuple[Candidate, Outcome], ...]
    step: Propose


def plan(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]],
         known: Mapping[TaskKey, Outcome], running: Collection[TaskKey], slots: int,
         budget: int | None = None, limits: Optional[BudgetCheck] = None) -> Plan:
    """Decide which candidates to start on `slots - len(running)` free workers and which running ones to cancel.

    `history` is the path so far, `known` the results of finished candidates the strategy has not reached, `running`
    the work in flight. At most `budget` futures are expanded (default 4 per slot, plus 8). A candidate over the
    search's budget (`limits`) is no work: its futures go on through its one outcome, skipped.
    """
    root = walk(spec, profile, history, limits)
    if isinstance(root.step, Done):
        return Plan(root.step, (), tuple(running), {})
    if slots == 1 and not running:  # a serial search: the head is the only work there is
        return Plan(root.step, () if task_key(root.step.index, root.step.candidate) in known
                    else ((root.step.index, root.step.candidate),), (), {})
    budget = 4 * slots + 8 if budget is None else budget
    need: dict[TaskKey, float] = defaultdict(float)
    proposals: dict[TaskKey, tuple[int, Candidate]] = {}
    order = itertools.count()
    heap: list[_Node] = []

    def add(prob: float, hist: tuple[tuple[Candidate, Outcome], ...], step: Propose | Done) -> None:
        while isinstance(step, Propose) and isinstance(step.judge, OverBudget):
            hist = hist + ((step.candidate, Outcome.skip()),)
            step = walk(spec, profile, hist, limits).step
        if isinstance(step, Done):
            return
        key = task_key(step.index, step.candidate)
        need[key] += prob
        proposals[key] = (step.index, step.candidate)
        heapq.heappush(heap, _Node((-prob, step.index, next(order)), prob, hist, step))

    seen = Counter(root.verdicts)  # counted once: every expansion reads the same history's verdicts
    add(1.0, tuple(history), root.step)
    expanded = 0
    while heap and expanded < budget:
        node = heapq.heappop(heap)
        step = node.step
        key = task_key(step.index, step.candidate)
        if key in known:
            branches = [(1.0, known[key])]
        else:
            probes = step.judge.probes()
            odds = verdict_odds(seen, probes, step.judge.kind)
            branches = [(odds[label], outcome) for label, outcome in probes.items()]
        for p, outcome in branches:
            hist = node.history + ((step.candidate, outcome),)
            add(node.prob * p, hist, walk(spec, profile, hist, limits).step)
        expanded += 1

    cancel = tuple(k for k in running if need.get(k, 0.0) == 0.0)
    free = slots - (len(running) - len(cancel))
    head = task_key(root.step.index, root.step.candidate)
    # the head first, then by probability (rounded: sums of branch probabilities carry float noise), earliest first
    wanted = sorted((k for k in need if k not in known and k not in running),
                    key=lambda k: (k != head, -round(need[k], 9), k[0]))
    return Plan(root.step, tuple(proposals[k] for k in wanted[:max(free, 0)]), cancel, dict(need))
