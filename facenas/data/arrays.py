"""Image sets held in memory as uint8 arrays, and their seeded, stratified splits.

The search trains 50 to 90 candidates on the same data, so datasets are decoded once into one uint8 array
(N, C, H, W) plus int64 labels, and every later step (splits, batches, augmentation) indexes into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facenas.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W) with int64 labels in [0, classes)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"{self.name}: labels must lie in [0, {len(self.classes)}), found "
                            f"{int(self.labels.min())}..{int(self.labels.max())}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def side(self) -> int:
        return int(self.images.shape[2])

    def subset(self, index: np.ndarray, name: Optional[str] = None) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes, name or self.name)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test, and how they were made (recorded in every report)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    protocol: str
    description: str

    def summary(self) -> dict[str, object]:
        return {"protocol": self.protocol, "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "description": self.description}


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with `fraction` of every class held out, seeded.

    scikit-learn's splitter does the work; it needs at least two members per class, which is checked first so
    that the error names the problem.
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    if (counts[counts > 0] < 2).any():
        raise DataError("a stratified split needs at least 2 images of every class")
    index = np.arange(len(labels))
    rest, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(rest), np.sort(held)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices with the class proportions of `labels`, seeded."""
    if size >= len(labels):
        return np.arange(len(labels))
    keep, _ = stratified_split(labels, 1.0 - size / len(labels), seed)
    return keep


def make_splits(pool: ImageSet, test: Optional[ImageSet], *, protocol: str, val_fraction: float,
                test_fraction: float, seed: int, train_subset: Optional[int] = None) -> Splits:
    """Split a training pool (and an official test set, if the source has one) by protocol.

    - holdout (default): a stratified validation split is held out of the training pool; the test set is
      untouched by the search.
    - paper: candidates are scored on the test split, as the authors did (method.md section 4, caveat).
    A source with a single split (an MNIST idx folder holding only t10k, scikit-learn's digits) first has a
    stratified `test_fraction` carved out as its test set.
    """
    notes = []
    if test is None:
        rest, held = stratified_split(pool.labels, test_fraction, seed)
        test = pool.subset(held, f"{pool.name}:test")
        pool = pool.subset(rest, f"{pool.name}:pool")
        notes.append(f"test = stratified {test_fraction:.0%} of the only split ({len(test)} images)")
    if protocol == "paper":
        train, val = pool, test
        notes.append("validation = the test split (the authors' protocol)")
    elif protocol == "holdout":
        rest, held = stratified_split(pool.labels, val_fraction, seed + 1)
        train, val = pool.subset(rest, f"{pool.name}:train"), pool.subset(held, f"{pool.name}:val")
        notes.append(f"validation = stratified {val_fraction:.0%} of the training pool; test untouched")
    else:
        raise DataError(f"unknown protocol {protocol!r}; choose holdout or paper")
    if train_subset is not None and train_subset < len(train):
        train = train.subset(stratified_subset(train.labels, train_subset, seed + 2), f"{pool.name}:train")
        notes.append(f"training subset of {len(train)} images (stratified)")
    return Splits(train, val, test, protocol, f"seed {seed}; " + "; ".join(notes))
