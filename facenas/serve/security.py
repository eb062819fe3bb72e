"""API keys (kept only as SHA-256 hashes), per-key rate limits, and the local-only mode.

Keys come from a file (one per line, `#` comments) and/or an environment variable (comma-separated); only their
hashes stay in memory and comparisons are constant-time. With no key configured the service answers loopback
clients only, and says so at start. Rate limits are token buckets per key (or per client address in local-only
mode): `rate_limit_per_minute` requests a minute with bursts of the same size.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from facenas.serve.errors import Forbidden, RateLimited, Unauthorized
from facenas.serve.settings import ServeSettings

log = logging.getLogger("facenas.serve")
LOOPBACK_CLIENTS = {"127.0.0.1", "::1", "localhost"}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.strip().encode()).hexdigest()


def load_key_hashes(settings: ServeSettings) -> list[str]:
    keys: list[str] = []
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    env = os.environ.get(settings.api_keys_env, "")
    keys.extend(k.strip() for k in env.split(",") if k.strip())
    return [hash_key(k) for k in keys]


class Guard:
    """Decides whether a request may go on: key check (or loopback check), then its rate limit."""

    def __init__(self, settings: ServeSettings) -> None:
        self.hashes = load_key_hashes(settings)
        self.rate = settings.rate_limit_per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        if not self.hashes:
            log.warning("no API key configured: only clients on this machine (loopback) are served")

    @property
    def local_only(self) -> bool:
        return not self.hashes

    def identify(self, key: Optional[str], client: Optional[str]) -> str:
        """The identity a request is accounted to, or an error."""
        if self.hashes:
            if not key:
                raise Unauthorized("missing API key (send it in the x-api-key header)")
            candidate = hash_key(key)
            if not any(hmac.compare_digest(candidate, h) for h in self.hashes):
                raise Unauthorized("invalid API key")
            return "key:" + candidate[:16]
        if client not in LOOPBACK_CLIENTS:
            raise Forbidden("this service has no API keys configured and only answers local clients")
        return f"client:{client}"

    def spend(self, who: str) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        per_second = self.rate / 60.0
        with self._lock:
            tokens, last = self._buckets.get(who, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * per_second)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                raise RateLimited(f"rate limit of {self.rate} requests per minute reached",
                                  retry_after=max(1, int((1.0 - tokens) / per_second) + 1))
            self._buckets[who] = (tokens - 1.0, now)
