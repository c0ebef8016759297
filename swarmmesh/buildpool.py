"""A drone's jobs as it holds them, their work directories, and the threads that build them.

Builds run on a pool of one thread per slot: a thread started per job cost more than a
zero-second simulated build. A pool thread only runs the builder and hands the result to the
`done` callback it was given (the drone posts it to its loop, which owns every job's state);
whatever the builder does, even crash, `done` is called once.

Work directories are named by the drone, never by the job: the key only lends a readable,
sanitized prefix, and only directories named that way are ever removed from the work dir.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarmmesh.builders import Builder, BuildResult

log = logging.getLogger(__name__)

BUILDING, UPLOADING, FAILED, QUEUED = "building", "uploading", "failed", "queued"
_JOB_DIR = re.compile(r"[A-Za-z0-9._-]+-[0-9]+\Z")  # what WorkDirs.make names


@dataclass(eq=False)
class DroneJob:
    """One job from delegation until it is settled: queued, building, uploading its artifact,
    or reporting its failure; the leader's term and attempt fence what the drone reports."""

    key: str
    cpv: str
    repo: str | None
    term: int
    workdir: Path | None
    started: float
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event | None = None  # set once its build returned; None: never started
    state: str = BUILDING
    path: Path | None = None
    data: bytes | None = None  # the artifact, when the builder made it in memory
    error: str = ""
    rejections: int = 0
    upload_id: str = ""
    resend_at: float | None = None
    attempt: int = 0

    @property
    def pair(self) -> list:
        return [self.key, self.term]


class BuildPool:
    """One daemon thread per slot: a build that ignores its cancel cannot hold up the exit of
    the drone (a ThreadPoolExecutor's threads are joined when the interpreter exits)."""

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._size = size
        for i in range(size):
            threading.Thread(target=self._work, name=f"build-{name}-{i + 1}", daemon=True).start()

    def build(self, builder: Builder, job: DroneJob, done: Callable[[DroneJob, BuildResult], None]) -> None:
        """Build `job` on the next free thread; `done(job, result)` runs on that thread."""
        job.finished = threading.Event()
        self._tasks.put(lambda: _build(builder, job, done))

    def close(self) -> None:
        for _ in range(self._size):
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()


def _build(builder: Builder, job: DroneJob, done: Callable[[DroneJob, BuildResult], None]) -> None:
    """Worker thread: run the builder; whatever happens, `done` hears about it."""
    try:
        result = builder.build(job.cpv, job.repo, job.workdir, job.cancel)
    except Exception as exc:  # noqa: BLE001 - a builder bug must not lose the job
        log.exception("builder crashed on %s", job.key)
        result = BuildResult(ok=False, path=None, error=f"builder crashed: {exc!r}", seconds=0.0)
    finally:
        assert job.finished is not None
        job.finished.set()
    done(job, result)


class WorkDirs:
    """The job directories under a drone's work dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._counter = itertools.count(1)

    def make(self, key: str) -> Path:
        """A fresh directory named by us: the key only lends a readable, sanitized prefix."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64].strip("._-") or "job"
        while True:
            path = self.root / f"{safe}-{next(self._counter)}"
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                continue

    def clear_leftovers(self) -> None:
        """A drone process starts with no jobs, so the job directories in its work dir are what a
        killed predecessor left behind (its leases lapse and the jobs are built again). Only
        directories named like ours go: the work dir may be a path an admin also uses."""
        try:
            stale = [e.path for e in os.scandir(self.root)
                     if e.is_dir(follow_symlinks=False) and _JOB_DIR.match(e.name)]
        except OSError:
            return  # not there yet: created with the first job
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        if stale:
            log.info("removed %d job director%s left by a previous run from %s", len(stale),
                     "y" if len(stale) == 1 else "ies", self.root)


def remove(path: Path | None) -> None:
    """A job's directory and everything in it, if it has one."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
