"""`facenas eval` takes insightface-style ONNX files and agrees with the checkpoint they came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.data.faces.pairs import pairs_from_faces, write_bin
from facenas.data.faces.synthetic import synthetic_faces
from facenas.errors import DataError
from facenas.evaluate.metrics import squared_distances
from facenas.evaluate.verify import OnnxEmbedder
from facenas.export.onnx import pairs_across_thresholds
from facenas.models import build_model
from facenas.space.arch import Arch, Profile


@pytest.fixture
def model_and_onnx(tmp_path):
    profile = Profile(in_channels=3, stem_stride=1, reductions=3, head="embedding", embedding_dim=16, input_size=32)
    arch = Arch(6, 5, [0, 1, 0, 0, 1], [3, 3, 5, 3, 3], profile)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "model.pt"
    torch.save({"arch": arch.to_dict(), "model": model.state_dict(), "preprocess": {"mean": 127.5}}, ckpt)
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(onnx_path), input_names=["data"],
                      dynamic_axes={"data": {0: "batch"}}, opset_version=17, dynamo=False)
    return ckpt, onnx_path


def test_onnx_and_checkpoint_give_the_same_verification(tmp_path, model_and_onnx):
    ckpt, onnx_path = model_and_onnx
    faces = synthetic_faces(12, 4, seed=9, size=32)
    pairs = pairs_from_faces(faces, 6, folds=10, seed=0)
    write_bin(tmp_path / "pairs.bin", pairs.images, pairs.issame)
    reports, embeddings = {}, {}
    for model in (ckpt, onnx_path):
        out = tmp_path / f"{model.suffix[1:]}.json"
        result = CliRunner().invoke(app, ["eval", "--model", str(model), "--bin", str(tmp_path / "pairs.bin"),
                                          "--json", str(out), "--save-embeddings", str(out.with_suffix(".npz"))])
        assert result.exit_code == 0, result.output
        reports[model.suffix] = json.loads(out.read_text())
        embeddings[model.suffix] = np.load(out.with_suffix(".npz"))["pairs_embeddings"]
    a, b = reports[".pt"]["sets"]["pairs"], reports[".onnx"]["sets"]["pairs"]
    assert reports[".onnx"]["model"]["kind"] == "onnx" and reports[".onnx"]["model"]["input_size"] == 32
    # the same pixels through both: the embeddings agree, and the accuracies are equal unless float noise moved a
    # pair's distance across one of the protocol's thresholds (no bit-exact numerics assumed)
    assert np.min(np.sum(embeddings[".pt"] * embeddings[".onnx"], axis=1)) > 0.99999
    dists = [squared_distances(e[0::2], e[1::2]) for e in embeddings.values()]
    assert a["accuracy"] == b["accuracy"] or pairs_across_thresholds(*dists) > 0
    assert a["xnorm"] == pytest.approx(b["xnorm"], rel=1e-4)


def test_onnx_embedder_contract_checks(tmp_path, model_and_onnx):
    _, onnx_path = model_and_onnx
    embedder = OnnxEmbedder(onnx_path)
    assert (embedder.size, embedder.channels, embedder.mean, embedder.std) == (32, 3, 127.5, 127.5)
    assert embedder.embed(np.zeros((3, 3, 32, 32), np.uint8)).shape == (3, 16)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(DataError, match="not a loadable ONNX model"):
        OnnxEmbedder(bad)
