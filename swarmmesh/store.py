"""The node's content-addressed store, and making what is written to it durable.

Files live under `<data_dir>/store/ab/abcdef...`, named by their sha256, so a copy fetched
from any holder is the same file and nothing a peer sends can name a path. Writers (the
receiver, incoming, fetches) fill a temp file of the store, check it, and rename it into
place; durability before a commit is the SyncBarrier's group sync, shared by every upload
that waits for one. `Storage` is all of it for one node: the store, the index records of
its files, which files the node counts as held, and the barrier.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from swarmmesh.entries import Entries
from swarmmesh.errors import ArtifactError

log = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Bytes of the newest small uploads kept in memory for the followers' fetches (RecentFiles).
RECENT_BYTES = 16 << 20


class Store:
    """Content-addressed files under `<data_dir>/store/ab/abcdef...`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # partial uploads of a previous run
            stale.unlink(missing_ok=True)
        self._names = itertools.count()  # temp names: unique in this process, and tmp/ starts empty
        self._dirs: set[str] = set()  # the ab/ directories known to exist
        self.recent = RecentFiles(RECENT_BYTES)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ArtifactError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def temp_file(self) -> tuple[Path, BinaryIO]:
        path = self.tmp / f"{os.getpid()}-{next(self._names)}.part"
        return path, open(path, "xb")  # noqa: SIM115 - closed by the Upload that owns it

    @contextlib.contextmanager
    def writing(self, sha256: str) -> Iterator[BinaryIO]:
        """A temp file that becomes the store's copy of `sha256` when the block ends normally
        (check the bytes inside the block) and disappears when it raises."""
        tmp, fh = self.temp_file()
        try:
            with fh:
                yield fh
            self.put(tmp, sha256)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put(self, tmp: Path, sha256: str) -> Path:
        """Move a verified temp file into place (atomic rename). Not synced: a file that must
        survive a power loss before it is committed waits for the node's SyncBarrier; a
        fetched copy is repaired by the start-up size check and the scrubber instead."""
        dest = self.path(sha256)
        if sha256[:2] not in self._dirs:  # one mkdir per directory, not one per file
            dest.parent.mkdir(exist_ok=True)
            self._dirs.add(sha256[:2])
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:  # its directory was removed behind our back (by hand)
            if not tmp.exists():
                raise
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
        return dest


class RecentFiles:
    """The newest small files this node stored, in memory, by sha256 (thread-safe, bounded).

    Why: every follower fetches each new file within a replication period of its commit,
    and reading a 5 KiB file back from disk (open, fstat, read, close) per follower was the
    larger part of serving a bundle on the leader. The bytes are content-addressed, so a copy
    can never be stale; the disk stays the only copy that counts."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._files: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self._max // 16:
            return  # a few big files would push out hundreds of small ones
        with self._lock:
            if sha256 in self._files:
                return
            self._files[sha256] = data
            self._bytes += len(data)
            while self._bytes > self._max:
                self._bytes -= len(self._files.popitem(last=False)[1])

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            return self._files.get(sha256)


class SyncBarrier:
    """Group commit for durability: `after(fn)` runs `fn(error)` once everything written before
    the call is on disk; one thread makes everything asked for meanwhile durable with a single
    `syncfs()` of the store's filesystem. `after(fn, write)`: that thread runs `write()` first
    (the disk work of a small upload, kept off the socket loop without a thread of its own), and
    `fn` gets what it raised.

    Why not fsync per upload: with the file's fsync and its directory's, each package cost two
    journal commits, and on 5,000 small packages the validation threads spent most of their
    time waiting for them (the leader topped out near 200 packages/s). One syncfs makes the
    data and the rename of every upload validated meanwhile durable at once."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._queue: queue.SimpleQueue[_Durable | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-sync", daemon=True)
        self._thread.start()

    def after(self, fn: Callable[[Exception | None], None], write: Callable[[], None] | None = None) -> None:
        self._queue.put(_Durable(fn, write))

    def wait(self, timeout: float = 60.0) -> None:
        """Block until everything written before the call is on disk (for callers that may wait)."""
        done = threading.Event()
        errors: list[Exception | None] = []

        def synced(error: Exception | None) -> None:
            errors.append(error)
            done.set()

        self.after(synced)
        if not done.wait(timeout):
            raise OSError(f"the store did not sync within {timeout:g} s")
        if errors[0] is not None:
            raise errors[0]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        os.close(self._fd)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            group, stop = [first], False
            while not self._queue.empty():
                item = self._queue.get()
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._sync_for(group)
            if stop:
                return

    def _sync_for(self, group: list[_Durable]) -> None:
        failed = [_written(item) for item in group]
        try:
            _syncfs(self._fd)
            error = None
        except OSError as exc:
            log.error("cannot sync the store to disk: %s", exc)
            error = exc
        for item, write_error in zip(group, failed, strict=True):
            try:
                item.fn(write_error or error)
            except Exception:  # one caller's bug must not cost the others their answer
                log.exception("store sync: a callback failed")


