"""Replication: every orchestrator stores every received artifact, and the log says who holds what.

Why pull, over the binhost's HTTP: the leader only has to write each file once; each follower
fetches what it lacks from any holder (fetch.py: small files many to a request, `POST /store`;
big ones streamed with `GET /store/<sha256>`, sendfile on the server, TCP flow control; sha256
checked before the rename), at its own pace, and a new leader uses the same path to fill its
gaps after a failover. A stored file
counts only once `hold` is committed, so "received" always means "on the holders the log
names".

Nothing is lost silently: a received package whose file no live orchestrator can serve for
LOST_GRACE seconds is put back to needed by the leader (`lose`), with a log line, and a
stored file that stops matching its sha256 (found by the background scrubber, by a size
check at start-up, or when it is indexed) is dropped, `unhold` is committed and the file is
fetched again. A stored file that neither a received package nor one of the last
`keep_releases` releases refers to (a lost package's old copy, a rejected commit's file) is
removed after GC_GRACE.

Each tick costs what changed, not what is stored: the replicator follows the log's change
feed (`BuildQueue.changed_files`) and keeps `pending`, the files that still need something
from this node (a fetch, an adoption, a `hold` or an `unhold`); it rescans every file only at
start-up, when the feed says so (after a reset, a restored snapshot, or falling too far
behind) and for the garbage collection every GC_PERIOD.

A fetched file is not fsynced before `hold`: the Raft journal itself is only safe against a
killed process, not a power loss (FACTS.md), and what a power loss does to a fetched copy is
what the start-up size check and the scrubber repair. It halves the time to replicate.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from swarmmesh import commands, peerauth
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import FetchError
from swarmmesh.fetch import BUNDLE_FILES, Source, fetch, fetch_bundle, small
from swarmmesh.filereg import FeedReader
from swarmmesh.store import Storage, scan_store

log = logging.getLogger(__name__)

CHECK_PERIOD = 0.1
FETCH_WORKERS = 3
CHUNK = 1 << 20
LOST_GRACE = 10.0  # from the first failed fetch: outlasts a paused or briefly cut-off holder
RETRY_MIN, RETRY_MAX = 0.25, 2.0
GC_PERIOD = 10.0
GC_GRACE = 60.0  # a file the Receiver just stored is unreferenced until its commit lands
SCRUB_RATE = 32 << 20  # bytes per second: a background check must not starve serving
SCRUB_FILES = 200  # files checked per second at most: a store of small files must not churn the disk


def _outcome(future: Future) -> Any:
    """A fetch's result, or the exception it raised (any failure means "try again later")."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001
        return exc


def verify(path: Path, sha256: str, rate: float, stop: threading.Event) -> tuple[int, bool] | None:
    """(inode, intact) of a stored file, read at most `rate` bytes/s; (0, False) if it is gone,
    None if stopped."""
    digest, start, done = hashlib.sha256(), time.monotonic(), 0
    try:
        with open(path, "rb") as fh:
            inode = os.fstat(fh.fileno()).st_ino
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                ahead = done / rate - (time.monotonic() - start)
                if stop.wait(ahead) if ahead > 0 else stop.is_set():  # rate limit, or shut down
                    return None
    except FileNotFoundError:
        return 0, False
    return inode, digest.hexdigest() == sha256


