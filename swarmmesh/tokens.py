"""Admin tokens and the per-client rate of POST /build, for the gateway's HTTP API.

Why tokens on the gateway and keys on ZeroMQ: the gateway is where people and scripts steer
the swarm, over plain HTTP from anywhere the port reaches. Every request that changes
something (any method but GET and HEAD: build, finalize, balance, unblock, reset, rollback)
needs ``Authorization: Bearer TOKEN`` with one of the tokens named in ``[gateway.tokens]``;
the log records the token's name with each mutation, so "who reset the queue" has an
answer. Reads stay open unless ``[gateway] open_reads = false``. A missing token is 401, a
wrong one 403, each with a JSON reason; tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Buckets kept for this many client addresses at most (oldest dropped first).
MAX_CLIENTS = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _deny(status: int, code: str, error: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="swarmmesh"'} if status == 401 else None
    return web.json_response({"error": error, "code": code}, status=status, headers=headers)


def token_name(tokens: Mapping[str, str], offered: str) -> str | None:
    """The name of the token `offered` is, compared in constant time with every token."""
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(token.encode("utf-8"), offered.encode("utf-8")):
            found = name
    return found


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class RateLimit:
    """A token bucket per client address: `per_minute` requests a minute, as a burst of up to
    a tenth of that (at least 5) and then evenly. `clock` is injectable for tests."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(5.0, per_minute / 10.0)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 if `client` may go now (one taken), else the seconds until it may."""
        now = self.clock()
        level, at = self._buckets.pop(client, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if level >= 1.0:
            level -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - level) / self.rate
        self._buckets[client] = (level, now)  # re-inserted: the dict stays oldest-first
        if len(self._buckets) > MAX_CLIENTS:
            del self._buckets[next(iter(self._buckets))]
        return wait


def middleware(tokens: Mapping[str, str], open_reads: bool, build_rate: RateLimit) -> Callable:
    """The gateway's access check, run before every handler."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        mutating = request.method not in READ_METHODS
        if mutating or not open_reads:
            offered = bearer(request)
            what = "changing the cluster" if mutating else "reading (open_reads = false)"
            if offered is None:
                return _deny(401, "unauthorized", f"{request.method} {request.path} needs an admin token for "
                             f"{what}: send Authorization: Bearer TOKEN (swarmmesh --token, SWARMMESH_TOKEN, "
                             "or [client] token)")
            name = token_name(tokens, offered)
            if name is None:
                log.warning("refused %s %s from %s: wrong token", request.method, request.path, request.remote)
                return _deny(403, "forbidden", f"the token sent to {request.method} {request.path} is not one of "
                             "this gateway's [gateway.tokens]; check it, or ask for a new one")
            if mutating:
                log.info("%s %s by token %r from %s", request.method, request.path, name, request.remote)
        if request.method == "POST" and request.path == "/build":
            wait = build_rate.take(request.remote or "?")
            if wait > 0:
                return web.json_response(
                    {"error": f"too many submissions from {request.remote}; retry in {wait:.1f} s "
                     "(limit: [gateway] build_rate per minute)", "code": "rate_limited"},
                    status=429, headers={"Retry-After": str(max(1, round(wait)))})
        return await handler(request)

    return check
