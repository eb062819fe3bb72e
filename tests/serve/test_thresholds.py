"""Operating points: verification and identification decide at their own thresholds, and every answer says which."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from facenas.export.card import ModelCard, OperatingPoint, Threshold
from facenas.serve.app import create_app
from facenas.serve.errors import StartupError
from facenas.serve.thresholds import resolve_decisions
from tests.serve.conftest import LOCAL, settings_for


def card_with(points: list[OperatingPoint]) -> ModelCard:
    threshold = Threshold(cosine=0.30, squared_distance=1.4, chosen_on="lfw-dev", pairs=3000, rule="best accuracy",
                          far=0.01, tar=0.95, accuracy=0.97)
    return ModelCard(arch={}, arch_short="x", params=1, macs=1, embedding_size=8, onnx_sha256="0",
                     facenas_version="0", threshold=threshold, operating_points=points)


POINTS = [OperatingPoint(target_far=1e-2, cosine=0.35, squared_distance=1.3, far=0.0097, tar=0.9, negatives=1500),
          OperatingPoint(target_far=1e-3, cosine=0.45, squared_distance=1.1, far=0.00093, tar=0.8, negatives=1500)]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read here")
    return str(path)


def test_defaults_best_accuracy_for_verify_and_the_lowest_recorded_far_for_identify(model_file, tmp_path):
    from facenas.serve.settings import ServeSettings

    verify, identify = resolve_decisions(ServeSettings(model=model_file), card_with(POINTS))
    assert verify.threshold == 0.30 and verify.far is None and "best accuracy on lfw-dev" in verify.source
    assert identify.threshold == 0.45 and identify.far == 1e-3
    assert identify.source == "model card: FAR 0.001 on lfw-dev (1500 mismatched pairs)"


def test_far_and_explicit_thresholds_per_job(model_file):
    from facenas.serve.settings import ServeSettings

    card = card_with(POINTS)
    verify, identify = resolve_decisions(ServeSettings(model=model_file, verify_far=1e-2, identify_threshold=0.6),
                                         card)
    assert (verify.threshold, verify.far) == (0.35, 1e-2) and (identify.threshold, identify.far) == (0.6, None)
    assert identify.source == "service setting (identify_threshold)"
    verify, identify = resolve_decisions(ServeSettings(model=model_file, threshold=0.2, identify_far=1e-2), card)
    assert verify.threshold == 0.2 and verify.source == "service setting (threshold)" and identify.threshold == 0.35


def test_a_far_the_card_cannot_show_is_refused_with_what_it_records(model_file):
    from facenas.serve.settings import ServeSettings

    with pytest.raises(StartupError, match=r"no operating point at FAR 1e-05 \(it records: 0.01, 0.001\)"):
        resolve_decisions(ServeSettings(model=model_file, identify_far=1e-5), card_with(POINTS))
    with pytest.raises(StartupError, match="has no card: give --verify-threshold"):
        resolve_decisions(ServeSettings(model=model_file, verify_far=1e-3), None)
    with pytest.raises(StartupError, match="no model card with a threshold"):
        resolve_decisions(ServeSettings(model=model_file), None)


def test_a_threshold_and_a_far_for_one_job_are_refused(model_file):
    from pydantic import ValidationError

    from facenas.serve.settings import ServeSettings

    with pytest.raises(ValidationError, match="give identify_threshold or identify_far, not both"):
        ServeSettings(model=model_file, identify_threshold=0.5, identify_far=1e-3)


def test_an_old_card_without_points_identifies_at_the_verify_threshold_and_warns(model_file, caplog):
    from facenas.serve.settings import ServeSettings

    with caplog.at_level(logging.WARNING, logger="facenas.serve"):
        verify, identify = resolve_decisions(ServeSettings(model=model_file), replace(card_with([])))
    assert identify.threshold == verify.threshold and "no FAR point on the card" in identify.source
    assert any("false accepts grow with the gallery" in r.message for r in caplog.records)


def test_the_answers_state_the_operating_point_they_used(exported, tmp_path, crops):
    model, report = exported
    card_points = report.card_data["operating_points"]
    assert card_points and all(p["far"] <= p["target_far"] for p in card_points)
    settings = settings_for(model, tmp_path / "g.sqlite", verify_threshold=-1.0, identify_threshold=0.9999)
    with TestClient(create_app(settings), client=LOCAL) as c:
        v = c.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", crops[4])}).json()
        assert v["threshold"] == -1.0 and v["same_person"] and v["threshold_source"] == "service setting " \
                                                                                       "(verify_threshold)"
        c.post("/v1/subjects", json={"id": "a"})
        c.post("/v1/subjects/a/faces", files=[("files", ("a.png", crops[0]))])
        i = c.post("/v1/identify", files={"image": ("b.png", crops[1])}).json()
        assert i["threshold"] == 0.9999 and i["unknown"] and i["candidates"][0]["subject"] == "a"
        assert i["threshold_source"] == "service setting (identify_threshold)" and i["far"] is None
        info = c.get("/v1/model").json()
        assert info["verify"]["threshold"] == -1.0 and info["identify"]["threshold"] == 0.9999
    far = card_points[0]["target_far"]
    with TestClient(create_app(settings_for(model, tmp_path / "g.sqlite", identify_far=far)), client=LOCAL) as c:
        i = c.post("/v1/identify", files={"image": ("b.png", crops[1])}).json()
        assert i["far"] == far and i["threshold"] == pytest.approx(card_points[0]["cosine"])
        assert i["threshold_source"].startswith(f"model card: FAR {far:g} on synthetic calibration pairs")
        assert np.isfinite(i["candidates"][0]["similarity"])
