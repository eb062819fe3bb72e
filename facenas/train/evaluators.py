"""facenas's own evaluator for image classification: train a candidate with the proxy trainer, score it.

The evaluator holds only the run's config, so it pickles in microseconds and can be shipped to a child process;
the dataset is loaded (and cached per process) the first time a candidate is trained.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

from facenas.config import Config, DataConfig
from facenas.data.arrays import ImageSet
from facenas.data.batch_aug import AugmentSpec, BatchAugment, channel_stats
from facenas.data.sources import dataset_info, load_splits
from facenas.models import build_model
from facenas.space.arch import Arch, Profile
from facenas.space.profiles import classification_profile
from facenas.train.classify import fit_classifier
from facenas.train.core import resolve_device
from facenas.train.metrics import EpochMetrics, Metrics


def profile_for_config(config: Config) -> Profile:
    info = dataset_info(config.data.dataset)
    return classification_profile(info.in_channels, info.num_classes, info.side,
                                  stem_stride=config.model.stem_stride, reductions=config.model.reductions,
                                  shortcut=bool(config.model.shortcut))


def augment_spec(data: DataConfig, train: ImageSet) -> AugmentSpec:
    """The paper's augmentation for this dataset: crop 32 pad 4 (28x28 sets are cropped to 32 in training and
    evaluated at 28), cutout 16, flip only for CIFAR and FashionMNIST; config keys override each part."""
    info = dataset_info(data.dataset)
    side = train.side
    crop = data.crop_size if data.crop_size is not None else (32 if side in (28, 32) else side)
    mean, std = channel_stats(train.images)
    return AugmentSpec(crop_size=crop, padding=data.crop_padding, flip=info.flip if data.flip is None else data.flip,
                       cutout=data.cutout, mean=mean, std=std)


def setup_torch(config: Config) -> torch.device:
    train = config.faces.train if config.task == "faces" else config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    device = resolve_device(train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


class _ConfigEvaluator:
    """An evaluator that is its run's config (cheap to pickle; data loads lazily where it trains)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def placed(self, *, threads: Optional[int] = None, device: Optional[str] = None) -> "_ConfigEvaluator":
        """The same evaluator on a worker's share of the machine: its CPU threads and device (e.g. cuda:1)."""
        key = "faces" if self.config.task == "faces" else None
        train = self.config.faces.train if key else self.config.train
        update = {k: v for k, v in (("threads", threads), ("device", device)) if v is not None}
        if not update:
            return self
        train = train.model_copy(update=update)
        config = (self.config.model_copy(update={"faces": self.config.faces.model_copy(update={"train": train})})
                  if key else self.config.model_copy(update={"train": train}))
        return type(self)(config)


class ClassificationEvaluator(_ConfigEvaluator):
    """Candidate -> proxy training on the run's train split -> best validation accuracy."""

    def describe(self) -> dict[str, Any]:
        data = self.config.data
        return {"name": "classification", "dataset": data.dataset, "protocol": data.protocol,
                "train_subset": data.train_subset, "lr_schedule": self.config.train.lr_schedule,
                "batch_size": self.config.train.batch_size}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int,
                 on_epoch: Optional[Any] = None) -> Metrics:
        began = time.perf_counter()
        device = setup_torch(self.config)
        splits = load_splits(self.config.data, self.config.seed)
        augment = BatchAugment(augment_spec(self.config.data, splits.train), splits.train.side, device)
        torch.manual_seed(seed)
        model = build_model(arch)
        history: list[EpochMetrics] = fit_classifier(
            model, splits.train, splits.val, cfg=self.config.train, augment=augment, epochs=epochs, seed=seed,
            device=device, on_epoch=on_epoch)
        return Metrics(tuple(history), time.perf_counter() - began,
                       {"device": str(device), "train_images": len(splits.train), "val_images": len(splits.val)})


def face_profile(config: Config) -> Profile:
    """The face profile of the space: embedding head, the run's resolution, channels, stem stride, reductions."""
    data, model = config.faces.data, config.model
    return Profile(in_channels=data.channels, num_classes=2, stem_stride=model.stem_stride,
                   reductions=model.reductions, head="embedding", embedding_dim=model.embedding_dim,
                   embedding_head=model.embedding_head, input_size=data.size, shortcut=bool(model.shortcut))


def task_profile(config: Config) -> Profile:
    return face_profile(config) if config.task == "faces" else profile_for_config(config)


class FaceEvaluator(_ConfigEvaluator):
    """Candidate -> margin-softmax training on the training identities -> held-out verification accuracy.

    The score of a candidate is a verification measure on identities that never appear in training, chosen and
    reduced over its epochs by `faces.score` (by default its best 10-fold accuracy (%), method.md section 5; the
    face configs use the last epoch's ROC AUC on every genuine pair); the train accuracy the strategy watches is
    the class centre argmax accuracy on the training batches.
    """

    def describe(self) -> dict[str, Any]:
        d, t = self.config.faces.data, self.config.faces.train
        return {"name": "faces", "source": d.source, "size": d.size, "channels": d.channels,
                "heldout_identities": d.heldout_identities, "train_identities": d.train_identities,
                "loss": t.margin.loss, "margins": list(t.margin.margins()), "s": t.margin.s,
                "batch_size": t.batch_size, "score": self.config.faces.score.model_dump()}

    def evaluate(self, arch: Arch, epochs: int, *, seed: int, on_epoch: Optional[Any] = None) -> Metrics:
        from facenas.data.faces.splits import load_face_splits
        from facenas.train.face_score import make_scorer
        from facenas.train.faces import fit_face, new_run, steps_per_epoch

        began = time.perf_counter()
        device = setup_torch(self.config)
        cfg, data, score = self.config.faces.train, self.config.faces.data, self.config.faces.score
        stream = cfg.stream == "on"
        # decoded once per run, memory-mapped by every candidate's process (`run.cache`)
        cache = self.config.out_dir() / "cache" if self.config.run.cache and not stream else None
        splits = load_face_splits(data, self.config.seed, stream=stream, cache=cache)
        if score.common_random_numbers:
            seed = self.config.seed  # every candidate sees the same data order, augmentation and init stream
        scorer = make_scorer(splits.heldout, score, per_fold=data.heldout_pairs_per_fold, folds=data.pair_folds,
                             seed=self.config.seed, batch_size=cfg.eval_batch_size)
        run = new_run(arch, splits.train.num_identities, cfg, epochs=epochs,
                      steps_per_epoch=steps_per_epoch(len(splits.train), cfg.batch_size), seed=seed, device=device,
                      preprocess=splits.preprocess.to_dict())
        first_scored = {"max": 0, "last": epochs - 1, "mean_last": epochs - score.last_k}[score.reduce]
        history = fit_face(run, splits.train, cfg=cfg, augment=data.augment, epochs=epochs, seed=seed, device=device,
                           scorer=scorer, score_measure=score.metric, score_from_epoch=max(first_scored, 0),
                           on_epoch=on_epoch)
        return Metrics(tuple(history), time.perf_counter() - began,
                       {"device": str(device), "train_images": len(splits.train),
                        "pairs": int(len(scorer.index.issame)), "score": score.model_dump()},
                       reduce=score.reduce, last_k=score.last_k)
