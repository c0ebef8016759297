"""Releases: release directories, the current symlink, the component (and the staging feed it keeps)."""

from __future__ import annotations

import gzip
import itertools
import os
import time
from pathlib import Path

import pytest

from swarmmesh import gentoo, releases, signing
from swarmmesh.errors import InputError
from swarmmesh.releases import Releases
from swarmmesh.signer import PackageSigner
from tests.conftest import wait_until
from tests.fakes import FakeNode, receive, store_gpkg
from tests.test_pkgindex import entry_for, read_index

# --- directories and the symlink -----------------------------------------------------------

def test_build_release_links_indexes_and_renames_atomically(node, tmp_path):
    info = store_gpkg(node, "app-misc/a-1.0")
    root = tmp_path / "releases"
    root.mkdir()
    source = node.storage.store.path(info.sha256)
    folder = releases.build_release(root, "r-1", 1234, [(source, "app-misc/a/a-1.0-1.gpkg.tar")],
                                    [entry_for(node, info)])
    assert sorted(p.name for p in root.iterdir()) == ["r-1"]
    assert (folder / "app-misc/a/a-1.0-1.gpkg.tar").stat().st_ino == source.stat().st_ino
    packages = (folder / "Packages").read_bytes()
    assert gzip.decompress((folder / "Packages.gz").read_bytes()) == packages
    assert (folder / "Packages").stat().st_mtime == 1234 == (folder / "Packages.gz").stat().st_mtime
    again = releases.build_release(root, "r-1", 9999, [], [])
    assert again == folder and (folder / "Packages").read_bytes() == packages
    with pytest.raises(FileNotFoundError):
        releases.build_release(root, "r-2", 1, [(tmp_path / "missing", "a/b/b-1-1.gpkg.tar")], [])
    assert sorted(p.name for p in root.iterdir()) == ["r-1"]  # the failed build left nothing
    with pytest.raises(InputError):
        releases.build_release(root, "../evil", 1, [], [])


def test_current_symlink_swaps_and_prune_keeps_what_it_is_told(tmp_path):
    (tmp_path / "releases").mkdir()
    for name in ("r-1", "r-2", "r-3", ".tmp-r-4-abc", "not a release"):
        (tmp_path / "releases" / name).mkdir()
    assert releases.current_release(tmp_path) is None
    releases.point_current(tmp_path, "r-1")
    releases.point_current(tmp_path, "r-2")
    assert os.readlink(tmp_path / "current") == "releases/r-2" and releases.current_release(tmp_path) == "r-2"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert releases.prune(tmp_path / "releases", keep=["r-2", "r-3"]) == [".tmp-r-4-abc", "r-1"]
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["not a release", "r-2", "r-3"]
    (tmp_path / "current").unlink()
    (tmp_path / "current").symlink_to("/etc")
    assert releases.current_release(tmp_path) is None


def test_relink_replaces_a_file_with_a_new_inode(tmp_path):
    (tmp_path / "r" / "a" / "b").mkdir(parents=True)
    (tmp_path / "r" / "a" / "b" / "f").write_text("corrupt")
    (tmp_path / "good").write_text("good")
    releases.relink(tmp_path / "r", "a/b/f", tmp_path / "good")
    assert (tmp_path / "r/a/b/f").read_text() == "good"
    assert (tmp_path / "r/a/b/f").stat().st_ino == (tmp_path / "good").stat().st_ino


# --- the component -------------------------------------------------------------------------

@pytest.fixture
def component(node, monkeypatch):
    store = node.storage.store
    asked: list[str] = []

    def has(sha: str) -> bool:
        asked.append(sha)
        return store.has(sha)

    monkeypatch.setattr(node.storage, "holds", has)  # held: whatever is in the store
    node.asked = asked
    comp = Releases(node, node.config, node.storage)
    yield node, comp
    comp.close()


_later = itertools.count(1)


def step(node: FakeNode, comp: Releases, until, what: str) -> None:
    """Tick (with a clock past every period) and run what the worker posted, until `until()`."""

    def once():
        comp.tick(time.monotonic() + 1000 * next(_later))
        node.run_posted()
        return until()

    wait_until(once, 10, what=what)


