"""Orchestrator-to-orchestrator HTTP (`/store`) signed with a key derived from the cluster secret.

Why: `/store/<sha256>` and `POST /store` hand out every stored package, including ones not
released yet, and are only meant for peers replicating the store. The binhost's releases and
`/staging/` stay open (plain `emerge` has no keys). Every orchestrator already holds the
cluster secret, so a peer request carries ``X-Swarmmesh-Peer: <unix time> <hex HMAC>``, the
HMAC-SHA256 over method, path, that time and the body's sha256, keyed by a key derived from
the secret (never the secret itself, which also seals Raft). A signature older or newer than
`WINDOW` seconds is refused, so a request seen on the wire cannot be replayed later, and one
for a path cannot be used for another. Compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Swarmmesh-Peer"
#: Seconds a signature stays valid either side of the receiver's clock (orchestrators' clocks
#: must agree to within this; NTP does much better).
WINDOW = 60.0
_LABEL = b"swarmmesh peer http v1"


def peer_key(secret: str) -> bytes:
    """The signing key of a cluster secret: one per purpose, so a leak of one is not the other."""
    return hmac.new(secret.encode("utf-8"), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, method: str, path: str, stamp: str, body: bytes) -> str:
    text = f"{method}\n{path}\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def sign(key: bytes, method: str, path: str, body: bytes = b"", *, now: float | None = None) -> str:
    """The header value for one request."""
    stamp = str(int(time.time() if now is None else now))
    return f"{stamp} {_mac(key, method, path, stamp, body)}"


def refusal(key: bytes, header: str | None, method: str, path: str, *, body: bytes = b"",
            now: float | None = None) -> str | None:
    """Why a request's signature is not good (None: it is)."""
    if not header:
        return f"no {HEADER} header: /store is for this cluster's orchestrators only"
    stamp, _, mac = header.strip().partition(" ")
    if not stamp.isdigit() or not mac:
        return f"a malformed {HEADER} header"
    if abs((time.time() if now is None else now) - int(stamp)) > WINDOW:
        return f"a signature from {stamp}, outside the {WINDOW:g} s window (are the clocks in step?)"
    if not hmac.compare_digest(_mac(key, method, path, stamp, body), mac):
        return "a bad signature (another cluster's secret?)"
    return None
