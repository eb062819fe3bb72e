"""API keys (hashed), local-only mode, rate limits, what may face a network, request ids."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from facenas.serve.app import create_app
from facenas.serve.security import Guard, hash_key
from tests.serve.conftest import LOCAL, free_port, settings_for


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


# -- what may face a network ------------------------------------------------------------------------------------
REMOTE = ("203.0.113.9", 4000)


def test_a_keyless_service_on_a_public_address_or_behind_trusted_proxies_refuses_to_start(exported, tmp_path,
                                                                                          monkeypatch):
    from facenas.serve.app import preflight
    from facenas.serve.errors import StartupError

    model, _ = exported
    monkeypatch.delenv("FACENAS_API_KEYS", raising=False)
    for kw, why in [({"host": "0.0.0.0"}, "refusing to serve on 0.0.0.0 without API keys"),
                    ({"forwarded_allow_ips": "127.0.0.1"}, "refusing to trust forwarded headers")]:
        settings = settings_for(model, tmp_path / "g.sqlite", **kw)
        with pytest.raises(StartupError, match=why):
            preflight(settings)
        with pytest.raises(StartupError, match="--allow-anonymous"):
            with TestClient(create_app(settings)):
                pass
        preflight(settings_for(model, tmp_path / "g.sqlite", allow_anonymous=True, **kw))  # open access, as asked
    monkeypatch.setenv("FACENAS_API_KEYS", "k-1")
    preflight(settings_for(model, tmp_path / "g.sqlite", host="0.0.0.0"))  # keys: nothing to refuse


def test_the_cli_refuses_a_keyless_public_bind_in_one_line(exported, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facenas.cli.main import app

    model, _ = exported
    monkeypatch.delenv("FACENAS_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["serve", "--model", str(model), "--db", str(tmp_path / "g.sqlite"), "--host",
                                      "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code != 0 and "refusing to serve on 0.0.0.0 without API keys" in result.output
    assert "Traceback" not in result.output


def test_anonymous_clients_are_limited_per_address_behind_a_trusted_proxy(exported, tmp_path, monkeypatch):
    model, _ = exported
    monkeypatch.delenv("FACENAS_API_KEYS", raising=False)
    settings = settings_for(model, tmp_path / "g.sqlite", allow_anonymous=True, forwarded_allow_ips="127.0.0.1",
                            rate_limit_per_minute=2)
    with TestClient(create_app(settings), client=LOCAL) as proxy:  # every request arrives from the local proxy
        def codes(client_address: str) -> list[int]:
            return [proxy.get("/v1/subjects", headers={"x-forwarded-for": client_address}).status_code
                    for _ in range(3)]

        assert codes("198.51.100.1") == [200, 200, 429]
        assert codes("198.51.100.2") == [200, 200, 429]  # another client behind the same proxy: its own bucket
    with TestClient(create_app(settings), client=REMOTE) as untrusted:  # not a trusted proxy: its header is ignored
        assert [untrusted.get("/v1/subjects", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code
                for i in range(3)] == [200, 200, 429]


def test_settings_refuse_a_malformed_trusted_proxy_list(exported, tmp_path):
    from pydantic import ValidationError

    model, _ = exported
    with pytest.raises(ValidationError, match="'10.0.0.0/33' is neither an IP address"):
        settings_for(model, tmp_path / "g.sqlite", forwarded_allow_ips="127.0.0.1, 10.0.0.0/33")
    assert settings_for(model, tmp_path / "g.sqlite", forwarded_allow_ips="10.0.0.0/8,::1").proxy_networks == [
        "10.0.0.0/8", "::1"]


def test_a_keyless_local_service_refuses_requests_relayed_by_an_untrusted_proxy(client):
    r = client.get("/v1/subjects", headers={"x-forwarded-for": "198.51.100.7"})
    assert r.status_code == 403 and "came through a proxy" in r.json()["error"]["message"]
    assert client.get("/v1/subjects").status_code == 200


@pytest.mark.parametrize("setting, without_key, with_key", [("guarded", 401, 200), ("open", 200, 200),
                                                            ("off", 404, 404)])
def test_metrics_and_docs_can_be_open_guarded_or_off(exported, tmp_path, monkeypatch, setting, without_key,
                                                     with_key):
    model, _ = exported
    monkeypatch.setenv("FACENAS_API_KEYS", "k-1")
    settings = settings_for(model, tmp_path / "g.sqlite", metrics=setting, docs=setting)
    with TestClient(create_app(settings), client=REMOTE) as c:
        for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
            assert c.get(path).status_code == without_key, path
            assert c.get(path, headers={"x-api-key": "k-1"}).status_code == with_key, path
        assert c.get("/metrics", headers={"authorization": "Bearer k-1"}).status_code == with_key  # Prometheus
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_every_request_has_an_id_in_the_header_the_error_body_and_the_log(client, caplog):
    with caplog.at_level(logging.INFO, logger="facenas.serve"):
        r = client.delete("/v1/subjects/ghost")
        given = client.delete("/v1/subjects/ghost", headers={"x-request-id": "trace-7"})
        odd = client.delete("/v1/subjects/ghost", headers={"x-request-id": "no spaces\nor newlines"})
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and r.json()["error"]["request_id"] == rid
    assert given.headers["x-request-id"] == "trace-7" and given.json()["error"]["request_id"] == "trace-7"
    assert odd.headers["x-request-id"] not in ("no spaces\nor newlines", rid)  # not echoed into logs: a new one
    lines = [rec.getMessage() for rec in caplog.records if "DELETE /v1/subjects/ghost 404" in rec.getMessage()]
    assert len(lines) == 3 and f"request_id={rid}" in lines[0] and "request_id=trace-7" in lines[1]
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.json()["error"]["request_id"] == missing.headers["x-request-id"]
