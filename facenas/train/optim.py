"""One adapter from `TrainConfig` to timm's optimizer and scheduler factories.

Replication detail (style.md, method.md section 2): the authors ran plain momentum SGD with weight decay on
every parameter. timm's `opt="sgd"` is Nesterov SGD and its default `filter_bias_and_bn=True` exempts biases and
norms from decay, so the paper profile needs `opt="momentum", filter_bias_and_bn=False` (pinned by a test).
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from facenas.config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return create_optimizer_v2(model, opt="momentum", lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, filter_bias_and_bn=False)


class CosineSchedule:
    """Cosine annealing to 0 over exactly `epochs` epochs, through timm's `CosineLRScheduler`.

    - `cosine_step` (default): the rate follows the cosine per optimiser step and reaches 0 at the end of the
      last epoch.
    - `authors_epoch`: the authors' stepping. Their loop called `scheduler.step()` at the start of every epoch,
      so epoch e trained at the rate of e + 1 and the last epoch at 0; kept for exact re-runs of their protocol.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int):
        self.mode = cfg.lr_schedule
        self.steps_per_epoch = steps_per_epoch
        total = epochs * steps_per_epoch if self.mode == "cosine_step" else epochs
        self._timm = CosineLRScheduler(optimizer, t_initial=max(total, 1), lr_min=0.0,
                                       t_in_epochs=self.mode != "cosine_step")
        self.optimizer = optimizer

    def start_epoch(self, epoch: int) -> None:
        if self.mode == "authors_epoch":
            self._timm.step(epoch + 1)

    def before_step(self, epoch: int, step: int) -> None:
        if self.mode == "cosine_step":
            self._timm.step_update(epoch * self.steps_per_epoch + step)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
