"""Face verification metrics, numpy only: the insightface protocol and the usual companions.

Protocol (insightface `eval/verification.py`, face-ecosystem.md 1.4): embeddings are L2-normalised, the distance
of a pair is the squared Euclidean distance (0..4; d^2 = 2 - 2 cos), thresholds run 0, 0.01, ..., 3.99; for each
of 10 folds the threshold that maximises accuracy on the other 9 folds (the first, if several do) is applied to the
held-out fold, and a pair is predicted "same" when d^2 < threshold. Folds are the pair set's own (LFW's 10 folds
of 300 + 300) or contiguous blocks, like scikit-learn's `KFold(shuffle=False)` that insightface uses.

Reported: mean accuracy with the population standard deviation (insightface's `np.std`) and with the standard
error (sample std / sqrt(folds)), the chosen thresholds as distances and as cosines, TAR at FAR 1e-3 (and 1e-4)
computed per fold as insightface's `calculate_val` does (a threshold for the target FAR interpolated on the
training folds, applied to the test fold) where the training folds hold enough mismatched pairs to measure that
FAR, the equal error rate and the ROC AUC over all pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGETS = (1e-3, 1e-4)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def squared_distances(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each pair of L2-normalised embeddings."""
    diff = l2_normalize(np.asarray(emb_a, np.float64)) - l2_normalize(np.asarray(emb_b, np.float64))
    return np.sum(diff * diff, axis=1)


def fold_indices(n: int, folds: Optional[np.ndarray], n_folds: int = 10) -> list[np.ndarray]:
    """Test indices of each fold: the given fold ids, or contiguous blocks as `KFold(shuffle=False)` where there are
    none (`folds` None or all -1). Fold ids that cover only some pairs, or the wrong number of pairs, are an error:
    falling back to other folds without a word would report another protocol than the one asked for."""
    if folds is not None and not np.all(np.asarray(folds) < 0):
        folds = np.asarray(folds)
        if len(folds) != n:
            raise ValueError(f"{len(folds)} fold ids for {n} pairs")
        if np.any(folds < 0):
            raise ValueError(f"{int(np.sum(folds < 0))} of {n} pairs have no fold (-1) while the others have one")
        return [np.flatnonzero(folds == f) for f in np.unique(folds)]
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot be split into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(n_folds)]


def accuracy_per_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    predicted = dist[None, :] < thresholds[:, None]
    return (predicted == issame[None, :]).mean(axis=1)


