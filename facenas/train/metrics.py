"""Result types shared by the trainers and the search's evaluator protocol (torch-free)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

#: A network below this train accuracy (%) did not fit its training people: its score says nothing of its
#: architecture, only that it did not train. Every face report marks such runs.
TRAINED_BELOW = 50.0


def train_and_score(train: Optional[float], score: float) -> str:
    """`train / score` for a report's table, the train accuracy in bold (markdown) where the net did not train."""
    mark = "**" if train is None or train < TRAINED_BELOW else ""
    return f"{mark}{train if train is not None else math.nan:.1f}{mark} / {score:.1f}"


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of one candidate. Accuracies are percentages, as the paper reports them."""

    epoch: int
    train_acc: float
    val_acc: float
    train_loss: float = math.nan
    val_loss: float = math.nan
    lr: float = math.nan
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpochMetrics":
        return cls(**data)


@dataclass(frozen=True)
class Metrics:
    """A candidate's result. Its score is the best validation accuracy over its epochs (max, not last), unless the
    evaluator says otherwise (`reduce`: the face search can score the last epochs instead)."""

    epochs: tuple[EpochMetrics, ...]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    reduce: str = "max"  # how the epochs' val_acc become the score: max (the paper), last, or mean_last
    last_k: int = 1

    @property
    def best_val(self) -> float:
        """Max over the epochs that were scored (NaN where none was)."""
        scored = [e.val_acc for e in self.epochs if not math.isnan(e.val_acc)]
        return max(scored) if scored else math.nan

    @property
    def best_train(self) -> float:
        return max(e.train_acc for e in self.epochs)

    @property
    def score(self) -> float:
        """What the search compares: the best epoch (the paper), the last one, or the mean of the last `last_k`."""
        if self.reduce == "max":
            return self.best_val
        scored = [e.val_acc for e in self.epochs if not math.isnan(e.val_acc)]
        if not scored:
            return math.nan
        return scored[-1] if self.reduce == "last" else sum(scored[-self.last_k:]) / len(scored[-self.last_k:])

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [e.to_dict() for e in self.epochs], "wall_s": self.wall_s, "extra": self.extra,
                "reduce": self.reduce, "last_k": self.last_k}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Metrics":
        return cls(tuple(EpochMetrics.from_dict(e) for e in data["epochs"]), data.get("wall_s", 0.0),
                   data.get("extra", {}), data.get("reduce", "max"), data.get("last_k", 1))
