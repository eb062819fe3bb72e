"""Verification pair sets: insightface `.bin` files, and LFW as a directory with the standard `pairs.txt`.

`.bin` (insightface `eval/verification.py`): a pickle of `(bins, issame_list)` where `bins` holds 2N encoded
aligned crops (pair i = images 2i and 2i+1) and `issame_list` N booleans. The published files were written by
Python 2, so they are read with `encoding="bytes"` when a plain load fails; files are written with pickle
protocol 2, which both Python 2 and 3 read.

LFW `pairs.txt`: a header `10 300` (folds, pairs of each kind per fold), then per fold 300 matched lines
`name n1 n2` and 300 mismatched lines `name1 n1 name2 n2`; image n of a person is `name/name_000n.jpg`.
The folds are kept, so the evaluation uses LFW's own 10 folds.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from facenas.data.faces.images import IMAGE_SUFFIXES, Preprocess, decode_image, encode_image, prepare, read_image
from facenas.data.faces.types import FaceSet, PairSet
from facenas.errors import DataError

# -- .bin ---------------------------------------------------------------------------------------------------------

def _load_pickle(path: Path) -> object:
    data = path.read_bytes()
    errors = []
    for kwargs in ({}, {"encoding": "bytes"}, {"encoding": "latin1"}):
        try:
            return pickle.loads(data, **kwargs)  # noqa: S301 - verification files are pickles by convention
        except (UnicodeDecodeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    raise DataError(f"{path}: not a readable verification pickle ({errors[0]}); the file may be truncated or corrupt")


def read_bin_raw(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """The encoded images and the issame flags of a `.bin`, unchecked beyond their structure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verification file {path} does not exist")
    obj = _load_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    try:
        bins = [bytes(b) if not isinstance(b, bytes) else b for b in bins]
    except TypeError:
        raise DataError(f"{path}: 'bins' must be a list of encoded images") from None
    issame_arr = np.asarray(list(issame), dtype=bool)
    if len(bins) != 2 * len(issame_arr):
        raise DataError(f"{path}: {len(bins)} images for {len(issame_arr)} pairs; expected {2 * len(issame_arr)}")
    return bins, issame_arr


def read_bin(path: str | Path, prep: Optional[Preprocess] = None) -> PairSet:
    """A `.bin` decoded and prepared (aligned crops are resized only if their size differs)."""
    path = Path(path)
    prep = prep or Preprocess()
    bins, issame = read_bin_raw(path)
    images = [prepare(decode_image(b, f"{path} image {i}"), prep) for i, b in enumerate(bins)]
    return PairSet(np.stack(images), issame, path.stem, None, tuple(f"{path}[{i}]" for i in range(len(bins))))


def write_bin(path: str | Path, images: Sequence[np.ndarray] | np.ndarray, issame: Sequence[bool], *,
              fmt: str = ".png", quality: int = 95) -> None:
    """Write a `.bin`: `images` are (H, W, 3) RGB or (C, H, W) arrays, two per pair, or already encoded bytes."""
    encoded = []
    for img in images:
        if isinstance(img, (bytes, bytearray)):
            encoded.append(bytes(img))
            continue
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        encoded.append(encode_image(arr, fmt, quality))
    flags = [bool(s) for s in issame]
    if len(encoded) != 2 * len(flags):
        raise DataError(f"{path}: {len(encoded)} images for {len(flags)} pairs; need two per pair")
    with open(path, "wb") as fh:
        pickle.dump((encoded, flags), fh, protocol=2)


# -- LFW ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairList:
    """Pairs as file paths, with their fold: what `pairs.txt` describes."""

    left: tuple[Path, ...]
    right: tuple[Path, ...]
    issame: np.ndarray
    folds: np.ndarray


def _image_path(root: Path, name: str, number: str, where: str) -> Path:
    try:
        n = int(number)
    except ValueError:
        raise DataError(f"{where}: image number {number!r} is not an integer") from None
    stem = root / name / f"{name}_{n:04d}"
    for suffix in IMAGE_SUFFIXES:
        if stem.with_suffix(suffix).is_file():
            return stem.with_suffix(suffix)
    raise DataError(f"{where}: image {stem}.jpg does not exist (names {name!r} image {n})")


