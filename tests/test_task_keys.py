"""Config keys that the chosen task never reads are errors naming the key it does read (issue 7)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app, load_run_config
from facenas.config import load_config, parse_config, to_yaml
from facenas.errors import ConfigError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("data, message", [
    ({"task": "faces", "train": {"device": "cpu"}}, "train.device is not read by a faces run.*faces.train.device"),
    ({"task": "faces", "final": {"epochs": 3}}, "final.epochs is not read.*set faces.train.epochs"),
    ({"task": "faces", "data": {"root": "x"}}, "data.root is not read.*set faces.data.source"),
    ({"faces": {"train": {"lr": 0.2}}}, "faces.train.lr is not read by a classification run.*set train.lr"),
    ({"model": {"embedding_dim": 3}}, "model.embedding_dim is not read by a classification run"),
])
def test_a_key_the_task_ignores_is_an_error_naming_the_key_it_reads(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_the_device_flag_sets_the_key_the_task_reads():
    faces = load_run_config(ROOT / "configs/search/faces-orl.yaml", None, {}, {("train.device", "faces.train.device"):
                                                                              "cpu"})
    assert faces.faces.train.device == "cpu"
    digits = load_run_config(ROOT / "configs/search/digits.yaml", None, {}, {("train.device", "faces.train.device"):
                                                                            "cpu"})
    assert digits.train.device == "cpu" and digits.faces.train.device == "auto"


def test_search_with_a_face_config_rejects_a_classification_key(tmp_path):
    result = CliRunner().invoke(app, ["search", "-c", str(ROOT / "configs/search/faces-orl.yaml"), "--out",
                                      str(tmp_path / "r"), "--set", "train.batch_size=8"])
    assert result.exit_code == 2 and "set faces.train.batch_size instead" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "search").glob("*.yaml")))
def test_every_shipped_config_loads_and_its_resolved_copy_loads_back(name):
    config = load_config(ROOT / "configs" / "search" / name)
    assert parse_config(yaml.safe_load(to_yaml(config))) == config


@pytest.mark.parametrize("dataset, message", [("mnist-idx", "idx files are read from data.root"),
                                              ("digits", "ship inside scikit-learn")])
def test_download_where_nothing_downloads_is_an_error_saying_what_to_do(dataset, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"data": {"dataset": dataset, "download": True}})
    assert parse_config({"data": {"dataset": dataset, "download": False}}).data.download is False


def test_a_search_refuses_a_backbone(tmp_path):
    result = CliRunner().invoke(app, ["search", "-c", str(ROOT / "configs/search/faces-orl.yaml"), "--out",
                                      str(tmp_path / "r"), "--set", "model.backbone=mobilefacenet"])
    assert result.exit_code == 2 and "facenas train --backbone" in result.output
