"""Compatibility with old-style drones: GPKGs rsynced into `<data_dir>/staging/incoming/`.

The drones of the system swarmmesh replaces upload with `rsync` into the orchestrator's
staging directory. The leader picks such files up (watchdog events for files put straight
into incoming/, and a rescan every RESCAN seconds for subdirectories such as an rsynced
PKGDIR tree and for anything an event missed: watchdog's recursive mode races when a directory
appears while it walks the tree), and treats them exactly like an upload: the file is first
moved out of the writable directory (so nobody can change it after it is checked), judged by
`gpkg.inspect_gpkg`, accepted only for a package of the queue that is needed or being built,
stored under its sha256 and committed as `received`. Anything else is deleted with a log line
saying why.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import stat
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from swarmmesh import commands, gpkg
from swarmmesh.artifacts import received_result
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import ArtifactError
from swarmmesh.records import DELEGATED, NEEDED, Package
from swarmmesh.signer import PackageSigner
from swarmmesh.store import Storage

log = logging.getLogger(__name__)

RESCAN = 1.0
SETTLE = 1.0  # a file found by a rescan must be this old: a writer without rename may be busy
SUFFIX = ".gpkg.tar"
DRONE = "incoming"


class _Events(FileSystemEventHandler):
    """Runs on watchdog's thread: only queues paths for the orchestrator's loop."""

    def __init__(self, found: queue.SimpleQueue[str]) -> None:
        self.found = found

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.found.put(os.fsdecode(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.found.put(os.fsdecode(event.dest_path))


class Incoming(Component):
    """Component of an Orchestrator (leader only acts); see the module docstring."""

    def __init__(self, node: Node, config: NodeConfig, storage: Storage, *,
                 signer: PackageSigner | None = None) -> None:
        self.node = node
        self._signer = signer
        self.storage = storage
        self.dir = Path(config.data_dir) / "staging" / "incoming"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._found: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer = Observer()
        self._observer.schedule(_Events(self._found), str(self.dir), recursive=False)
        self._observer.start()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"incoming-{node.name}")
        self._busy: set[str] = set()
        self._next_scan = 0.0

    # --- component protocol --------------------------------------------------------------
    def on_leadership(self, term: int | None) -> None:
        self._next_scan = 0.0  # a new leader looks at once

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tick(self, now: float) -> None:
        found = self._drain()
        if not self.node.is_leader():
            return  # files wait until this node leads (the rescan finds them then)
        if now >= self._next_scan:
            self._next_scan = now + RESCAN
            found += self._scan()
        for path in dict.fromkeys(found):
            if path not in self._busy and self._candidate(path):
                self._busy.add(path)
                job = self._pool.submit(self._take, Path(path))
                job.add_done_callback(functools.partial(self._take_done, path))

    def _take_done(self, path: str, future: Future) -> None:
        """Runs on the pool's thread: the outcome is handled on the loop thread."""
        self.node.post(lambda: self._taken(path, future))

    # --- finding files ---------------------------------------------------------------------
    def _drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self._found.get_nowait())
            except queue.Empty:
                return out

    def _scan(self) -> list[str]:
        settled = self.node.wall() - SETTLE
        out = []
        for folder, _dirs, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if os.lstat(path).st_mtime < settled:
                        out.append(path)
                except OSError:
                    continue
        return out

    def _candidate(self, path: str) -> bool:
        """Ours to judge: inside the incoming directory, a final name (rsync's temp files start
        with a dot), a GPKG by name."""
        name = os.path.basename(path)
        inside = os.path.commonpath([os.path.abspath(path), str(self.dir)]) == str(self.dir)
        return inside and not name.startswith(".") and name.endswith(SUFFIX)

    # --- judging (worker thread) -----------------------------------------------------------
    def _take(self, path: Path) -> tuple[str, str, gpkg.GpkgInfo] | None:
        """Move the file out of reach, validate it, store it: (key, drone, info), or None if gone."""
        store = self.storage.store
        staged = store.tmp / f"{uuid.uuid4().hex}.incoming"
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()
                raise ArtifactError("not a regular file (a link or a device)")
            os.rename(path, staged)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.lstat(staged).st_mode):
                raise ArtifactError("not a regular file (a link or a device)")
            info = gpkg.inspect_gpkg(staged)
            key, drone = self._package_for(info)
            if self._signer is not None:  # signed like an upload, before `received`
                info, signed = self._signer.sign(info, staged, key)
                assert signed.path is not None
                os.replace(signed.path, staged)
            store.put(staged, info.sha256)
            self.storage.durable.wait()  # data and rename on disk before `received`, as for uploads
            self.storage.entries.record(info)  # parsed in full just now: no second read
            return key, drone, info
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def _package_for(self, info: gpkg.GpkgInfo) -> tuple[str, str]:
        """The queue key the GPKG is for, and whose build it settles."""
        repo = info.metadata.get("repository")
        keys = [info.cpv] + ([f"{info.cpv}::{repo}"] if repo else [])
        for key in keys:
            pkg = self._queued(key)
            if pkg is not None and pkg.state in (NEEDED, DELEGATED):
                return key, pkg.drone if pkg.state == DELEGATED and pkg.drone else DRONE
        raise ArtifactError(f"{info.cpv} is not a package the queue needs (or it is already received)")

    def _queued(self, key: str) -> Package | None:
        return self.node.read(lambda q: q.get(key))

    # --- committing (loop thread) ------------------------------------------------------------
    def _taken(self, path: str, future: Future) -> None:
        self._busy.discard(path)
        name = os.path.relpath(path, self.dir)
        try:
            taken = future.result()
        except (ArtifactError, OSError) as exc:
            log.warning("incoming %s rejected and deleted: %s", name, exc)
            return
        if taken is None:
            return
        key, drone, info = taken
        result = received_result(info, self.node.name)

        def then(res: Any, err: str | None) -> None:
            if err is None and res.get("ok"):
                log.info("received %s from incoming %s (%d bytes, sha256 %s)", key, name, info.size, info.sha256[:12])
            else:
                log.warning("incoming %s for %s not accepted: %s", name, key, err or res.get("code"))

        self.node.commit(commands.Complete(key, drone, self.node.term, result, self.node.wall()), then=then)
