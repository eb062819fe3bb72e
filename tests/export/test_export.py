"""The export contract and its verifications."""

from __future__ import annotations

import json

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
    assert v.accuracy_onnx == pytest.approx(v.accuracy_checkpoint, abs=1 / 120)
    card = read_card(path)
    assert card.onnx_sha256 == sha256_file(path) and card.embedding_size == 32 and card.params > 0
    assert card.trained_size == 56  # exported at the contract's 112 all the same (average pool inside)
    assert card.input["name"] == "data" and card.input["color"] == "RGB" and "127.5" in card.input["normalization"]
    t = card.threshold
    assert t.chosen_on == "synthetic calibration pairs" and t.pairs == 120
    assert t.cosine == pytest.approx(1 - t.squared_distance / 2) and 0 <= t.far <= 1
    assert "synthetic calibration pairs" in card.evaluation and card.facenas_version


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
    accs = []
    for model in ("m.pt", "m.onnx"):
        out = tmp_path / f"{model}.json"
        assert runner.invoke(app, ["eval", "--model", str(tmp_path / model), "--bin", str(tmp_path / "calib.bin"),
                                   "--json", str(out)]).exit_code == 0
        accs.append(json.loads(out.read_text())["sets"]["calib"]["accuracy"])
    assert accs[0] == pytest.approx(accs[1], abs=1 / 120)
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
