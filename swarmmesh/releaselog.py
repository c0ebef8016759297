"""The build queue's releases: immutable, ordered, each with a strictly increasing stamp.

A part of `BuildQueue` (queue.py). A release records its files, not only its keys, so it can
be built on every node even after `reset`; its `stamp` (the Packages TIMESTAMP) strictly
increases, because Portage clients ignore an index that is not newer than the one they cached,
so a rollback republishes an older release's files as a new release instead of moving a
pointer back. Plain data that pickles with the queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from swarmmesh.records import Release


class ReleaseLog:
    """Releases by id, in the order they were committed."""

    def __init__(self, by_id: dict[str, Release] | None = None) -> None:
        self.by_id = by_id if by_id is not None else {}

    def __iter__(self) -> Iterator[Release]:
        return iter(self.by_id.values())

    def get(self, release_id: str) -> Release | None:
        return self.by_id.get(release_id)

    def add(self, rel: Release) -> None:
        """Append `rel`, stamped after the newest one (its creation time, if that is later)."""
        newest = self.newest()
        rel.stamp = max(int(rel.created_at), newest.stamp + 1 if newest else 0)
        self.by_id[rel.id] = rel

    def newest(self) -> Release | None:
        """The live record of the last release (not a copy)."""
        return next(reversed(self.by_id.values()), None) if self.by_id else None

    def newest_copy(self) -> Release | None:
        rel = self.newest()
        if rel is None:
            return None
        return replace(rel, keys=list(rel.keys), files=[dict(f) for f in rel.files], batches=list(rel.batches))

    def newest_id(self) -> str | None:
        return next(reversed(self.by_id), None) if self.by_id else None

    def covered_batches(self) -> set[str]:
        return {b for r in self.by_id.values() for b in r.batches}

    def views(self) -> list[dict]:
        return [{"id": r.id, "created_at": r.created_at, "count": len(r.keys), "forced": r.forced,
                 "stamp": r.stamp, "source": r.source} for r in self.by_id.values()]


def files_by_sha(rel: Release | None) -> dict[str, Any]:
    """sha256 -> size of a release's files (the first record of a file wins, as in `artifacts`)."""
    out: dict[str, Any] = {}
    for f in rel.files if rel else ():
        if isinstance(f.get("sha256"), str):
            out.setdefault(f["sha256"], f.get("size"))
    return out
