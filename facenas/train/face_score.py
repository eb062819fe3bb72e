"""Scoring a face candidate on the held-out people, with the measures the search can choose between.

The first facenas design scored a candidate by the 10-fold verification accuracy on a few hundred balanced pairs,
the best over its epochs: a thresholded, coarse measure on few pairs, maximised over noisy epochs on the very pairs
it is measured on. Here every measure is computed from one embedding pass over the held-out images (each image is
embedded once, with the flip test, however many pairs it is in), on balanced pairs or on every genuine pair:
accuracy (the 10-fold protocol), ROC AUC, TAR at a fixed FAR (threshold from the impostor similarities) and d', the
separation of genuine and impostor similarities. `bench/face_score_noise.py` measures their noise; `faces.score`
chooses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from facenas.config import FaceScoreConfig
from facenas.data.faces.pairs import PairIndex, all_genuine_pairs, sample_pairs
from facenas.data.faces.types import FaceSet
from facenas.evaluate.metrics import squared_distances, verification_report
from facenas.evaluate.verify import Embedder, embed_flip

MEASURES = ("accuracy", "auc", "tar", "dprime")


def score_pairs(faces: FaceSet, cfg: FaceScoreConfig, *, per_fold: int, folds: int, seed: int) -> PairIndex:
    """The pairs a run scores its candidates on (the same for every candidate)."""
    if cfg.pairs == "all":
        return all_genuine_pairs(faces.labels, impostor_ratio=cfg.impostor_ratio, folds=folds, seed=seed)
    return sample_pairs(faces.labels, per_fold, folds=folds, seed=seed)


def measures(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray, far: float) -> dict[str, float]:
    """Every measure, in points: accuracy, AUC and TAR in %, d' x 10 (so that all move on similar scales)."""
    report = verification_report(dist, issame, folds)
    similarity = 1.0 - dist / 2.0
    genuine, impostor = similarity[issame], similarity[~issame]
    threshold = float(np.quantile(impostor, 1.0 - far)) if len(impostor) else math.inf
    spread = math.sqrt((genuine.var() + impostor.var()) / 2.0) if len(genuine) and len(impostor) else 0.0
    dprime = (genuine.mean() - impostor.mean()) / spread if spread > 0 else 0.0
    return {"accuracy": 100.0 * report.accuracy, "auc": 100.0 * report.auc,
            "tar": 100.0 * float(np.mean(genuine > threshold)) if len(genuine) else math.nan,
            "dprime": 10.0 * float(dprime)}


@dataclass(frozen=True)
class HeldoutScorer:
    """Callable on an embedder: embeds the held-out images once and returns every measure."""

    faces: FaceSet
    index: PairIndex
    far: float
    batch_size: int = 256

    def __call__(self, embedder: Embedder) -> dict[str, float]:
        emb = embed_flip(embedder, self.faces.images, self.batch_size)
        dist = squared_distances(emb.embeddings[self.index.a], emb.embeddings[self.index.b])
        return {**measures(dist, self.index.issame, self.index.folds, self.far), "xnorm": emb.xnorm}


def make_scorer(faces: FaceSet, cfg: FaceScoreConfig, *, per_fold: int, folds: int, seed: int,
                batch_size: int) -> Callable[[Any], dict[str, float]]:
    return HeldoutScorer(faces, score_pairs(faces, cfg, per_fold=per_fold, folds=folds, seed=seed), cfg.far,
                         batch_size)
