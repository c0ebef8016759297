"""Fakes of an Orchestrator for component tests (binhost, fetch, replication, releases, staging,
incoming): a real queue applied at once, a real store and index, and helpers that put real
GPKGs into them. Shared here rather than imported from one test module by the others."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from types import SimpleNamespace

from swarmmesh import gentoo, gpkg, gpkg_writer, pkgindex, releases, staging
from swarmmesh.entries import Entries
from swarmmesh.queue import BuildQueue
from swarmmesh.store import Store


class FakeNode:
    """What the components need of an Orchestrator: a real queue applied at once (a one-node
    "Raft"), a real store, and a loop whose posted callbacks the test runs with `run_posted`."""

    def __init__(self, name: str, data_dir: Path, orchestrators: tuple = (), leader: bool = False) -> None:
        self.name = name
        self.config = SimpleNamespace(name=name, data_dir=data_dir, orchestrators=orchestrators, keep_releases=2,
                                      auto_finalize=False, scrub_interval=600.0,
                                      me=lambda: SimpleNamespace(host="127.0.0.1", binhost_port=0))
        self.queue = BuildQueue()
        self.lock = threading.RLock()
        self.election = SimpleNamespace(read=self.read, indexes=lambda: (1, 1))
        # durability itself is store.SyncBarrier's, tested in test_store.py
        self.receiver = SimpleNamespace(store=Store(data_dir / "store"), durable=SimpleNamespace(wait=lambda: None))
        self.releases = SimpleNamespace(serving=None, staging=staging.Feed(), relinked=[],
                                        entries=Entries(data_dir / "entries"))
        self.releases.relink = self.releases.relinked.append
        self.releases.staging_feed = lambda: self.releases.staging
        self.leader = leader
        self.term = 1
        self.commits: list[tuple] = []
        self.posted: queue.SimpleQueue = queue.SimpleQueue()

    def read(self, fn):
        with self.lock:
            return fn(self.queue)

    def commit(self, command: str, *args, then=None, lazy: bool = False) -> None:
        self.commits.append((command, *args))
        with self.lock:
            result = getattr(self.queue, command)(*args)
        if then is not None:
            self.post(lambda: then(result, None))

    def post(self, fn) -> None:
        self.posted.put(fn)

    def run_posted(self) -> int:
        done = 0
        while True:
            try:
                fn = self.posted.get_nowait()
            except queue.Empty:
                return done
            fn()
            done += 1

    def is_leader(self) -> bool:
        return self.leader

    def leader_name(self) -> str | None:
        return self.name if self.leader else "o1"


def store_gpkg(node: FakeNode, cpv: str, size: int = 6000, seed: int = 0) -> gpkg.GpkgInfo:
    """A real GPKG in the node's store; returns what inspect_gpkg says of it."""
    tmp = node.receiver.store.tmp / f"{cpv.replace('/', '_')}-{seed}.gpkg.tar"
    gpkg_writer.write_gpkg(tmp, cpv, size=size, seed=seed)
    info = gpkg.inspect_gpkg(tmp)
    node.receiver.store.put(tmp, info.sha256)
    return info


def logged(info: gpkg.GpkgInfo) -> dict:
    """What the log records about a file (the leader computed it when it received the file)."""
    return {"size": info.size, "md5": info.md5, "sha1": info.sha1}


def receive(node: FakeNode, info: gpkg.GpkgInfo, holders: tuple = ("o1",)) -> None:
    """Queue, delegate and complete the package whose GPKG `info` describes."""
    q = node.queue
    q.submit(f"b-{info.cpv}", "test", [(info.cpv, info.cpv, None)], None, 0.0)
    q.delegate(info.cpv, "d1", 1, 0.0, 60.0)
    result = {"sha256": info.sha256, "size": info.size, "md5": info.md5, "sha1": info.sha1, "build_id": 1,
              "path": gentoo.gpkg_relpath(info.cpv, 1), "holders": list(holders)}
    assert q.complete(info.cpv, "d1", 1, result, 1.0)["ok"]


def publish(node: FakeNode, release_id: str, stamp: int, infos: list[gpkg.GpkgInfo]) -> Path:
    """Build a release directory of these packages by hand and point `current` at it."""
    store, entries = node.receiver.store, node.releases.entries
    links, index = [], []
    for info in infos:
        path = gentoo.gpkg_relpath(info.cpv, 1)
        links.append((store.path(info.sha256), path))
        index.append(pkgindex.index_entry(entries.compute(info.sha256, store.path(info.sha256), logged(info)), path))
    root = Path(node.config.data_dir) / "releases"
    root.mkdir(exist_ok=True)
    folder = releases.build_release(root, release_id, stamp, links, index)
    releases.point_current(Path(node.config.data_dir), release_id)
    node.releases.serving = release_id
    return folder
