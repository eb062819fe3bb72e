"""The verification protocol, checked against a direct implementation of insightface's algorithm."""

from __future__ import annotations

from typing import Optional

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


def splits(n: int, n_folds: int = 10, folds: Optional[np.ndarray] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices: scikit-learn's `KFold(shuffle=False)` as insightface uses, or the given fold ids."""
    if folds is None:
        return list(KFold(n_splits=n_folds, shuffle=False).split(np.arange(n)))
    return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in np.unique(folds)]


def direct_protocol(emb_a, emb_b, issame, n_folds=10, folds=None):
    """insightface `calculate_roc` written out with loops (the reference), on KFold or on the given fold ids."""
    a = emb_a / np.linalg.norm(emb_a, axis=1, keepdims=True)
    b = emb_b / np.linalg.norm(emb_b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), 1)
    thresholds = np.arange(0, 4, 0.01)
    accs, best_ts = [], []
    for train, test in splits(len(dist), n_folds, folds):
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
    # scattered fold ids of 60 pairs each: code that fell back to contiguous blocks would pick other thresholds
    folds = np.random.default_rng(1).permutation(np.arange(600) % 10)
    accs, thresholds, _ = direct_protocol(a, b, issame, folds=folds)
    contiguous, _, _ = direct_protocol(a, b, issame)
    assert sorted(accs) != sorted(contiguous)  # the case discriminates
    report = verification_report(squared_distances(a, b), issame, folds)
    assert report.folds == 10
    assert np.allclose(report.fold_accuracies, accs) and np.allclose(report.thresholds, thresholds)


def test_perfect_separation_and_tar_at_far():
    a, b, issame = structured_embeddings(6000, 0.05)
    report = verification_report(squared_distances(a, b), issame)
    assert report.accuracy == 1.0 and report.eer == 0.0 and report.auc == 1.0
    assert report.tar_at_far["0.001"]["tar"] == pytest.approx(1.0)
    assert report.tar_at_far["0.0001"] is None  # 2,700 mismatched training pairs cannot show a 1e-4 FAR


def test_tar_at_far_is_none_with_too_few_pairs():
    a, b, issame = structured_embeddings(200, 0.5)
    assert verification_report(squared_distances(a, b), issame).tar_at_far["0.001"] is None


# -- TAR@FAR against insightface's calculate_val ---------------------------------------------------------------


