"""API keys (hashed), local-only mode, rate limits."""

from __future__ import annotations

from fastapi.testclient import TestClient

from facenas.serve.app import create_app
from facenas.serve.security import Guard, hash_key
from tests.serve.conftest import LOCAL, settings_for


def test_keys_from_file_and_environment_are_required_and_kept_hashed(exported, tmp_path, monkeypatch, crops):
    model, _ = exported
    keys = tmp_path / "keys.txt"
    keys.write_text("# service keys\nfile-key-123\n\n")
    monkeypatch.setenv("FACENAS_API_KEYS", "env-key-456, other-key")
    settings = settings_for(model, tmp_path / "g.sqlite", api_keys_file=str(keys))
    guard = Guard(settings)
    assert guard.hashes == [hash_key("file-key-123"), hash_key("env-key-456"), hash_key("other-key")]
    assert "file-key-123" not in repr(guard.__dict__)
    with TestClient(create_app(settings), client=("203.0.113.9", 4000)) as c:  # a remote client
        r = c.get("/v1/subjects")
        assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
        assert c.get("/v1/subjects", headers={"x-api-key": "wrong"}).status_code == 401
        assert c.get("/v1/subjects", headers={"x-api-key": "file-key-123"}).status_code == 200
        assert c.get("/v1/subjects", headers={"x-api-key": "env-key-456"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_without_keys_only_loopback_clients_are_served(exported, tmp_path, monkeypatch, caplog):
    model, _ = exported
    monkeypatch.delenv("FACENAS_API_KEYS", raising=False)
    settings = settings_for(model, tmp_path / "g.sqlite")
    with TestClient(create_app(settings), client=("203.0.113.9", 4000)) as remote:
        r = remote.get("/v1/subjects")
        assert r.status_code == 403 and "only answers local clients" in r.json()["error"]["message"]
    assert any("no API key configured" in rec.message for rec in caplog.records)
    with TestClient(create_app(settings), client=LOCAL) as local:
        assert local.get("/v1/subjects").status_code == 200


def test_rate_limit_per_key(exported, tmp_path, monkeypatch):
    model, _ = exported
    monkeypatch.setenv("FACENAS_API_KEYS", "a-key,b-key")
    settings = settings_for(model, tmp_path / "g.sqlite", rate_limit_per_minute=3)
    with TestClient(create_app(settings), client=("203.0.113.9", 4000)) as c:
        codes = [c.get("/v1/subjects", headers={"x-api-key": "a-key"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/subjects", headers={"x-api-key": "a-key"})
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/subjects", headers={"x-api-key": "b-key"}).status_code == 200  # per key
