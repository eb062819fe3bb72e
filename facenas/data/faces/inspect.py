"""`facenas data inspect`: what a face dataset holds, and what is wrong with it.

Works on every format facenas reads: an image folder (one sub-folder per identity), an insightface RecordIO
folder or `.rec`, a `.bin` pair file, and an LFW directory with its `pairs.txt`. Record headers are all checked;
images are decoded up to `decode_limit` (all of them by default) so that a corrupt file is found before a
training run trips over it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from facenas.data.faces.images import IMAGE_SUFFIXES, decode_image
from facenas.data.faces.pairs import parse_pairs, read_bin_raw
from facenas.data.faces.recordio import RecordIOReader, read_layout, read_property
from facenas.errors import DataError


def _image_stats(decoded: list[np.ndarray]) -> dict[str, Any]:
    sizes = Counter(f"{img.shape[1]}x{img.shape[0]}" for img in decoded)
    channels = Counter(1 if img.ndim == 2 else int(img.shape[2]) for img in decoded)
    return {"decoded": len(decoded), "sizes": dict(sizes.most_common(10)),
            "channels": {str(k): v for k, v in sorted(channels.items())}}


def _decode_all(items: list[tuple[str, Callable[[], bytes]]], limit: Optional[int],
                problems: list[str]) -> dict[str, Any]:
    decoded = []
    chosen = items if limit is None or limit >= len(items) else [
        items[i] for i in np.linspace(0, len(items) - 1, limit).astype(int)]
    for where, read in chosen:
        try:
            decoded.append(decode_image(read(), where))
        except (DataError, OSError) as exc:
            problems.append(str(exc))
    return _image_stats(decoded)


def _counts(labels: np.ndarray) -> dict[str, Any]:
    per = np.bincount(labels) if len(labels) else np.zeros(0, int)
    return {"images_per_identity": {"min": int(per.min()) if len(per) else 0,
                                    "median": float(np.median(per)) if len(per) else 0.0,
                                    "max": int(per.max()) if len(per) else 0}}


def inspect_folder(root: Path, decode_limit: Optional[int]) -> dict[str, Any]:
    problems: list[str] = []
    items: list[tuple[str, Callable[[], bytes]]] = []
    labels: list[int] = []
    identities = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            problems.append(f"{folder}: identity folder has no images")
            continue
        for f in files:
            items.append((str(f), f.read_bytes))
            labels.append(identities)
        identities += 1
    if not items:
        raise DataError(f"{root}: no identity sub-folders with images (expected root/<identity>/<image>)")
    report = {"format": "image-folder", "path": str(root), "images": len(items), "identities": identities,
              **_counts(np.asarray(labels))}
    report.update(_decode_all(items, decode_limit, problems))
    report["problems"] = problems
    return report


def inspect_recordio(path: Path, decode_limit: Optional[int]) -> dict[str, Any]:
    folder = path if path.is_dir() else path.parent
    rec = path if path.suffix == ".rec" else folder / "train.rec"
    problems: list[str] = []
    with RecordIOReader(rec) as reader:
        layout = read_layout(reader, folder)
        classes, size = read_property(folder)
        items = [(f"{rec} record {int(k)}", (lambda k=int(k): reader.read(k)[1])) for k in layout.image_keys]
        report = {"format": "recordio", "path": str(rec), "records": len(reader.index),
                  "images": len(layout.image_keys), "identities": layout.num_classes,
                  "property": None if classes is None else {"classes": classes, "size": list(size or ())},
                  **_counts(layout.labels)}
        report.update(_decode_all(items, decode_limit, problems))
    report["problems"] = problems
    return report


def inspect_bin(path: Path, decode_limit: Optional[int]) -> dict[str, Any]:
    problems: list[str] = []
    bins, issame = read_bin_raw(path)
    items = [(f"{path} image {i}", (lambda b=b: b)) for i, b in enumerate(bins)]
    report = {"format": "bin", "path": str(path), "pairs": int(len(issame)), "matched": int(issame.sum()),
              "mismatched": int((~issame).sum()), "images": len(bins)}
    report.update(_decode_all(items, decode_limit, problems))
    report["problems"] = problems
    return report


def inspect_lfw(root: Path, pairs_file: Path, decode_limit: Optional[int]) -> dict[str, Any]:
    problems: list[str] = []
    pairs = parse_pairs(pairs_file, root)
    files = sorted(set(pairs.left) | set(pairs.right))
    people = {p.parent.name for p in files}
    items = [(str(f), f.read_bytes) for f in files]
    report = {"format": "lfw", "path": str(root), "pairs_file": str(pairs_file), "pairs": int(len(pairs.issame)),
              "matched": int(pairs.issame.sum()), "mismatched": int((~pairs.issame).sum()),
              "folds": int(pairs.folds.max()) + 1, "images": len(files), "identities": len(people)}
    report.update(_decode_all(items, decode_limit, problems))
    report["problems"] = problems
    return report


def inspect_path(path: str | Path, *, pairs: Optional[str | Path] = None,
                 decode_limit: Optional[int] = None) -> dict[str, Any]:
    """Detect the format of `path` and describe it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".bin":
        return inspect_bin(path, decode_limit)
    if path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").exists()):
        return inspect_recordio(path, decode_limit)
    if not path.is_dir():
        raise DataError(f"{path}: not a face dataset (expected a folder, a .rec or a .bin)")
    pairs_file = Path(pairs) if pairs else (path / "pairs.txt" if (path / "pairs.txt").exists() else None)
    if pairs_file is not None:
        return inspect_lfw(path, pairs_file, decode_limit)
    return inspect_folder(path, decode_limit)
