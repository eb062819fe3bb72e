from __future__ import annotations

import pytest

from facenas.config import Config, load_config, parse_override
from facenas.errors import ConfigError
from tests.conftest import ROOT


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_authors():
    cfg = Config()
    s = cfg.search
    assert (s.depth.min, s.depth.max, s.depth.start_epochs, s.depth.epoch_step) == (10, 100, 10, 1)
    assert (s.depth.accept_gain, s.depth.drop_tolerance, s.depth.break_count) == (0.10, 0.05, 2)
    assert (s.width.max, s.width.min, s.width.step, s.width.epoch_step, s.width.break_count) == (64, 16, 2, 2, 2)
    assert (s.micro.epochs, s.micro.param_slack_m, s.micro.kernels) == (2, 0.01, (5,))
    t = cfg.train
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.grad_clip) == (64, 0.025, 0.9, 3e-4, 5.0)
    assert cfg.final.epochs == 600 and cfg.data.protocol == "holdout"


def test_unknown_key_names_file_path_and_closest_key(tmp_path):
    path = write(tmp_path, "bad.yaml", "search:\n  depth:\n    maxx: 12\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "search.depth.maxx" in msg and "did you mean 'search.depth.max'" in msg


def test_cross_field_rule_names_keys_and_fix(tmp_path):
    path = write(tmp_path, "bad.yaml", "search:\n  width: {min: 18, max: 16}\n")
    with pytest.raises(ConfigError, match="width.min = 18 is above width.max = 16; make min <= max"):
        load_config(path)


def test_wrong_type_is_reported(tmp_path):
    path = write(tmp_path, "bad.yaml", "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match="train.batch_size = 'many'"):
        load_config(path)


def test_base_overlay_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nsearch:\n  depth: {min: 4, max: 9}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\nsearch:\n  depth: {max: 12}\n")
    cfg = load_config(child, {"seed": 7, "train.device": "cpu"})
    assert (cfg.name, cfg.seed, cfg.search.depth.min, cfg.search.depth.max) == ("child", 7, 4, 12)
    assert cfg.train.device == "cpu"


def test_dataset_typo_suggests():
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        from facenas.config import parse_config
        parse_config({"data": {"dataset": "cifar-10"}})


def test_parse_override():
    assert parse_override("search.micro.kernels=[5, 7]") == ("search.micro.kernels", [5, 7])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("seed")


CONFIGS = sorted(p for p in __import__("pathlib").Path(__file__).parents[1].glob("configs/**/*.yaml")
                 if p.parent.name != "experiments")  # experiments hold overrides for a bench (test_bench_recipes.py)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name != "serve"], ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_config(path)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "serve"] +
                         [__import__("pathlib").Path(__file__).parents[1] / "deploy" / "serve.yaml"],
                         ids=lambda p: p.name)
def test_shipped_service_settings_are_valid(path, tmp_path):
    import yaml

    from facenas.config import parse_config
    from facenas.serve.settings import ServeSettings

    data = yaml.safe_load(path.read_text())["serve"]
    (tmp_path / "model.onnx").write_bytes(b"x")
    parse_config({**data, "model": str(tmp_path / "model.onnx")}, str(path), ServeSettings)


def test_a_bare_on_or_off_from_yaml_is_the_word():
    """`--set faces.train.stream=off` reaches pydantic as False (YAML 1.1); it means the word, not an error."""
    from facenas.config import Config, apply_overrides, parse_override

    data: dict = {"task": "faces"}
    apply_overrides(data, dict([parse_override("faces.train.stream=off"),
                                parse_override("faces.train.channels_last=on")]))
    train = Config.model_validate(data).faces.train
    assert (train.stream, train.channels_last) == ("off", "on")


@pytest.mark.parametrize("name, expected", [("digits.yaml", "1c4fca9410d77e6b"), ("kmnist-T.yaml", "2476c5dc1daf4ed7")])
def test_keys_added_later_leave_the_fingerprints_of_earlier_runs_alone(name, expected):
    """Keys a version adds are unset by default (model.shortcut, the margin's warm-up, search.strategy), so a run
    started before them still resumes: these hashes are those of the configs before the keys existed."""
    from facenas.search.run import fingerprint

    assert fingerprint(load_config(ROOT / "configs" / "search" / name)) == expected
