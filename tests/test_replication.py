"""Replication: fetching from holders, holders in the log, lost files, corrupt files."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from swarmmesh import replication
from swarmmesh.config import OrchestratorAddr
from swarmmesh.queue import NEEDED
from swarmmesh.replication import Replicator, verify
from tests.conftest import free_port, wait_until
from tests.fakes import FakeNode, receive, store_gpkg


def addr(name: str, port: int) -> OrchestratorAddr:
    return OrchestratorAddr(name, "127.0.0.1", 1, 2, 3, 4, port)


@pytest.fixture
def make_replicator(tmp_path):
    made = []

    def make(name: str, orchestrators: tuple, leader: bool = False,
             scrub_interval: float = 600.0) -> tuple[FakeNode, Replicator]:
        node = FakeNode(name, tmp_path / name, orchestrators, leader=leader)
        node.configure(scrub_interval=scrub_interval)
        rep = Replicator(node, node.config, node.storage, relink=node.releases.relink)
        made.append((node, rep))
        return node, rep

    yield make
    for node, rep in made:
        rep.close()
        node.close()


def test_verify_reports_intact_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    sha, stop = hashlib.sha256(b"x" * 5000).hexdigest(), threading.Event()
    inode = path.stat().st_ino
    assert verify(path, sha, 1e9, stop) == (inode, True)
    assert verify(path, "0" * 64, 1e9, stop) == (inode, False)
    assert verify(tmp_path / "missing", sha, 1e9, stop) == (0, False)
    stop.set()
    assert verify(path, sha, 10.0, stop) is None  # a rate-limited check stops on shutdown


def test_follower_fetches_received_files_and_commits_hold(holder, make_replicator):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    node, rep = make_replicator("o2", (addr("o1", host.port), addr("o2", 1)))
    receive(node, info, holders=("o1",))
    rep.tick(time.monotonic())
    wait_until(lambda: node.run_posted() or node.storage.holds(info.sha256), 5, what="the fetch")
    wait_until(lambda: node.run_posted() or node.queue.holders(info.sha256) == ["o1", "o2"], 5, what="hold")
    assert ("hold", info.sha256, "o2") in node.commits
    rep.tick(time.monotonic() + 1)
    assert [c[0] for c in node.commits].count("hold") == 1  # held and listed: nothing more to do


def test_a_file_in_the_store_is_adopted_without_fetching(make_replicator):
    node, rep = make_replicator("o1", (addr("o1", 1),), leader=True)
    info = store_gpkg(node, "app-misc/a-1.0")  # what the Receiver did
    receive(node, info, holders=())
    rep.tick(time.monotonic())
    node.run_posted()
    assert node.queue.holders(info.sha256) == ["o1"] and node.storage.holds(info.sha256)


def test_leader_puts_a_file_nobody_serves_back_to_needed_after_the_grace(make_replicator, monkeypatch):
    monkeypatch.setattr(replication, "LOST_GRACE", 0.3)
    node, rep = make_replicator("o2", (addr("o1", free_port()), addr("o2", 1)), leader=True)
    node.queue.submit("b1", "t", [("app-misc/a-1.0", "app-misc/a-1.0", None)], None, 0.0)
    node.queue.delegate("app-misc/a-1.0", "d1", 1, 0.0, 60.0)
    node.queue.complete("app-misc/a-1.0", "d1", 1, {"sha256": "a" * 64, "size": 5000, "holders": ["o1"]}, 1.0)

    def lost() -> bool:
        rep.tick(time.monotonic() + 10)  # past CHECK_PERIOD every time
        node.run_posted()
        return node.queue.get("app-misc/a-1.0").state == NEEDED

    wait_until(lost, 10, what="the lost package to be requeued")
    assert "artifact lost" in node.queue.get("app-misc/a-1.0").error


def test_a_follower_never_declares_a_file_lost(make_replicator, monkeypatch):
    monkeypatch.setattr(replication, "LOST_GRACE", 0.0)
    node, rep = make_replicator("o2", (addr("o2", 1),), leader=False)
    node.queue.submit("b1", "t", [("app-misc/a-1.0", "app-misc/a-1.0", None)], None, 0.0)
    node.queue.delegate("app-misc/a-1.0", "d1", 1, 0.0, 60.0)
    node.queue.complete("app-misc/a-1.0", "d1", 1, {"sha256": "a" * 64, "holders": ["gone"]}, 1.0)
    for step in range(3):
        rep.tick(time.monotonic() + step)
        node.run_posted()
    assert not any(c[0] == "lose" for c in node.commits)


def test_corrupt_file_is_dropped_unheld_fetched_again_and_relinked(holder, make_replicator):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    node, rep = make_replicator("o2", (addr("o1", host.port), addr("o2", 1)), scrub_interval=0.05)
    path = node.storage.store.path(info.sha256)
    path.parent.mkdir()
    data = bytearray(src.storage.store.path(info.sha256).read_bytes())
    receive(node, info, holders=("o1", "o2"))
    data[2000] ^= 0x01
    path.write_bytes(bytes(data))

    def repaired() -> bool:
        rep.tick(time.monotonic() + 10)
        node.run_posted()
        return ("unhold", info.sha256, "o2") in node.commits and node.releases.relinked == [info.sha256]

    wait_until(repaired, 10, what="the scrubber to find the corrupt file and the fetch to replace it")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256
    assert node.queue.holders(info.sha256) == ["o1", "o2"]


def test_a_copy_cut_short_is_found_at_start_up_and_fetched_again(holder, tmp_path):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    peers = (addr("o1", host.port), addr("o2", 1))
    before = FakeNode("o2", tmp_path / "o2", peers)
    short = before.storage.store.path(info.sha256)
    short.parent.mkdir()
    short.write_bytes(src.storage.store.path(info.sha256).read_bytes()[:4000])  # a power loss after a fetch
    before.close()
    node = FakeNode("o2", tmp_path / "o2", peers)  # the restart: its storage finds the short copy
    receive(node, info, holders=("o1", "o2"))
    rep = Replicator(node, node.config, node.storage, relink=node.releases.relink)
    try:
        def repaired() -> bool:
            rep.tick(time.monotonic() + 10)
            node.run_posted()
            return short.exists() and short.stat().st_size == info.size

        wait_until(repaired, 10, what="the short copy to be fetched again")
        assert ("unhold", info.sha256, "o2") in node.commits
    finally:
        rep.close()
        node.close()


def test_files_nothing_refers_to_are_removed_once_old_enough(make_replicator):
    node, rep = make_replicator("o1", (addr("o1", 1),), leader=True)
    used, old, young = (store_gpkg(node, f"app-misc/{n}-1.0") for n in ("used", "old", "young"))
    receive(node, used, holders=("o1",))
    hour_ago = time.time() - 3600
    for info in (used, old):
        os.utime(node.storage.store.path(info.sha256), (hour_ago, hour_ago))
    rep.tick(time.monotonic())
    rep.tick(time.monotonic() + replication.GC_GRACE + 1)
    node.run_posted()
    store = node.storage.store
    assert (store.has(used.sha256), store.has(old.sha256), store.has(young.sha256)) == (True, False, True)
    assert ("unhold", old.sha256, "o1") in node.commits and not node.storage.holds(old.sha256)


def test_a_tick_looks_only_at_what_changed_and_rescans_after_a_reset(make_replicator, monkeypatch):
    node, rep = make_replicator("o1", (addr("o1", 1),), leader=True)
    rescans, stats = [], []
    artifacts, has = node.queue.artifacts, node.storage.store.has
    monkeypatch.setattr(node.queue, "artifacts", lambda: rescans.append(1) or artifacts())
    monkeypatch.setattr(node.storage.store, "has", lambda sha: stats.append(sha) or has(sha))
    old = [store_gpkg(node, f"app-misc/{n}-1.0") for n in ("a", "b")]
    for info in old:
        receive(node, info, holders=())
    for step in range(2):  # adopt and commit `hold`, then see it applied
        rep.tick(time.monotonic() + step)
        node.run_posted()
    assert len(rescans) == 1 and rep.pending == {} and [node.queue.holders(i.sha256) for i in old] == [["o1"]] * 2
    stats.clear()
    new = store_gpkg(node, "app-misc/c-1.0")
    receive(node, new, holders=())
    for step in range(2, 5):
        rep.tick(time.monotonic() + step)
        node.run_posted()
    assert len(rescans) == 1 and stats == [new.sha256]  # one stat, for the new file only
    assert node.queue.holders(new.sha256) == ["o1"] and rep.pending == {}
    node.queue.finalize("r1", 10.0, True)
    node.queue.reset()  # the release keeps its files wanted
    rep.tick(time.monotonic() + 10)
    node.run_posted()
    assert len(rescans) == 2 and rep.pending == {} and not any(c[0] == "unhold" for c in node.commits)


def test_pending_follows_holders_in_the_log(holder, make_replicator):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    node, rep = make_replicator("o2", (addr("o1", host.port), addr("o2", 1)))
    receive(node, info, holders=("o1", "o2"))  # the log says o2 has it; it does not
    rep.tick(time.monotonic())
    assert set(rep.pending) == {info.sha256} and ("unhold", info.sha256, "o2") in node.commits

    def settled() -> bool:
        rep.tick(time.monotonic() + 10)
        node.run_posted()
        return rep.pending == {}

    wait_until(settled, 10, what="the fetch and its hold")
    assert node.storage.holds(info.sha256) and node.queue.holders(info.sha256) == ["o1", "o2"]
    node.queue.unhold(info.sha256, "o2")  # e.g. a late commit of an older unhold
    rep.tick(time.monotonic() + 20)
    assert ("hold", info.sha256, "o2") in node.commits[-1:]