def planted_distances(n_pairs: int, signal: float, seed: int, matched: float = 0.5,
                      dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances of random unit embeddings; a matched pair's second half carries `signal` times the first.

    Matched and mismatched distances overlap (unless the signal is strong), and matched pairs lie in random places,
    so folds hold unequal numbers of each.
    """
    rng = np.random.default_rng(seed)
    issame = rng.permutation(np.arange(n_pairs) < round(matched * n_pairs))
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(issame[:, None], signal * a, 0.0) + rng.normal(size=(n_pairs, dim))
    return squared_distances(a, b), issame


def slinear_as_insightface_ran_it(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """`interp1d(far, thresholds, kind='slinear')(target)` in the SciPy insightface was written for.

    FAR is a step function of the threshold, so `far` repeats values; that SciPy sorted the points stably and joined
    them in order by straight lines, evaluating right-continuously: between two FAR levels the line runs from the
    LAST threshold of the lower level to the first of the next, and a FAR met exactly gives its level's last
    threshold. (Newer SciPy refuses repeated x, so insightface's `calculate_val` now raises: scipy/scipy#21550,
    where 1.8.1 is reported to still run it.)
    """
    order = np.argsort(far, kind="mergesort")
    far, thresholds = far[order], thresholds[order]
    i = max(j for j in range(len(far)) if far[j] <= target)
    if far[i] == target or i == len(far) - 1:
        return float(thresholds[i])
    return float(thresholds[i] + (target - far[i]) / (far[i + 1] - far[i]) * (thresholds[i + 1] - thresholds[i]))


def test_the_interpolation_is_the_old_scipy_linear_spline():
    """The reference's interpolation equals SciPy's own k=1 B-spline built as `make_interp_spline` did back then
    (knots x[0], x..., x[-1]; coefficients y), which current SciPy still evaluates without the duplicate check."""
    from scipy.interpolate import BSpline

    dist, issame = planted_distances(4000, 0.3, seed=0)
    thresholds = np.arange(0, 4, 0.001)
    far = np.array([np.mean(np.less(dist[~issame], t)) for t in thresholds])
    spline = BSpline.construct_fast(np.r_[far[0], far, far[-1]], thresholds, 1)
    levels = np.unique(far)
    for target in [1e-3, 1e-2, 0.1, levels[3], levels[3] + 1e-5, levels[-2]]:  # between levels and exactly on them
        assert slinear_as_insightface_ran_it(far, thresholds, target) == pytest.approx(float(spline(target)),
                                                                                      abs=1e-12)


def direct_calculate_val(dist: np.ndarray, issame: np.ndarray, far_target: float,
                         folds: Optional[np.ndarray] = None) -> tuple[float, float, float]:
    """insightface `calculate_val` written out with loops: (VAL mean, VAL population std, FAR mean) over the folds."""
    thresholds = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for train, test in splits(len(dist), 10, folds):
        impostors = dist[train][~issame[train]]  # FAR: the share of mismatched training pairs accepted
        far_train = np.zeros(len(thresholds))
        for k, t in enumerate(thresholds):
            far_train[k] = np.sum(np.less(impostors, t)) / len(impostors)
        if far_train.max() >= far_target:
            threshold = slinear_as_insightface_ran_it(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        accepted = np.less(dist[test], threshold)
        vals.append(np.sum(accepted & issame[test]) / np.sum(issame[test]))
        fars.append(np.sum(accepted & ~issame[test]) / np.sum(~issame[test]))
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


@pytest.mark.parametrize("n_pairs, matched, signal, seed, scattered_folds", [
    (4000, 0.5, 0.3, 0, False),  # TAR@1e-3 about 0.2
    (4000, 0.5, 0.5, 1, False),  # about 0.65
    (4000, 0.5, 0.4, 2, True),  # the pair set's own (scattered) folds are used for TAR too
    (15000, 0.25, 0.5, 3, False),  # about 10,100 mismatched training pairs: 1e-4 is measurable as well
])
def test_tar_at_far_matches_insightface_calculate_val(n_pairs, matched, signal, seed, scattered_folds):
    dist, issame = planted_distances(n_pairs, signal, seed, matched)
    # another generator than the pairs': the same one would put all matched pairs in the even folds
    folds = np.random.default_rng(seed + 100).permutation(np.arange(n_pairs) % 10) if scattered_folds else None
    report = verification_report(dist, issame, folds)
    train_negatives = min(int((~issame[train]).sum()) for train, _ in splits(n_pairs, 10, folds))
    for target in (1e-3, 1e-4):
        measured = report.tar_at_far[f"{target:g}"]
        if train_negatives * target < 1:  # facenas reports nothing where insightface would measure noise
            assert measured is None
            continue
        val, val_std, far = direct_calculate_val(dist, issame, target, folds)
        assert 0.05 < val < 0.95  # thresholds fall among matched pairs: a misplaced threshold shows
        # the same algorithm on the same float64 distances: only the interpolation's rounding may differ (1e-16
        # on a threshold), which would flip a prediction only for a distance within 1e-16 of it
        assert measured["tar"] == pytest.approx(val, abs=1e-9)
        assert measured["tar_std"] == pytest.approx(val_std, abs=1e-9)
        assert measured["far"] == pytest.approx(far, abs=1e-9)
    assert report.tar_at_far["0.001"] is not None  # the case measures what it says
    assert (report.tar_at_far["0.0001"] is not None) == (n_pairs == 15000)


def pairs_with_fold_negatives(negatives_per_fold: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Overlapping distances with exactly the given number of mismatched pairs (and 100 matched ones) per fold."""
    rng = np.random.default_rng(seed)
    dist, issame, folds = [], [], []
    for f, n_neg in enumerate(negatives_per_fold):
        dist += [rng.normal(1.2, 0.3, 100), rng.normal(2.0, 0.2, n_neg)]
        issame += [np.ones(100, bool), np.zeros(n_neg, bool)]
        folds.append(np.full(100 + n_neg, f))
    return np.clip(np.concatenate(dist), 0, 4), np.concatenate(issame), np.concatenate(folds)


@pytest.mark.parametrize("target", [1e-3, 1e-4])
def test_tar_at_far_needs_one_over_far_mismatched_pairs_in_every_training_split(target):
    need = round(1 / target)
    q, r = divmod(need, 9)
    others = [q + 1] * r + [q] * (9 - r)  # nine folds holding `need` mismatched pairs together
    counts = [max(others)] + others  # fold 0's training split holds exactly `need`, the others at least that
    dist, issame, folds = pairs_with_fold_negatives(counts)
    key = f"{target:g}"
    report = verification_report(dist, issame, folds)
    assert report.tar_at_far[key] is not None
    if target == 1e-3:  # the reference loop is slow on 10,000 pairs; 1e-3 pins the value
        assert report.tar_at_far[key]["tar"] == pytest.approx(direct_calculate_val(dist, issame, target, folds)[0],
                                                              abs=1e-9)
    counts[-1] -= 1  # one mismatched pair fewer: fold 0's training split is one short, the others are not
    dist, issame, folds = pairs_with_fold_negatives(counts)
    assert verification_report(dist, issame, folds).tar_at_far[key] is None


@pytest.mark.parametrize("folds, message", [
    (np.zeros(5, int), "5 fold ids for 20 pairs"),
    (np.r_[np.zeros(10, int), -np.ones(10, int)], "10 of 20 pairs have no fold"),
])
def test_fold_ids_that_do_not_cover_the_pairs_are_an_error(folds, message):
    from facenas.evaluate.metrics import fold_indices

    with pytest.raises(ValueError, match=message):
        fold_indices(20, folds)
    assert [len(f) for f in fold_indices(20, -np.ones(20, int))] == [2] * 10  # none given: contiguous blocks
