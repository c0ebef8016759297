"""The binhost: each orchestrator serves its `current` release, a staging feed and its store.

It runs aiohttp on its own thread and event loop, so slow clients never delay the
orchestrator's socket loop, and it touches no ZeroMQ socket. Files go out with aiohttp's
FileResponse (sendfile, range requests, If-Modified-Since). Every path is checked against a
pattern and resolved inside one directory; nothing else of the data directory is reachable.

    GET /Packages, /Packages.gz, /<cat>/<pn>/<file>   the current release (Portage clients)
    GET /staging/Packages, /staging/<cat>/<pn>/<file>  every received package (drones)
    GET /store/<sha256>                                the content-addressed store (peers)
    POST /store  (body: sha256s, one per line)         many small store files in one reply (peers)
    GET /release                                       what this node serves (the gateway)
    GET /signing-key.asc                               the swarm's public signing key(s) (clients)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from aiohttp import web

from swarmmesh import peerauth, releases
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import ConfigError
from swarmmesh.fetch import BUNDLE_FILE_MAX, BUNDLE_FILES
from swarmmesh.signer import PackageSigner
from swarmmesh.staging import Feed
from swarmmesh.store import Storage

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
_PART = r"[A-Za-z0-9+_][A-Za-z0-9+_.-]{0,127}"
_PACKAGE_PATH = re.compile(rf"{_PART}/{_PART}/{_PART}\.(?:gpkg\.tar|xpak|tbz2)\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_INDEXES = ("Packages", "Packages.gz")
#: A bundle carries at most BUNDLE_FILES files (fetch.py), each at most BUNDLE_FILE_MAX bytes,
#: in total at most BUNDLE_MAX_BYTES: a follower catching up on thousands of small packages
#: pays one request per bundle instead of one per file, and memory stays bounded.
BUNDLE_MAX_BYTES = 16 << 20


def _not_found(what: str) -> web.Response:
    return web.Response(status=404, text=f"not found: {what}\n")


def _regular(path: Path) -> bool:
    """A regular file, not a symlink (release files are hard links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_small(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes if it has at most `limit` of them, else None."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit or os.path.islink(path):
                return None
            data = fh.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


class Site:
    """The HTTP handlers, over the node's data directory and storage; `serving` and
    `staging_feed` are the releases' (what this node serves, the feed drones install from)."""

    def __init__(self, node: Node, data_dir: Path, storage: Storage, *, serving: Callable[[], str | None],
                 staging_feed: Callable[[], Feed], signer: PackageSigner | None = None,
                 peer_key: bytes = b"") -> None:
        self.node = node
        self._signer = signer
        self._peer_key = peer_key  # /store answers only requests signed with it (peerauth.py)
        self.data = Path(data_dir)
        self.storage = storage
        self._serving = serving
        self._staging_feed = staging_feed

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/release", self.release)
        app.router.add_get("/store/{sha256}", self.store)
        app.router.add_post("/store", self.bundle)
        app.router.add_get("/staging/{path:.+}", self.staging)
        app.router.add_get("/signing-key.asc", self.signing_key)
        app.router.add_get("/{path:.+}", self.current)
        return app

    async def release(self, request: web.Request) -> web.Response:
        newest = self.node.read(lambda q: next(((r.id, r.stamp) for r in reversed(q.releases)), None))
        serving = self._serving()
        return web.json_response({
            "node": self.node.name, "serving": serving, "serving_stamp": self._stamp(serving),
            "newest": newest[0] if newest else None, "newest_stamp": newest[1] if newest else 0,
        })

    def _stamp(self, release_id: str | None) -> int:
        if release_id is None:
            return 0
        try:
            return int(os.stat(self.data / "releases" / release_id / "Packages").st_mtime)
        except OSError:
            return 0

    async def signing_key(self, request: web.Request) -> web.Response:
        """The public keys clients verify the packages with (`swarmmesh client trust` reads it)."""
        signer = self._signer
        if signer is None:
            return _not_found("signing-key.asc: this swarm does not sign its packages (no [signing])")
        return web.Response(text=signer.public_keys(), content_type="application/pgp-keys")

    async def store(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._refused(request, b"")) is not None:
            return denied
        sha = request.match_info["sha256"]
        if not _SHA256.match(sha):
            return _not_found("a store object is named by its sha256")
        path = self.storage.path(sha)
        return web.FileResponse(path) if _regular(path) else _not_found(sha)

    async def bundle(self, request: web.Request) -> web.StreamResponse:
        """`<sha256> <size>\\n<bytes>` per requested file, in order; size -1 for a file this node
        lacks, or one too big to bundle (fetch that one with GET)."""
        body = await request.read()
        if (denied := self._refused(request, body)) is not None:
            return denied
        shas = body.decode("ascii", "replace").split()
        if not 0 < len(shas) <= BUNDLE_FILES or not all(_SHA256.match(s) for s in shas):
            return web.Response(status=400, text=f"send 1 to {BUNDLE_FILES} sha256 names, one per line\n")
        parts = await asyncio.get_running_loop().run_in_executor(None, self._read_bundle, shas)
        # one body (at most BUNDLE_MAX_BYTES): a write per part cost a send() each
        return web.Response(body=b"".join(parts), content_type="application/octet-stream")

    def _refused(self, request: web.Request, body: bytes) -> web.Response | None:
        why = peerauth.refusal(self._peer_key, request.headers.get(peerauth.HEADER), request.method,
                               request.path, body=body)
        if why is None:
            return None
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
        return web.Response(status=403, text=f"refused: {why}\n")

    def _read_bundle(self, shas: list[str]) -> list[bytes]:
        parts, budget, store = [], BUNDLE_MAX_BYTES, self.storage.store
        for sha in shas:
            limit = min(budget, BUNDLE_FILE_MAX)
            data = store.recent.get(sha)
            if data is None or len(data) > limit:
                data = _read_small(store.path(sha), limit)
            budget -= len(data) if data is not None else 0
            parts.append(f"{sha} {len(data) if data is not None else -1}\n".encode())
            parts.extend([data] if data else [])
        return parts

    async def staging(self, request: web.Request) -> web.StreamResponse:
        feed, path = self._staging_feed(), request.match_info["path"]
        if path == "Packages":
            return web.Response(body=feed.packages, content_type="text/plain")
        sha = feed.paths.get(path)
        if sha is None:
            return _not_found(path)
        file = self.storage.path(sha)
        return web.FileResponse(file) if _regular(file) else _not_found(path)

    async def current(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path not in _INDEXES and not _PACKAGE_PATH.match(path):
            return _not_found(path)
        for release_id in self._candidates(path):
            file = self.data / "releases" / release_id / path
            if _regular(file):
                return web.FileResponse(file)
        return _not_found(path)

    def _candidates(self, path: str) -> Iterator[str]:
        """The current release; for a package file then the older ones, newest first, so a client
        that read the previous Packages just before the swap still gets its files."""
        current = releases.current_release(self.data)
        if current:
            yield current
        if path in _INDEXES:
            return
        names = [p.name for p in (self.data / "releases").iterdir()
                 if releases.RELEASE_ID.match(p.name) and p.name != current]
        yield from sorted(names, key=self._stamp, reverse=True)


class Binhost(Component):
    """Component of an Orchestrator: runs the Site on its own thread and event loop."""

    def __init__(self, node: Node, config: NodeConfig, storage: Storage, *, serving: Callable[[], str | None],
                 staging_feed: Callable[[], Feed], host: str | None = None, port: int | None = None,
                 signer: PackageSigner | None = None) -> None:
        me = config.me()
        self.host = host if host is not None else me.host
        self.port = port if port is not None else me.binhost_port
        self.site = Site(node, config.data_dir, storage, serving=serving, staging_feed=staging_feed, signer=signer,
                         peer_key=peerauth.peer_key(config.secret))
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"binhost-{node.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT) or self._error is not None:
            self.close()
            raise ConfigError(f"the binhost cannot listen on {self.host}:{self.port} ({self._error}); "
                              "stop whatever uses that port or change binhost_port")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.site.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]
        log.info("binhost serving on %s", self.url)

    # --- component protocol --------------------------------------------------------------
    def close(self) -> None:
        if self._thread.is_alive() and self._runner is not None and self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                done.result(START_TIMEOUT)
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.exception("binhost shutdown was not clean")
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        if not self._loop.is_closed() and not self._thread.is_alive():
            self._loop.close()
