"""The export contract and its verifications."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.errors import ExportError
from facenas.export.card import read_card, sha256_file
from facenas.export.onnx import export_onnx
from tests.conftest import save_face_model


def check_contract(path):
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "data" and dims[0] == onnx.TensorProto.FLOAT
    assert isinstance(dims[1][0], str) and dims[1][1:] == [3, 112, 112]  # only the batch is symbolic
    assert len(model.graph.output) == 1
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert not list(path.parent.glob("*.data"))  # one self-contained file
    first = [n.name.lstrip("/").lower() for n in model.graph.node[:8]]
    assert not (any(n.startswith("sub") for n in first) and any(n.startswith("mul") for n in first))


def test_export_meets_the_contract_and_writes_a_card(exported):
    path, report = exported
    check_contract(path)
    v = report.verification
    assert min(v.ort_vs_torch_min_cosine.values()) > 0.99999 and set(v.ort_vs_torch_min_cosine) == {"1", "7"}
    assert v.insightface_class == "ArcFaceONNX" and v.insightface_min_cosine > 0.99999
    # the calibration pairs went through both sides as the same 112x112 pixels: the embeddings agree, and the two
    # accuracies differ only if float noise moved a pair across one of the protocol's thresholds (then a warning)
    assert v.calibration_min_cosine > 0.99999 and v.max_distance_difference < 1e-4
    assert v.accuracy_onnx == v.accuracy_checkpoint or (v.pairs_across_a_threshold and v.warnings)
    card = read_card(path)
    assert card.onnx_sha256 == sha256_file(path) and card.embedding_size == 32 and card.params > 0
    assert card.trained_size == 56  # exported at the contract's 112 all the same (average pool inside)
    assert card.input["name"] == "data" and card.input["color"] == "RGB" and "127.5" in card.input["normalization"]
    t = card.threshold
    assert t.chosen_on == "synthetic calibration pairs" and t.pairs == 120
    assert t.cosine == pytest.approx(1 - t.squared_distance / 2) and 0 <= t.far <= 1
    assert "synthetic calibration pairs" in card.evaluation and card.facenas_version
    check = card.evaluation["synthetic calibration pairs"]["export_check"]
    assert check["accuracy_onnx"] == v.accuracy_onnx and check["accuracy_pytorch"] == v.accuracy_checkpoint


def _measured(dist, issame, accuracy):
    from facenas.export.onnx import Measured

    emb = np.tile(np.eye(2)[:1], (2 * len(dist), 1))  # identical embeddings on both sides: cosine 1
    return Measured(accuracy, np.asarray(dist, float), None, emb)


def test_float_noise_across_a_threshold_is_a_warning_with_both_figures():
    from facenas.export.onnx import Verification, compare_on_calibration

    issame = np.array([True, False] * 10)
    before = np.linspace(0.5, 2.5, 20)
    after = before.copy()
    after[3] = 0.8999999  # 0.9 and 0.8999999 lie on the two sides of the threshold 0.90
    before[3] = 0.9000001
    v = Verification()
    compare_on_calibration(_measured(before, issame, 0.65), _measured(after, issame, 0.70), v, Path("m.onnx"))
    assert v.pairs_across_a_threshold == 1 and len(v.warnings) == 1
    assert "0.6500 in PyTorch" in v.warnings[0] and "0.7000 in onnxruntime" in v.warnings[0]


def test_an_accuracy_change_that_no_pair_explains_is_an_error():
    from facenas.export.onnx import Verification, compare_on_calibration

    issame = np.array([True, False] * 10)
    dist = np.linspace(0.5, 2.5, 20)
    with pytest.raises(ExportError, match="float noise cannot explain"):
        compare_on_calibration(_measured(dist, issame, 0.65), _measured(dist + 1e-9, issame, 0.70), Verification(),
                               Path("m.onnx"))


def test_embeddings_that_disagree_on_the_calibration_images_are_an_error():
    from facenas.export.onnx import Measured, Verification, compare_on_calibration

    dist = np.linspace(0.5, 2.5, 20)
    same = _measured(dist, np.ones(20, bool), 0.7)
    rotated = Measured(0.7, dist, None, np.tile([[0.999, 0.0447]], (40, 1)))
    with pytest.raises(ExportError, match="disagree on the calibration images"):
        compare_on_calibration(same, rotated, Verification(), Path("m.onnx"))


def test_pairs_across_thresholds_counts_only_decisions_that_differ():
    from facenas.export.onnx import pairs_across_thresholds

    a = np.array([0.905, 1.0, 0.8999999, 2.0])
    b = np.array([0.906, 1.0, 0.9000001, 2.0 + 1e-12])
    assert pairs_across_thresholds(a, b) == 1  # only the third: 0.90 < its two values on the one side only


def test_a_half_resolution_model_is_checked_on_the_contract_input(tmp_path, calibration_pairs):
    """The regression of issue 7: the checkpoint's accuracy used to be measured on pairs shrunk to 56x56 outside the
    graph, the ONNX's on 112x112 pooled inside; distances differed by up to 0.035 and the export was refused."""
    save_face_model(tmp_path / "m.pt", size=56, stem_stride=1)
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", calibration=calibration_pairs,
                         calibration_name="calib")
    v = report.verification
    assert v.max_distance_difference < 1e-4 and v.calibration_min_cosine > 0.99999


