"""Releases: immutable release directories, the `Packages` index, the `current` symlink.

Every orchestrator builds every release itself, from the replicated log and its own copy of
the files, so any of them can serve the binhost alone. That only works if they all write the
same bytes: the index is made from each GPKG's own metadata plus values from the log (the
release's `stamp` as TIMESTAMP, the file records), never from local clocks or mtimes, and is
written by Portage's own `PackageIndex` so clients read exactly what `emaint binhost` writes.

A release directory is built under a temporary name (hard links into the store, the index,
fsync) and renamed into place; then `current` is swapped with symlink + rename. A client
therefore sees the old release or the new one, never a mix, and the previous one stays
served until this node holds every file of the new one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portage.getbinpkg import PackageIndex

from swarmmesh import gentoo
from swarmmesh.artifacts import fsync_dir
from swarmmesh.component import Component
from swarmmesh.errors import ArtifactError, InputError

if TYPE_CHECKING:
    from swarmmesh.orchestrator import Orchestrator
    from swarmmesh.queue import Release

log = logging.getLogger(__name__)

CHECK_PERIOD = 0.25
RECHECK = 5.0  # with nothing changed in the log, look again this often (a failed build retries)
AUTO_PERIOD = 1.0
RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
CURRENT = "current"

# portage.dbapi.bintree.binarytree: values equal to these defaults are left out of the index,
# CHOST/repository equal to the header's are inherited, internal names are translated.
_DEFAULT_PKG_DATA = {
    "BDEPEND": "", "BUILD_ID": "", "BUILD_TIME": "", "DEFINED_PHASES": "", "DEPEND": "", "EAPI": "0",
    "IDEPEND": "", "IUSE": "", "KEYWORDS": "", "LICENSE": "", "PATH": "", "PDEPEND": "", "PROPERTIES": "",
    "PROVIDES": "", "RDEPEND": "", "REQUIRES": "", "RESTRICT": "", "SLOT": "0", "USE": "",
}
_INHERITED = ["CHOST", "repository"]
_TRANSLATED = (("DESCRIPTION", "DESC"), ("_mtime_", "MTIME"), ("repository", "REPO"))


def new_release_id() -> str:
    """A sortable, unique release id (made by the leader only; followers take it from the log)."""
    return time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]


def check_release_id(release_id: Any) -> str:
    if not isinstance(release_id, str) or not RELEASE_ID.match(release_id):
        raise InputError(f"{release_id!r} is not a release id; `swarmmesh releases` lists them")
    return release_id


# --- index entries -------------------------------------------------------------------------

class Entries:
    """What each stored GPKG says about itself, cached per sha256 (memory and JSON files), so
    a file is read once per node however many releases include it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, dict] = {}

    def _file(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ArtifactError(f"not a sha256 digest: {sha256!r}")
        return self.root / f"{sha256}.json"

    def get(self, sha256: str) -> dict | None:
        record = self._cache.get(sha256)
        if record is None:
            with contextlib.suppress(OSError, ValueError):
                record = self._cache[sha256] = json.loads(self._file(sha256).read_text())
        return record

    def compute(self, sha256: str, path: Path, logged: dict) -> dict:
        """Index a stored file: its metadata, and the size and digests the log recorded for it
        (the leader computed them from the same bytes); ArtifactError if it cannot be read."""
        size = path.stat().st_size
        if size != logged.get("size"):
            raise CorruptError(sha256, f"stored file {sha256[:12]} has {size} bytes, not {logged.get('size')}")
        meta = gentoo.read_gpkg_metadata(path)
        build_id = meta.get("BUILD_ID", "")
        record = {"cpv": f"{meta.get('CATEGORY')}/{meta.get('PF')}", "size": size, "sha256": sha256,
                  "build_id": int(build_id) if build_id.isdigit() else None,
                  "md5": logged.get("md5"), "sha1": logged.get("sha1"), "metadata": meta}
        tmp = self._file(sha256).with_suffix(f".tmp-{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, self._file(sha256))
        self._cache[sha256] = record
        return record

    def forget(self, sha256: str) -> None:
        self._cache.pop(sha256, None)
        self._file(sha256).unlink(missing_ok=True)


class CorruptError(ArtifactError):
    """A stored file no longer matches its sha256: it must be fetched again."""

    def __init__(self, sha256: str, message: str) -> None:
        self.sha256 = sha256
        super().__init__(message)


def index_entry(record: dict, path: str) -> dict[str, str]:
    """One Packages entry with Portage's internal key names (PackageIndex translates them).
    MTIME is the package's BUILD_TIME: the same on every node, unlike any file's mtime."""
    info = gentoo.GpkgInfo(record["cpv"], record["build_id"], record["size"], record["sha256"],
                           record["md5"], record["sha1"], record["metadata"])
    build_time = record["metadata"].get("BUILD_TIME", "")
    entry = gentoo.packages_index_entry(info, path, int(build_time) if build_time.isdigit() else 0)
    for internal, written in (("_mtime_", "MTIME"), ("repository", "REPO")):
        if written in entry:
            entry[internal] = entry.pop(written)
    return entry


def render_packages(entries: list[dict[str, str]], stamp: int) -> bytes:
    """The Packages file: a pure function of the entries and the stamp (byte-identical everywhere)."""
    index = PackageIndex(allowed_pkg_keys=None, default_pkg_data=_DEFAULT_PKG_DATA,
                         inherited_keys=_INHERITED, translated_keys=_TRANSLATED)
    chosts = Counter(e["CHOST"] for e in entries if e.get("CHOST"))
    index.header.update(VERSION="0", TIMESTAMP=str(int(stamp)), PACKAGES=str(len(entries)))
    if chosts:
        index.header["CHOST"] = min(chosts, key=lambda c: (-chosts[c], c))
    index.packages = [dict(e) for e in entries]
    index.modified = False  # or write() stamps the local clock into TIMESTAMP
    out = io.StringIO()
    index.write(out)
    return out.getvalue().encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: no name, mtime 0."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def release_paths(files: list[dict]) -> list[tuple[dict, str]]:
    """(file, PATH) per file, the PATH recomputed from the checked CPV and build id (never taken
    from the log as a path); a PATH taken twice (the same CPV under two keys) keeps the first."""
    seen: set[str] = set()
    out = []
    for f in files:
        path = gentoo.gpkg_relpath(f["cpv"], f["build_id"] or 1)
        if path != f.get("path"):
            raise ArtifactError(f"{f['key']}: recorded path {f.get('path')!r} is not {path!r}")
        if path in seen:
            log.warning("%s: %s is already in this release; left out", f["key"], path)
            continue
        seen.add(path)
        out.append((f, path))
    return out


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


# --- the staging feed ------------------------------------------------------------------------

@dataclass(frozen=True)
class Feed:
    """An immutable index snapshot for the staging feed: swapped whole, read by the binhost thread."""

    packages: bytes = b""
    paths: dict[str, str] = field(default_factory=dict)  # PATH -> sha256
    keys: tuple = ()


# --- the component ---------------------------------------------------------------------------

class Releases(Component):
    """Component of an Orchestrator: builds the newest release, serves it, prunes, auto-finalizes.

    File work runs on one worker thread; the loop only decides and commits."""

    def __init__(self, node: Orchestrator) -> None:
        self.node = node
        self.data = Path(node.config.data_dir)
        self.root = self.data / "releases"
        self.root.mkdir(parents=True, exist_ok=True)
        prune(self.root, keep=[p.name for p in self.root.iterdir() if RELEASE_ID.match(p.name)])
        self.entries = Entries(self.data / "entries")
        self.serving = current_release(self.data)
        self.staging = Feed()
        self._staging_stamp = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"release-{node.name}")
        self._job: Future | None = None
        self._failed: dict[str, float] = {}  # release id -> when to try again
        self._next = self._next_auto = 0.0
        self._idle: tuple[int, str | None] | None = None  # (files_version, serving) with nothing to do
        self._recheck = 0.0
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
        if self.node.is_leader() and self.node.config.auto_finalize and now >= self._next_auto:
            self._next_auto = now + AUTO_PERIOD
            self._auto_finalize()
        if self._job is None or self._job.done():
            seen = (self.node.election.read(lambda q: q.files_version), self.serving)
            if seen == self._idle and now < self._recheck:
                return  # nothing changed since the last look
            self._job = self._next_job(now)
            self._idle, self._recheck = (seen if self._job is None else None), now + RECHECK

    # --- what to do next -----------------------------------------------------------------
    def _next_job(self, now: float) -> Future | None:
        newest, received = self.node.election.read(lambda q: (q.newest_release(), q.received_files()))
        missing = self._unindexed([*(newest.files if newest else ()), *received])
        if missing:
            return self._submit(self._index, missing)
        if newest is not None and newest.id != self.serving and now >= self._failed.get(newest.id, 0.0):
            if all(self.node.replicator.has(f["sha256"]) for f in newest.files):
                return self._submit(self._publish, newest)
        keys = tuple((f["key"], f["sha256"]) for f in received if self.entries.get(f["sha256"]))
        if keys != self.staging.keys:
            return self._submit(self._stage, received, keys)
        return None

    def _submit(self, fn: Any, *args: Any) -> Future:
        """Run file work on the worker thread; a bug there is logged, never silently lost."""
        future = self._pool.submit(fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def _unindexed(self, files: list[dict]) -> list[dict]:
        held = self.node.replicator.has
        todo = {f["sha256"]: f for f in files if held(f["sha256"]) and self.entries.get(f["sha256"]) is None}
        return list(todo.values())

    # --- worker-thread jobs --------------------------------------------------------------
    def _index(self, files: list[dict]) -> None:
        for f in files:
            sha = f["sha256"]
            try:
                self.entries.compute(sha, self.node.replicator.path(sha), f)
            except (ArtifactError, OSError) as exc:  # not what the leader validated: fetch it again
                self.node.post(lambda s=sha, e=exc: self.node.replicator.corrupt(s, f"cannot be indexed: {e}"))

    def _publish(self, rel: Release) -> None:
        try:
            placed = release_paths(rel.files)
            links = [(self.node.replicator.path(f["sha256"]), path) for f, path in placed]
            entries = [index_entry(self._entry(f), path) for f, path in placed]
            build_release(self.root, rel.id, rel.stamp, links, entries)
            point_current(self.data, rel.id)
        except (OSError, ArtifactError, InputError) as exc:
            log.error("cannot build release %s yet: %s; retrying", rel.id, exc)
            self.node.post(lambda: self._failed.__setitem__(rel.id, time.monotonic() + 5.0))
            return
        log.info("serving release %s (%d packages, stamp %d)", rel.id, len(rel.files), rel.stamp)
        self.node.post(lambda: self._published(rel.id))

    def _entry(self, f: dict) -> dict:
        record = self.entries.get(f["sha256"])
        if record is None or record["cpv"] != f["cpv"]:
            raise ArtifactError(f"{f['key']}: stored file {f['sha256'][:12]} is not indexed as {f['cpv']}")
        return record

    def _published(self, release_id: str) -> None:
        self.serving = release_id
        keep = self.node.election.read(lambda q: [r.id for r in q.releases])[-self.node.config.keep_releases:]
        self._submit(self._prune, [*keep, release_id])

    def _prune(self, keep: list[str]) -> None:
        removed = prune(self.root, keep)
        if removed:
            log.info("pruned %d old release(s): %s", len(removed), ", ".join(removed))

    def _stage(self, received: list[dict], keys: tuple) -> None:
        placed = [(f, path) for f, path in release_paths([f for f in received if self.entries.get(f["sha256"])])
                  if self.entries.get(f["sha256"])["cpv"] == f["cpv"]]
        entries = [index_entry(self._entry(f), path) for f, path in placed]
        self._staging_stamp = max(self._staging_stamp + 1, int(time.time()))
        self.staging = Feed(render_packages(entries, self._staging_stamp),
                            {path: f["sha256"] for f, path in placed}, keys)

    def relink(self, sha256: str) -> None:
        """A re-fetched file replaces the corrupt copy in every built release that links it."""
        releases = self.node.election.read(lambda q: [(r.id, r.files) for r in q.releases])
        self._submit(self._relink, sha256, releases)

    def _relink(self, sha256: str, releases: list[tuple[str, list[dict]]]) -> None:
        source = self.node.replicator.path(sha256)
        for release_id, files in releases:
            folder = self.root / check_release_id(release_id)
            for f, path in release_paths(files) if folder.is_dir() else ():
                if f["sha256"] == sha256:
                    relink(folder, path, source)
                    log.info("release %s: %s linked again to the re-fetched file", release_id, path)

    # --- auto_finalize (leader) ----------------------------------------------------------
    def _auto_finalize(self) -> None:
        if self._finalizing or not self.node.election.read(lambda q: q.unreleased_batches()):
            return
        self._finalizing = True
        release_id = new_release_id()

        def then(result: Any, err: str | None) -> None:
            self._finalizing = False
            if err is None and result.get("ok"):
                log.info("auto_finalize: release %s of %d packages", release_id, result.get("count", 0))
            else:
                log.warning("auto_finalize of %s failed: %s", release_id, err or result)

        self.node.commit("finalize", release_id, time.time(), True, then=then)
