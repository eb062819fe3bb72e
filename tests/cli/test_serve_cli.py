"""`facenas serve` up to the point where uvicorn would start: config files, flags, the port check, one-line errors.

uvicorn and the model's preflight are replaced by recorders, so nothing is served and no model is loaded.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def started(monkeypatch, tmp_path) -> dict:
    """Records what `serve` would have loaded and served instead of doing it."""
    import uvicorn

    from facenas.serve import app as service

    calls: dict = {}
    monkeypatch.setattr(service, "preflight", lambda settings: calls.setdefault("preflight", settings))
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kw: calls.setdefault("uvicorn", kw))
    monkeypatch.chdir(tmp_path)  # a default gallery path would land here, never in the repository
    return calls


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.onnx"  # settings only check that the file exists; preflight (which reads it) is stubbed
    path.write_bytes(b"not read")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_port_in_use_fails_in_one_line_before_the_model_loads(started, model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--model", str(model), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"error: port {port} on 127.0.0.1 is already in use" in result.output
    assert "Traceback" not in result.output and "Errno" not in result.output
    assert started == {}  # neither the model nor uvicorn was touched


def test_unknown_keys_in_the_serve_yaml_are_named(started, model, tmp_path):
    config = write(tmp_path / "s.yaml", {"serve": {"model": str(model)}, "serv": {"port": 9000}})
    result = runner.invoke(app, ["serve", "-c", str(config)])
    assert result.exit_code == 2 and "unknown key 'serv'" in result.output and "did you mean 'serve'" in result.output
    config = write(tmp_path / "t.yaml", {"serve": {"model": str(model), "prot": 9000}})
    result = runner.invoke(app, ["serve", "-c", str(config)])
    assert result.exit_code == 2 and "unknown key 'serve.prot'" in result.output, result.output
    assert "serve.port" in result.output and str(config) in result.output and started == {}


def test_a_base_file_is_honoured_and_flags_win(started, model, tmp_path):
    write(tmp_path / "base.yaml", {"serve": {"model": str(model), "threshold": 0.3, "top_k": 7,
                                             "db": str(tmp_path / "base.sqlite")}})
    port = free_port()
    config = write(tmp_path / "site.yaml", {"base": "base.yaml", "serve": {"top_k": 9, "port": port}})
    result = runner.invoke(app, ["serve", "-c", str(config), "--db", str(tmp_path / "flag.sqlite")])
    assert result.exit_code == 0, result.output
    settings = started["preflight"]
    assert settings.model == str(model) and settings.threshold == 0.3  # from the base
    assert settings.top_k == 9 and settings.port == port  # the file over its base
    assert settings.db == str(tmp_path / "flag.sqlite")  # the flag over both
    assert started["uvicorn"]["port"] == port


@pytest.mark.parametrize("text, flag, words", [
    ("- model.onnx\n- 8000\n", True, "the top level must be a mapping"),
    ("serve: [model.onnx]\n", False, "serve = ['model.onnx']"),  # (a --model flag would replace the list)
    ("serve: {model: [unclosed\n", True, "not valid YAML"),
])
def test_a_malformed_yaml_is_one_line_without_traceback(started, model, tmp_path, text, flag, words):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = runner.invoke(app, ["serve", "-c", str(config)] + (["--model", str(model)] if flag else []))
    assert result.exit_code == 2, (result.output, result.exception)
    assert words in result.output and "Traceback" not in result.output and result.output.startswith("error:")
    assert started == {}


def test_without_a_model_anywhere_says_how_to_give_one(started, tmp_path):
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "--model" in result.output
    config = write(tmp_path / "s.yaml", {"serve": {"port": free_port()}})
    result = runner.invoke(app, ["serve", "-c", str(config)])
    assert result.exit_code == 2 and "--model" in result.output and "Traceback" not in result.output


def test_the_default_gallery_lives_under_runs(started, model):
    result = runner.invoke(app, ["serve", "--model", str(model), "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert started["preflight"].db == "runs/serve/gallery.sqlite"
    started.clear()
    result = runner.invoke(app, ["serve", "-c", str(ROOT / "configs/serve/default.yaml"), "--model", str(model),
                                 "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert started["preflight"].db == "runs/serve/gallery.sqlite"
    started.clear()
    result = runner.invoke(app, ["serve", "-c", str(ROOT / "deploy/serve.yaml"), "--model", str(model),
                                 "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.exit_code == 0, result.output
    assert started["preflight"].db == "/data/gallery.sqlite"  # the container keeps its volume