def parse_pairs(pairs_file: str | Path, root: str | Path) -> PairList:
    """Read LFW's `pairs.txt` against an LFW directory; every named image must exist."""
    pairs_file, root = Path(pairs_file), Path(root)
    if not pairs_file.is_file():
        raise DataError(f"pairs file {pairs_file} does not exist")
    if not root.is_dir():
        raise DataError(f"LFW directory {root} does not exist")
    lines = [ln for ln in pairs_file.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{pairs_file}: empty")
    head = lines[0].split()
    body = lines[1:]
    try:
        folds, per_fold = int(head[0]), int(head[1])
        if len(head) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise DataError(f"{pairs_file}:1: expected the header 'folds pairs_per_fold' (LFW: '10 300'), got "
                        f"{lines[0]!r}") from None
    expected = folds * 2 * per_fold
    if len(body) != expected:
        raise DataError(f"{pairs_file}: header '{folds} {per_fold}' announces {expected} pair lines, found "
                        f"{len(body)}")
    left, right, issame, fold_of = [], [], [], []
    for number, line in enumerate(body, 2):
        where = f"{pairs_file}:{number}"
        parts = line.split()
        index = number - 2
        fold, within = divmod(index, 2 * per_fold)
        same = within < per_fold
        if same and len(parts) == 3:
            a = _image_path(root, parts[0], parts[1], where)
            b = _image_path(root, parts[0], parts[2], where)
        elif not same and len(parts) == 4:
            a = _image_path(root, parts[0], parts[1], where)
            b = _image_path(root, parts[2], parts[3], where)
        else:
            kind = "matched 'name n1 n2'" if same else "mismatched 'name1 n1 name2 n2'"
            raise DataError(f"{where}: expected a {kind} pair here (fold {fold + 1}), got {line!r}")
        left.append(a)
        right.append(b)
        issame.append(same)
        fold_of.append(fold)
    return PairList(tuple(left), tuple(right), np.asarray(issame), np.asarray(fold_of))


def load_pair_images(pairs: PairList, prep: Preprocess, name: str = "lfw",
                     landmarks: Optional[dict[str, np.ndarray]] = None, root: Optional[Path] = None,
                     progress: Optional[object] = None) -> PairSet:
    """Decode and prepare the images of a pair list (each distinct file once)."""
    cache: dict[Path, np.ndarray] = {}
    images = []
    for a, b in zip(pairs.left, pairs.right):
        for path in (a, b):
            if path not in cache:
                lmk = None
                if landmarks is not None and root is not None:
                    lmk = landmarks.get(path.relative_to(root).as_posix())
                cache[path] = prepare(read_image(path), prep, lmk)
                if progress is not None:
                    progress()  # type: ignore[operator]
            images.append(cache[path])
    sources = tuple(str(p) for pair in zip(pairs.left, pairs.right) for p in pair)
    return PairSet(np.stack(images), pairs.issame, name, pairs.folds, sources)


def write_pairs(path: str | Path, pairs: Sequence[tuple[str, int, str, int]], folds: int, per_fold: int) -> None:
    """Write a `pairs.txt` (pairs ordered fold by fold, matched before mismatched, as LFW)."""
    lines = [f"{folds}\t{per_fold}"]
    for name1, n1, name2, n2 in pairs:
        lines.append(f"{name1}\t{n1}\t{n2}" if name1 == name2 else f"{name1}\t{n1}\t{name2}\t{n2}")
    Path(path).write_text("\n".join(lines) + "\n")


# -- pairs drawn from an identity-labelled set ----------------------------------------------------------------------

@dataclass(frozen=True)
class PairIndex:
    a: np.ndarray
    b: np.ndarray
    issame: np.ndarray
    folds: np.ndarray


def _matched(rng: np.random.Generator, groups: list[np.ndarray], count: int) -> list[tuple[int, int]]:
    candidates = [(int(g[i]), int(g[j])) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]
    if not candidates:
        return []
    pick = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[k] for k in pick]


