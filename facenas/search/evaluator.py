"""The evaluator seam: architecture + epoch budget -> metrics with per-epoch curves.

The strategy never trains anything. An evaluator does, and anything that follows this protocol can stand behind
the same search: facenas's own trainers (`facenas.train.evaluators`), a table of known scores (`replay.py`), or a
user's own code. Evaluators are picklable and cheap to pickle so that an executor can ship one to a child
process; heavy state (datasets) is loaded lazily in the process that trains.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

from facenas.space.arch import Arch
from facenas.train.metrics import TRAINED_BELOW, EpochMetrics, Metrics, train_and_score

__all__ = ["TRAINED_BELOW", "EpochCallback", "EpochMetrics", "Evaluator", "Metrics", "train_and_score"]


EpochCallback = Callable[[EpochMetrics], None]


@runtime_checkable
class Evaluator(Protocol):
    """Trains and scores one architecture for a budget of `epochs`.

    Raise `facenas.errors.TrainingError` (e.g. a NaN loss) or any other exception for a candidate that cannot
    be trained: the search records it as failed and goes on. Raise `DataError` or `ConfigError` for problems
    that no candidate can get past: the search stops.
    """

    def evaluate(self, arch: Arch, epochs: int, *, seed: int,
                 on_epoch: Optional[EpochCallback] = None) -> Metrics:
        ...

    def describe(self) -> dict[str, Any]:
        """What this evaluator is (name, data, protocol), for the journal and the reports."""
        ...


def make_task(config: Any) -> tuple[Evaluator, Any]:
    """(evaluator, search-space profile) for a run config: the one door from `search` into `train`."""
    from facenas.errors import ConfigError
    from facenas.train.evaluators import ClassificationEvaluator, FaceEvaluator, task_profile

    if getattr(config.model, "backbone", None):
        raise ConfigError(f"model.backbone = {config.model.backbone!r}: a search searches facenas's chain of layers; "
                          "a hand-designed backbone is trained with `facenas train --backbone` (remove the key here)")
    evaluator = FaceEvaluator(config) if config.task == "faces" else ClassificationEvaluator(config)
    return evaluator, task_profile(config)


def latency_measure() -> Callable[[Arch, Any], Any]:
    """How a candidate's latency is measured (`facenas.export.latency.arch_latency`: the net exported as `facenas
    export` writes it, timed on onnxruntime): the search's other door, into `export`, opened only where a search
    measures latencies."""
    from facenas.export.latency import arch_latency

    return arch_latency