def test_component_builds_the_newest_release_then_prunes(component):
    node, comp = component
    infos = [store_gpkg(node, f"app-misc/p{i}-1.0", seed=i) for i in range(3)]
    for info in infos:
        receive(node, info)
    for n in range(3):
        node.queue.finalize(f"r-{n}", 1000.0 + n, True)
    step(node, comp, lambda: comp.serving == "r-2", "release r-2 to be served")
    data = Path(node.config.data_dir)
    assert releases.current_release(data) == "r-2"
    assert read_index((data / "current" / "Packages").read_bytes()).header["PACKAGES"] == "3"
    step(node, comp, lambda: sorted(p.name for p in (data / "releases").iterdir()) == ["r-2"],
         "r-0 and r-1 (never built) to stay absent")
    node.queue.rollback("r-0", "r-3", 2000.0)
    step(node, comp, lambda: comp.serving == "r-3", "the rollback release")
    step(node, comp, lambda: sorted(p.name for p in (data / "releases").iterdir()) == ["r-2", "r-3"],
         "pruning down to keep_releases = 2")
    stamp = read_index((data / "current" / "Packages").read_bytes()).header["TIMESTAMP"]
    assert stamp == "2000"


def test_component_waits_for_every_file_and_serves_the_previous_release(component):
    node, comp = component
    first = store_gpkg(node, "app-misc/a-1.0")
    receive(node, first)
    node.queue.finalize("r-1", 1000.0, True)
    step(node, comp, lambda: comp.serving == "r-1", "r-1")
    missing = store_gpkg(node, "app-misc/b-1.0")
    receive(node, missing)
    node.storage.store.path(missing.sha256).unlink()  # not fetched yet
    node.queue.finalize("r-2", 1001.0, True)
    asked = node.asked
    asked.clear()
    step(node, comp, lambda: asked.count(missing.sha256) >= 3, "the component to look for the file")
    assert comp.serving == "r-1" and releases.current_release(Path(node.config.data_dir)) == "r-1"


def test_staging_feed_lists_received_packages(component):
    node, comp = component
    info = store_gpkg(node, "app-misc/s-1.0")
    receive(node, info)
    step(node, comp, lambda: comp.staging.paths, "the staging feed")
    assert comp.staging.paths == {"app-misc/s/s-1.0-1.gpkg.tar": info.sha256}
    assert [p["CPV"] for p in read_index(comp.staging.packages).packages] == ["app-misc/s-1.0"]


def test_auto_finalize_releases_a_completed_batch_once(component):
    node, comp = component
    comp.auto_finalize = True
    receive(node, store_gpkg(node, "app-misc/a-1.0"))
    step(node, comp, lambda: comp.serving is not None, "auto_finalize and its release")
    receive(node, store_gpkg(node, "app-misc/b-1.0"))
    step(node, comp, lambda: len(node.queue.releases) == 2, "a second batch to be released")
    assert [c[0] for c in node.commits].count("finalize") == 2
    assert node.queue.unreleased_batches() == []


# --- the staging feed ------------------------------------------------------------------------

def at(node: FakeNode, comp: Releases, now: float) -> None:
    """One tick at `now`, and whatever job it started run to the end."""
    comp.tick(now)
    if comp._job is not None:
        comp._job.result()
    node.run_posted()


def settle(node: FakeNode, comp: Releases, now: float, until, what: str) -> float:
    """Tick every 0.2 s from `now` (no resync is due in between) until `until()`; the time reached."""
    for _ in range(20):
        at(node, comp, now)
        now += 0.2
        if until():
            return now
    raise AssertionError(f"timed out waiting for {what}")


def test_a_follower_renders_its_staging_feed_only_once_it_is_read(component):
    node, comp = component
    node.leader = False
    info = store_gpkg(node, "app-misc/s-1.0")
    receive(node, info)
    now = 100.0
    for _ in range(10):  # indexed, but nobody reads this follower's feed: no render
        at(node, comp, now)
        now += 0.2
    assert node.storage.entries.get(info.sha256) is not None
    assert comp.staging_feed().paths == {}  # the first read: stale, and it starts the renders
    now = settle(node, comp, now, lambda: comp.staging.paths, "the feed, once read")
    assert list(comp.staging.paths.values()) == [info.sha256]
    comp._staging_read -= releases.STAGING_INTEREST  # read long ago
    receive(node, other := store_gpkg(node, "app-misc/t-1.0"))
    for _ in range(10):
        at(node, comp, now)
        now += 0.2
    assert node.storage.entries.get(other.sha256) is not None and len(comp.staging.paths) == 1
    node.leader = True  # a new leader renders without being asked
    settle(node, comp, now, lambda: len(comp.staging.paths) == 2, "the new leader's feed")


