"""The face commands end to end: data tools, a face search, training, and evaluation on an LFW directory."""

from __future__ import annotations

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.data.faces.build import write_folder
from facenas.data.faces.synthetic import synthetic_faces
from facenas.demo import write_synthetic_lfw

runner = CliRunner()


def test_data_commands(tmp_path):
    write_folder(synthetic_faces(6, 4, seed=2), tmp_path / "folder")
    result = runner.invoke(app, ["data", "build-rec", str(tmp_path / "folder"), str(tmp_path / "rec")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 24
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "rec"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["identities"] == 6
    result = runner.invoke(app, ["data", "build-bin", str(tmp_path / "x.bin"), "--folder", str(tmp_path / "folder"),
                                 "--pairs-per-fold", "2", "--folds", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(runner.invoke(app, ["data", "inspect", str(tmp_path / "x.bin"), "--json"]).output)
    assert report["format"] == "bin" and report["pairs"] == report["matched"] * 2
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_face_search_train_and_eval(tmp_path, tiny_face_config_data):
    config = tmp_path / "faces.yaml"
    config.write_text(yaml.safe_dump(tiny_face_config_data))
    result = runner.invoke(app, ["search", "-c", str(config), "--out", str(tmp_path / "search")])
    assert result.exit_code == 0, result.output
    best = tmp_path / "search" / "best_arch.json"
    assert json.loads(best.read_text())["profile"]["head"] == "embedding"
    # the candidates' sets were decoded once, into the run directory, for every candidate to map
    assert len(list((tmp_path / "search" / "cache").glob("faces-*/heldout.images.npy"))) == 1
    result = runner.invoke(app, ["train", "--arch", str(best), "-c", str(config), "--out", str(tmp_path / "train"),
                                 "--epochs", "2"])
    assert result.exit_code == 0, result.output
    model = tmp_path / "train" / "model.pt"

    lfw, pairs, landmarks = write_synthetic_lfw(tmp_path / "bench")
    result = runner.invoke(app, ["eval", "--model", str(model), "--lfw-dir", str(lfw), "--pairs", str(pairs),
                                 "--landmarks", str(landmarks), "--json", str(tmp_path / "r.json"),
                                 "--plot", str(tmp_path / "roc.png"), "--save-embeddings", str(tmp_path / "e.npz")])
    assert result.exit_code == 0, result.output
    assert "lfw: 600 pairs, accuracy" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    lfw_report = report["sets"]["lfw"]
    assert lfw_report["folds"] == 10 and len(lfw_report["fold_accuracies"]) == 10 and lfw_report["xnorm"] > 0
    assert report["model"]["kind"] == "facenas" and "insightface" in report["protocol"]
    assert (tmp_path / "roc.png").stat().st_size > 1000
    saved = np.load(tmp_path / "e.npz")
    assert saved["lfw_embeddings"].shape == (1200, 16) and saved["lfw_issame"].sum() == 300

    result = runner.invoke(app, ["eval", "--model", str(model)])
    assert result.exit_code == 2 and "nothing to evaluate" in result.output
    result = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope.pt"), "--bin", str(tmp_path / "x.bin")])
    assert result.exit_code == 2 and "does not exist" in result.output
