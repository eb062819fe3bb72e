"""Training-time augmentation of face crops (albumentations), seeded per sample, and the epoch's batches.

Each sample's augmentation is seeded from (seed, epoch, position in the epoch) and each epoch's order from (seed,
epoch), so a batch is a pure function of those numbers: a run resumed after step k sees exactly the batches an
uninterrupted run would, and a batch built in a DataLoader worker (`stream.py`) is the batch built in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facenas.config import FaceAugmentConfig


def make_augment(cfg: FaceAugmentConfig, channels: int = 3) -> Any:
    import albumentations as A

    grey = [A.ToGray(p=cfg.grey)] if channels == 3 else []
    return A.Compose([
        A.HorizontalFlip(p=cfg.flip),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), rotate=(-8, 8), p=cfg.affine),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=cfg.brightness_contrast),
        A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur),
        *grey,
    ], seed=0)


def sample_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def augment_image(transform: Any, image: np.ndarray, seed: int, epoch: int, position: int) -> np.ndarray:
    """One (C, H, W) uint8 crop augmented with the seed of its place in the epoch."""
    transform.set_random_seed(sample_seed(seed, epoch, position))
    aug = transform(image=np.ascontiguousarray(image.transpose(1, 2, 0)))["image"]
    return (aug if aug.ndim == 3 else aug[:, :, None]).transpose(2, 0, 1)


def augment_batch(transform: Any, images: np.ndarray, seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    out = np.empty_like(images)
    for k, (img, pos) in enumerate(zip(images, positions)):
        out[k] = augment_image(transform, img, seed, epoch, int(pos))
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch visits `n` training images."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 11])).permutation(n)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of an epoch of `n` images; a last batch of one image joins the batch before.

    BatchNorm cannot normalise a batch of one in training mode (the embedding head's BatchNorm1d raises), so a set
    whose size is 1 modulo the batch size would otherwise fail every candidate. Nothing is dropped.
    """
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]


def rank_bounds(n: int, batch_size: int, world_size: int = 1) -> list[tuple[int, int, int]]:
    """(step, start, end) of the batches an epoch trains with `world_size` processes: `batch_bounds`, less a last
    batch too small to give each process the two samples BatchNorm needs (only with several processes)."""
    return [(step, start, end) for step, (start, end) in enumerate(batch_bounds(n, batch_size))
            if world_size == 1 or end - start >= 2 * world_size]


def rank_share(start: int, end: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share of the positions [start, end) of a global batch; shares differ by at most
    one sample."""
    n = end - start
    return start + n * rank // world_size, start + n * (rank + 1) // world_size
