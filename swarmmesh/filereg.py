"""The file registry: which orchestrators hold which file, which received packages carry it,
and the change feed that lets a node's components follow those records.

Why a part of its own: `BuildQueue` replicates it, but nothing in here knows about package
states, batches or drones; it is keyed by sha256 alone. Like the queue it is plain data (it
pickles into PySyncObj snapshots), deterministic (no clock, no I/O, no iteration over sets)
and not thread-safe (the queue's caller serialises access).

Replicated (pickled and fingerprinted): ``holders`` and ``version``. Local bookkeeping, left
out of pickles and rebuilt by the queue on restore: the index of received packages by sha256,
the files the newest release wants, the feed itself and the fresh metadata. Each change to a
file's record (received, held, unheld, lost, released) appends its sha256 to a bounded feed
whose position is ``version``; a restored registry's feed starts empty, so a reader that was
behind it rescans (equal positions mean equal files: both count the same way along the one
committed history).

`FeedReader` is the reader side: one position per component (replication, releases), so
neither rescans 20k packages every tick.
"""

from __future__ import annotations

from typing import Any

FEED_LIMIT = 1 << 16  # changes a reader may lag behind before it must rescan everything
FRESH_META_LIMIT = 4096  # metadata of the newest received files, kept for the nodes to index them
_LOCAL = ("_feed", "_feed_base", "by_sha", "newest_files", "_fresh_meta")  # not pickled


class FileRegistry:
    def __init__(self, holders: dict[str, list[str]] | None = None, version: int = 0) -> None:
        self.holders: dict[str, list[str]] = holders if holders is not None else {}  # sha256 -> nodes
        self.version = version  # position of the change feed
        self.restart()

    def __getstate__(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in _LOCAL}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self.restart()

    def restart(self) -> None:
        """Empty the local bookkeeping; the queue indexes its received packages again."""
        self._feed: list[str] = []  # sha256 per change; _feed[i] is change number _feed_base + i + 1
        self._feed_base = self.version
        self.by_sha: dict[str, list[str]] = {}  # sha256 -> keys of received packages with that file
        self.newest_files: dict[str, Any] = {}  # sha256 -> size, of the newest release's files
        self._fresh_meta: dict[str, dict] = {}

    def jump(self) -> None:
        """A change the feed does not cover (a reset): every reader rescans."""
        self.by_sha = {}
        self.version += 1
        self._feed, self._feed_base = [], self.version

    # ---------------------------------------------------------------- holders

    def register(self, result: dict) -> None:
        """Track a received file and the holders its result names."""
        sha = result.get("sha256")
        if not isinstance(sha, str):
            return
        holders = self.holders.setdefault(sha, [])
        for node in result.get("holders") or ():
            if isinstance(node, str) and node not in holders:
                holders.append(node)

    def hold(self, sha256: str, node: str) -> tuple[str, list[str]] | None:
        """None: an unknown file; else ("ok" or "duplicate", the holders now)."""
        holders = self.holders.get(sha256)
        if holders is None:
            return None
        if node in holders:
            return "duplicate", list(holders)
        holders.append(node)
        self.changed(sha256)
        return "ok", list(holders)

    def unhold(self, sha256: str, node: str) -> list[str] | None:
        """The holders left, or None when `node` did not hold it (a duplicate)."""
        holders = self.holders.get(sha256)
        if holders is None or node not in holders:
            return None
        holders.remove(node)
        self.changed(sha256)
        return list(holders)

    def holders_of(self, sha256: str) -> list[str]:
        return list(self.holders.get(sha256, ()))

    # ------------------------------------------------------- index by sha256

    def index(self, key: str, sha: Any) -> str | None:
        if not isinstance(sha, str):
            return None
        self.by_sha.setdefault(sha, []).append(key)
        return sha

    def unindex(self, key: str, sha: Any) -> None:
        if not isinstance(sha, str) or sha not in self.by_sha:
            return
        keys = self.by_sha[sha]
        keys.remove(key)
        if not keys:
            del self.by_sha[sha]
        self.changed(sha)

    def keys_of(self, sha256: str) -> list[str]:
        return self.by_sha.get(sha256, [])

    def want_release(self, new: dict[str, Any]) -> None:
        """The newest release now wants `new` (sha256 -> size): log the files whose want changed
        for the release's sake only (a received package's file is wanted anyway)."""
        old, self.newest_files = self.newest_files, new
        for sha in [*old, *(s for s in new if s not in old)]:
            if sha not in self.by_sha and (sha in old, old.get(sha)) != (sha in new, new.get(sha)):
                self.changed(sha)

    # ----------------------------------------------------------- change feed

    def changed(self, sha256: str) -> None:
        """Append to the change feed, trimmed in halves so appending stays O(1) on average."""
        self._feed.append(sha256)
        self.version += 1
        if len(self._feed) > 2 * FEED_LIMIT:
            del self._feed[:FEED_LIMIT]
            self._feed_base += FEED_LIMIT

    def changed_since(self, since: int) -> tuple[int, list[str] | None]:
        """See `BuildQueue.changed_files`."""
        if not self._feed_base <= since <= self.version:
            return self.version, None
        return self.version, list(dict.fromkeys(self._feed[since - self._feed_base:]))

    # --------------------------------------------------------- fresh metadata

    def keep_fresh_meta(self, sha: Any, meta: Any) -> None:
        """Outside the replicated state (neither pickled nor fingerprinted): what each node
        indexes from, once, shortly after the commit."""
        if not isinstance(sha, str) or not isinstance(meta, dict):
            return
        self._fresh_meta[sha] = meta
        if len(self._fresh_meta) > FRESH_META_LIMIT:
            del self._fresh_meta[next(iter(self._fresh_meta))]

    def fresh_meta(self, sha256: str) -> dict | None:
        return self._fresh_meta.get(sha256)


class FeedReader:
    """One component's position in the change feed (`BuildQueue.changed_files`).

    `look` runs under the queue's lock and answers the files changed since the last look
    (None: rescan everything); the caller moves on with `seen = position` once it has taken
    them in. `every` (seconds) also forces a rescan that often: a net for changes the feed
    cannot show."""

    def __init__(self, every: float | None = None) -> None:
        self.seen = -1  # -1: rescan everything
        self._every, self._due = every, 0.0

    def tick(self, now: float) -> None:
        if self._every is not None and now >= self._due:
            self.seen, self._due = -1, now + self._every

    def look(self, q: Any) -> tuple[int, list[str] | None]:
        position, changed = q.changed_files(self.seen)
        return position, changed
