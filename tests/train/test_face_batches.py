"""Batches of a face epoch: BatchNorm needs two samples, and nothing may be dropped."""

from __future__ import annotations

import numpy as np
import pytest

from facenas.config import parse_config
from facenas.space.arch import Arch
from facenas.train.evaluators import FaceEvaluator, face_profile
from facenas.train.faces import batch_bounds


@pytest.mark.parametrize("n, batch", [(100, 33), (65, 64), (64, 64), (3, 2), (2, 64), (129, 32)])
def test_batches_cover_every_image_once_and_none_has_one_image(n, batch):
    bounds = batch_bounds(n, batch)
    covered = np.concatenate([np.arange(a, b) for a, b in bounds])
    assert covered.tolist() == list(range(n))
    assert all(b - a >= 2 for a, b in bounds)
    assert all(b - a <= batch + 1 for a, b in bounds)


def test_a_training_set_of_one_modulo_the_batch_size_trains(tiny_face_config_data):
    data = dict(tiny_face_config_data)
    # 20 training identities x 5 images = 100 = 3 x 33 + 1: the last batch would hold one image
    data["faces"] = {**data["faces"], "train": {**data["faces"]["train"], "batch_size": 33}}
    cfg = parse_config(data)
    metrics = FaceEvaluator(cfg).evaluate(Arch.uniform(4, 4, face_profile(cfg)), 1, seed=0)
    assert metrics.extra["train_images"] == 100 and np.isfinite(metrics.epochs[0].train_loss)
