"""Identity-labelled face sources: image folders, insightface RecordIO, in-memory sets.

A source lists its items (labels, identity names, where each item lives) without decoding anything;
`materialize` decodes and prepares the items it is asked for into an in-memory `FaceSet`, which suits the search's
small proxy sets; `stream.FaceStream` reads the items where they are trained instead, for sets that do not fit.
Unreadable items get an error naming the file or record; with `skip_bad` they are left out and reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from facenas.data.faces.images import IMAGE_SUFFIXES, Preprocess, decode_image, prepare, read_image
from facenas.data.faces.recordio import RecordIOReader, read_layout
from facenas.data.faces.types import FaceSet
from facenas.errors import DataError


class FaceSource(Protocol):
    name: str
    labels: np.ndarray
    identities: tuple[str, ...]

    def __len__(self) -> int: ...

    def load(self, i: int) -> np.ndarray:
        """Decoded RGB (H, W, 3) or grey (H, W) uint8 image of item i."""
        ...

    def landmarks(self, i: int) -> Optional[np.ndarray]: ...

    def where(self, i: int) -> str: ...


def read_landmarks_file(path: Path, root: Path) -> dict[str, np.ndarray]:
    """`relative/path x1 y1 ... x5 y5` per line (whitespace or commas) -> {relative path: (5, 2)}."""
    table: dict[str, np.ndarray] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 11:
            raise DataError(f"{path}:{number}: expected a path and 10 numbers (5 landmarks), got {len(parts)} "
                            "fields")
        try:
            table[parts[0]] = np.array([float(v) for v in parts[1:]], np.float32).reshape(5, 2)
        except ValueError:
            raise DataError(f"{path}:{number}: landmarks must be numbers") from None
    return table


class FolderSource:
    """`root/<identity>/<image>`: one sub-folder per identity (torchvision's ImageFolder layout)."""

    def __init__(self, root: str | Path, *, landmarks_file: Optional[str | Path] = None,
                 skip_empty: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist")
        self.name = str(self.root)
        self.problems: list[str] = []
        paths, labels, names = [], [], []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                message = f"{folder}: identity folder has no images ({', '.join(IMAGE_SUFFIXES)})"
                if not skip_empty:
                    raise DataError(message + "; remove it or pass skip_bad")
                self.problems.append(message)
                continue
            names.append(folder.name)
            paths.extend(files)
            labels.extend([len(names) - 1] * len(files))
        if not names:
            raise DataError(f"{self.root}: no identity sub-folders with images (expected root/<identity>/<image>)")
        self.paths = paths
        self.labels = np.asarray(labels, np.int64)
        self.identities = tuple(names)
        self._landmarks: dict[str, np.ndarray] = {}
        if landmarks_file:
            self._landmarks = read_landmarks_file(Path(landmarks_file), self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])

    def landmarks(self, i: int) -> Optional[np.ndarray]:
        return self._landmarks.get(self.paths[i].relative_to(self.root).as_posix())

    def where(self, i: int) -> str:
        return str(self.paths[i])


class RecordIOSource:
    """insightface's `train.rec` / `train.idx` / `property`, read without mxnet."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        rec = path if path.suffix == ".rec" else folder / "train.rec"
        self.reader = RecordIOReader(rec)
        self.name = str(rec)
        layout = read_layout(self.reader, folder)
        self.keys = layout.image_keys
        self.labels = layout.labels
        self.identities = tuple(f"id{i}" for i in range(layout.num_classes))
        self.image_size = layout.image_size
        self.problems: list[str] = []

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int) -> np.ndarray:
        key = int(self.keys[i])
        _, payload = self.reader.read(key)
        return decode_image(payload, f"{self.name} record {key}")

    def landmarks(self, i: int) -> Optional[np.ndarray]:
        return None

    def where(self, i: int) -> str:
        return f"{self.name} record {int(self.keys[i])}"


class ArraySource:
    """An in-memory `FaceSet` seen as a source (the synthetic faces)."""

    def __init__(self, faces: FaceSet) -> None:
        self.faces = faces
        self.name = faces.name
        self.labels = faces.labels
        self.identities = faces.identities
        self.problems: list[str] = []

    def __len__(self) -> int:
        return len(self.faces)

    def load(self, i: int) -> np.ndarray:
        img = self.faces.images[i].transpose(1, 2, 0)
        return img[:, :, 0] if img.shape[2] == 1 else img

    def landmarks(self, i: int) -> Optional[np.ndarray]:
        return None if self.faces.landmarks is None else self.faces.landmarks[i]

    def where(self, i: int) -> str:
        return self.faces.sources[i] if self.faces.sources else f"{self.name}[{i}]"


def open_source(path: str | Path, **kwargs: object) -> FaceSource:
    """A folder of identity folders, or an insightface RecordIO folder / .rec file."""
    path = Path(path)
    if path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").exists()):
        return RecordIOSource(path)
    return FolderSource(path, **kwargs)  # type: ignore[arg-type]


@dataclass
class Materialized:
    faces: FaceSet
    problems: list[str] = field(default_factory=list)


def materialize(source: FaceSource, index: Optional[np.ndarray], prep: Preprocess, *,
                skip_bad: bool = False) -> Materialized:
    """Decode and prepare items into memory; bad items raise, or are skipped and reported with `skip_bad`.

    The images go straight into one preallocated array: gathering them in a list and stacking would hold the set
    twice at the peak.
    """
    index = np.arange(len(source)) if index is None else np.asarray(index)
    images = np.empty((len(index), prep.channels, prep.size, prep.size), np.uint8)
    kept: list[int] = []
    problems: list[str] = []
    for i in index:
        try:
            images[len(kept)] = prepare(source.load(int(i)), prep, source.landmarks(int(i)))
        except DataError as exc:
            if not skip_bad:
                raise
            problems.append(str(exc))
            continue
        kept.append(int(i))
    if not kept:
        raise DataError(f"{source.name}: no readable images" + (f" ({problems[0]})" if problems else ""))
    images = images[:len(kept)] if len(kept) < len(images) else images
    kept_arr = np.asarray(kept)
    labels = source.labels[kept_arr]
    present, relabelled = np.unique(labels, return_inverse=True)
    faces = FaceSet(images, relabelled.astype(np.int64), tuple(source.identities[p] for p in present),
                    None, source.name, tuple(source.where(i) for i in kept))
    return Materialized(faces, problems)
