"""The noise of a search's score: a few architectures, each trained under several seeds at the proxy budget.

A search decision compares two noisy scores; nothing is decided until the noise is known. `measure_noise` trains
each architecture once per seed through the run's own evaluator (so it measures exactly the score the search
uses), and reports per architecture the mean and standard deviation over seeds, the pooled within-architecture
standard deviation (what goes into `search.noise.std`), and the spread of the architecture means (the signal a
search has to find). Face evaluators also report every other measure of the held-out people per epoch
(`extra["heldout_*"]`); those are summarised too, so that one run compares the measures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from facenas.errors import SearchAborted
from facenas.search.evaluator import Evaluator, Metrics
from facenas.search.executor import CandidateFailed, Executor, InlineExecutor, Pool, as_pool, train_all
from facenas.space.arch import Arch


@dataclass(frozen=True)
class Spread:
    """One score over architectures x seeds."""

    mean: dict[str, float]
    std: dict[str, float]
    pooled_std: float  # within an architecture, over seeds: the noise
    arch_mean_std: float  # of the architectures' means: the signal (and some noise of the means)

    @property
    def signal_to_noise(self) -> Optional[float]:
        return self.arch_mean_std / self.pooled_std if self.pooled_std > 0 else None


def spread(values: dict[str, list[float]]) -> Spread:
    """`values[arch]` is one score per seed."""
    means = {a: float(np.mean(v)) for a, v in values.items()}
    stds = {a: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for a, v in values.items()}
    pooled = math.sqrt(float(np.mean([s * s for s in stds.values()])))
    signal = float(np.std(list(means.values()), ddof=1)) if len(means) > 1 else math.nan
    return Spread(means, stds, pooled, signal)


def _reductions(series: list[float]) -> dict[str, float]:
    scored = [v for v in series if not math.isnan(v)]
    if not scored:
        return {}
    out = {"max": max(scored), "last": scored[-1]}
    if len(scored) >= 2:
        out["mean_last2"] = float(np.mean(scored[-2:]))
    return out


@dataclass
class NoiseReport:
    score: Spread  # the score the search compares (its own measure and reduction)
    measures: dict[str, Spread] = field(default_factory=dict)  # "<measure>/<reduction>" -> spread
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def one(s: Spread) -> dict[str, Any]:
            return {**asdict(s), "signal_to_noise": s.signal_to_noise}
        return {"score": one(self.score), "measures": {k: one(v) for k, v in self.measures.items()},
                "runs": self.runs}


RunRecord = dict[str, Any]


def _record(arch: Arch, seed: int, metrics: Metrics) -> RunRecord:
    """One training as the report keeps it (JSON-ready): score, per-epoch held-out and train accuracy, measures."""
    series = {key[len("heldout_"):]: [e.extra.get(key, math.nan) for e in metrics.epochs]
              for key in (metrics.epochs[-1].extra if metrics.epochs else {}) if key.startswith("heldout_")}
    return {"arch": arch.short(), "seed": seed, "score": metrics.score, "wall_s": metrics.wall_s,
            "val": [e.val_acc for e in metrics.epochs], "train_acc": [e.train_acc for e in metrics.epochs],
            "measures": series}


def measure_noise(evaluator: Evaluator, archs: Sequence[Arch], seeds: Sequence[int],
                  epochs: Union[int, Callable[[Arch], int]], *,
                  executor: Optional[Union[Executor, Pool]] = None,
                  on_run: Optional[Callable[[Arch, int, Metrics], None]] = None,
                  done: Sequence[RunRecord] = (), on_record: Optional[Callable[[RunRecord], None]] = None
                  ) -> NoiseReport:
    """Train every architecture under every seed for `epochs` (or `epochs(arch)`: each its own budget, as the search
    gives deeper nets more) and summarise the scores' spreads.

    `done` holds records of an earlier, interrupted call: those trainings are not run again. `on_record` gets each
    new record as it finishes (the CLI writes it to disk at once, so a killed run loses one training at most).
    `executor` may be a pool (`run.workers` > 1, Ray): its slots train that many at once; the report is the same in
    any order. A training that fails stops the measurement: a noise estimate with holes would be biased.
    """
    known = {(r["arch"], r["seed"]): r for r in done}
    todo = [(a, s) for a in archs for s in seeds if (a.short(), s) not in known]
    budgets = [epochs(arch) if callable(epochs) else epochs for arch, _ in todo]

    def finished(k: int, metrics: Union[Metrics, CandidateFailed]) -> None:
        (arch, seed), budget = todo[k], budgets[k]
        if isinstance(metrics, CandidateFailed):
            raise SearchAborted(f"{arch.short()} seed {seed} failed to train ({metrics.error.splitlines()[0]}); a "
                                "noise estimate needs every run: fix the cause and run the same command again (the "
                                "finished runs are kept with --json)")
        known[(arch.short(), seed)] = record = {**_record(arch, seed, metrics), "epochs": budget}
        if on_record is not None:
            on_record(record)
        if on_run is not None:
            on_run(arch, seed, metrics)

    runs_todo = [(arch, budget, seed) for (arch, seed), budget in zip(todo, budgets)]
    train_all(as_pool(evaluator, executor or InlineExecutor()), runs_todo, finished, phase="noise")
    runs = [known[(a.short(), s)] for a in archs for s in seeds]
    names = list(dict.fromkeys(r["arch"] for r in runs))
    report = NoiseReport(spread({a: [r["score"] for r in runs if r["arch"] == a] for a in names}), runs=runs)
    keys = {f"{m}/{red}" for r in runs for m, series in r["measures"].items() for red in _reductions(series)}
    for key in sorted(keys):
        measure, reduction = key.split("/")
        values = {a: [_reductions(r["measures"][measure]).get(reduction, math.nan) for r in runs if r["arch"] == a]
                  for a in names}
        report.measures[key] = spread(values)
    return report


def spread_architectures(depth_min: int, depth_max: int, width_min: int, width_max: int, profile: Any) -> list[Arch]:
    """Three architectures across a search space: shallow and wide, deep and wide, shallow and narrow with conv
    layers; the score's noise is measured on each, since it can depend on the architecture."""
    mid = (depth_min + depth_max) // 2
    mixed = Arch.uniform(width_min, depth_min, profile)
    for layer in range(0, depth_min, 2):
        mixed = mixed.with_op(layer, 1)
    # distinct (a narrow depth range makes the first two one), so that no training is repeated as another arch
    return list(dict.fromkeys([Arch.uniform(width_max, depth_min, profile), Arch.uniform(width_max, mid, profile),
                               mixed]))
