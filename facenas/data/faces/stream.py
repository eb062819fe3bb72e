"""Streaming training faces: read, aligned and augmented in DataLoader worker processes, never all in memory.

`materialize` decodes a whole set into one array, which a large set (CASIA-WebFace at 112x112: about 18 GB; MS1M:
about 218 GB) cannot afford. `FaceStream` keeps only the list of items: each batch is read from its source (a
RecordIO file handle per worker, or image files), prepared (alignment, crop, channels) and augmented where it is
loaded, `faces.train.workers` processes at a time, pinned and prefetched ahead of the training step.

The batches are the in-memory trainer's, to the pixel: `EpochBatches` yields each step's (epoch, position, item)
keys in the order `epoch_order` gives, and a sample's augmentation is seeded by its (epoch, position), so a run
trains identically from memory or streamed, with any number of workers, and resumes at any step.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facenas.config import FaceAugmentConfig
from facenas.data.faces.augment import augment_image, epoch_order, make_augment, rank_bounds, rank_share
from facenas.data.faces.images import Preprocess, prepare
from facenas.data.faces.sources import FaceSource

Key = tuple[int, int, int]  # (epoch, position in the epoch, item of the stream)


class FaceStream(Dataset):
    """Items of a source with their labels, decoded and prepared (and augmented) one at a time where read."""

    def __init__(self, source: FaceSource, items: np.ndarray, labels: np.ndarray, prep: Preprocess, *,
                 augment: Optional[FaceAugmentConfig] = None, seed: int = 0,
                 identities: Optional[tuple[str, ...]] = None) -> None:
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.source = source
        self.identities = identities if identities is not None else tuple(
            str(k) for k in range(int(np.max(labels)) + 1 if len(labels) else 0))
        self.items = np.asarray(items, np.int64)
        self.labels = np.asarray(labels, np.int64)
        self.prep = prep
        self.augment = augment
        self.seed = seed
        self._transform: Any = None  # built where it is used (each worker process)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    @classmethod
    def of(cls, source: FaceSource, items: np.ndarray, prep: Preprocess) -> "FaceStream":
        """Items of a source, their identities renumbered 0..K-1 over those present (as `materialize` does)."""
        items = np.asarray(items, np.int64)
        present, labels = np.unique(source.labels[items], return_inverse=True)
        return cls(source, items, labels, prep, identities=tuple(source.identities[p] for p in present))

    @property
    def channels(self) -> int:
        return self.prep.channels

    @property
    def size(self) -> int:
        return self.prep.size

    def image(self, item: int) -> np.ndarray:
        """Item `item` of the stream, prepared: (C, H, W) uint8, as `materialize` would hold it."""
        i = int(self.items[item])
        return prepare(self.source.load(i), self.prep, self.source.landmarks(i))

    def __getitem__(self, key: Key) -> tuple[np.ndarray, int]:
        epoch, position, item = key
        image = self.image(item)
        if self.augment is not None:
            if self._transform is None:
                self._transform = make_augment(self.augment, self.channels)
            image = augment_image(self._transform, image, self.seed, epoch, position)
        return np.ascontiguousarray(image), int(self.labels[item])


class EpochBatches(Sampler[list[Key]]):
    """An epoch's batches as `FaceStream` keys, in the in-memory trainer's order, from step `start_step` on; under
    DDP each rank's (`rank` of `world_size`) share of every global batch, as `facenas.train.distributed` describes.

    Iterated in the training process, so `set_epoch` reaches it even with persistent workers. `steps()` gives the
    step number of each batch the loader yields.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch, self.start_step = 0, 0
        self.bounds = rank_bounds(n, batch_size, world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def steps(self) -> list[int]:
        return [step for step, _, _ in self.bounds if step >= self.start_step]

    def __iter__(self) -> Iterator[list[Key]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        for step, start, end in self.bounds:
            if step >= self.start_step:
                lo, hi = rank_share(start, end, self.rank, self.world_size)
                yield [(self.epoch, p, int(order[p])) for p in range(lo, hi)]

    def __len__(self) -> int:
        return len(self.steps())


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([image for image, _ in batch]))
    return images, torch.tensor([label for _, label in batch], dtype=torch.int64)


def stream_loader(stream: FaceStream, batches: EpochBatches, *, workers: int = 0, pin_memory: bool = False,
                  prefetch: int = 4) -> DataLoader:
    """A DataLoader over `stream`: `workers` processes (0: in this one), persistent across epochs, each holding its
    own source handle, `prefetch` batches ahead per worker; uint8 batches, pinned for a fast copy to the GPU."""
    return DataLoader(stream, batch_sampler=batches, num_workers=workers, collate_fn=_collate, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=prefetch if workers > 0 else None)
