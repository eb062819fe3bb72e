"""Writers: an insightface RecordIO training set from any face source, and `.bin` pair sets.

`build_rec` writes the classic insightface layout that both insightface's readers understand (`MXFaceDataset`
and the older identity-record readers): record 0 is a header with labels (a, b), images are keys 1..a-1 with
their identity as a float label, keys a..b-1 hold each identity's (first key, end key), and `property` says
`classes,height,width`. Images already encoded as JPEG or PNG are copied byte for byte unless a preprocessing
(resize, alignment, channels) is asked for, so reading the set back gives exactly the source's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facenas.data.faces.images import Preprocess, decode_image, encode_image, prepare
from facenas.data.faces.recordio import IRHeader, RecordIOWriter, pack
from facenas.data.faces.sources import FaceSource, FolderSource
from facenas.data.faces.types import FaceSet
from facenas.errors import DataError

_PASS_THROUGH = (".jpg", ".jpeg", ".png")


@dataclass
class BuildReport:
    images: int = 0
    identities: int = 0
    image_size: tuple[int, int] = (0, 0)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"images": self.images, "identities": self.identities, "image_size": list(self.image_size),
                "skipped": self.skipped}


def _encoded(source: FaceSource, i: int, prep: Optional[Preprocess], fmt: str, quality: int) -> tuple[bytes, tuple]:
    """(encoded bytes, (height, width)) of item i: the file's own bytes where nothing needs changing."""
    if prep is None and isinstance(source, FolderSource) and source.paths[i].suffix.lower() in _PASS_THROUGH:
        data = source.paths[i].read_bytes()
        img = decode_image(data, source.where(i))  # checks the file decodes, and gives its size
        return data, img.shape[:2]
    img = source.load(i)
    if prep is not None:
        img = prepare(img, prep, source.landmarks(i)).transpose(1, 2, 0)
        img = img[:, :, 0] if img.shape[2] == 1 else img
    return encode_image(img, fmt, quality), img.shape[:2]


def build_rec(source: FaceSource, out_dir: str | Path, *, prep: Optional[Preprocess] = None, fmt: str = ".jpg",
              quality: int = 95, skip_bad: bool = False, overwrite: bool = False,
              progress: Optional[Callable[[], None]] = None) -> BuildReport:
    """Write `train.rec`, `train.idx` and `property` under `out_dir`."""
    out = Path(out_dir)
    rec = out / "train.rec"
    if rec.exists() and not overwrite:
        raise DataError(f"{rec} already exists; choose another output folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    order = np.argsort(source.labels, kind="stable")
    key = 1
    ranges: list[tuple[int, int]] = []
    sizes: set[tuple[int, int]] = set()
    with RecordIOWriter(rec, out / "train.idx") as writer:
        current, start = None, 1
        new_label = -1
        for i in order:
            try:
                data, size = _encoded(source, int(i), prep, fmt, quality)
            except DataError as exc:
                if not skip_bad:
                    raise
                report.skipped.append(str(exc))
                continue
            label = int(source.labels[i])
            if label != current:
                if current is not None:
                    ranges.append((start, key))
                current, start = label, key
                new_label += 1
            writer.write(key, pack(IRHeader(0, float(new_label), key, 0), data))
            sizes.add(tuple(size))
            key += 1
            if progress is not None:
                progress()
        if current is None:
            raise DataError(f"{source.name}: nothing to write")
        ranges.append((start, key))
        first_identity = key
        for r0, r1 in ranges:
            writer.write(key, pack(IRHeader(2, np.array([r0, r1], np.float32), key, 0), b""))
            key += 1
        writer.write(0, pack(IRHeader(2, np.array([first_identity, key], np.float32), 0, 0), b""))
    height, width = max(sizes)
    (out / "property").write_text(f"{len(ranges)},{height},{width}\n")
    report.images, report.identities, report.image_size = first_identity - 1, len(ranges), (height, width)
    return report


def write_folder(faces: FaceSet, root: str | Path, *, fmt: str = ".png", quality: int = 95,
                 names: Optional[Callable[[str, int], str]] = None) -> list[Path]:
    """Write a face set as `root/<identity>/<identity>_000n<fmt>` (LFW's naming), returning the paths."""
    root = Path(root)
    counts: dict[int, int] = {}
    paths = []
    for img, label in zip(faces.images, faces.labels):
        ident = faces.identities[int(label)]
        counts[int(label)] = counts.get(int(label), 0) + 1
        folder = root / ident
        folder.mkdir(parents=True, exist_ok=True)
        stem = names(ident, counts[int(label)]) if names else f"{ident}_{counts[int(label)]:04d}"
        path = folder / f"{stem}{fmt}"
        arr = img.transpose(1, 2, 0)
        path.write_bytes(encode_image(arr[:, :, 0] if arr.shape[2] == 1 else arr, fmt, quality))
        paths.append(path)
    return paths
