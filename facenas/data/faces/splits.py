"""Training identities and held-out verification pairs for a face run (method.md section 5).

The identities of a source are split, seeded, into training identities and `heldout_identities` that never
appear in training; the search scores candidates by 10-fold verification on balanced pairs drawn from the
held-out identities. `train_identities` caps the training side for the proxy (a documented subset of, say,
CASIA-WebFace), `max_images_per_identity` caps each identity. LFW, CFP-FP and AgeDB are never involved here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from facenas import __version__
from facenas.config import FaceDataConfig
from facenas.data.faces.cache import decoded_once, source_stamp
from facenas.data.faces.images import Preprocess
from facenas.data.faces.pairs import pairs_from_faces
from facenas.data.faces.sources import ArraySource, FaceSource, Materialized, materialize, open_source
from facenas.data.faces.stream import FaceStream
from facenas.data.faces.synthetic import synthetic_faces
from facenas.data.faces.types import FaceSet, PairSet
from facenas.errors import DataError


@dataclass(frozen=True)
class FaceSplits:
    train: FaceSet | FaceStream  # streamed: read while training, never held in memory
    heldout: FaceSet
    pairs: PairSet
    preprocess: Preprocess
    description: str
    problems: tuple[str, ...] = ()
    test: Optional[FaceSet] = None  # people neither the search nor training sees (`test_identities`)
    test_pairs: Optional[PairSet] = None

    def summary(self) -> dict[str, object]:
        return {"train_images": len(self.train), "train_identities": self.train.num_identities,
                "heldout_identities": self.heldout.num_identities, "pairs": len(self.pairs),
                "test_identities": self.test.num_identities if self.test is not None else 0,
                "test_pairs": len(self.test_pairs) if self.test_pairs is not None else 0,
                "description": self.description, "problems": list(self.problems)}


def open_face_source(cfg: FaceDataConfig) -> FaceSource:
    if cfg.source == "synthetic":
        s = cfg.synthetic
        return ArraySource(synthetic_faces(s.identities, s.images_per_identity, seed=s.seed))
    return open_source(cfg.source, landmarks_file=cfg.landmarks, skip_empty=cfg.skip_bad)


def choose_identities(labels: np.ndarray, cfg: FaceDataConfig, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training, held-out, test identity labels), disjoint and seeded; test is empty without `test_identities`."""
    counts = np.bincount(labels)
    usable = np.flatnonzero(counts >= cfg.min_images_per_identity)
    apart = cfg.heldout_identities + cfg.test_identities
    if len(usable) < apart + 2:
        raise DataError(f"{len(usable)} identities have >= {cfg.min_images_per_identity} images; need at least "
                        f"{cfg.heldout_identities} held out, {cfg.test_identities} for testing and 2 to train (lower "
                        "faces.data.heldout_identities or test_identities)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF4CE]))
    order = rng.permutation(usable)
    heldout, test, train = order[:cfg.heldout_identities], order[cfg.heldout_identities:apart], order[apart:]
    if cfg.train_identities is not None:
        train = train[:cfg.train_identities]
    return np.sort(train), np.sort(heldout), np.sort(test)


def _items(labels: np.ndarray, identities: np.ndarray, cap: Optional[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1735]))
    chosen = []
    for k in identities:
        idx = np.flatnonzero(labels == k)
        if cap is not None and len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        chosen.append(idx)
    return np.concatenate(chosen)


@lru_cache(maxsize=2)
def load_face_splits(cfg: FaceDataConfig, seed: int, stream: bool = False, cache: Optional[Path] = None
                     ) -> FaceSplits:
    """The run's training identities and held-out pairs (cached per process). The held-out (and test) faces are
    decoded into memory; the training faces too, or with `stream` they are listed only and read while training
    (`FaceStream`): then a bad training image stops training with an error naming it, as `skip_bad` cannot skip
    what has not been read (check a set first with `facenas data inspect`).

    With `cache` (a folder in the run directory) the decoded sets are decoded by the first process of the run and
    memory-mapped by every other (`facenas.data.faces.cache`)."""
    source = open_face_source(cfg)
    train_ids, heldout_ids, test_ids = choose_identities(source.labels, cfg, seed)
    prep = Preprocess(size=cfg.size, channels=cfg.channels, crop_fraction=cfg.crop_fraction)
    train_items = _items(source.labels, train_ids, cfg.max_images_per_identity, seed)
    wanted = {"heldout": _items(source.labels, heldout_ids, cfg.max_images_per_identity, seed + 1)}
    if not stream:
        wanted["train"] = train_items
    if len(test_ids):
        wanted["test"] = _items(source.labels, test_ids, cfg.max_images_per_identity, seed + 2)

    def decode() -> dict[str, tuple[FaceSet, list[str]]]:
        decoded = {name: materialize(source, items, prep, skip_bad=cfg.skip_bad) for name, items in wanted.items()}
        return {name: (m.faces, m.problems) for name, m in decoded.items()}

    if cache is None:
        sets = decode()
    else:
        key = {"data": cfg.model_dump(mode="json"), "seed": seed, "sets": sorted(wanted), "version": __version__,
               **(source_stamp(cfg.source) if cfg.source != "synthetic" else {})}
        sets = decoded_once(cache, key, decode)
    train: FaceSet | FaceStream
    if stream:
        train, train_problems = FaceStream.of(source, train_items, prep), []
    else:
        train, train_problems = sets["train"]
    held = Materialized(*sets["heldout"])
    pairs = pairs_from_faces(held.faces, cfg.heldout_pairs_per_fold, folds=cfg.pair_folds, seed=seed,
                             name="heldout")
    problems = tuple(getattr(source, "problems", [])) + tuple(train_problems) + tuple(held.problems)
    test = test_pairs = None
    if len(test_ids):
        tested = Materialized(*sets["test"])
        test = tested.faces
        test_pairs = pairs_from_faces(test, cfg.test_pairs_per_fold or cfg.heldout_pairs_per_fold,
                                      folds=cfg.pair_folds, seed=seed + 2,
                                      name="test")
        problems += tuple(tested.problems)
    tested_text = f", {test.num_identities} test identities -> {len(test_pairs)} pairs" if test is not None else ""
    description = (f"{source.name}: {train.num_identities} training identities ({len(train)} images), "
                   f"{held.faces.num_identities} held-out identities -> {len(pairs)} pairs in {cfg.pair_folds} "
                   f"folds{tested_text}; seed {seed}; {cfg.size}x{cfg.size}x{cfg.channels}")
    return FaceSplits(train, held.faces, pairs, prep, description, problems, test, test_pairs)
