"""The one fake orchestrator for component tests, and helpers that put real GPKGs into it.

`FakeNode` is a `component.Node` (mypy checks it against the Protocol: see `_is_a_node`): a
real queue behind a one-node "Raft", a real node storage (store, index entries, what it
holds), a real `NodeConfig`, and a loop whose posted callbacks the test runs with
`run_posted`. Commits apply at once (`then` is posted, as the loop would run it later), or,
with `deferred=True`, only when the test calls `flush()`, so a test sees what a part does
before its command is committed. Sent messages are recorded (`sent`, `take`)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from swarmmesh import commands, gentoo, gpkg, gpkg_writer, pkgindex, protocol, releases, staging
from swarmmesh.binhost import Binhost
from swarmmesh.component import Node, Then
from swarmmesh.config import GatewayConfig, NodeConfig, OrchestratorAddr, QueuePolicy, RaftTuning
from swarmmesh.queue import BuildQueue
from swarmmesh.store import Storage

T = TypeVar("T")


class Immediate:
    """A durability barrier that does not wait (durability itself is store.SyncBarrier's,
    tested in test_store.py): `after` runs the write and the callback on the caller's thread."""

    def after(self, fn: Callable[[Exception | None], None], write: Callable[[], None] | None = None) -> None:
        try:
            if write is not None:
                write()
        except Exception as exc:
            fn(exc)
            return
        fn(None)

    def wait(self, timeout: float = 60.0) -> None:
        pass

    def close(self) -> None:
        pass


class FakeReleases:
    """Stands in for the releases part where other parts call it: what this node serves, the
    staging feed, and the files it was asked to relink."""

    def __init__(self) -> None:
        self.serving: str | None = None
        self.staging = staging.Feed()
        self.relinked: list[str] = []

    def serving_release(self) -> str | None:
        return self.serving

    def staging_feed(self) -> staging.Feed:
        return self.staging

    def relink(self, sha256: str) -> None:
        self.relinked.append(sha256)


def node_config(name: str, data_dir: Path, orchestrators: tuple[OrchestratorAddr, ...] = (),
                **changes: Any) -> NodeConfig:
    """A real orchestrator configuration; this node gets an entry of kernel-chosen ports (0)
    when `orchestrators` does not list it."""
    if not any(o.name == name for o in orchestrators):
        orchestrators = (*orchestrators, OrchestratorAddr(name, "127.0.0.1", 0, 0, 0, 0, 0))
    config = NodeConfig(path=Path(f"{name}.toml"), name=name, role="orchestrator", data_dir=data_dir,
                        secret="s" * 16, orchestrators=orchestrators, gateway=GatewayConfig(), raft=RaftTuning(),
                        queue=QueuePolicy(), drone=None, keep_releases=2)
    return dataclasses.replace(config, **changes)


class FakeNode:
    """What the parts may ask of an Orchestrator (component.Node), and what tests look at."""

    def __init__(self, name: str, data_dir: Path, orchestrators: tuple[OrchestratorAddr, ...] = (),
                 leader: bool = False, *, deferred: bool = False, config: NodeConfig | None = None) -> None:
        self.name = name
        self.config = config if config is not None else node_config(name, data_dir, orchestrators)
        self.storage = Storage(Path(data_dir), durable=Immediate())
        self.releases = FakeReleases()
        self.queue = BuildQueue()
        self.lock = threading.RLock()
        self.leader = leader
        self.raft_leader: str | None = "o1"  # what Raft says while this node does not lead
        self.term = 1
        self.mono: float | None = None  # the loop's time, when a test sets it; else the clock's
        self.epoch: float | None = None
        self.deferred = deferred
        self.commits: list[tuple] = []  # (command, *args), in the order they were applied
        self.pending: list[tuple[str, tuple, Then | None]] = []  # deferred: not applied yet
        self.sent: list[tuple[bytes, protocol.Message]] = []
        self.posted: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    # --- component.Node --------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.leader

    def leader_name(self) -> str | None:
        return self.name if self.leader else self.raft_leader

    def role(self) -> str:
        return "leader" if self.leader else "follower"

    def read(self, fn: Callable[[BuildQueue], T]) -> T:
        with self.lock:
            return fn(self.queue)

    def indexes(self) -> tuple[int, int]:
        return 1, 1

    def commit(self, cmd: commands.Command, then: Then | None = None, lazy: bool = False) -> None:
        if self.deferred:
            self.pending.append((cmd.NAME, cmd.args(), then))
            return
        result = self._apply(cmd.NAME, cmd.args())
        if then is not None:
            self.post(lambda: then(result, None))

    def send(self, identity: bytes, msg: protocol.Message) -> bool:
        self.sent.append((identity, msg))
        return True

    def post(self, fn: Callable[[], None]) -> None:
        self.posted.put(fn)

    def now(self) -> float:
        return time.monotonic() if self.mono is None else self.mono

    def wall(self) -> float:
        return time.time() if self.epoch is None else self.epoch

    # --- for tests ---------------------------------------------------------------------------
    def configure(self, **changes: Any) -> NodeConfig:
        """A changed configuration, for the part the test builds next."""
        self.config = dataclasses.replace(self.config, **changes)
        return self.config

    def flush(self) -> None:
        """Apply every deferred command in order, then run its callback (as the loop would)."""
        while self.pending:
            command, args, then = self.pending.pop(0)
            result = self._apply(command, args)
            if then is not None:
                then(result, None)

    def run_posted(self) -> int:
        done = 0
        while True:
            try:
                fn = self.posted.get_nowait()
            except queue.Empty:
                return done
            fn()
            done += 1

    def take(self, kind: type, to: str | None = None) -> list[Any]:
        """Messages of `kind` sent so far (to drone `to`), removed from the record."""
        found = [(i, m) for i, m in self.sent if isinstance(m, kind) and (to is None or i == to.encode())]
        self.sent = [(i, m) for i, m in self.sent if (i, m) not in found]
        return [m for _, m in found]

    def close(self) -> None:
        self.storage.close()

    def _apply(self, command: str, args: tuple) -> Any:
        self.commits.append((command, *args))
        cmd = commands.decode(command, args)  # as a node applies a log entry
        assert cmd is not None, f"{command!r} is no replicated command"
        with self.lock:
            return self.queue.apply(cmd)


def _is_a_node(fake: FakeNode) -> Node:
    return fake  # mypy checks tests/fakes.py (.ci/run): FakeNode must stay a component.Node


def serve_binhost(node: FakeNode, port: int = 0) -> Binhost:
    """A real binhost over the node's storage, serving what `node.releases` says."""
    return Binhost(node, node.config, node.storage, serving=node.releases.serving_release,
                   staging_feed=node.releases.staging_feed, host="127.0.0.1", port=port)


def store_gpkg(node: FakeNode, cpv: str, size: int = 6000, seed: int = 0) -> gpkg.GpkgInfo:
    """A real GPKG in the node's store; returns what inspect_gpkg says of it."""
    store = node.storage.store
    tmp = store.tmp / f"{cpv.replace('/', '_')}-{seed}.gpkg.tar"
    gpkg_writer.write_gpkg(tmp, cpv, size=size, seed=seed)
    info = gpkg.inspect_gpkg(tmp)
    store.put(tmp, info.sha256)
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
    store, entries = node.storage.store, node.storage.entries
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