class _Durable(NamedTuple):
    fn: Callable[[Exception | None], None]
    write: Callable[[], None] | None


def _written(item: _Durable) -> Exception | None:
    """Run the item's write, if any; what it raised goes to its callback instead of the sync's."""
    if item.write is None:
        return None
    try:
        item.write()
    except Exception as exc:
        return exc
    return None


def _syncfs(fd: int) -> None:
    """syncfs(2) of the filesystem holding `fd` (Linux; os.sync() where libc lacks it)."""
    if not hasattr(_LIBC, "syncfs"):
        os.sync()
        return
    if _LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan_store(root: Path) -> set[str]:
    """The sha256 names of the files in a store directory (`ab/abcdef...`)."""
    held: set[str] = set()
    for sub in root.iterdir() if root.is_dir() else ():
        if len(sub.name) == 2 and sub.is_dir():
            held.update(f.name for f in sub.iterdir() if _SHA256.match(f.name) and f.name[:2] == sub.name)
    return held


class Durable(Protocol):
    """What waits for the disk: SyncBarrier, or a stand-in that does not (tests)."""

    def after(self, fn: Callable[[Exception | None], None], write: Callable[[], None] | None = None) -> None: ...

    def wait(self, timeout: float = 60.0) -> None: ...

    def close(self) -> None: ...


class Storage:
    """One node's storage, created by the orchestrator and handed to the parts that keep or
    serve files (receiver, incoming, replication, releases, binhost), so that none of them
    reaches into another for it: the content-addressed store, the index records of its files
    (`entries`), the files this node counts as held, and the barrier that makes writes durable.

    "Held" is the replicator's word: a file in the store that was adopted or fetched and so
    may be listed as ours in the log. A file dropped as corrupt (`drop`) stops being held at
    once; the replicator takes the list of dropped files at its next look (`take_dropped`),
    tells the log and fetches them again."""

    def __init__(self, data_dir: Path, durable: Durable | None = None) -> None:
        self.store = Store(data_dir / "store")
        self.entries = Entries(data_dir / "entries")
        self.durable: Durable = durable if durable is not None else SyncBarrier(self.store.root)
        self._held = scan_store(self.store.root)
        self._lock = threading.Lock()  # `held` is copied by the scrubber's thread
        self._dropped: list[str] = []

    def path(self, sha256: str) -> Path:
        return self.store.path(sha256)

    def holds(self, sha256: str) -> bool:
        return sha256 in self._held

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def hold(self, sha256: str) -> None:
        with self._lock:
            self._held.add(sha256)

    def forget(self, sha256: str) -> None:
        """The file is gone from the store: no longer held, no longer indexed."""
        with self._lock:
            self._held.discard(sha256)
        self.entries.forget(sha256)

    def drop(self, sha256: str, reason: str, inode: int | None = None) -> None:
        """Remove a stored file that no longer matches its sha256 (loop thread only); `inode`:
        the copy that was checked, so that a good copy stored since is left alone."""
        if sha256 not in self._held:
            return  # already dropped (a second report of the same problem)
        path = self.store.path(sha256)
        try:
            if inode is not None and os.stat(path).st_ino != inode:
                return  # already replaced by a good copy since the check started
            path.unlink()
        except FileNotFoundError:
            pass
        self.forget(sha256)
        self._dropped.append(sha256)
        log.warning("stored file %s dropped (%s); fetching it again", sha256[:12], reason)

    def take_dropped(self) -> list[str]:
        """The files dropped since the last call (loop thread only)."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def close(self) -> None:
        self.durable.close()
        self.entries.close()
