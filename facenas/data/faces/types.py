"""Value types for face data: identity-labelled image sets and verification pair sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from facenas.errors import DataError


@dataclass(frozen=True)
class FaceSet:
    """Face images as uint8 (N, C, H, W), C = 3 (RGB) or 1 (grey), with identity labels 0..K-1.

    `identities[k]` names label k; `landmarks` (N, 5, 2) are the five ArcFace points where known; `sources`
    names where each image came from (a file, a record key), for error messages and reports.
    """

    images: np.ndarray
    labels: np.ndarray
    identities: tuple[str, ...]
    landmarks: Optional[np.ndarray] = None
    name: str = ""
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise DataError(f"{self.name}: face images must be uint8 (N, 1|3, H, W), got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.identities)):
            raise DataError(f"{self.name}: labels must lie in [0, {len(self.identities)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def subset(self, index: np.ndarray, relabel: bool = False) -> "FaceSet":
        """The images at `index`; with `relabel`, identities renumbered 0..K'-1 over those present."""
        index = np.asarray(index)
        labels = self.labels[index]
        identities = self.identities
        if relabel:
            present, labels = np.unique(labels, return_inverse=True)
            identities = tuple(self.identities[i] for i in present)
        return FaceSet(self.images[index], labels.astype(np.int64), identities,
                       None if self.landmarks is None else self.landmarks[index], self.name,
                       tuple(self.sources[i] for i in index) if self.sources else ())

    def by_identities(self, identity_labels: np.ndarray) -> "FaceSet":
        """The images of the given identities, relabelled 0..K'-1."""
        keep = np.isin(self.labels, identity_labels)
        return self.subset(np.flatnonzero(keep), relabel=True)


@dataclass(frozen=True)
class PairSet:
    """Verification pairs: images[2i] and images[2i+1] form pair i; `issame[i]` says whether they match.

    `folds[i]` is pair i's fold (LFW's 10 folds of 300 + 300), or -1 where the source defines none and the
    evaluation cuts contiguous folds, as insightface does.
    """

    images: np.ndarray
    issame: np.ndarray
    name: str = ""
    folds: Optional[np.ndarray] = None
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}: pair images must be uint8 (2N, C, H, W), got {self.images.shape}")
        if len(self.images) != 2 * len(self.issame):
            raise DataError(f"{self.name}: {len(self.images)} images for {len(self.issame)} pairs (need 2 per pair)")

    def __len__(self) -> int:
        return len(self.issame)
