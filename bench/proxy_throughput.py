"""Images per second of one candidate epoch: facenas's proxy trainer vs an authors'-style DataLoader loop.

Both sides train the same architecture (same initial weights) on the same images for one epoch with the same
optimiser, batch size and augmentation (random crop 32 pad 4, cutout 16), then score the validation split:

- baseline: what the authors' code does per candidate: a torchvision `Dataset` of PIL images with per-sample
  `transforms` (RandomCrop, ToTensor, Normalize, a numpy Cutout), a `DataLoader` with 2 workers and a
  `SubsetRandomSampler`, an epoch-wise cosine scheduler, per-step `loss.item()` bookkeeping, and validation in
  batches of 64 through the same per-sample pipeline;
- facenas: `fit_classifier` with the dataset in memory as uint8 and augmentation applied per batch;
- bare: the limit. The same model's forward, backward and optimiser steps on batches already on the device as
  float (no augmentation, no bookkeeping), then the validation forward: what no data pipeline can beat.
  `facenas / bare` says how much of the device the proxy trainer leaves unused.

Data: the MNIST test set in ../shared/data/mnist (split 80/20), or scikit-learn's digits scaled to 28x28 where
that folder is absent. Prints a table and the ratio and writes JSON to bench/results/proxy_throughput.json.

    python bench/proxy_throughput.py [--models 8x6,16x10,32x12] [--repeats 2] [--precision fp32]
                                     [--channels-last auto] [--device cpu] [--out FILE]

On a GPU (`--device cuda`, bench/gpu_check.sh) every side runs on it: the baseline copies each batch over, as the
authors' loop did, and the clocks stop only after `torch.cuda.synchronize()`.

Models are WIDTHxDEPTH chains of all-separable 3x3 layers, the macro phases' candidates; the default covers the
sizes the MNIST search trains on this kind of machine (C8 to C16) and one wider net.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

from facenas import __version__
from facenas.config import TrainConfig
from facenas.data.arrays import ImageSet, make_splits
from facenas.data.batch_aug import AugmentSpec, BatchAugment, channel_stats
from facenas.data.sources import load_digits, load_mnist_idx
from facenas.models import build_model
from facenas.space.arch import Arch
from facenas.space.profiles import classification_profile
from facenas.train.classify import fit_classifier

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


# -- the baseline, written the way the authors' search script trains a candidate ---------------------------------

class CutoutPerSample:
    """Zero a square of side `length` around a random centre of a normalised (C, H, W) tensor."""

    def __init__(self, length: int, rng: np.random.Generator) -> None:
        self.length = length
        self.rng = rng

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1], img.shape[2]
        mask = np.ones((h, w), np.float32)
        y, x = self.rng.integers(h), self.rng.integers(w)
        half = self.length // 2
        mask[np.clip(y - half, 0, h):np.clip(y + half, 0, h), np.clip(x - half, 0, w):np.clip(x + half, 0, w)] = 0
        return img * torch.from_numpy(mask).expand_as(img)


class PILDataset(Dataset):
    """uint8 arrays served as PIL images through per-sample transforms, as torchvision's MNIST does."""

    def __init__(self, data: ImageSet, transform: T.Compose) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data.images[i, 0], mode="L")
        return self.transform(img), int(self.data.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epoch(model: nn.Module, train: ImageSet, val: ImageSet, spec: AugmentSpec, cfg: TrainConfig,
                   workers: int, device: torch.device) -> tuple[float, float, float]:
    """(seconds, train accuracy, validation accuracy) of one epoch the authors' way."""
    normalize = T.Normalize(spec.mean, spec.std)
    train_tf = T.Compose([T.RandomCrop(spec.crop_size, padding=spec.padding), T.ToTensor(), normalize,
                          CutoutPerSample(spec.cutout, np.random.default_rng(0))])
    val_tf = T.Compose([T.ToTensor(), normalize])
    train_loader = DataLoader(PILDataset(train, train_tf), batch_size=cfg.batch_size,
                              sampler=SubsetRandomSampler(range(len(train))), num_workers=workers)
    val_loader = DataLoader(PILDataset(val, val_tf), batch_size=cfg.batch_size, num_workers=workers)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1.0)
    _sync(device)
    began = time.perf_counter()
    model.train()
    correct = total = 0
    loss_sum = 0.0
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    scheduler.step()
    train_acc = 100.0 * correct / total
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    _sync(device)
    return time.perf_counter() - began, train_acc, 100.0 * correct / total


def facenas_epoch(model: nn.Module, train: ImageSet, val: ImageSet, spec: AugmentSpec,
                  cfg: TrainConfig, device: torch.device) -> tuple[float, float, float]:
    augment = BatchAugment(spec, train.side, device)
    _sync(device)
    began = time.perf_counter()
    history = fit_classifier(model, train, val, cfg=cfg, augment=augment, epochs=1, seed=0, device=device)
    _sync(device)
    return time.perf_counter() - began, history[0].train_acc, history[0].val_acc


