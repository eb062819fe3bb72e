"""Training face embedding networks with a margin softmax, for the search's proxy and for `facenas train`.

One loop serves both: the proxy trains a candidate for its epoch budget and scores it by held-out verification
after every epoch (score = the best epoch, as method.md's proxy); full training adds benchmark sets, logging and
checkpoints. Inputs follow insightface's contract, RGB (or grey) uint8 normalised as (x - 127.5) / 127.5.

Augmentation is albumentations (flip, small affine, brightness/contrast, blur, grey), seeded per sample from
(seed, epoch, position in the epoch); with the epoch's order also seeded, a checkpoint taken after step k resumes
at step k + 1 with exactly the batches an uninterrupted run would see. Checkpoints hold everything needed to
continue (model, head, optimiser, scheduler, scaler, RNG states, epoch and step, history) and to rebuild the model
from the file alone (architecture and preprocessing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from facenas import __version__
from facenas.config import FaceAugmentConfig, FaceTrainConfig
from facenas.data.faces.augment import augment_batch, batch_bounds, epoch_order, make_augment
from facenas.data.faces.stream import EpochBatches, FaceStream, stream_loader
from facenas.data.faces.types import FaceSet, PairSet
from facenas.errors import NonFiniteLossError
from facenas.evaluate.verify import MEAN, STD, TorchEmbedder, evaluate_pairs
from facenas.space.arch import Arch
from facenas.train.classify import Checkpointer, autocast, use_channels_last
from facenas.train.losses import MarginHead
from facenas.train.metrics import EpochMetrics

if TYPE_CHECKING:
    from facenas.models.backbones import BackboneSpec

CHECKPOINT_FORMAT = "facenas.face-checkpoint/1"


def face_precision(cfg: FaceTrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "fp16" if device.type == "cuda" else "fp32"


@dataclass
class FaceRun:
    """Everything a face training run owns; `state_dict` / `load_state_dict` make the checkpoint.

    `arch` is the searched architecture, or None for a hand-designed backbone, which `backbone` then describes
    (`facenas.models.backbones.BackboneSpec.to_dict()`); either rebuilds the network from the checkpoint alone.
    """

    arch: Optional[Arch]
    model: nn.Module
    head: MarginHead
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    preprocess: dict[str, Any]
    history: list[EpochMetrics] = field(default_factory=list)
    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps completed within the current epoch
    global_step: int = 0
    partial: dict[str, float] = field(default_factory=dict)  # the current epoch's running sums, for mid-epoch resume
    backbone: Optional[dict[str, Any]] = None

    def state_dict(self, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT, "arch": self.arch.to_dict() if self.arch is not None else None,
            **({"backbone": self.backbone} if self.backbone is not None else {}), "preprocess": self.preprocess,
            "model": self.model.state_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "epoch": self.epoch, "epoch_step": self.epoch_step,
            "global_step": self.global_step, "history": [e.to_dict() for e in self.history],
            "partial": dict(self.partial),
            "facenas_version": __version__, **(extra or {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.epoch_step, self.global_step = state["epoch"], state["epoch_step"], state["global_step"]
        self.history = [EpochMetrics.from_dict(e) for e in state["history"]]
        self.partial = dict(state.get("partial", {}))


def new_run(arch: Optional[Arch], num_classes: int, cfg: FaceTrainConfig, *, epochs: int, steps_per_epoch: int,
            seed: int, device: torch.device, preprocess: dict[str, Any],
            backbone: Optional[BackboneSpec] = None) -> FaceRun:
    """A fresh run of the searched `arch`, or of a hand-designed `backbone` (then `arch` is None)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from facenas.models import build_backbone, build_model

    if (arch is None) == (backbone is None):
        raise ValueError("new_run needs either an architecture or a backbone")
    torch.manual_seed(seed)
    model = (build_backbone(backbone) if backbone is not None else build_model(arch)).to(device)
    embedding_dim = backbone.embedding_dim if backbone is not None else arch.profile.embedding_dim
    m1, m2, m3 = cfg.margin.margins()
    head = MarginHead(embedding_dim, num_classes, cfg.margin.s, m1, m2, m3).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = create_optimizer_v2(params, opt="momentum", lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, filter_bias_and_bn=False)
    total = max(epochs * steps_per_epoch, 1)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=0.0, warmup_t=warmup,
                                  warmup_lr_init=cfg.lr * 0.01 if warmup else 0.0, warmup_prefix=False,
                                  t_in_epochs=False)
    precision = face_precision(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return FaceRun(arch, model, head, optimizer, scheduler, scaler, preprocess,
                   backbone=backbone.to_dict() if backbone is not None else None)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batch_bounds(n, batch_size))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - MEAN) / STD


