"""The store: content-addressed files, the group sync that makes them durable, the newest in memory."""

from __future__ import annotations

import threading

import pytest

from swarmmesh import store
from swarmmesh.store import scan_store
from tests.conftest import wait_until
from tests.fakes import store_gpkg


def test_scan_store_finds_only_content_addressed_files(holder):
    node, _ = holder
    info = store_gpkg(node, "app-misc/a-1.0")
    (node.storage.store.root / "zz").mkdir()
    (node.storage.store.root / "zz" / ("f" * 64)).write_text("misplaced")
    (node.storage.store.tmp / "x.part").write_text("partial")
    assert scan_store(node.storage.store.root) == {info.sha256}


def test_uploads_validated_during_a_sync_share_the_next_one(tmp_path, monkeypatch):
    calls, started, release = [], threading.Event(), threading.Event()

    def slow_syncfs(fd):
        calls.append(fd)
        started.set()
        release.wait(5)

    monkeypatch.setattr(store, "_syncfs", slow_syncfs)
    barrier = store.SyncBarrier(tmp_path)
    done: list[tuple[int, object]] = []
    barrier.after(lambda err: done.append((0, err)))
    assert started.wait(5)
    for i in range(1, 6):  # arrive while the first sync runs: they wait for the next one
        barrier.after(lambda err, i=i: done.append((i, err)))
    assert done == []
    release.set()
    wait_until(lambda: len(done) == 6, 5, what="every caller answered")
    barrier.close()
    assert len(calls) == 2 and done == [(i, None) for i in range(6)]


def test_a_failed_sync_is_reported_to_every_caller(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_syncfs", broken)
    barrier = store.SyncBarrier(tmp_path)
    got = []
    barrier.after(got.append)
    barrier.close()
    assert len(got) == 1 and isinstance(got[0], OSError)


def test_a_write_runs_before_the_sync_and_its_error_goes_to_its_caller_only(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(store, "_syncfs", lambda fd: events.append("sync"))
    barrier = store.SyncBarrier(tmp_path)
    got = {}

    def broken_write():
        raise OSError(28, "No space left on device")

    started, release = threading.Event(), threading.Event()
    barrier.after(lambda err: (started.set(), release.wait(5)))  # holds the thread: the next three are one group
    assert started.wait(5)
    barrier.after(lambda err: got.setdefault("a", err), write=lambda: events.append("write a"))
    barrier.after(lambda err: got.setdefault("b", err), write=broken_write)
    barrier.after(lambda err: got.setdefault("c", err))
    release.set()
    barrier.close()
    assert events == ["sync", "write a", "sync"]
    assert got["a"] is None and got["c"] is None
    assert isinstance(got["b"], OSError) and got["b"].errno == 28


def test_recent_files_keep_the_newest_within_their_byte_budget():
    recent = store.RecentFiles(max_bytes=1600)
    for i in range(20):
        recent.put(f"{i:064x}", bytes([i]) * 100)
    kept = [i for i in range(20) if recent.get(f"{i:064x}") is not None]
    assert kept == list(range(4, 20))  # 16 x 100 bytes: the oldest went first
    assert recent.get(f"{19:064x}") == bytes([19]) * 100
    recent.put("b" * 64, bytes(101))  # over 1/16 of the budget: never kept
    assert recent.get("b" * 64) is None and recent.get(f"{4:064x}") is not None


def test_wait_returns_once_synced_and_raises_what_the_sync_raised(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(store, "_syncfs", calls.append)
    barrier = store.SyncBarrier(tmp_path)
    barrier.wait()
    assert len(calls) == 1

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_syncfs", broken)
    with pytest.raises(OSError, match="Input/output"):
        barrier.wait()
    barrier.close()
