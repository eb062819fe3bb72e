"""The verification protocol, checked against a direct implementation of insightface's algorithm."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from facenas.evaluate.metrics import squared_distances, verification_report


def structured_embeddings(n_pairs: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs whose matched halves are one identity vector plus noise, and mismatched halves two identities."""
    rng = np.random.default_rng(seed)
    dim = 32
    issame = np.tile(np.r_[np.ones(n_pairs // 20, bool), np.zeros(n_pairs // 20, bool)], 10)
    ids = rng.normal(size=(n_pairs, 2, dim))
    a = ids[:, 0] + noise * rng.normal(size=(n_pairs, dim))
    b = np.where(issame[:, None], ids[:, 0], ids[:, 1]) + noise * rng.normal(size=(n_pairs, dim))
    return a * rng.uniform(5, 30, (n_pairs, 1)), b, issame  # raw norms vary: normalisation must not matter


def direct_protocol(emb_a, emb_b, issame, n_folds=10):
    """insightface `calculate_roc` written out with loops (the reference)."""
    a = emb_a / np.linalg.norm(emb_a, axis=1, keepdims=True)
    b = emb_b / np.linalg.norm(emb_b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), 1)
    thresholds = np.arange(0, 4, 0.01)
    accs, best_ts = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(np.arange(len(dist))):
        train_acc = []
        for t in thresholds:
            pred = np.less(dist[train], t)
            train_acc.append(np.mean(pred == issame[train]))
        best = thresholds[int(np.argmax(train_acc))]
        best_ts.append(best)
        accs.append(np.mean(np.less(dist[test], best) == issame[test]))
    return np.array(accs), np.array(best_ts), dist


@pytest.mark.parametrize("noise", [0.6, 1.0, 1.6])
def test_fold_accuracies_and_thresholds_match_a_direct_implementation(noise):
    a, b, issame = structured_embeddings(600, noise)
    accs, thresholds, dist = direct_protocol(a, b, issame)
    report = verification_report(squared_distances(a, b), issame)
    assert np.allclose(report.fold_accuracies, accs) and np.allclose(report.thresholds, thresholds)
    assert report.accuracy == pytest.approx(accs.mean())
    assert report.accuracy_std == pytest.approx(accs.std())  # population std, as insightface prints
    assert report.accuracy_sem == pytest.approx(accs.std(ddof=1) / np.sqrt(10))
    assert np.allclose(report.thresholds_cosine, 1 - thresholds / 2)
    assert report.auc == pytest.approx(roc_auc_score(issame, -dist))
    assert 0 < report.eer < 0.5


def test_uneven_fold_sizes_follow_kfold():
    a, b, issame = structured_embeddings(600, 1.0)
    a, b, issame = a[:597], b[:597], issame[:597]
    accs, thresholds, _ = direct_protocol(a, b, issame)
    report = verification_report(squared_distances(a, b), issame)
    assert np.allclose(report.fold_accuracies, accs) and np.allclose(report.thresholds, thresholds)


def test_given_folds_are_used():
    a, b, issame = structured_embeddings(600, 1.0)
    folds = np.repeat(np.arange(10), 60)[::-1].copy()  # same blocks, numbered backwards
    report = verification_report(squared_distances(a, b), issame, folds)
    plain = verification_report(squared_distances(a, b), issame)
    assert sorted(report.fold_accuracies) == sorted(plain.fold_accuracies)


def test_perfect_separation_and_tar_at_far():
    a, b, issame = structured_embeddings(6000, 0.05)
    report = verification_report(squared_distances(a, b), issame)
    assert report.accuracy == 1.0 and report.eer == 0.0 and report.auc == 1.0
    assert report.tar_at_far["0.001"]["tar"] == pytest.approx(1.0)
    assert report.tar_at_far["0.0001"] is None  # 2,700 mismatched training pairs cannot show a 1e-4 FAR


def test_tar_at_far_is_none_with_too_few_pairs():
    a, b, issame = structured_embeddings(200, 0.5)
    assert verification_report(squared_distances(a, b), issame).tar_at_far["0.001"] is None
