"""`facenas train`: full training of a face architecture, resumable, with periodic verification.

Outputs in the run directory: `checkpoints/last.pt` (everything needed to continue exactly, written atomically
after every epoch and every `checkpoint_every_steps` steps), `model.pt` (the final weights with architecture and
preprocessing, loadable by `facenas eval` and `facenas export`), `metrics.csv` and TensorBoard event files (loss
and learning rate per step; accuracy, XNorm and each benchmark's accuracy per evaluation), and `report.json`.

The network is a searched architecture or a hand-designed baseline (`model.backbone`: MobileFaceNet, iResNet or
a timm model); both go through the same trainer, and the checkpoint stores whichever describes the network.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from facenas import __version__
from facenas.config import EXECUTION_KEYS, Config, VerifySetConfig, to_yaml
from facenas.data.faces.images import Preprocess
from facenas.data.faces.splits import load_face_splits
from facenas.data.faces.types import PairSet
from facenas.errors import ConfigError
from facenas.models.backbones import BackboneSpec, check_timm_name, params_for_budget
from facenas.models.checkpoint import describe_face_model
from facenas.space.arch import Arch
from facenas.train.distributed import World, process_group, rank_device
from facenas.train.evaluators import face_profile, setup_torch
from facenas.train.faces import FaceRun, fit_face, new_run, steps_per_epoch
from facenas.train.final import FileCheckpoint, atomic_torch_save
from facenas.train.metrics import EpochMetrics


def retarget(arch: Arch, config: Config) -> Arch:
    """The same body (C, D, ops, kernels) under the run's face profile, e.g. a half-resolution search result
    trained at 112x112 with a stride-2 stem. Parameters are unchanged where the final feature map keeps its size.
    The identity shortcuts belong to the body: an architecture found with them keeps them (and one found without
    stays a plain chain) whatever the run's `model.shortcut` says."""
    profile = replace(face_profile(config), shortcut=arch.profile.shortcut)
    if arch.profile.head != "embedding":
        raise ConfigError("this architecture has a classifier head; face training needs an architecture found by a "
                          "face search (task: faces)")
    return replace(arch, profile=profile)


def backbone_spec(config: Config) -> Optional[BackboneSpec]:
    """The hand-designed backbone a face config asks for (`model.backbone`), None for a searched architecture.

    Input channels, size, embedding and stem stride come from the run's face profile, as for the chain; the width
    is `model.backbone_width`, or the one whose parameter count is closest to `model.backbone_params`.
    MobileFaceNet and iResNet keep their own heads (a timm model gets `model.embedding_head`) and their own three
    reductions after the first (`model.reductions` is the chain's).
    """
    model, data = config.model, config.faces.data
    if model.backbone is None:
        return None
    spec = BackboneSpec(model.backbone, model.backbone_width, data.channels, data.size, model.embedding_dim,
                        model.embedding_head if model.backbone.startswith("timm:") else None, model.stem_stride)
    return spec if model.backbone_params is None else params_for_budget(spec, model.backbone_params)


def load_benchmarks(sets: tuple[VerifySetConfig, ...], prep: Preprocess) -> dict[str, PairSet]:
    """The configured benchmark sets, read as `facenas eval` reads them."""
    from facenas.evaluate.run import PairSource, load_pair_source

    return {s.name: load_pair_source(PairSource(s.name, Path(s.bin) if s.bin else None,
                                                Path(s.lfw_dir) if s.lfw_dir else None,
                                                Path(s.pairs) if s.pairs else None), prep) for s in sets}


class _Logger:
    """CSV of epochs and TensorBoard scalars (rank 0 only under DDP)."""

    def __init__(self, out: Path, every: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))
        self.csv = out / "metrics.csv"
        self.every = every

    def step(self, run: FaceRun, values: dict[str, Any]) -> None:
        """Every `every` steps: the one place a training step's loss is read back from the device."""
        if run.global_step % self.every == 0:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", float(value), run.global_step)

    def epoch(self, metrics: EpochMetrics, step: int) -> None:
        row = {k: v for k, v in metrics.to_dict().items() if k != "extra"} | metrics.extra
        for key in ("train_acc", "train_loss", "val_acc", *metrics.extra):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        self.writer.close()


def test_people_report(model: Any, splits: Any, batch_size: int, device: Any) -> Optional[dict[str, Any]]:
    """The final model on the people nobody chose or trained with (`faces.data.test_identities`), measured once,
    after training: the figure a comparison of backbones reports. None where the config keeps no such people."""
    if splits.test_pairs is None:
        return None
    from facenas.evaluate.verify import TorchEmbedder, evaluate_pairs

    images = splits.test_pairs.images
    report, _ = evaluate_pairs(TorchEmbedder(model, images.shape[2], images.shape[1], device), splits.test_pairs,
                               batch_size=batch_size)
    return {k: v for k, v in report.to_dict().items() if k != "roc"}


