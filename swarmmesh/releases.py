"""Releases: immutable release directories, each with its `Packages` index, and the `current` symlink.

Every orchestrator builds every release itself, from the replicated log and its own copy of
the files, so any of them can serve the binhost alone. That only works if they all write the
same bytes: the index is made from each GPKG's own metadata plus values from the log (the
release's `stamp` as TIMESTAMP, the file records), never from local clocks or mtimes, and is
written by Portage's own `PackageIndex` so clients read exactly what `emaint binhost` writes
(pkgindex.py renders it).

A release directory is built under a temporary name (hard links into the store, the index,
fsync) and renamed into place; then `current` is swapped with symlink + rename. A client
therefore sees the old release or the new one, never a mix, and the previous one stays
served until this node holds every file of the new one. The component also keeps the staging
feed (staging.py) current.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmmesh import commands
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import ArtifactError, InputError
from swarmmesh.filereg import FeedReader
from swarmmesh.pkgindex import gzip_bytes, index_entry, release_paths, render_packages
from swarmmesh.signer import PackageSigner, ReleaseCheck
from swarmmesh.staging import Feed, ReceivedView, Stager
from swarmmesh.store import Storage, fsync_dir

if TYPE_CHECKING:
    from swarmmesh.records import Release

log = logging.getLogger(__name__)

CHECK_PERIOD = 0.1
RESYNC = 30.0  # rescan every received file this often anyway: a net for changes the log's feed cannot show
STAGE_MIN = 0.1  # seconds between two renders of the staging index, at least...
STAGE_FACTOR = 30.0  # ...and this many times the last render took: at most ~3 % of a core, however many packages
#: A follower renders its staging feed only this long after it was last read (see `staging_feed`).
STAGING_INTEREST = 600.0
AUTO_PERIOD = 1.0
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
CURRENT = "current"


def new_release_id() -> str:
    """A sortable, unique release id (made by the leader only; followers take it from the log)."""
    return time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


def check_release_id(release_id: Any) -> str:
    if not isinstance(release_id, str) or not RELEASE_ID.match(release_id):
        raise InputError(f"{release_id!r} is not a release id; `swarmmesh releases` lists them")
    return release_id


# --- release directories -------------------------------------------------------------------

def _write(path: Path, data: bytes, stamp: int) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.utime(path, (stamp, stamp))  # Last-Modified: clients send it back as If-Modified-Since


def build_release(root: Path, release_id: str, stamp: int, links: list[tuple[Path, str]],
                  entries: list[dict]) -> Path:
    """Create `root/<id>/`: hard links at each PATH, Packages and Packages.gz; atomic rename."""
    final = root / check_release_id(release_id)
    if final.is_dir():
        return final
    tmp = root / f".tmp-{release_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for source, path in links:
            dest = tmp / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, dest)
        packages = render_packages(entries, stamp)
        _write(tmp / "Packages", packages, stamp)
        _write(tmp / "Packages.gz", gzip_bytes(packages), stamp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    return final


def point_current(data_dir: Path, release_id: str) -> None:
    """Swap `<data_dir>/current` to `releases/<id>` atomically (symlink to a temp name + rename)."""
    tmp = data_dir / f".{CURRENT}-{uuid.uuid4().hex[:8]}"
    os.symlink(f"releases/{check_release_id(release_id)}", tmp)
    try:
        os.replace(tmp, data_dir / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(data_dir)


def current_release(data_dir: Path) -> str | None:
    """The id `current` points at, if it points at a well-formed release path."""
    try:
        target = os.readlink(data_dir / CURRENT)
    except OSError:
        return None
    prefix, _, release_id = target.partition("/")
    return release_id if prefix == "releases" and RELEASE_ID.match(release_id) else None


def relink(release_dir: Path, path: str, source: Path) -> None:
    """Replace one file of a built release by a fresh link (after a corrupt copy was re-fetched)."""
    dest = release_dir / path
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    os.link(source, tmp)
    os.replace(tmp, dest)


def prune(root: Path, keep: list[str]) -> list[str]:
    """Remove release directories not in `keep` (and leftovers of interrupted builds)."""
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.name in keep or not entry.is_dir() or entry.is_symlink():
            continue
        if RELEASE_ID.match(entry.name) or entry.name.startswith(".tmp-"):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        exc = future.exception()
        log.error("release work failed: %s", exc, exc_info=exc)


# --- the component ---------------------------------------------------------------------------

class Releases(Component):
    """Component of an Orchestrator: builds the newest release, serves it, prunes, auto-finalizes,
    and keeps the staging feed current.

    File work runs on one worker thread; the loop only decides and commits, at a cost that
    follows what changed in the log (its change feed), not how many packages it holds."""

    def __init__(self, node: Node, config: NodeConfig, storage: Storage, *,
                 signer: PackageSigner | None = None) -> None:
        self.node = node
        self._check = ReleaseCheck(signer)  # nothing unverifiable is served
        self._refused: set[str] = set()  # files sent back to needed by the check
        self.storage = storage
        self.auto_finalize = config.auto_finalize  # finalize completed batches (leader only)
        self._keep_releases = config.keep_releases
        self.data = Path(config.data_dir)
        self.root = self.data / "releases"
        self.root.mkdir(parents=True, exist_ok=True)
        prune(self.root, keep=[p.name for p in self.root.iterdir() if RELEASE_ID.match(p.name)])
        self.entries = storage.entries
        self.serving = current_release(self.data)
        self.staging = Feed()
        self._view = ReceivedView(self.entries)
        self._stager = Stager(self.entries)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"release-{node.name}")
        self._job: Future | None = None
        self._failed: dict[str, float] = {}  # release id -> when to try again
        self._next = self._next_auto = 0.0
        self._reader = FeedReader(every=RESYNC)  # position in the log's change feed
        self._newest: Release | None = None
        self._absent: set[str] = set()  # files of the newest release not seen stored here yet
        self._next_stage = self._stage_cost = 0.0
        self._staging_read = -STAGING_INTEREST  # monotonic time of the last read of the feed
        self._staged_last = False
        self._finalizing = False

    # --- component protocol --------------------------------------------------------------
    def on_leadership(self, term: int | None) -> None:
        self._finalizing = False

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + CHECK_PERIOD
        if self.node.is_leader() and self.auto_finalize and now >= self._next_auto:
            self._next_auto = now + AUTO_PERIOD
            self._auto_finalize()
        if self._job is None or self._job.done():
            self._job = self._next_job(now)

    # --- what to do next -----------------------------------------------------------------
    def _next_job(self, now: float) -> Future | None:
        """Index, publish or stage; a due staging render alternates with a stream of indexing,
        so drones see new packages while files keep arriving."""
        self._follow(now)
        if self._stage_due(now) and not self._staged_last:
            return self._start_stage(now)
        self._staged_last = False
        missing = self._view.unindexed(self.storage.holds)
        if missing:
            return self._submit(self._index, missing)
        if self._publishable(now):
            return self._submit(self._publish, self._newest)
        return self._start_stage(now) if self._stage_due(now) else None

    def _follow(self, now: float) -> None:
        """Catch up with the log: what changed since the last look (or everything, now and then)."""
        self._reader.tick(now)
        seen, changed, found, newest = self.node.read(self._changes)
        if newest != (self._newest.id if self._newest else None):
            self._set_newest()
        if changed is None:
            self._view.reload(found)
        else:
            for sha, items in found.items():
                self._view.update(sha, items)
        self._reader.seen = seen

    def _changes(self, q: Any) -> tuple[int, list[str] | None, Any, str | None]:
        """Under the queue's lock: the feed's position, and the received files that changed."""
        seen, changed = self._reader.look(q)
        found = q.received() if changed is None else {sha: q.received(sha) for sha in changed}
        return seen, changed, found, q.newest_release_id()

    def _set_newest(self) -> None:
        """Releases are immutable: their files are read once, not at every look."""
        self._newest = self.node.read(lambda q: q.newest_release())
        files = self._newest.files if self._newest else []
        self._view.want(files)
        self._absent = {f["sha256"] for f in files}

    def _publishable(self, now: float) -> bool:
        rel = self._newest
        if rel is None or rel.id == self.serving or now < self._failed.get(rel.id, 0.0):
            return False
        has = self.storage.holds
        self._absent = {sha for sha in self._absent if not has(sha)}
        return not self._absent

    def serving_release(self) -> str | None:
        """The release this node serves now (its `current`), for the binhost and status."""
        return self.serving

    def staging_feed(self) -> Feed:
        """The feed to serve (binhost thread). Drones and the gateway read the leader's; a
        follower renders its own only while someone reads it, from the first read on: it
        cost each follower ~15 % of its CPU under a stream of packages, for nobody. A new
        leader renders at once, from the blocks of every package (~40 us each)."""
        self._staging_read = self.node.now()
        return self.staging

    def _stage_due(self, now: float) -> bool:
        wanted = self.node.is_leader() or self.node.now() - self._staging_read < STAGING_INTEREST
        return self._view.changed and now >= self._next_stage and wanted

    def _start_stage(self, now: float) -> Future:
        """Render at most every STAGE_MIN s, and rarer when a render takes long."""
        self._view.changed, self._staged_last = False, True
        self._next_stage = now + max(STAGE_MIN, STAGE_FACTOR * self._stage_cost)
        return self._submit(self._stage, list(self._view.listed.values()))

    def _submit(self, fn: Any, *args: Any) -> Future:
        """Run file work on the worker thread; a bug there is logged, never silently lost."""
        future = self._pool.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    # --- worker-thread jobs --------------------------------------------------------------
    def _index(self, files: list[dict]) -> None:
        logged = self.node.read(lambda q: {f["sha256"]: q.fresh_metadata(f["sha256"]) for f in files})
        for f in files:
            sha = f["sha256"]
            try:
                self.entries.compute(sha, self.storage.path(sha), f, logged.get(sha))
            except (ArtifactError, OSError) as exc:  # not what the leader validated: fetch it again
                self.node.post(functools.partial(self.storage.drop, sha, f"cannot be indexed: {exc}"))

    def _publish(self, rel: Release) -> None:
        bad = self._check.failures(rel.files, self.storage.path)
        if bad:
            for f, why in bad:
                self.node.post(functools.partial(self._unverified, f, why))
            self.node.post(lambda: self._publish_failed(rel.id))
            return
        try:
            placed = release_paths(rel.files)
            links = [(self.storage.path(f["sha256"]), path) for f, path in placed]
            entries = [index_entry(self._entry(f), path) for f, path in placed]
            build_release(self.root, rel.id, rel.stamp, links, entries)
            point_current(self.data, rel.id)
        except (OSError, ArtifactError, InputError) as exc:
            log.error("cannot build release %s yet: %s; retrying", rel.id, exc)
            self.node.post(lambda: self._publish_failed(rel.id))
            return
        log.info("serving release %s (%d packages, stamp %d)", rel.id, len(rel.files), rel.stamp)
        self.node.post(lambda: self._published(rel.id))

    def _unverified(self, f: dict, why: str) -> None:
        """A release file whose signature does not verify goes back to needed, once (`lose` is
        conditional on the sha256, so a late or repeated commit undoes no newer build)."""
        if f["sha256"] in self._refused:
            return
        self._refused.add(f["sha256"])
        log.error("%s: refused by the release check (%s); building it again", f.get("key"), why)
        reason = f"signature check failed: {why}"
        self.node.commit(commands.Lose(f.get("key") or "", f["sha256"], reason, self.node.wall()))

    def _publish_failed(self, release_id: str) -> None:
        """Wait a while, and then check every file again (one may have been dropped meanwhile)."""
        self._failed[release_id] = self.node.now() + 5.0
        if self._newest is not None and self._newest.id == release_id:
            self._absent = {f["sha256"] for f in self._newest.files}

    def _entry(self, f: dict) -> dict:
        record = self.entries.get(f["sha256"])
        if record is None or record["cpv"] != f["cpv"]:
            raise ArtifactError(f"{f['key']}: stored file {f['sha256'][:12]} is not indexed as {f['cpv']}")
        return record

    def _published(self, release_id: str) -> None:
        self.serving = release_id
        keep = self.node.read(lambda q: [r.id for r in q.releases])[-self._keep_releases:]
        self._submit(self._prune, [*keep, release_id])

    def _prune(self, keep: list[str]) -> None:
        removed = prune(self.root, keep)
        if removed:
            log.info("pruned %d old release(s): %s", len(removed), ", ".join(removed))

    def _stage(self, files: list[tuple[int, dict]]) -> None:
        started = time.monotonic()
        self.staging = self._stager.render(files)
        self._stage_cost = time.monotonic() - started

    def relink(self, sha256: str) -> None:
        """A re-fetched file replaces the corrupt copy in every built release that links it."""
        releases = self.node.read(lambda q: [(r.id, r.files) for r in q.releases])
        self._submit(self._relink, sha256, releases)

    def _relink(self, sha256: str, releases: list[tuple[str, list[dict]]]) -> None:
        source = self.storage.path(sha256)
        for release_id, files in releases:
            folder = self.root / check_release_id(release_id)
            for f, path in release_paths(files) if folder.is_dir() else ():
                if f["sha256"] == sha256:
                    relink(folder, path, source)
                    log.info("release %s: %s linked again to the re-fetched file", release_id, path)

    # --- auto_finalize (leader) ----------------------------------------------------------
    def _auto_finalize(self) -> None:
        if self._finalizing or not self.node.read(lambda q: q.unreleased_batches()):
            return
        self._finalizing = True
        release_id = new_release_id()

        def then(result: Any, err: str | None) -> None:
            self._finalizing = False
            if err is None and result.get("ok"):
                log.info("auto_finalize: release %s of %d packages", release_id, result.get("count", 0))
            else:
                log.warning("auto_finalize of %s failed: %s", release_id, err or result)

        self.node.commit(commands.Finalize(release_id, self.node.wall(), True), then=then)
