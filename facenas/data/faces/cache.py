"""Decoded face sets kept once per run on disk, memory-mapped by every process that needs them.

Each search candidate trains in a fresh process (or a Ray worker), and each used to decode, align and crop the
proxy's images again: the in-process cache died with the process. `decoded_once` decodes a run's sets the first
time any process asks (under a file lock, so two workers starting together do not both decode), writes them as
`.npy` files into `<run dir>/cache/faces-<key>/` (to a temporary folder, renamed into place when complete, so a
killed decode leaves nothing half-written), and every process then opens them with `np.load(mmap_mode="r")`: the
pages are shared through the operating system's page cache instead of copied per process.

The key hashes what the sets depend on (the data config, the seed, the source file's or folder's size and time
stamp), so a changed config or source gets its own folder. The lock is `filelock`'s (a dependency of torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facenas.data.faces.types import FaceSet

FORMAT = "facenas.face-cache/1"


def source_stamp(source: str) -> dict[str, Any]:
    """Size and modification time of a source file or folder (its top level), so a replaced set is noticed."""
    path = Path(source)
    if not path.exists():
        return {"source": source}
    paths = [path] + ([p for p in path.iterdir()] if path.is_dir() else [])
    return {"source": str(path.resolve()), "stamp": sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                           for p in paths)}


def cache_key(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write(folder: Path, sets: dict[str, tuple[FaceSet, list[str]]]) -> None:
    meta = {"format": FORMAT, "sets": {}}
    for name, (faces, problems) in sets.items():
        np.save(folder / f"{name}.images.npy", np.ascontiguousarray(faces.images))
        np.save(folder / f"{name}.labels.npy", faces.labels)
        meta["sets"][name] = {"identities": list(faces.identities), "name": faces.name,
                              "sources": list(faces.sources), "problems": problems}
    (folder / "meta.json").write_text(json.dumps(meta))


def _read(folder: Path) -> dict[str, tuple[FaceSet, list[str]]]:
    meta = json.loads((folder / "meta.json").read_text())
    out = {}
    for name, info in meta["sets"].items():
        images = np.load(folder / f"{name}.images.npy", mmap_mode="r")
        labels = np.load(folder / f"{name}.labels.npy")
        out[name] = (FaceSet(images, labels, tuple(info["identities"]), None, info["name"], tuple(info["sources"])),
                     list(info["problems"]))
    return out


def decoded_once(root: Path, key: dict[str, Any], decode: Callable[[], dict[str, tuple[FaceSet, list[str]]]]
                 ) -> dict[str, tuple[FaceSet, list[str]]]:
    """The sets `decode()` returns (name -> (faces, problems)), decoded by the first caller for `key` and
    memory-mapped from `root` by every caller."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    digest = cache_key(key)
    target = root / f"faces-{digest}"
    with FileLock(str(root / f"faces-{digest}.lock")):
        if not (target / "meta.json").exists():
            if target.exists():  # an incomplete folder from another version: start it over
                shutil.rmtree(target)
            tmp = root / f".faces-{digest}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _write(tmp, decode())
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
            os.replace(tmp, target)
    return _read(target)