def test_staging_follows_holds_losses_and_resets_without_rereading_everything(component, monkeypatch):
    node, comp = component
    reads = []
    received = node.queue.received
    monkeypatch.setattr(node.queue, "received", lambda sha=None: reads.append(sha) or received(sha))
    a, b = (store_gpkg(node, f"app-misc/{n}-1.0") for n in ("a", "b"))
    receive(node, a)
    now = settle(node, comp, 100.0, lambda: comp.staging.paths, "the staging feed")
    assert reads == [None]  # one full read, at start-up
    feed = comp.staging
    node.queue.hold(a.sha256, "o2")
    receive(node, b)
    now = settle(node, comp, now, lambda: len(comp.staging.paths) == 2, "b in the staging feed")
    assert None not in reads[1:] and comp.staging is not feed
    feed = comp.staging
    node.queue.hold(b.sha256, "o2")
    at(node, comp, now)
    assert reads[-1] == b.sha256 and comp._job is None and comp.staging is feed  # same list: no render
    at(node, comp, now + releases.RESYNC)
    assert reads[-1] is None and comp._job is None and comp.staging is feed  # a resync finds nothing new
    node.queue.lose(a.cpv, a.sha256, "gone", 2.0)
    now = settle(node, comp, now + releases.RESYNC, lambda: list(comp.staging.paths.values()) == [b.sha256],
                 "a to leave the feed")
    node.queue.reset()
    settle(node, comp, now, lambda: comp.staging.paths == {}, "an empty feed after a reset")
    assert read_index(comp.staging.packages).header["PACKAGES"] == "0"


def test_staging_renders_are_spaced_by_what_the_last_one_cost(component):
    node, comp = component
    infos = [store_gpkg(node, f"app-misc/{n}-1.0") for n in ("a", "b", "c")]
    receive(node, infos[0])
    at(node, comp, 100.0)  # index a
    at(node, comp, 100.2)  # stage a
    assert list(comp.staging.paths.values()) == [infos[0].sha256]
    comp._stage_cost = 0.1  # as if that render had taken a tenth of a second
    receive(node, infos[1])
    at(node, comp, 100.4)  # index b
    at(node, comp, 100.6)  # stage b: the next render waits STAGE_FACTOR x 0.1 s
    wait = releases.STAGE_FACTOR * 0.1
    receive(node, infos[2])
    for now in (100.8, 101.0, 100.6 + wait - 0.1):  # index c, then wait
        at(node, comp, now)
    assert infos[2].sha256 not in comp.staging.paths.values()
    at(node, comp, 100.6 + wait + 0.1)
    assert infos[2].sha256 in comp.staging.paths.values()


def test_a_release_with_a_file_that_fails_the_signature_check_is_not_served_and_the_file_is_rebuilt(node, tmp_path):
    key = signing.SequoiaKey(signing.generate_key(tmp_path / "key").secret)
    signer = PackageSigner(key, signing.Keyring([key.public_key()]), node.storage.store.tmp)
    signed_info = store_gpkg(node, "app-misc/signed-1.0")
    signed_info, signed = signer.sign(signed_info, node.storage.store.path(signed_info.sha256), "signed")
    node.storage.store.put(signed.path, signed_info.sha256)
    unsigned = store_gpkg(node, "app-misc/unsigned-1.0")
    for info in (signed_info, unsigned):
        receive(node, info)
    node.storage.holds = node.storage.store.has  # held: whatever is in the store
    comp = Releases(node, node.config, node.storage, signer=signer)
    try:
        node.queue.finalize("r-1", 1000.0, True)
        step(node, comp, lambda: node.queue.peek("app-misc/unsigned-1.0").state == "needed",
             "the unsigned package to go back to needed")
        assert comp.serving is None and "signature check failed" in node.queue.peek("app-misc/unsigned-1.0").error
        assert node.queue.peek("app-misc/signed-1.0").state == "received"
        node.queue.finalize("r-2", 1001.0, True)  # what is received now: the signed package alone
        step(node, comp, lambda: comp.serving == "r-2", "the verified release to be served")
        served = Path(node.config.data_dir) / "current" / gentoo.gpkg_relpath(signed_info.cpv, 1)
        assert signer.verify(served, "served") == key.fingerprint
    finally:
        comp.close()
