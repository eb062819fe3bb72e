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
from facenas.data.faces.augment import augment_batch, batch_bounds, epoch_order, make_augment, rank_bounds
from facenas.data.faces.stream import EpochBatches, FaceStream, stream_loader
from facenas.data.faces.types import FaceSet, PairSet
from facenas.errors import ConfigError
from facenas.evaluate.verify import MEAN, STD, TorchEmbedder, evaluate_pairs
from facenas.space.arch import Arch
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
from facenas.train.distributed import SINGLE, World, check_world
from facenas.train.losses import MarginHead, MarginSoftmax, margin_ramp
from facenas.train.metrics import EpochMetrics
from facenas.train.partial_fc import PartialFC

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
    head: nn.Module  # MarginHead, or this rank's shard of PartialFC
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

    def shared_state(self) -> dict[str, Any]:
        """The head's weights and the optimiser's state as a plain head holds them (Partial FC gathers its shards
        and their momentum: a collective, every rank calls it), so checkpoints of either head and any world size
        load into both."""
        optimizer = self.optimizer.state_dict()
        if not isinstance(self.head, PartialFC):
            return {"head": self.head.state_dict(), "optimizer": optimizer}
        index = _param_index(self.optimizer, self.head.weight)
        momentum = self.optimizer.state.get(self.head.weight, {}).get("momentum_buffer")
        if momentum is not None:
            gathered = self.head.gather_rows(momentum)
            optimizer["state"][index] = {**optimizer["state"][index], "momentum_buffer": gathered}
        return {"head": {"classifier.weight": self.head.full_weight()}, "optimizer": optimizer}

    def state_dict(self, extra: Optional[dict[str, Any]] = None, shared: Optional[dict[str, Any]] = None
                   ) -> dict[str, Any]:
        """Everything to continue the run; `shared` is `shared_state()` where the caller gathered it already."""
        shared = shared if shared is not None else self.shared_state()
        return {
            "format": CHECKPOINT_FORMAT, "arch": self.arch.to_dict() if self.arch is not None else None,
            **({"backbone": self.backbone} if self.backbone is not None else {}), "preprocess": self.preprocess,
            "model": self.model.state_dict(), "head": shared["head"], "optimizer": shared["optimizer"],
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": self.epoch, "epoch_step": self.epoch_step,
            "global_step": self.global_step, "history": [e.to_dict() for e in self.history],
            "partial": dict(self.partial),
            "facenas_version": __version__, **(extra or {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        if isinstance(self.head, PartialFC):
            self.head.load_full_weight(state["head"]["classifier.weight"])
            index = _param_index(self.optimizer, self.head.weight)
            entry = optimizer["state"].get(index)
            if entry is not None and "momentum_buffer" in entry:  # this rank's rows of the gathered momentum
                optimizer = {**optimizer, "state": {**optimizer["state"], index: {
                    **entry, "momentum_buffer": entry["momentum_buffer"][self.head.lo:self.head.hi]}}}
        else:
            self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        self.epoch, self.epoch_step, self.global_step = state["epoch"], state["epoch_step"], state["global_step"]
        self.history = [EpochMetrics.from_dict(e) for e in state["history"]]
        self.partial = dict(state.get("partial", {}))


def _param_index(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> int:
    """A parameter's key in `optimizer.state_dict()["state"]` (its position over the parameter groups)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(params) if p is param)


def new_run(arch: Optional[Arch], num_classes: int, cfg: FaceTrainConfig, *, epochs: int, steps_per_epoch: int,
            seed: int, device: torch.device, preprocess: dict[str, Any],
            backbone: Optional[BackboneSpec] = None, world: World = SINGLE) -> FaceRun:
    """A fresh run of the searched `arch`, or of a hand-designed `backbone` (then `arch` is None); with
    `cfg.partial_fc`, the head is this rank's shard of Partial FC."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from facenas.models import build_backbone, build_model

    if (arch is None) == (backbone is None):
        raise ValueError("new_run needs either an architecture or a backbone")
    torch.manual_seed(seed)
    model = (build_backbone(backbone) if backbone is not None else build_model(arch)).to(device)
    embedding_dim = backbone.embedding_dim if backbone is not None else arch.profile.embedding_dim
    m1, m2, m3 = cfg.margin.margins()
    head: nn.Module
    if cfg.partial_fc is not None:
        head = PartialFC(embedding_dim, num_classes, MarginSoftmax(cfg.margin.s, m1, m2, m3),
                         sample_rate=cfg.partial_fc, world=world, seed=seed).to(device)
    else:
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
    if cfg.partial_fc is not None and world.size > 1:  # the shards' gradients differ: agree on skipped steps
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler: torch.amp.GradScaler = ShardedGradScaler(device.type, enabled=precision == "fp16")
    else:
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return FaceRun(arch, model, head, optimizer, scheduler, scaler, preprocess,
                   backbone=backbone.to_dict() if backbone is not None else None)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(batch_bounds(n, batch_size))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - MEAN) / STD


def epoch_batches(train: FaceSet | FaceStream, *, cfg: FaceTrainConfig, augment: FaceAugmentConfig, seed: int,
                   device: torch.device, world: World
                   ) -> Callable[[int, int], Iterator[tuple[int, torch.Tensor, torch.Tensor]]]:
    """`batches(epoch, start_step)` yields (step, uint8 images, labels) of an epoch (this rank's share of each
    global batch under DDP): from memory, or streamed through DataLoader workers (`cfg.workers`); both give the
    same batches (`facenas.data.faces.stream`)."""
    if isinstance(train, FaceStream):
        stream = FaceStream(train.source, train.items, train.labels, train.prep, augment=augment, seed=seed,
                            identities=train.identities)
        sampler = EpochBatches(len(stream), cfg.batch_size, seed, world.rank, world.size)
        loader = stream_loader(stream, sampler, workers=cfg.workers, pin_memory=device.type == "cuda",
                               prefetch=cfg.prefetch)

        def streamed(epoch: int, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
            sampler.set_epoch(epoch, start_step)
            for step, (images, labels) in zip(sampler.steps(), loader):
                yield step, images, labels

        return streamed
    transform = make_augment(augment, train.images.shape[1])
    bounds = rank_bounds(len(train), cfg.batch_size, world.size)
    labels_all = torch.from_numpy(train.labels)

    def in_memory(epoch: int, start_step: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(train), seed, epoch)
        for step, start, end in bounds:
            if step >= start_step:
                positions = np.arange(*world.shard(start, end))
                index = order[positions]
                yield step, torch.from_numpy(augment_batch(transform, train.images[index], seed, epoch, positions)), \
                    labels_all[index]

    return in_memory


class FaceObjective(nn.Module):
    """Backbone and margin head as one module: what DDP wraps (both are replicated and averaged) and what
    `torch.compile` compiles. Returns (mean loss, cosines without margin); without a head (Partial FC, whose
    shards DDP must not average) the embeddings."""

    def __init__(self, model: nn.Module, head: Optional[MarginHead], cast: Any,
                 memory_format: torch.memory_format) -> None:
        super().__init__()
        self.model, self.head, self.cast, self.memory_format = model, head, cast, memory_format

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> Any:
        x = _normalise(images).contiguous(memory_format=self.memory_format)
        with self.cast:
            embeddings = self.model(x)
        return embeddings.float() if self.head is None else self.head(embeddings.float(), labels)


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
             on_step: Optional[Callable[[FaceRun, dict[str, Any]], None]] = None,
             checkpoint: Optional[Checkpointer] = None, world: World = SINGLE) -> list[EpochMetrics]:
    """Train `run` up to `epochs` epochs (continuing where it stands); returns the per-epoch history.

    `train` is in memory (`FaceSet`) or streamed (`FaceStream`: read, aligned and augmented in `cfg.workers`
    DataLoader processes); both give the same batches, so the same run. Under DDP (`world`, from
    `facenas.train.distributed.process_group`) each rank trains its share of every global batch; rank 0 alone
    evaluates, saves checkpoints and calls `on_epoch`.

    `val_acc` of an epoch is the 10-fold verification accuracy (%) on `pairs`, or with a `scorer` (the search's,
    `face_score.py`) its `score_measure`, all its measures going to `extra` as `heldout_<measure>`; epochs before
    `score_from_epoch` are not scored (the search's score may read only the last ones). `train_acc` is the accuracy
    of the class-centre argmax on the augmented training batches; `extra` also holds XNorm and each benchmark's
    accuracy. `on_step(run, {"loss": device tensor, "lr": float})` runs after every step; reading the loss is
    the caller's sync to make (the TensorBoard logger does it every `cfg.log_every` steps).
    """
    check_world(world, cfg.batch_size)
    batches = epoch_batches(train, cfg=cfg, augment=augment, seed=seed, device=device, world=world)
    side, channels = image_shape(train)
    global_sizes = [end - start for start, end in batch_bounds(len(train), cfg.batch_size)]
    steps = len(global_sizes)
    precision = face_precision(cfg, device)
    channels_last = use_channels_last(run.model, device, cfg.channels_last, precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    run.model.to(memory_format=memory_format)
    if cfg.sync_bn and world.size > 1:
        if device.type != "cuda":
            raise ConfigError("faces.train.sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs)")
        nn.SyncBatchNorm.convert_sync_batchnorm(run.model)  # replaces the BatchNorm children in place
    partial_fc = run.head if isinstance(run.head, PartialFC) else None
    objective: nn.Module = compiled(FaceObjective(run.model, None if partial_fc else run.head,
                                                  autocast(device, precision), memory_format), cfg.compile)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    stepper = Stepper(run.optimizer, run.scaler, cfg.grad_clip, world=world,
                      sharded=tuple(partial_fc.parameters()) if partial_fc is not None else ())
    margin: MarginSoftmax = run.head.margin
    hold, warmup = cfg.margin.hold_epochs or 0.0, cfg.margin.warmup_epochs or 0.0
    ramps = hold > 0 or warmup > 0
    for epoch in range(run.epoch, epochs):
        began = time.perf_counter()
        run.model.train()
        run.head.train()
        # the running sums of a resumed epoch are global: one rank carries them on
        sums = RunningSums(device, world, start=run.partial if run.epoch_step and world.is_main else None,
                           first_step=run.epoch_step)
        for step, images, labels in batches(epoch, run.epoch_step):
            y = labels.to(device, non_blocking=True)
            at = epoch * steps + step  # the global step this batch trains
            run.scheduler.step_update(at)
            if ramps:
                margin.set_ramp(margin_ramp(at, steps, hold, warmup))
            if partial_fc is not None:  # the global batch's loss, on every rank (partial_fc.py)
                embeddings = objective(images.to(device, non_blocking=True), y)
                loss, correct = partial_fc(embeddings, y, global_size=global_sizes[step], step=at)
                stepper(loss)
                loss = loss.detach() * world.size  # the global batch's mean loss
            else:
                loss, cosine = objective(images.to(device, non_blocking=True), y)
                # weighted so that DDP's average over the ranks is the mean over the global batch
                share = len(y) * world.size / global_sizes[step]
                stepper(loss * share if world.size > 1 else loss)
                correct = (cosine.detach().argmax(1) == y).sum()
            sums.add(loss, correct, len(y))
            sums.check(epoch, step)
            run.global_step = at + 1
            run.epoch_step = step + 1
            if on_step is not None:
                on_step(run, {"loss": loss.detach(), "lr": float(run.optimizer.param_groups[0]["lr"])})
            if cfg.checkpoint_every_steps and run.global_step % cfg.checkpoint_every_steps == 0 \
                    and run.epoch_step < steps and checkpoint is not None:
                sums.check(epoch, step, force=True)  # never save diverged weights
                run.partial = sums.totals()
                shared = run.shared_state()  # on every rank: Partial FC gathers its shards
                if world.is_main:
                    checkpoint.save(run.state_dict(shared=shared))
        sums.check(epoch, run.epoch_step - 1, force=True)
        totals = sums.totals()
        extra: dict[str, float] = {}
        val_acc = math.nan
        do_eval = ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs) and epoch >= score_from_epoch
        if world.is_main and do_eval and (pairs is not None or scorer is not None or benchmarks):
            val_acc = _evaluate(run, extra, side, channels, device, cfg, pairs, benchmarks, scorer, score_measure)
        seen = max(totals["seen"], 1)
        metrics = EpochMetrics(epoch=epoch, train_acc=100.0 * totals["correct"] / seen, val_acc=val_acc,
                               train_loss=totals["loss_sum"] / seen,
                               lr=float(run.optimizer.param_groups[0]["lr"]), seconds=time.perf_counter() - began,
                               extra=extra)
        run.history.append(metrics)
        run.epoch, run.epoch_step, run.partial, run.global_step = epoch + 1, 0, {}, (epoch + 1) * steps
        shared = run.shared_state() if checkpoint is not None else None
        if world.is_main:
            if checkpoint is not None:
                checkpoint.save(run.state_dict(shared=shared))
            if on_epoch is not None:
                on_epoch(metrics)
    return run.history


def _evaluate(run: FaceRun, extra: dict[str, float], side: int, channels: int, device: torch.device,
              cfg: FaceTrainConfig, pairs: Optional[PairSet], benchmarks: Optional[dict[str, PairSet]],
              scorer: Optional[Callable[[TorchEmbedder], dict[str, float]]], score_measure: str) -> float:
    """The epoch's held-out score (NaN where only benchmarks run); XNorm and benchmark accuracies go to `extra`."""
    embedder = TorchEmbedder(run.model, side, channels, device)
    val_acc = math.nan
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
    return val_acc
