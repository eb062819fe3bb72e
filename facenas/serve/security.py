"""API keys (kept only as SHA-256 hashes), per-key rate limits, the local-only mode and what may face a network.

Keys come from a file (one per line, `#` comments) and/or an environment variable (comma-separated); only their
hashes stay in memory and comparisons are constant-time. A key comes in `x-api-key` or as `Authorization: Bearer`
(what Prometheus can send). With no key configured the service answers loopback clients only, and says so at
start. A reverse proxy on the same machine makes every client loopback, so without keys:
- binding a non-loopback address, or trusting proxies' forwarded headers, refuses to start unless
  `allow_anonymous` says that open access is meant;
- a loopback request that carries forwarded headers (an untrusted proxy in front) is refused.
Rate limits are token buckets per key, or per client address without keys (the proxy's `X-Forwarded-For` from
trusted proxies only, applied by uvicorn's ProxyHeadersMiddleware): `rate_limit_per_minute` requests a minute with
bursts of the same size.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Mapping, Optional

from facenas.serve.errors import Forbidden, RateLimited, StartupError, Unauthorized
from facenas.serve.settings import LOOPBACK, ServeSettings

log = logging.getLogger("facenas.serve")
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


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


def check_exposure(settings: ServeSettings, hashes: list[str]) -> None:
    """Refuse to start a keyless service that the network could reach, unless open access is asked for."""
    if hashes or settings.allow_anonymous:
        return
    if not settings.loopback_bind:
        raise StartupError(f"refusing to serve on {settings.host} without API keys: anyone who reaches the port "
                           f"could use the service. Set keys ({settings.api_keys_env}=... or --api-keys-file), or "
                           "bind 127.0.0.1, or give --allow-anonymous if open access is meant")
    if settings.forwarded_allow_ips:
        raise StartupError("refusing to trust forwarded headers (--forwarded-allow-ips) without API keys: behind a "
                           "proxy every client would be served. Set keys, or give --allow-anonymous if open access "
                           "is meant")


class Guard:
    """Decides whether a request may go on: key check (or loopback check), then its rate limit."""

    def __init__(self, settings: ServeSettings) -> None:
        self.hashes = load_key_hashes(settings)
        check_exposure(settings, self.hashes)
        self.anonymous = settings.allow_anonymous and not self.hashes
        self.rate = settings.rate_limit_per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        if self.anonymous:
            log.warning("no API key configured and --allow-anonymous: every client that reaches the service is "
                        "served (rate limits per client address)")
        elif not self.hashes:
            log.warning("no API key configured: only clients on this machine (loopback) are served")

    @property
    def local_only(self) -> bool:
        return not self.hashes and not self.anonymous

    def identify(self, key: Optional[str], client: Optional[str], forwarded: bool = False) -> str:
        """The identity a request is accounted to, or an error. `forwarded`: the request carries a proxy's
        forwarded headers that were not trusted (so `client` is the proxy, not the caller)."""
        if self.hashes:
            if not key:
                raise Unauthorized("missing API key (send it in the x-api-key header)")
            candidate = hash_key(key)
            if not any(hmac.compare_digest(candidate, h) for h in self.hashes):
                raise Unauthorized("invalid API key")
            return "key:" + candidate[:16]
        if self.anonymous:
            return f"client:{client}"
        if client not in LOOPBACK:
            raise Forbidden("this service has no API keys configured and only answers local clients")
        if forwarded:
            raise Forbidden("this service has no API keys configured and only answers local clients; this request "
                            "came through a proxy (it carries forwarded headers)")
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


def request_key(headers: Mapping[str, str]) -> Optional[str]:
    """The API key of a request: `x-api-key`, else an `Authorization: Bearer` token."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def carries_forwarded_headers(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in FORWARDED_HEADERS)
