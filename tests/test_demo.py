"""The demo (`facenas demo`) at a tiny scale: outputs, aligned crops, and a resume that keeps what was done."""

from __future__ import annotations

import json

import numpy as np
import pytest

import facenas.demo as demo
from facenas.data.faces.images import read_image


@pytest.fixture
def tiny_demo(monkeypatch, tiny_face_config_data):
    faces = tiny_face_config_data["faces"]
    monkeypatch.setattr(demo, "SEARCH", {**tiny_face_config_data, "name": "demo-search"})
    monkeypatch.setattr(demo, "TRAIN", {
        "name": "demo-train", "task": "faces", "seed": 0, "model": {**tiny_face_config_data["model"]},
        "faces": {**faces, "train": {**faces["train"], "epochs": 2}}})
    monkeypatch.setattr(demo, "BENCHMARK_IDENTITIES", 10)
    monkeypatch.setattr(demo, "BENCHMARK_PAIRS_PER_FOLD", 3)


def test_a_resumed_demo_keeps_its_timings_and_outputs_and_fresh_starts_over(tiny_demo, tmp_path):
    first = demo.run_demo(tmp_path, events=None, log=lambda _: None)
    assert first["search"]["seconds"] > 0 and first["training"]["seconds"] > 0
    outputs = [tmp_path / "train" / "model.pt", tmp_path / "eval.json", tmp_path / "roc.png"]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    second = demo.run_demo(tmp_path, events=None, log=lambda _: None)
    assert second == first  # timings included: a finished stage is not run (or timed) again
    assert [p.stat().st_mtime_ns for p in outputs] == stamps  # the model, evaluation and plot are not rewritten
    assert json.loads((tmp_path / "summary.json").read_text()) == first

    # aligned crops of held-out identities, to try the service with
    summary = first
    crops = sorted((tmp_path / "aligned").glob("*.png"))
    assert len(crops) == demo.ALIGNED_IDENTITIES * demo.ALIGNED_PER_IDENTITY
    assert crops[0].name == "synthetic_100000_0.png"
    assert summary["outputs"]["aligned_crops"] == str(tmp_path / "aligned")
    image = read_image(crops[0])
    assert image.shape == (112, 112, 3)
    # aligned onto the ArcFace template: the face is centred, so the centre differs from the photo's background
    assert abs(float(image[40:80, 40:80].mean()) - float(image[:8, :8].mean())) > 5
    fresh = demo.run_demo(tmp_path, resume=False, events=None, log=lambda _: None)  # used to be refused
    assert fresh["architecture"] == summary["architecture"]  # everything seeded: starting over finds the same
    assert [p.stat().st_mtime_ns for p in outputs] != stamps
    assert np.array_equal(read_image(crops[0]), image)


def test_the_demos_search_scores_and_decides_as_the_face_configs():
    from facenas.config import decision_rules, micro_epochs, parse_config

    cfg = parse_config(demo.SEARCH)
    assert (cfg.faces.score.metric, cfg.faces.score.pairs, cfg.faces.score.reduce) == ("auc", "all", "last")
    # a micro change must beat the noise of a difference of two scores, not just the incumbent's figure
    assert decision_rules(cfg.search).micro_gain == pytest.approx(cfg.search.noise.std * 2 ** 0.5)
    assert micro_epochs(cfg.search.micro, 6) == 3  # half a D7 C8 macro net's budget, not one epoch
