"""Budgets of a deployment-aware search (`search.constraints`): which architectures are over budget, and why.

Parameters and MACs are counted; latency is measured on the serving runtime (`facenas.export.latency`) once per
architecture and kept in the run's journal, so a resumed search, and every walk of the strategy over its history,
reads the same figure and takes the same path.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Protocol, Sequence

from facenas.config import ConstraintsConfig, TargetConfig
from facenas.search.journal import CandidateRecord, SQLiteJournal
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params


class BudgetCheck(Protocol):
    """What the strategy asks of a budget: None within it, else the reason an architecture is over it."""

    def over(self, arch: Arch) -> Optional[str]: ...


class Limits:
    """`over(arch)`: None within every budget, else the reason (the first budget it exceeds), memoised."""

    def __init__(self, constraints: ConstraintsConfig,
                 latency_ms: Optional[Callable[[Arch], float]] = None) -> None:
        if constraints.max_latency_ms is not None and latency_ms is None:
            raise ValueError("a latency budget needs a way to measure latency")
        self.constraints, self.latency_ms = constraints, latency_ms
        self._seen: dict[Arch, Optional[str]] = {}

    def over(self, arch: Arch) -> Optional[str]:
        if arch not in self._seen:
            self._seen[arch] = self._check(arch)
        return self._seen[arch]

    def _check(self, arch: Arch) -> Optional[str]:
        c = self.constraints
        if c.max_params is not None and (params := count_params(arch)) > c.max_params:
            return f"{params:,} parameters > max_params {c.max_params:,}"
        if c.max_macs is not None and (macs := count_macs(arch)) > c.max_macs:
            return f"{macs:,} MACs > max_macs {c.max_macs:,}"
        if c.max_latency_ms is not None and self.latency_ms is not None:
            latency = self.latency_ms(arch)
            if latency > c.max_latency_ms:
                return f"latency {latency:.3f} ms > max_latency_ms {c.max_latency_ms:g}"
        return None


def limits_for(constraints: ConstraintsConfig, latency_ms: Optional[Callable[[Arch], float]] = None
               ) -> Optional[Limits]:
    """The strategy's limits, or None without constraints (the search is then exactly the unconstrained one)."""
    return Limits(constraints, latency_ms) if constraints.any() else None


class LatencyBook:
    """Each architecture's latency on the search's target: read from the journal, else measured now (once) and
    journaled. Measured in the search's process: with `run.workers` > 1 on the same cores, trainings run beside a
    measurement and slow it, so a serial search (or a machine with cores to spare) gives the cleanest figures."""

    def __init__(self, journal: SQLiteJournal, target: TargetConfig,
                 measure: Optional[Callable[[Arch, TargetConfig], Any]] = None) -> None:
        self.journal, self.target = journal, target
        self.key = json.dumps(target.model_dump(exclude={"measure"}), sort_keys=True)
        self._measure = measure

    def of(self, arch: Arch) -> dict[str, Any]:
        """The measurement (`Latency.to_dict()`), journaled."""
        found = self.journal.latency(arch, self.key)
        if found is None:
            if self._measure is None:
                from facenas.search.evaluator import latency_measure

                self._measure = latency_measure()
            found = self._measure(arch, self.target).to_dict()
            self.journal.set_latency(arch, self.key, found)
        return found

    def known(self, arch: Arch) -> Optional[float]:
        """The median latency in ms if measured already, else None (nothing measured)."""
        found = self.journal.latency(arch, self.key)
        return None if found is None else float(found["median_ms"])

    def __call__(self, arch: Arch) -> float:
        """The median latency in ms."""
        return float(self.of(arch)["median_ms"])


class RecordedLimits:
    """The budget as a journal recorded it: the architectures it skipped, for reading a run back (a report walks
    the strategy over the history without measuring anything)."""

    def __init__(self, records: Sequence[CandidateRecord]) -> None:
        self._skipped = {r.candidate.arch: r.error or "over budget" for r in records if r.status == "skipped"}

    def over(self, arch: Arch) -> Optional[str]:
        return self._skipped.get(arch)
