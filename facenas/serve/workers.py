"""`facenas serve --workers N`: uvicorn's own supervisor, each worker on its own SO_REUSEPORT socket.

uvicorn's `--workers` shares one listening socket between the workers, and asyncio accepts every pending connection
at each wake-up (up to the backlog). The service's event loop is almost always free (decoding, detection and the
model run on threads), so the first worker to wake takes every connection and the others idle: measured here, 12
connections opened at once all landed on one of two workers, every time. With SO_REUSEPORT each worker listens on a
socket of its own on the same port, and the kernel spreads new connections over them by their addresses.

Everything else is uvicorn's `Multiprocess`: it starts the workers as fresh processes, pings them, restarts one that
dies or hangs, and stops them all on SIGINT / SIGTERM. The only change is the server class its workers run, which
binds that socket (uvicorn has no option for it); a worker's app comes from `facenas.serve.app.app_from_environment`.
/metrics sums the workers' counters through prometheus_client's multiprocess mode (a temporary folder per run).
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Optional

import uvicorn
from uvicorn.supervisors import multiprocess


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT (not yet listening: asyncio listens on it)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class ReusePortServer(uvicorn.Server):
    """uvicorn's server, listening on a SO_REUSEPORT socket of its own."""

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        await super().startup(sockets=[reuse_port_socket(self.config.host, self.config.port)])


class ReusePortProcess(multiprocess.Process):
    """uvicorn's worker process, running `ReusePortServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ReusePortServer(config=self.config)
        return self._server


def run_workers(workers: int, **config: Any) -> None:
    """Serve `facenas.serve.app:app_from_environment` on `workers` processes until SIGINT / SIGTERM, with
    prometheus_client's multiprocess mode in a folder of this run's (so /metrics counts every worker's requests)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers needs SO_REUSEPORT (Linux, macOS, the BSDs); run one worker on this system")
    settings = uvicorn.Config("facenas.serve.app:app_from_environment", factory=True, workers=workers, **config)
    multiprocess.Process = ReusePortProcess  # type: ignore[misc]  # the class uvicorn's supervisor starts
    with tempfile.TemporaryDirectory(prefix="facenas-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # read by the workers' prometheus_client at import
        try:
            multiprocess.Multiprocess(settings, sockets=[]).run()
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