def _epoch_batches(train: FaceSet | FaceStream, *, cfg: FaceTrainConfig, augment: FaceAugmentConfig, seed: int,
                   device: torch.device) -> Callable[[int, int], Iterator[tuple[int, torch.Tensor, torch.Tensor]]]:
    """`batches(epoch, start_step)` yields (step, uint8 images, labels) of an epoch: from memory, or streamed
    through DataLoader workers (`cfg.workers`); both give the same batches (`facenas.data.faces.stream`)."""
    if isinstance(train, FaceStream):
        stream = FaceStream(train.source, train.items, train.labels, train.prep, augment=augment, seed=seed,
                            identities=train.identities)
        sampler = EpochBatches(len(stream), cfg.batch_size, seed)
        loader = stream_loader(stream, sampler, workers=cfg.workers, pin_memory=device.type == "cuda",
                               prefetch=cfg.prefetch)

        def streamed(epoch: int, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
            sampler.set_epoch(epoch, start_step)
            for k, (images, labels) in enumerate(loader):
                yield start_step + k, images, labels

        return streamed
    transform = make_augment(augment, train.images.shape[1])
    bounds = batch_bounds(len(train), cfg.batch_size)
    labels_all = torch.from_numpy(train.labels)

    def in_memory(epoch: int, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(train), seed, epoch)
        for step in range(start_step, len(bounds)):
            positions = np.arange(*bounds[step])
            index = order[positions]
            yield step, torch.from_numpy(augment_batch(transform, train.images[index], seed, epoch, positions)), \
                labels_all[index]

    return in_memory


def image_shape(train: FaceSet | FaceStream) -> tuple[int, int]:
    """(side, channels) of a training set's crops."""
    if isinstance(train, FaceStream):
        return train.size, train.channels
    return train.images.shape[2], train.images.shape[1]


def fit_face(run: FaceRun, train: FaceSet | FaceStream, *, cfg: FaceTrainConfig, augment: FaceAugmentConfig,
             epochs: int, seed: int, device: torch.device, pairs: Optional[PairSet] = None,
             benchmarks: Optional[dict[str, PairSet]] = None,
             scorer: Optional[Callable[[TorchEmbedder], dict[str, float]]] = None, score_measure: str = "accuracy",
             score_from_epoch: int = 0,
             on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
             on_step: Optional[Callable[[FaceRun, dict[str, float]], None]] = None,
             checkpoint: Optional[Checkpointer] = None) -> list[EpochMetrics]:
    """Train `run` up to `epochs` epochs (continuing where it stands); returns the per-epoch history.

    `train` is in memory (`FaceSet`) or streamed (`FaceStream`: read, aligned and augmented in `cfg.workers`
    DataLoader processes); both give the same batches, so the same run.

    `val_acc` of an epoch is the 10-fold verification accuracy (%) on `pairs`, or with a `scorer` (the search's,
    `face_score.py`) its `score_measure`, all its measures going to `extra` as `heldout_<measure>`; epochs before
    `score_from_epoch` are not scored (the search's score may read only the last ones). `train_acc` is the accuracy
    of the class-centre argmax on the augmented training batches; `extra` also holds XNorm and each benchmark's
    accuracy.
    """
    batches = _epoch_batches(train, cfg=cfg, augment=augment, seed=seed, device=device)
    side, channels = image_shape(train)
    steps = steps_per_epoch(len(train), cfg.batch_size)
    precision = face_precision(cfg, device)
    cast = autocast(device, precision)
    channels_last = use_channels_last(run.model, device, cfg.channels_last, precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    run.model.to(memory_format=memory_format)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    for epoch in range(run.epoch, epochs):
        began = time.perf_counter()
        run.model.train()
        run.head.train()
        resumed = run.partial if run.epoch_step else {}
        correct = torch.tensor(int(resumed.get("correct", 0)), dtype=torch.long, device=device)
        loss_sum = torch.tensor(float(resumed.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
        seen = int(resumed.get("seen", 0))
        for step, images, labels in batches(epoch, run.epoch_step):
            x = _normalise(images.to(device, non_blocking=True)).contiguous(memory_format=memory_format)
            y = labels.to(device, non_blocking=True)
            run.scheduler.step_update(run.global_step)
            with cast:
                embeddings = run.model(x)
            loss, cosine = run.head(embeddings.float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            correct += (cosine.detach().argmax(1) == y).sum()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            run.global_step += 1
            run.epoch_step = step + 1
            if on_step is not None:
                on_step(run, {"loss": float(loss.detach()), "lr": float(run.optimizer.param_groups[0]["lr"])})
            if checkpoint is not None and cfg.checkpoint_every_steps and run.global_step % cfg.checkpoint_every_steps \
                    == 0 and run.epoch_step < steps:
                run.partial = {"correct": int(correct.item()), "loss_sum": float(loss_sum.item()), "seen": seen}
                checkpoint.save(run.state_dict())
        extra: dict[str, float] = {}
        val_acc = math.nan
        do_eval = ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs) and epoch >= score_from_epoch
        if do_eval and (pairs is not None or scorer is not None or benchmarks):
            embedder = TorchEmbedder(run.model, side, channels, device)
            if scorer is not None:
                values = scorer(embedder)
                val_acc = values[score_measure]
                extra.update({f"heldout_{k}" if k != "xnorm" else k: v for k, v in values.items()})
            elif pairs is not None:
                report, _ = evaluate_pairs(embedder, pairs, batch_size=cfg.eval_batch_size)
                val_acc = 100.0 * report.accuracy
                extra["xnorm"] = report.xnorm or math.nan
            for name, bench in (benchmarks or {}).items():
                report, _ = evaluate_pairs(embedder, bench, batch_size=cfg.eval_batch_size)
                extra[f"{name}_acc"] = 100.0 * report.accuracy
                extra[f"{name}_xnorm"] = report.xnorm or math.nan
        metrics = EpochMetrics(epoch=epoch, train_acc=100.0 * correct.item() / max(seen, 1), val_acc=val_acc,
                               train_loss=loss_sum.item() / max(seen, 1),
                               lr=float(run.optimizer.param_groups[0]["lr"]), seconds=time.perf_counter() - began,
                               extra=extra)
        run.history.append(metrics)
        run.epoch, run.epoch_step, run.partial = epoch + 1, 0, {}
        if checkpoint is not None:
            checkpoint.save(run.state_dict())
        if on_epoch is not None:
            on_epoch(metrics)
    return run.history