def _mismatched(rng: np.random.Generator, groups: list[np.ndarray], count: int) -> list[tuple[int, int]]:
    if len(groups) < 2:
        return []
    seen: set[tuple[int, int]] = set()
    total = sum(len(g) for g in groups)
    limit = min(count, total * (total - 1) // 2)
    attempts = 0
    while len(seen) < limit and attempts < 50 * limit + 100:
        attempts += 1
        g1, g2 = rng.choice(len(groups), size=2, replace=False)
        pair = (int(rng.choice(groups[g1])), int(rng.choice(groups[g2])))
        seen.add((min(pair), max(pair)))
    return sorted(seen)


def sample_pairs(labels: np.ndarray, per_fold: int, *, folds: int = 10, seed: int = 0) -> PairIndex:
    """Balanced verification pairs (matched and mismatched) from identity labels, in `folds` folds.

    With at least two identities per fold, the folds are identity-disjoint like LFW's, and each fold draws
    `per_fold` matched and `per_fold` mismatched pairs from its own identities. With fewer identities (ORL's ten
    held-out people), pairs are drawn from all identities and the folds cut contiguously, as insightface does for
    `.bin` files. Fewer pairs are returned where the identities cannot supply more.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA1125]))
    identities = np.unique(labels)
    groups_of = {int(k): np.flatnonzero(labels == k) for k in identities}
    a, b, same, fold_of = [], [], [], []
    if len(identities) >= 2 * folds:
        order = rng.permutation(identities)
        for f in range(folds):
            groups = [groups_of[int(k)] for k in order[f::folds]]
            for flag, pairs in ((True, _matched(rng, groups, per_fold)), (False, _mismatched(rng, groups, per_fold))):
                for i, j in pairs:
                    a.append(i), b.append(j), same.append(flag), fold_of.append(f)
    else:
        groups = list(groups_of.values())
        matched = _matched(rng, groups, per_fold * folds)
        mismatched = _mismatched(rng, groups, len(matched))
        n = min(len(matched), len(mismatched))
        chunk = max(n // folds, 1)
        for f in range(folds):
            for flag, pairs in ((True, matched), (False, mismatched)):
                for i, j in pairs[f * chunk:(f + 1) * chunk]:
                    a.append(i), b.append(j), same.append(flag), fold_of.append(f)
    if not a:
        raise DataError("not enough images to draw verification pairs (need identities with 2+ images)")
    return PairIndex(np.asarray(a), np.asarray(b), np.asarray(same), np.asarray(fold_of))


def all_genuine_pairs(labels: np.ndarray, *, impostor_ratio: float = 1.0, folds: int = 10, seed: int = 0
                      ) -> PairIndex:
    """Every genuine pair of a labelled set, and `impostor_ratio` times as many impostor pairs drawn at random.

    More pairs make a less noisy score than a few hundred balanced ones: a set of 60 people with 10 images each has
    2,700 genuine pairs. Folds are identity-disjoint where there are at least two identities per fold (each pair's
    fold is its first image's identity's), else drawn at random.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA11]))
    identities = np.unique(labels)
    groups = [np.flatnonzero(labels == k) for k in identities]
    genuine = [(int(g[i]), int(g[j])) for g in groups for i in range(len(g)) for j in range(i + 1, len(g))]
    if not genuine or len(groups) < 2:
        raise DataError("not enough images to draw verification pairs (need 2+ identities, some with 2+ images)")
    impostor = _mismatched(rng, groups, int(round(impostor_ratio * len(genuine))))
    a = np.asarray([p[0] for p in genuine + impostor])
    b = np.asarray([p[1] for p in genuine + impostor])
    issame = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    if len(identities) >= 2 * folds:
        fold_of_identity = {int(k): f % folds for f, k in enumerate(rng.permutation(identities))}
        fold = np.asarray([fold_of_identity[int(labels[i])] for i in a])
    else:
        fold = rng.permutation(np.arange(len(a)) % folds)
    return PairIndex(a, b, issame, fold)


def pairs_txt_rows(index: PairIndex, names: Sequence[str], numbers: Sequence[int]) -> list[tuple[str, int, str, int]]:
    """`pairs.txt` rows for sampled pairs: fold by fold, matched before mismatched, as LFW orders them.

    `names[i]` and `numbers[i]` are the person and the image number of item i (`name/name_000n.jpg`).
    """
    rows = []
    for fold in np.unique(index.folds):
        for same in (True, False):
            sel = (index.folds == fold) & (index.issame == same)
            rows += [(names[a], numbers[a], names[b], numbers[b]) for a, b in zip(index.a[sel], index.b[sel])]
    return rows


def pairs_from_faces(faces: FaceSet, per_fold: int, *, folds: int = 10, seed: int = 0,
                     name: str = "pairs") -> PairSet:
    """Verification pairs over a face set's images (see `sample_pairs`)."""
    index = sample_pairs(faces.labels, per_fold, folds=folds, seed=seed)
    order = np.stack([index.a, index.b], axis=1).reshape(-1)
    sources = tuple(faces.sources[i] for i in order) if faces.sources else ()
    return PairSet(faces.images[order], index.issame, name, index.folds, sources)
