"""Fetching store files from a peer orchestrator's binhost, checked before they count.

Small files travel many to a request (`POST /store`, see binhost.py): a follower catching up
on thousands of small packages would otherwise pay a request, a connection and a directory
fsync per file. Big files stream one per request (`GET /store/<sha256>`). Either way a file
lands in a temp file of the store, its size and sha256 are checked, and only then is it
renamed into place, unsynced (see replication.py: a power loss is repaired by the start-up
size check and the scrubber).
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmmesh import peerauth
from swarmmesh.errors import ArtifactError, FetchError

if TYPE_CHECKING:
    from swarmmesh.store import Store

FETCH_TIMEOUT = 10.0
CHUNK = 1 << 20
#: Files up to this size are fetched in bundles of up to BUNDLE_FILES (binhost.py's limits).
BUNDLE_FILE_MAX = 1 << 20
BUNDLE_FILES = 256


@dataclass(frozen=True)
class Source:
    name: str
    host: str
    port: int
    key: bytes = b""  # peerauth.peer_key(cluster secret): signs each request to /store


def fetch(store: Store, sha256: str, size: int | None, sources: list[Source],
          stop: threading.Event | None = None) -> str:
    """Fetch one file from the first source that delivers it intact; returns that source's name."""
    problems = []
    for src in sources:
        try:
            fetch_from(store, sha256, size, src.host, src.port, stop=stop, key=src.key)
            return src.name
        except (OSError, http.client.HTTPException, ArtifactError) as exc:
            problems.append(f"{src.name}: {exc}")
    raise FetchError("; ".join(problems) or "no orchestrator is listed as holding it")


def fetch_from(store: Store, sha256: str, size: int | None, host: str, port: int, *,
               stop: threading.Event | None = None, key: bytes = b"") -> None:
    """Stream `GET /store/<sha256>` into a temp file, check size and sha256, then rename."""
    conn = http.client.HTTPConnection(host, port, timeout=FETCH_TIMEOUT)
    try:
        path = f"/store/{sha256}"
        conn.request("GET", path, headers={peerauth.HEADER: peerauth.sign(key, "GET", path)})
        resp = conn.getresponse()
        if resp.status != 200:
            raise ArtifactError(f"HTTP {resp.status}")
        with store.writing(sha256) as fh:
            digest, got = _copy(resp, fh, size, stop)
            if size is not None and got != size:
                raise ArtifactError(f"got {got} bytes, the log says {size}")
            if digest != sha256:
                raise ArtifactError(f"sha256 mismatch (got {digest[:12]}): its copy is corrupt")
    finally:
        conn.close()


def _copy(resp: http.client.HTTPResponse, fh: Any, size: int | None,
          stop: threading.Event | None) -> tuple[str, int]:
    digest, got = hashlib.sha256(), 0
    buf = memoryview(bytearray(CHUNK))
    while n := resp.readinto(buf):
        if stop is not None and stop.is_set():
            raise FetchError("shutting down")
        got += n
        if size is not None and got > size:
            raise ArtifactError(f"more than the {size} bytes the log records")
        digest.update(buf[:n])
        fh.write(buf[:n])
    return digest.hexdigest(), got


def small(size: Any) -> bool:
    """Whether a file of this (logged) size goes in a bundle."""
    return isinstance(size, int) and 0 < size <= BUNDLE_FILE_MAX


def fetch_bundle(store: Store, files: list[tuple[str, int]], src: Source,
                 stop: threading.Event | None = None) -> dict[str, str | Exception]:
    """Fetch small files (sha256, logged size) from one source in one request; per file, the
    source's name or what went wrong. A file the source did not include is an error for it
    alone: the caller retries it the one-by-one way."""
    conn = http.client.HTTPConnection(src.host, src.port, timeout=FETCH_TIMEOUT)
    try:
        body = "\n".join(sha for sha, _size in files).encode()
        signed = {peerauth.HEADER: peerauth.sign(src.key, "POST", "/store", body)}
        conn.request("POST", "/store", body=body, headers=signed)
        resp = conn.getresponse()
        if resp.status != 200:
            raise ArtifactError(f"{src.name}: HTTP {resp.status} for a bundle")
        return {sha: _bundled(store, resp, sha, size, src, stop=stop) for sha, size in files}
    except (OSError, http.client.HTTPException, ArtifactError) as exc:
        return {sha: FetchError(f"{src.name}: {exc}") for sha, _size in files}
    finally:
        conn.close()


def _bundled(store: Store, resp: http.client.HTTPResponse, sha: str, size: int, src: Source, *,
             stop: threading.Event | None) -> str | Exception:
    """Read one part of a bundle: `<sha256> <size>\\n` then the bytes (size -1: not sent)."""
    if stop is not None and stop.is_set():
        raise FetchError("shutting down")
    header = resp.readline(100).split()
    if len(header) != 2 or header[0].decode(errors="replace") != sha:
        raise ArtifactError(f"{src.name}: a malformed bundle (expected {sha[:12]}, got {header[:1]!r})")
    got = int(header[1]) if header[1].lstrip(b"-").isdigit() else -2
    if got == -1:
        return FetchError(f"{src.name}: not in its bundle (missing or too big there)")
    if got != size:
        raise ArtifactError(f"{src.name}: a bundle part of {got} bytes where the log says {size}")
    data = resp.read(size)
    if len(data) != size:
        raise ArtifactError(f"{src.name}: the bundle ended early")
    if hashlib.sha256(data).hexdigest() != sha:
        return ArtifactError(f"{src.name}: sha256 mismatch: its copy is corrupt")
    with store.writing(sha) as fh:
        fh.write(data)
    return src.name
