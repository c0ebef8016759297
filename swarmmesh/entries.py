"""What each stored GPKG says about itself, for the `Packages` indexes: one record per sha256.

A file is read once per node however many releases include it, and the leader, which has
just parsed every byte of an upload to validate it, records what it found instead of
reading the file again. Records are a cache: they persist in one append-only JSON-lines
file (a record per line, `{"forget": sha}` to drop one), read back at start-up and
compacted then. No fsync: a record lost to a power loss is computed again from the file.
Why not a file per record: on a 5,000-package queue that is 5,000 creates and renames per
node, a measurable part of each package's cost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any

from swarmmesh import gpkg
from swarmmesh.errors import CorruptError

log = logging.getLogger(__name__)

JOURNAL = "entries.jsonl"
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def make_record(sha256: str, size: int, md5: Any, sha1: Any, meta: dict[str, str]) -> dict:
    build_id = meta.get("BUILD_ID", "")
    return {"cpv": f"{meta.get('CATEGORY')}/{meta.get('PF')}", "size": size, "sha256": sha256,
            "build_id": int(build_id) if build_id.isdigit() else None, "md5": md5, "sha1": sha1,
            "metadata": meta}


class Entries:
    """The records, in memory and in the journal; safe to use from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}
        self._path = self.root / JOURNAL
        self._fd: int | None = None  # the journal, opened for appending at the first record
        self._load()
        self._migrate()

    def get(self, sha256: str) -> dict | None:
        with self._lock:
            return self._cache.get(sha256)

    def compute(self, sha256: str, path: Path, logged: dict, metadata: dict | None = None) -> dict:
        """Index a stored file: its metadata, and the size and digests the log recorded for it
        (the leader computed them from the same bytes); ArtifactError if it cannot be read.
        `metadata`: what the log says the leader's validation read from the same bytes, so
        the file need not be parsed again (parsing it was most of a follower's indexing)."""
        size = path.stat().st_size
        if size != logged.get("size"):
            raise CorruptError(sha256, f"stored file {sha256[:12]} has {size} bytes, not {logged.get('size')}")
        return self.put(make_record(sha256, size, logged.get("md5"), logged.get("sha1"),
                                    metadata if metadata is not None else gpkg.read_gpkg_metadata(path)))

    def record(self, info: gpkg.GpkgInfo) -> dict:
        """The record of a file this node has just validated in full (the leader's uploads)."""
        return self.put(make_record(info.sha256, info.size, info.md5, info.sha1, info.metadata))

    def put(self, record: dict) -> dict:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            self._cache[record["sha256"]] = record
            self._append(line)
        return record

    def forget(self, sha256: str) -> None:
        with self._lock:
            if self._cache.pop(sha256, None) is not None:
                self._append(json.dumps({"forget": sha256}) + "\n")

    # --- the journal -------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _append(self, line: str) -> None:
        """One write() per record on a descriptor kept open: opening the file for each record
        cost a follower as much as parsing the package's metadata."""
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.write(self._fd, line.encode())
        except OSError as exc:  # a full disk: the record stays in memory only
            log.warning("cannot append to %s: %s", self.root / JOURNAL, exc)

    def _load(self) -> None:
        """Read the journal; a torn last line (a crash mid-write) is skipped. Rewrite it without
        the dead lines when they are the majority."""
        path, lines = self._path, 0
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
            for line in fh:
                lines += 1
                self._apply(line)
        if lines > 2 * len(self._cache) + 1000:
            self._compact(path)

    def _apply(self, line: str) -> None:
        try:
            item = json.loads(line)
        except ValueError:
            return
        if isinstance(item, dict) and isinstance(item.get("forget"), str):
            self._cache.pop(item["forget"], None)
        elif isinstance(item, dict) and isinstance(item.get("sha256"), str):
            self._cache[item["sha256"]] = item

    def _compact(self, path: Path) -> None:
        tmp = path.with_name(f"{JOURNAL}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in self._cache.values())
        os.replace(tmp, path)

    def _migrate(self) -> None:
        """Records of a data directory written before the journal (a JSON file each) move in."""
        for path in self.root.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                record = None
            if isinstance(record, dict) and record.get("sha256") == path.stem and _SHA256.match(path.stem):
                self.put(record)
            path.unlink(missing_ok=True)
