"""The proxy trainer for image classification (method.md section 2), also used for final training.

Cross-entropy, momentum SGD, cosine to 0 over exactly E epochs, batch 64, gradient-norm clip 5. The score of a
candidate is its best validation accuracy over the E epochs; the train accuracy of an epoch is the running
accuracy on its augmented batches, as the authors measured it.

Speed: the whole split lives on the training device as uint8, batches are cut by index and augmented in a few
tensor ops (`BatchAugment`), and validation runs in large batches under `inference_mode`. Determinism: the
shuffle and the augmentation of epoch e come from a generator seeded by (seed, e), so a run resumed at epoch e
sees exactly the batches an uninterrupted run would have seen. The step, the running sums (read every 16 steps,
not every step) and the resumable state are the face trainer's too (`core.py`).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facenas.config import TrainConfig
from facenas.data.arrays import ImageSet
from facenas.data.batch_aug import BatchAugment
from facenas.train.core import (
    Checkpointer,
    RunningSums,
    Stepper,
    autocast,
    compiled,
    restore_rng,
    rng_state,
    use_channels_last,
)
from facenas.train.metrics import EpochMetrics
from facenas.train.optim import CosineSchedule, make_optimizer


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))
    return gen


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, augment: BatchAugment,
             batch_size: int, precision: str = "fp32",
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """(accuracy %, mean loss) on uint8 images at their native size."""
    model.eval()
    cast = autocast(images.device, precision)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(labels), batch_size):
        x = augment.normalize(images[start:start + batch_size]).contiguous(memory_format=memory_format)
        y = labels[start:start + batch_size]
        with cast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = max(len(labels), 1)
    return 100.0 * correct.item() / n, loss_sum.item() / n


def to_device(data: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images).to(device), torch.from_numpy(data.labels).to(device)


def fit_classifier(model: nn.Module, train: ImageSet, val: ImageSet, *, cfg: TrainConfig, augment: BatchAugment,
                   epochs: int, seed: int, device: torch.device,
                   on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
                   checkpoint: Optional[Checkpointer] = None) -> list[EpochMetrics]:
    """Train for `epochs` epochs; returns the per-epoch metrics (a checkpoint lets it resume mid-run)."""
    model.to(device)
    nhwc = use_channels_last(model, device, cfg.channels_last, cfg.precision)
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    model.to(memory_format=memory_format)
    cast = autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    x_train, y_train = to_device(train, device)
    x_val, y_val = to_device(val, device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    schedule = CosineSchedule(optimizer, cfg, epochs, steps_per_epoch)
    history: list[EpochMetrics] = []
    start_epoch = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:  # checkpoints before facenas 0.10 hold no scaler or RNG state
            scaler.load_state_dict(state["scaler"])
        restore_rng(state.get("rng"))
        history = [EpochMetrics.from_dict(e) for e in state["history"]]
        start_epoch = len(history)

    stepper = Stepper(optimizer, scaler, cfg.grad_clip)
    forward = compiled(model, cfg.compile)
    for epoch in range(start_epoch, epochs):
        began = time.perf_counter()
        gen = epoch_generator(seed, epoch)
        schedule.start_epoch(epoch)
        order = torch.randperm(len(train), generator=gen).to(device)
        model.train()
        sums = RunningSums(device)
        lr_first = math.nan
        for step, index in enumerate(order.split(cfg.batch_size)):
            schedule.before_step(epoch, step)
            if step == 0:
                lr_first = schedule.lr
            x = augment(x_train[index], gen).contiguous(memory_format=memory_format)
            y = y_train[index]
            with cast:
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            stepper(loss)
            sums.add(loss, (logits.detach().argmax(1) == y).sum(), len(y))
            sums.check(epoch, step)
        sums.check(epoch, steps_per_epoch - 1, force=True)
        totals = sums.totals()
        val_acc, val_loss = evaluate(model, x_val, y_val, augment, cfg.eval_batch_size, cfg.precision,
                                     memory_format)
        metrics = EpochMetrics(epoch=epoch, train_acc=100.0 * totals["correct"] / len(train), val_acc=val_acc,
                               train_loss=totals["loss_sum"] / len(train), val_loss=val_loss, lr=lr_first,
                               seconds=time.perf_counter() - began)
        history.append(metrics)
        if checkpoint is not None:
            checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "rng": rng_state(),
                             "history": [e.to_dict() for e in history]})
        if on_epoch is not None:
            on_epoch(metrics)
    return history
