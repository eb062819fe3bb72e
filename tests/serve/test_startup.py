"""Start-up checks of the service: the port is free before anything loads, the gallery's folder is made."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from facenas.errors import FacenasError
from facenas.serve.app import create_app, preflight
from tests.serve.conftest import LOCAL, settings_for


def test_a_port_in_use_is_one_clear_error_and_a_free_port_passes():
    from facenas.serve.app import check_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FacenasError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", port)  # closed again: free, and the check itself holds nothing afterwards
    check_port("127.0.0.1", port)


def test_the_gallerys_folder_is_created_at_start(exported, tmp_path):
    model, _ = exported
    db = tmp_path / "runs" / "serve" / "gallery.sqlite"
    preflight(settings_for(model, db))
    assert db.is_file()
    other = tmp_path / "elsewhere" / "deeper" / "g.sqlite"
    with TestClient(create_app(settings_for(model, other)), client=LOCAL) as c:
        assert c.get("/readyz").json() == {"ready": True}
    assert other.is_file()