def bare_epoch(model: nn.Module, train: ImageSet, val: ImageSet, spec: AugmentSpec, cfg: TrainConfig,
               device: torch.device) -> tuple[float, float, float]:
    """The limit: the same steps on float batches already on the device (training at the crop size, validation
    at the native size), with the trainer's precision and memory layout and nothing else."""
    from facenas.train.core import autocast, use_channels_last

    def on_device(images: np.ndarray, pad: int) -> torch.Tensor:
        x = torch.from_numpy(images).to(device).float().div_(255.0)
        x = (x - torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)) / torch.tensor(
            spec.std, device=device).view(1, -1, 1, 1)
        return F.pad(x, (pad,) * 4) if pad else x

    model.to(device)
    memory_format = (torch.channels_last if use_channels_last(model, device, cfg.channels_last, cfg.precision)
                     else torch.contiguous_format)
    model.to(memory_format=memory_format)
    x_train = on_device(train.images, (spec.crop_size - train.side) // 2).contiguous(memory_format=memory_format)
    x_val = on_device(val.images, 0).contiguous(memory_format=memory_format)
    y_train = torch.from_numpy(train.labels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    cast = autocast(device, cfg.precision)
    _sync(device)
    began = time.perf_counter()
    model.train()
    for start in range(0, len(y_train), cfg.batch_size):
        with cast:
            loss = F.cross_entropy(model(x_train[start:start + cfg.batch_size]).float(),
                                   y_train[start:start + cfg.batch_size])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    model.eval()
    with torch.inference_mode(), cast:
        for start in range(0, len(x_val), cfg.eval_batch_size):
            model(x_val[start:start + cfg.eval_batch_size])
    _sync(device)
    return time.perf_counter() - began, float("nan"), float("nan")


def load_data() -> tuple[ImageSet, str]:
    if (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pool, _ = load_mnist_idx(SHARED_MNIST)
        return pool, "MNIST test set (../shared/data/mnist)"
    digits = load_digits()
    big = torch.nn.functional.interpolate(torch.from_numpy(digits.images).float(), size=28, mode="bilinear")
    return ImageSet(big.round().clamp(0, 255).to(torch.uint8).numpy(), digits.labels, digits.classes,
                    "digits28"), "scikit-learn digits upscaled to 28x28 (../shared absent)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="8x6,16x10,32x12", help="comma-separated WIDTHxDEPTH")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per side (best is reported)")
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers (the authors used 2)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="facenas's and bare's autocast precision (the baseline is always fp32, as the "
                             "authors); fp16 needs CUDA")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="facenas's and bare's memory layout")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy_throughput.json")
    args = parser.parse_args()

    pool, data_name = load_data()
    splits = make_splits(pool, None, protocol="holdout", val_fraction=0.1, test_fraction=0.2, seed=0)
    train, val = splits.train, splits.val
    mean, std = channel_stats(train.images)
    spec = AugmentSpec(crop_size=32, padding=4, flip=False, cutout=16, mean=mean, std=std)
    device = torch.device(args.device)
    cfg = TrainConfig()
    facenas_cfg = TrainConfig(precision=args.precision, channels_last=args.channels_last)
    results = []
    for token in args.models.split(","):
        width, depth = (int(v) for v in token.lower().split("x"))
        arch = Arch.uniform(width, depth, classification_profile(1, 10, 28))
        torch.manual_seed(0)
        initial = build_model(arch).state_dict()
        rows = {}
        for name in ("baseline", "facenas", "bare"):
            times, accs = [], []
            for _ in range(args.repeats):
                model = build_model(arch)
                model.load_state_dict(initial)
                if name == "baseline":
                    seconds, train_acc, val_acc = baseline_epoch(model, train, val, spec, cfg, args.workers, device)
                elif name == "facenas":
                    seconds, train_acc, val_acc = facenas_epoch(model, train, val, spec, facenas_cfg, device)
                else:
                    seconds, train_acc, val_acc = bare_epoch(model, train, val, spec, facenas_cfg, device)
                times.append(seconds)
                accs.append((train_acc, val_acc))
            best = min(times)
            images = len(train) + len(val)
            rows[name] = {"seconds": times, "best_seconds": best, "images_per_second": images / best,
                          "train_acc": accs[0][0], "val_acc": accs[0][1]}
        speed = {name: row["images_per_second"] for name, row in rows.items()}
        ratio = speed["facenas"] / speed["baseline"]
        of_bare = speed["facenas"] / speed["bare"]
        print(f"{arch.short()[:12]:12s} params {sum(p.numel() for p in build_model(arch).parameters()):7d}  "
              f"baseline {speed['baseline']:6.0f}  facenas {speed['facenas']:6.0f}  bare {speed['bare']:6.0f} img/s"
              f"  facenas/baseline {ratio:.2f}x  facenas/bare {of_bare:.2f}")
        results.append({"arch": arch.short(), "width": width, "depth": depth, "ratio": ratio,
                        "facenas_of_bare": of_bare, **rows})
    result = {
        "benchmark": "proxy_throughput", "target_ratio": 2.0, "models": results,
        "data": data_name, "train_images": len(train), "val_images": len(val), "images_per_epoch": len(train) +
        len(val), "batch_size": cfg.batch_size, "baseline_workers": args.workers,
        "facenas_precision": args.precision, "channels_last": args.channels_last, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "cores": os.cpu_count(), "platform": platform.platform()},
        "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
