"""The face search's score: pairs, measures, epoch reduction, common random numbers, the third split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facenas.config import parse_config
from facenas.data.faces.pairs import all_genuine_pairs
from facenas.data.faces.splits import load_face_splits
from facenas.space.arch import Arch
from facenas.train.evaluators import FaceEvaluator, face_profile
from facenas.train.face_score import measures
from facenas.train.metrics import EpochMetrics, Metrics


def test_all_genuine_pairs_has_every_genuine_pair_and_identity_disjoint_folds():
    labels = np.repeat(np.arange(30), [2, 3, 4] * 10)
    index = all_genuine_pairs(labels, impostor_ratio=2.0, folds=10, seed=0)
    genuine = {(int(a), int(b)) for a, b, s in zip(index.a, index.b, index.issame) if s}
    expected = {(i, j) for k in range(30) for i in np.flatnonzero(labels == k) for j in np.flatnonzero(labels == k)
                if i < j}
    assert genuine == expected and int((~index.issame).sum()) == 2 * len(expected)
    assert all(labels[a] != labels[b] for a, b in zip(index.a[~index.issame], index.b[~index.issame]))
    fold_of = {}
    for a, f in zip(index.a, index.folds):
        assert fold_of.setdefault(int(labels[a]), int(f)) == f  # an identity's pairs stay in one fold
    assert sorted(set(index.folds.tolist())) == list(range(10))


def test_measures_order_separations_correctly():
    rng = np.random.default_rng(0)
    issame = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    folds = np.arange(1000) % 10
    values = {}
    for gap in (0.2, 0.6, 1.2):
        dist = np.clip(np.where(issame, 1.0 - gap, 1.0) + rng.normal(0, 0.25, 1000), 0, 4)
        values[gap] = measures(dist, issame, folds, far=0.01)
    for key in ("accuracy", "auc", "tar", "dprime"):
        assert values[0.2][key] < values[0.6][key] < values[1.2][key], key
    # d' of two normal similarity distributions: (gap / 2) / (0.25 / 2) = 4 * gap, reported x 10
    assert values[0.6]["dprime"] == pytest.approx(10 * 4 * 0.6, rel=0.1)
    assert 0 <= values[0.2]["tar"] <= values[0.2]["auc"] <= 100


@pytest.mark.parametrize("reduce, expected", [("max", 80.0), ("last", 70.0), ("mean_last", 75.0)])
def test_the_score_reduces_the_scored_epochs_as_configured(reduce, expected):
    epochs = tuple(EpochMetrics(i, 0.0, v) for i, v in enumerate([60.0, 80.0, math.nan, 70.0]))
    # mean_last over the last 2 scored epochs: (80 + 70) / 2; unscored epochs (NaN) are skipped
    assert Metrics(epochs, reduce=reduce, last_k=2).score == expected
    assert Metrics.from_dict(Metrics(epochs, reduce=reduce, last_k=2).to_dict()).score == expected


def _config(tiny_face_config_data, **score):
    data = dict(tiny_face_config_data)
    data["faces"] = {**data["faces"], "score": score,
                     "data": {**data["faces"]["data"], "test_identities": 5}}
    return parse_config(data)


def test_test_identities_are_apart_from_training_and_the_search(tiny_face_config_data):
    splits = load_face_splits(_config(tiny_face_config_data).faces.data, 0)
    names = [set(s.identities[int(k)] for k in np.unique(s.labels)) for s in (splits.train, splits.heldout,
                                                                              splits.test)]
    assert [len(n) for n in names] == [15, 10, 5]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(splits.test_pairs) > 0 and "5 test identities" in splits.description
    data = _config(tiny_face_config_data).faces.data
    more = load_face_splits(data.model_copy(update={"test_pairs_per_fold": 2 * data.heldout_pairs_per_fold}), 0)
    assert len(more.test_pairs) > len(splits.test_pairs) and len(more.pairs) == len(splits.pairs)


def test_the_evaluator_scores_with_the_configured_measure_and_reduction(tiny_face_config_data):
    cfg = _config(tiny_face_config_data, metric="auc", pairs="all", reduce="last")
    metrics = FaceEvaluator(cfg).evaluate(Arch.uniform(4, 4, face_profile(cfg)), 2, seed=3)
    first, last = metrics.epochs
    assert math.isnan(first.val_acc)  # only the last epoch is scored
    assert last.val_acc == last.extra["heldout_auc"] and metrics.score == last.val_acc
    assert {"heldout_accuracy", "heldout_tar", "heldout_dprime"} <= set(last.extra)
    assert metrics.extra["pairs"] > 2 * 10 * 4  # every genuine pair: more than the balanced sample


def test_common_random_numbers_train_every_candidate_alike(tiny_face_config_data):
    arch = Arch.uniform(4, 4, face_profile(_config(tiny_face_config_data)))
    crn = FaceEvaluator(_config(tiny_face_config_data, common_random_numbers=True))
    own = FaceEvaluator(_config(tiny_face_config_data))
    a, b = (crn.evaluate(arch, 1, seed=s).epochs[0] for s in (1, 2))
    assert (a.train_loss, a.val_acc) == (b.train_loss, b.val_acc)  # the candidate's own seed is not used
    c, d = (own.evaluate(arch, 1, seed=s).epochs[0] for s in (1, 2))
    assert c.train_loss != d.train_loss


def test_training_reports_the_test_people_once(tiny_face_config_data, tmp_path):
    from facenas.train.face_job import train_faces

    data = dict(tiny_face_config_data)
    data["faces"] = {**data["faces"], "data": {**data["faces"]["data"], "test_identities": 5},
                     "train": {**data["faces"]["train"], "epochs": 1}}
    cfg = parse_config({**data, "run": {"out": str(tmp_path)}})
    report = train_faces(Arch.uniform(4, 4, face_profile(cfg)), cfg)
    test = report["test_people"]
    assert test["pairs"] == report["data"]["test_pairs"] > 0 and 0.0 < test["auc"] <= 1.0
    cfg = parse_config({**tiny_face_config_data, "run": {"out": str(tmp_path / "none")}})
    assert train_faces(Arch.uniform(4, 4, face_profile(cfg)), cfg)["test_people"] is None