class Replicator(Component):
    """Component of an Orchestrator: keeps this node's store complete and the log's holders true."""

    def __init__(self, node: Node, config: NodeConfig, storage: Storage, *, relink: Callable[[str], None]) -> None:
        self.node = node
        self.me = node.name
        self.storage = storage
        self.store = storage.store
        self._relink = relink  # the releases' own: a re-fetched file replaces a corrupt copy there
        self._addrs = {o.name: o for o in config.orchestrators}
        self._peer_key = peerauth.peer_key(config.secret)
        self._keep_releases = config.keep_releases
        self._scrub_interval = config.scrub_interval
        self._pool = ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix=f"fetch-{node.name}")
        self._fetching: dict[str, Future] = {}
        self._bundles: dict[Source, list[tuple[str, dict]]] = {}  # small files to ask each holder for
        self._retry: dict[str, tuple[int, float]] = {}  # sha -> (failures, next attempt)
        self._failing: dict[str, float] = {}  # sha -> since when no holder could serve it
        self._committing: set[tuple[str, str]] = set()
        self._refetch: set[str] = set()  # dropped as corrupt: relink releases once fetched again
        self._reader = FeedReader()  # position in the log's change feed
        self.pending: dict[str, dict] = {}  # sha -> its artifact record: files that need action here
        self._dirty: set[str] = set()  # changed here, not (or not yet) in the log: look again
        self._sizes_checked = False
        self._next = self._now = 0.0
        self._next_gc: float | None = None  # the first collection waits GC_GRACE after start-up
        self._stop = threading.Event()
        self._scrubber = threading.Thread(target=self._scrub, name=f"scrub-{node.name}", daemon=True)
        self._scrubber.start()

    def corrupt(self, sha256: str, reason: str, inode: int | None = None) -> None:
        """Drop a stored file that no longer matches its sha256 (loop thread only)."""
        self.storage.drop(sha256, reason, inode)
        self._take_dropped()

    def _take_dropped(self) -> None:
        """Files dropped as corrupt (here, or by the releases when one could not be indexed):
        the log must stop listing us, and they are fetched again."""
        for sha256 in self.storage.take_dropped():
            self._commit(commands.Unhold(sha256, self.me))
            self._refetch.add(sha256)
            self._dirty.add(sha256)

    def _forget(self, sha256: str) -> None:
        """The file is gone from our store: stop indexing it and tell the log we lack it."""
        self.storage.forget(sha256)
        self._commit(commands.Unhold(sha256, self.me))

    # --- component protocol --------------------------------------------------------------
    def on_leadership(self, term: int | None) -> None:
        self._failing.clear()  # a new leader gives every holder a fresh grace period

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._scrubber.join(5)

    def tick(self, now: float) -> None:
        self._take_dropped()  # every tick: the log must stop listing a dropped file at once
        if now < self._next:
            return
        self._next, self._now = now + CHECK_PERIOD, now
        wanted = self._follow()
        if not self._sizes_checked and wanted is not None:
            self._sizes_checked = True
            self._check_sizes(wanted)
        if self._next_gc is None:
            self._next_gc = now + GC_GRACE
        elif now >= self._next_gc and self._caught_up():
            self._next_gc = now + GC_PERIOD
            self._collect()
        for sha, info in list(self.pending.items()):
            self._act(sha, info, now)
        self._send_bundles()

    # --- deciding --------------------------------------------------------------------------
    def _follow(self) -> dict[str, dict] | None:
        """Bring `pending` up to date from the change feed (and local changes); returns every
        wanted file when it had to rescan them all."""
        dirty, self._dirty = self._dirty, set()
        self._reader.seen, changed, records = self.node.read(lambda q: self._changes(q, dirty))
        if changed is None:
            self.pending = {sha: info for sha, info in records.items() if self._needs(sha, info)}
            for table in (self._retry, self._failing):
                for sha in [s for s in table if s not in records]:
                    del table[sha]
            return records
        for sha, info in records.items():
            self._update(sha, info)
        return None

    def _changes(self, q: Any, dirty: set[str]) -> tuple[int, list[str] | None, dict[str, Any]]:
        """Under the queue's lock: the feed's position and the records of what changed."""
        seen, changed = self._reader.look(q)
        if changed is None:
            return seen, None, q.artifacts()
        return seen, changed, {sha: q.artifact(sha) for sha in (*changed, *dirty)}

    def _update(self, sha: str, info: dict | None) -> None:
        if info is None:  # no longer wanted anywhere
            self.pending.pop(sha, None)
            self._retry.pop(sha, None)
            self._failing.pop(sha, None)
        elif self._needs(sha, info):
            self.pending[sha] = info
        else:
            self.pending.pop(sha, None)

    def _needs(self, sha: str, info: dict) -> bool:
        """Not stored here (or not adopted yet), or the log does not list us as its holder."""
        return not self.storage.holds(sha) or self.me not in info["holders"]

    def _act(self, sha: str, info: dict, now: float) -> None:
        if self.storage.holds(sha) or (sha not in self._fetching and self._adopt(sha)):
            if self.me in info["holders"]:
                self.pending.pop(sha, None)  # stored and listed: done
            else:
                self._commit(commands.Hold(sha, self.me))  # stays pending until the log lists us
        elif sha not in self._fetching:
            self._want(sha, info, now)

    def _check_sizes(self, wanted: dict[str, dict]) -> None:
        """Once, at start-up: a copy cut short (a power loss after a fetch) is fetched again."""
        for sha, info in wanted.items():
            if self.storage.holds(sha) and isinstance(info.get("size"), int):
                try:
                    size = self.store.path(sha).stat().st_size
                except FileNotFoundError:
                    size = -1
                if size != info["size"]:
                    self.corrupt(sha, f"{size} bytes where the log records {info['size']}")

    def _caught_up(self) -> bool:
        """Collect only with a leader known and its commits applied: a node replaying its log
        must not take files of entries it has not applied yet for unreferenced ones."""
        commit, applied = self.node.indexes()
        return applied >= commit and self.node.leader_name() is not None

    def _collect(self) -> None:
        """Remove stored files nothing refers to any more (once they are GC_GRACE old)."""
        keep = self._keep_releases
        kept = self.node.read(
            lambda q: {f["sha256"] for r in q.releases[-keep:] for f in r.files} | set(q.artifacts()))
        referenced = kept | set(self._fetching)
        cutoff = self.node.wall() - GC_GRACE
        for sha in sorted(scan_store(self.store.root) - referenced):
            path = self.store.path(sha)
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            log.info("removed %s from the store: no package or kept release refers to it", sha[:12])
            self._forget(sha)

    def _adopt(self, sha256: str) -> bool:
        """A file the Receiver (or a previous run) put in the store is ours without a fetch."""
        if not self.store.has(sha256):
            return False
        self.storage.hold(sha256)
        return True

    def _want(self, sha: str, info: dict, now: float) -> None:
        if self.me in info["holders"]:
            self._commit(commands.Unhold(sha, self.me))  # the log says we hold it, but we do not
        sources = self._sources(sha, info["holders"])
        if not sources or sha in self._failing:
            why = "its holders did not serve it" if sources else "no other orchestrator holds it"
            if self._maybe_lost(sha, info, now, why) or not sources:
                return
        if now < self._retry.get(sha, (0, 0.0))[1]:
            return
        if sha not in self._retry and small(info.get("size")):
            self._bundles.setdefault(sources[0], []).append((sha, info))  # sent at the end of the tick
            return
        future = self._pool.submit(fetch, self.store, sha, info.get("size"), sources, self._stop)
        self._fetching[sha] = future
        future.add_done_callback(lambda f: self.node.post(lambda: self._fetched_one(sha, info, _outcome(f))))

    def _fetched_one(self, sha: str, info: dict, outcome: str | Exception) -> None:
        """A big file's worker is free: start the next fetch now, not at the next period. (Small
        files wait for the period instead, so that they travel many to a bundle.)"""
        self._fetched(sha, info, outcome)
        self._next = 0.0

    def _send_bundles(self) -> None:
        """Small files wanted from the same holder leave as one request per BUNDLE_FILES."""
        bundles, self._bundles = self._bundles, {}
        for src, items in bundles.items():
            for start in range(0, len(items), BUNDLE_FILES):
                part = items[start:start + BUNDLE_FILES]
                files = [(sha, info["size"]) for sha, info in part]
                future = self._pool.submit(fetch_bundle, self.store, files, src, self._stop)
                for sha, _info in part:
                    self._fetching[sha] = future
                future.add_done_callback(functools.partial(self._bundle_fetched, part))

    def _bundle_fetched(self, part: list[tuple[str, dict]], future: Future) -> None:
        """Runs on the pool's thread: the outcome is handled on the loop thread."""
        self.node.post(lambda: self._bundle_done(part, future))

    def _bundle_done(self, part: list[tuple[str, dict]], future: Future) -> None:
        """One log line per bundle (a follower catching up fetches thousands of small files)."""
        outcomes = _outcome(future)
        got = 0
        for sha, info in part:
            outcome = outcomes.get(sha, FetchError("not in the reply")) if isinstance(outcomes, dict) else outcomes
            got += not isinstance(outcome, Exception)
            self._fetched(sha, info, outcome, quiet=True)
        if got:
            log.info("fetched %d of %d small files in one bundle", got, len(part))

    def _sources(self, sha: str, holders: list[str]) -> list[Source]:
        """Holders other than us that the config knows, rotated so followers spread the load."""
        known = [self._addrs[h] for h in holders if h != self.me and h in self._addrs]
        if not known:
            return []
        turn = zlib.crc32(f"{self.me}:{sha}".encode()) % len(known)
        return [Source(a.name, a.host, a.binhost_port, self._peer_key) for a in known[turn:] + known[:turn]]

    def _fetched(self, sha: str, info: dict, outcome: str | Exception, quiet: bool = False) -> None:
        """`outcome`: the source's name, or why the fetch failed."""
        del self._fetching[sha]
        self._dirty.add(sha)  # look at it again with the log's newest record
        if isinstance(outcome, Exception):
            failures = self._retry.get(sha, (0, 0.0))[0] + 1
            self._retry[sha] = (failures, self._now + min(RETRY_MAX, RETRY_MIN * 2 ** (failures - 1)))
            self._failing.setdefault(sha, self._now)
            log.log(logging.WARNING if failures == 1 else logging.DEBUG, "cannot fetch %s (%s) yet: %s",
                    sha[:12], info.get("key") or "release file", outcome)
            return
        source = outcome
        self._retry.pop(sha, None)
        self._failing.pop(sha, None)
        self.storage.hold(sha)
        log.log(logging.DEBUG if quiet else logging.INFO, "fetched %s (%s, %s bytes) from %s", sha[:12],
                info.get("key") or "release file", info.get("size"), source)
        self._commit(commands.Hold(sha, self.me))
        if sha in self._refetch:
            self._refetch.discard(sha)
            self._relink(sha)

    def _maybe_lost(self, sha: str, info: dict, now: float, why: str) -> bool:
        """Leader only: after LOST_GRACE without any holder serving it, rebuild the package."""
        since = self._failing.setdefault(sha, now)
        if not self.node.is_leader() or info.get("key") is None or now - since < LOST_GRACE:
            return False
        holders = ", ".join(info["holders"]) or "none"
        reason = f"artifact lost: {why} (holders: {holders}); building it again"
        log.warning("%s: %s", info["key"], reason)
        self._failing.pop(sha, None)
        self._retry.pop(sha, None)
        self._commit(commands.Lose(info["key"], sha, reason, self.node.wall()))
        return True

    def _commit(self, cmd: commands.Hold | commands.Unhold | commands.Lose) -> None:
        """At most one of each kind in flight per file: the loop asks again every pass."""
        mark = (cmd.NAME, cmd.sha256)
        if mark in self._committing:
            return
        self._committing.add(mark)

        def then(result: Any, err: str | None) -> None:
            self._committing.discard(mark)
            if err is not None:
                log.debug("%s %s not committed: %s", cmd.NAME, cmd.sha256[:12], err)

        self.node.commit(cmd, then=then, lazy=not isinstance(cmd, commands.Lose))  # (un)hold: no one waits for it

    # --- scrubbing (its own thread) ----------------------------------------------------------
    def _scrub(self) -> None:
        # `[cluster] scrub_interval` between passes: scrubbed without a break (it once was, every
        # 5 s), a store is re-read at SCRUB_FILES a second forever, idle or not
        while not self._stop.wait(self._scrub_interval):
            todo = self.storage.held()
            for sha in todo:
                checked = verify(self.store.path(sha), sha, SCRUB_RATE, self._stop)
                if self._stop.wait(1 / SCRUB_FILES):
                    return
                if checked is not None and not checked[1]:
                    inode, why = checked[0], "missing" if not checked[0] else "sha256 mismatch found by the scrubber"
                    self.node.post(functools.partial(self.corrupt, sha, why, inode or None))
