"""Helpers for the service tests: encoded face images, settings, a client, a real uvicorn process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from facenas.data.faces.synthetic import render, synthetic_faces
from facenas.serve.app import create_app
from facenas.serve.settings import ServeSettings

LOCAL = ("127.0.0.1", 50000)


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="session")
def crops() -> list[bytes]:
    """Aligned 112x112 crops: identities 0, 1, 2 with three images each (0-2, 3-5, 6-8)."""
    faces = synthetic_faces(3, 3, seed=77, first_identity=70_000)
    return [png(img.transpose(1, 2, 0)) for img in faces.images]


@pytest.fixture(scope="session")
def photo() -> tuple[bytes, list]:
    img, lmk = render(77, 70_000, 9, mode="photo")
    return png(img), lmk.tolist()


def settings_for(model: Path, db: Path, **kw) -> ServeSettings:
    return ServeSettings(model=str(model), db=str(db), **kw)


@pytest.fixture
def client(exported, tmp_path):
    model, _ = exported
    with TestClient(create_app(settings_for(model, tmp_path / "g.sqlite")), client=LOCAL) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`facenas serve` in a subprocess on 127.0.0.1."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The output goes to a file, not a pipe: nobody reads a pipe while the server runs, and a full one (an
        # access-log line per request) would block the server's event loop.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "facenas.cli.main", "serve", "--port", str(self.port),
                                      *args], stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready")

    def __enter__(self) -> "Server":
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        return self.output()
