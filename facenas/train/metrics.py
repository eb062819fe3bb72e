"""Result types shared by the trainers and the search's evaluator protocol (torch-free)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


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
    """A candidate's result. Its score is the best validation accuracy over its epochs (max, not last)."""

    epochs: tuple[EpochMetrics, ...]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

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
        return self.best_val

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [e.to_dict() for e in self.epochs], "wall_s": self.wall_s, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Metrics":
        return cls(tuple(EpochMetrics.from_dict(e) for e in data["epochs"]), data.get("wall_s", 0.0),
                   data.get("extra", {}))