def train_faces(arch: Optional[Arch], config: Config, *,
                on_epoch: Optional[Callable[[EpochMetrics], None]] = None) -> dict[str, Any]:
    """Train `arch` (a searched architecture), or with `arch` None the config's `model.backbone`."""
    if config.task != "faces":
        raise ConfigError("facenas train needs a face config (task: faces)")
    backbone = backbone_spec(config)
    net: Arch | BackboneSpec
    if backbone is not None:
        if arch is not None:
            raise ConfigError(f"both an architecture and model.backbone ({backbone.name}) given; train one of them")
        check_timm_name(backbone)
        net, network = backbone, {"backbone": backbone.to_dict()}
    elif arch is None:
        raise ConfigError("nothing to train: give a searched architecture (--arch) or a backbone (model.backbone)")
    else:
        arch = net = retarget(arch, config)
        network = {"arch": arch.to_dict()}
    out = config.out_dir()
    device = setup_torch(config)
    with process_group(device) as world:
        return _train(arch, backbone, net, network, config, out, rank_device(world, device), world, on_epoch)


def _train(arch: Optional[Arch], backbone: Optional[BackboneSpec], net: Arch | BackboneSpec,
           network: dict[str, Any], config: Config, out: Path, device: Any, world: World,
           on_epoch: Optional[Callable[[EpochMetrics], None]]) -> dict[str, Any]:
    """One process's part of the run: every rank trains, rank 0 alone writes (returns {} elsewhere)."""
    cfg = config.faces.train
    if world.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(config))  # `facenas export` finds the held-out pairs through it
    # auto streams, except where bad images are to be skipped: skipping needs every image decoded first
    stream = cfg.stream == "on" or (cfg.stream == "auto" and not config.faces.data.skip_bad)
    splits = load_face_splits(config.faces.data, config.seed, stream=stream)
    benchmarks = load_benchmarks(config.faces.verify, splits.preprocess) if world.is_main else {}
    preprocess = {**splits.preprocess.to_dict(), "mean": 127.5, "std": 127.5, "color": "RGB",
                  "align": "arcface-112 (insightface norm_crop) where landmarks are known"}
    identity = {**network, "seed": config.seed, "epochs": cfg.epochs,
                "data": config.faces.data.model_dump(mode="json"),
                "train": cfg.model_dump(mode="json", exclude=set(EXECUTION_KEYS))}
    checkpoint = FileCheckpoint(out / "checkpoints" / "last.pt", identity, config.run.resume)
    steps = steps_per_epoch(len(splits.train), cfg.batch_size)
    run = new_run(arch, splits.train.num_identities, cfg, epochs=cfg.epochs, steps_per_epoch=steps, seed=config.seed,
                  device=device, preprocess=preprocess, backbone=backbone, world=world)
    state = checkpoint.load()
    if state is not None:
        run.load_state_dict(state)
    if not world.is_main:
        fit_face(run, splits.train, cfg=cfg, augment=config.faces.data.augment, epochs=cfg.epochs,
                 seed=config.seed, device=device, checkpoint=checkpoint, world=world)
        return {}
    if not config.run.resume and (out / "metrics.csv").exists():
        (out / "metrics.csv").unlink()
    logger = _Logger(out, cfg.log_every)
    began = time.perf_counter()

    def epoch_done(metrics: EpochMetrics) -> None:
        logger.epoch(metrics, run.global_step)
        if on_epoch is not None:
            on_epoch(metrics)

    try:
        history = fit_face(run, splits.train, cfg=cfg, augment=config.faces.data.augment, epochs=cfg.epochs,
                           seed=config.seed, device=device, pairs=splits.pairs, benchmarks=benchmarks,
                           on_epoch=epoch_done, on_step=logger.step, checkpoint=checkpoint, world=world)
    finally:
        logger.close()
    model_path = out / "model.pt"
    atomic_torch_save({"format": "facenas.face-model/1", **network, "preprocess": preprocess,
                       "model": run.model.state_dict(), "facenas_version": __version__}, model_path)
    info = describe_face_model(run.model, net)
    last = history[-1]
    best = max((e for e in history if not math.isnan(e.val_acc)), key=lambda e: e.val_acc, default=last)
    report = {
        "arch": info.description, "arch_short": info.short, "params": info.params, "macs": info.macs,
        "backbone": backbone.name if backbone is not None else None,
        "epochs": len(history), "seed": config.seed, "data": splits.summary(),
        "heldout_accuracy": last.val_acc, "best_heldout_accuracy": best.val_acc, "best_epoch": best.epoch + 1,
        "xnorm": last.extra.get("xnorm"), "benchmarks": {k[:-4]: v for k, v in last.extra.items()
                                                         if k.endswith("_acc")},
        "model": str(model_path), "checkpoint": str(checkpoint.path),
        "session_wall_s": time.perf_counter() - began, "processes": world.size,
        "facenas_version": __version__,
        "test_people": test_people_report(run.model, splits, cfg.eval_batch_size, device),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