def _tar_far(dist: np.ndarray, issame: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = dist < threshold
    same, diff = issame.sum(), (~issame).sum()
    tar = (predicted & issame).sum() / same if same else 0.0
    far = (predicted & ~issame).sum() / diff if diff else 0.0
    return float(tar), float(far)


def _rates_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Share of `values` strictly below each threshold."""
    if not len(values):
        return np.zeros(len(thresholds))
    return np.searchsorted(np.sort(values), thresholds, side="left") / len(values)


def threshold_for_far(dist: np.ndarray, issame: np.ndarray, target: float) -> float:
    """insightface's `calculate_val`: the threshold reaching FAR = target on these pairs (linear interpolation).

    FAR is a step function of the threshold, so its values repeat on the grid; insightface hands them as they are to
    `interp1d(kind='slinear')`, which in the SciPy it ran on (current SciPy refuses repeated x) joined the points in
    order: from the LAST threshold of the highest FAR level <= target to the first threshold of the next level, and
    at a level met exactly, that level's last threshold. Interpolating on the first threshold of each level instead
    puts the threshold up to a whole gap between two mismatched distances lower (a lower TAR).
    """
    fars = _rates_below(dist[~issame], VAL_THRESHOLDS)
    if fars.max() < target:
        return 0.0
    i = int(np.searchsorted(fars, target, side="right")) - 1  # FAR is non-decreasing: the last threshold <= target
    if fars[i] == target or i == len(fars) - 1:
        return float(VAL_THRESHOLDS[i])
    w = (target - fars[i]) / (fars[i + 1] - fars[i])
    return float(VAL_THRESHOLDS[i] + w * (VAL_THRESHOLDS[i + 1] - VAL_THRESHOLDS[i]))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC: P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = positive.sum(), (~positive).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average ranks of ties
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def equal_error_rate(dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """(EER, the squared-distance threshold where FAR = FRR), interpolated between ROC points."""
    if not issame.any() or issame.all():
        return float("nan"), float("nan")
    candidates = np.unique(np.concatenate([[0.0], dist, [4.0 + 1e-9]]))
    fars = _rates_below(dist[~issame], candidates)
    frrs = 1.0 - _rates_below(dist[issame], candidates)
    gap = fars - frrs
    i = int(np.argmax(gap >= 0))
    if i == 0:
        return float(frrs[0]), float(candidates[0])
    g0, g1 = gap[i - 1], gap[i]
    w = g0 / (g0 - g1) if g0 != g1 else 0.0
    eer = (fars[i - 1] + w * (fars[i] - fars[i - 1]) + frrs[i - 1] + w * (frrs[i] - frrs[i - 1])) / 2
    return float(eer), float(candidates[i - 1] + w * (candidates[i] - candidates[i - 1]))


@dataclass
class VerificationReport:
    pairs: int
    matched: int
    folds: int
    accuracy: float
    accuracy_std: float
    accuracy_sem: float
    fold_accuracies: list[float]
    thresholds: list[float]
    thresholds_cosine: list[float]
    tar_at_far: dict[str, Optional[dict[str, float]]]
    eer: float
    eer_threshold: float
    auc: float
    xnorm: Optional[float] = None
    roc: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self, with_roc: bool = False) -> dict[str, object]:
        out = asdict(self)
        if not with_roc:
            out.pop("roc")
        return out

    def summary(self) -> str:
        tars = ", ".join(f"TAR@FAR={k}: {v['tar']:.4f}" for k, v in self.tar_at_far.items() if v)
        return (f"accuracy {self.accuracy * 100:.2f}% +- {self.accuracy_std * 100:.2f} (std) / "
                f"{self.accuracy_sem * 100:.2f} (s.e.) over {self.folds} folds; EER {self.eer * 100:.2f}%, "
                f"AUC {self.auc:.4f}" + (f", {tars}" if tars else "")
                + (f", XNorm {self.xnorm:.2f}" if self.xnorm is not None else ""))


def verification_report(dist: np.ndarray, issame: np.ndarray, folds: Optional[np.ndarray] = None,
                        n_folds: int = 10, xnorm: Optional[float] = None) -> VerificationReport:
    """All verification metrics from pair distances (squared, of L2-normalised embeddings)."""
    dist = np.asarray(dist, np.float64)
    issame = np.asarray(issame, bool)
    tests = fold_indices(len(dist), folds, n_folds)
    all_idx = np.arange(len(dist))
    accuracies, thresholds = [], []
    tar: dict[float, list[tuple[float, float]]] = {f: [] for f in FAR_TARGETS}
    measurable = {f: True for f in FAR_TARGETS}
    for test in tests:
        train = np.setdiff1d(all_idx, test, assume_unique=True)
        acc_train = accuracy_per_threshold(dist[train], issame[train], THRESHOLDS)
        best = THRESHOLDS[int(np.argmax(acc_train))]
        thresholds.append(float(best))
        accuracies.append(float(((dist[test] < best) == issame[test]).mean()))
        negatives = int((~issame[train]).sum())
        for target in FAR_TARGETS:
            if negatives * target < 1:  # the training folds cannot show a single false accept at this FAR
                measurable[target] = False
                continue
            t = threshold_for_far(dist[train], issame[train], target)
            tar[target].append(_tar_far(dist[test], issame[test], t))
    acc = np.asarray(accuracies)
    tar_out: dict[str, Optional[dict[str, float]]] = {}
    for target in FAR_TARGETS:
        if measurable[target] and tar[target]:
            values = np.asarray(tar[target])
            tar_out[f"{target:g}"] = {"tar": float(values[:, 0].mean()), "tar_std": float(values[:, 0].std()),
                                      "far": float(values[:, 1].mean())}
        else:
            tar_out[f"{target:g}"] = None
    eer, eer_t = equal_error_rate(dist, issame)
    order = np.argsort(dist)
    tpr = np.concatenate([[0.0], np.cumsum(issame[order]) / max(issame.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~issame[order]) / max((~issame).sum(), 1)])
    return VerificationReport(
        pairs=len(dist), matched=int(issame.sum()), folds=len(tests), accuracy=float(acc.mean()),
        accuracy_std=float(acc.std()), accuracy_sem=float(acc.std(ddof=1) / np.sqrt(len(acc))) if len(acc) > 1
        else 0.0, fold_accuracies=[float(a) for a in acc], thresholds=thresholds,
        thresholds_cosine=[float(1 - t / 2) for t in thresholds], tar_at_far=tar_out, eer=eer,
        eer_threshold=eer_t, auc=roc_auc(-dist, issame), xnorm=xnorm,
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    )
