"""The records the build queue replicates: packages, batches, releases, and their states.

Plain dataclasses in a module of their own, so that the queue's parts (the dependency graph,
the file registry) share them without importing the queue. Their class paths are part of every
snapshot PySyncObj writes: queue.py imports them under their old names, so snapshots written
when they lived there still load. Never rename a field (snapshots and fingerprints hold them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

NEEDED = "needed"
DELEGATED = "delegated"
RECEIVED = "received"
FAILED = "failed"
STATES = (NEEDED, DELEGATED, RECEIVED, FAILED)


@dataclass
class Package:
    key: str
    cpv: str
    repo: str | None
    seq: int
    state: str = NEEDED
    attempts: int = 0
    drone: str | None = None
    term: int = 0
    delegated_at: float | None = None
    lease_deadline: float | None = None
    result: dict | None = None
    error: str | None = None
    batches: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)
    failed_on: list[str] = field(default_factory=list)


@dataclass
class Batch:
    id: str
    client: str
    keys: list[str]
    submitted_at: float
    new: int = 0  # packages this batch added; kept so a resubmission answers the same


@dataclass
class Release:
    id: str
    created_at: float
    keys: list[str]
    forced: bool
    files: list[dict] = field(default_factory=list)  # per key: cpv + FILE_FIELDS of its result
    stamp: int = 0  # the Packages TIMESTAMP, strictly increasing from release to release
    source: str | None = None  # set by rollback: the release whose files this one republishes
    batches: list[str] = field(default_factory=list)  # batches complete when it was made


FILE_FIELDS = ("sha256", "size", "md5", "sha1", "path", "build_id")


def dependency_failed(key: str) -> str:
    return f"dependency {key} failed"


def file_of(pkg: Package) -> dict:
    """What a release needs to know about a received package's file, copied out of its result;
    `signer` (the key that signed it) only when it was signed, so unsigned logs replay unchanged."""
    result = pkg.result or {}
    signer = {"signer": result["signer"]} if result.get("signer") else {}
    return {"key": pkg.key, "cpv": pkg.cpv, **{name: result.get(name) for name in FILE_FIELDS}, **signer}