@pytest.mark.parametrize("channels, size, stride", [(1, 112, 2), (3, 56, 1), (1, 56, 1)])
def test_grey_and_half_resolution_models_still_meet_the_contract(tmp_path, channels, size, stride):
    save_face_model(tmp_path / "m.pt", channels=channels, size=size, stem_stride=stride)
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    check_contract(tmp_path / "m.onnx")
    assert report.verification.insightface_class == "ArcFaceONNX"
    card = read_card(tmp_path / "m.onnx")
    assert card.trained_channels == channels and card.threshold is None


def test_a_card_of_another_file_is_refused(exported, tmp_path):
    path, _ = exported
    copy = tmp_path / "model.onnx"
    copy.write_bytes(path.read_bytes() + b"")
    card = path.with_name("model.card.json").read_text()
    (tmp_path / "model.card.json").write_text(card.replace(sha256_file(path), "0" * 64))
    from facenas.errors import DataError
    with pytest.raises(DataError, match="describes another file"):
        read_card(copy)


def test_int8_quantisation_is_compared_side_by_side(tmp_path, calibration_pairs):
    save_face_model(tmp_path / "m.pt")
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", calibration=calibration_pairs,
                         calibration_name="calib", quantize="int8")
    q = report.quantized
    assert q["size_bytes"]["int8"] < q["size_bytes"]["float32"]
    assert set(q["latency_ms_batch1"]) == {"float32", "int8"} and set(q["accuracy"]) >= {"float32", "int8"}
    assert q["embedding_min_cosine_vs_float"] > 0.9
    card = read_card(tmp_path / "m.int8.onnx")
    assert card.quantization.startswith("int8") and card.threshold is not None


def test_cli_export_and_eval_of_the_onnx(tmp_path, calibration_pairs):
    from facenas.data.faces.pairs import write_bin

    save_face_model(tmp_path / "m.pt")
    write_bin(tmp_path / "calib.bin", calibration_pairs.images, calibration_pairs.issame)
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx"),
                                 "--calibration-bin", str(tmp_path / "calib.bin")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["threshold"]["chosen_on"] == "calib"
    accs, embeddings = [], []
    for model in ("m.pt", "m.onnx"):
        out = tmp_path / f"{model}.json"
        assert runner.invoke(app, ["eval", "--model", str(tmp_path / model), "--bin", str(tmp_path / "calib.bin"),
                                   "--json", str(out), "--save-embeddings", str(tmp_path / f"{model}.npz")]
                             ).exit_code == 0
        accs.append(json.loads(out.read_text())["sets"]["calib"]["accuracy"])
        embeddings.append(np.load(tmp_path / f"{model}.npz")["calib_embeddings"])
    # a 112x112 model: both see the same pixels, so the embeddings agree and so do the accuracies, unless float
    # noise moved a pair across one of the protocol's thresholds
    assert np.min(np.sum(embeddings[0] * embeddings[1], axis=1)) > 0.99999
    from facenas.evaluate.metrics import squared_distances
    from facenas.export.onnx import pairs_across_thresholds

    dists = [squared_distances(e[0::2], e[1::2]) for e in embeddings]
    assert accs[0] == accs[1] or pairs_across_thresholds(*dists) > 0
    bad = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.txt")])
    assert bad.exit_code == 2 and "must end in .onnx" in bad.output


def test_exporting_a_classifier_is_refused(tmp_path):
    import torch

    from facenas.models import build_model
    from facenas.space.arch import Arch, Profile

    arch = Arch.uniform(4, 3, Profile.paper(1, 10))
    torch.save({"arch": arch.to_dict(), "model": build_model(arch).state_dict()}, tmp_path / "c.pt")
    with pytest.raises(ExportError, match="classifier cannot be exported"):
        export_onnx(tmp_path / "c.pt", tmp_path / "c.onnx")


def test_operating_points_reach_their_far_and_skip_what_the_pairs_cannot_show():
    from facenas.export.onnx import operating_points

    rng = np.random.default_rng(0)
    issame = np.r_[np.ones(500, bool), np.zeros(2000, bool)]
    dist = np.where(issame, rng.normal(0.8, 0.2, 2500), rng.normal(1.8, 0.25, 2500)).clip(0, 4)
    points = operating_points(dist, issame)
    assert [p.target_far for p in points] == [1e-1, 1e-2, 1e-3]  # 2000 mismatched pairs cannot show 1e-4
    for p in points:
        assert p.far <= p.target_far + 1 / 2000 and p.negatives == 2000
        assert p.cosine == pytest.approx(1 - p.squared_distance / 2)
    assert points[0].squared_distance > points[1].squared_distance > points[2].squared_distance  # stricter
    assert points[0].tar >= points[1].tar >= points[2].tar
