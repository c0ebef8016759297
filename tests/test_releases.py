"""Releases: the Packages index, release directories, the current symlink, the component."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from portage.getbinpkg import PackageIndex

from swarmmesh import gentoo, releases
from swarmmesh.errors import ArtifactError, InputError
from swarmmesh.releases import CorruptError, Entries, Releases
from tests.conftest import wait_until
from tests.test_binhost import FakeNode, logged, receive, store_gpkg


def entry_for(node: FakeNode, info: gentoo.GpkgInfo) -> dict:
    record = node.releases.entries.compute(info.sha256, node.receiver.store.path(info.sha256), logged(info))
    return releases.index_entry(record, gentoo.gpkg_relpath(info.cpv, 1))


def read_index(data: bytes) -> PackageIndex:
    index = PackageIndex(default_pkg_data=releases._DEFAULT_PKG_DATA, inherited_keys=releases._INHERITED,
                         translated_keys=releases._TRANSLATED)
    index.read(io.StringIO(data.decode()))
    return index


@pytest.fixture
def node(tmp_path):
    return FakeNode("o1", tmp_path / "o1", leader=True)


# --- the index -----------------------------------------------------------------------------

def test_packages_is_portage_readable_and_a_pure_function_of_entries_and_stamp(node, monkeypatch):
    infos = [store_gpkg(node, f"app-misc/p{i}-1.0", seed=i) for i in range(3)]
    entries = [entry_for(node, info) for info in reversed(infos)]
    data = releases.render_packages(entries, 1_700_000_123)
    monkeypatch.setattr(time, "time", lambda: 42.0)  # the local clock must not matter
    assert releases.render_packages(entries, 1_700_000_123) == data
    index = read_index(data)
    assert index.header["TIMESTAMP"] == "1700000123" and index.header["PACKAGES"] == "3"
    assert index.header["VERSION"] == "0" and index.header["CHOST"] == "x86_64-pc-linux-gnu"
    assert [p["CPV"] for p in index.packages] == ["app-misc/p0-1.0", "app-misc/p1-1.0", "app-misc/p2-1.0"]
    first = index.packages[0]
    assert first["SIZE"] == str(infos[0].size) and (first["MD5"], first["SHA1"]) == (infos[0].md5, infos[0].sha1)
    assert first["PATH"] == "app-misc/p0/p0-1.0-1.gpkg.tar" and first["repository"] == "gentoo"
    assert first["_mtime_"] == infos[0].metadata["BUILD_TIME"] and first["CHOST"] == "x86_64-pc-linux-gnu"
    assert b"\nSLOT:" not in data and b"\nCHOST:" not in data.partition(b"\n\n")[2]  # defaults left out


def test_entries_read_only_metadata_are_cached_and_check_the_size(node, tmp_path):
    info = store_gpkg(node, "app-misc/a-1.0", size=200_000)
    path = node.receiver.store.path(info.sha256)
    record = node.releases.entries.compute(info.sha256, path, logged(info))
    assert (record["cpv"], record["build_id"], record["metadata"]) == (info.cpv, 1, info.metadata)
    assert (record["size"], record["md5"], record["sha1"]) == (info.size, info.md5, info.sha1)
    assert Entries(tmp_path / "o1" / "entries").get(info.sha256) == record
    with pytest.raises(CorruptError, match="bytes, not 1"):
        node.releases.entries.compute(info.sha256, path, {**logged(info), "size": 1})
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(ArtifactError, match="not a readable GPKG"):
        gentoo.read_gpkg_metadata(junk)
    node.releases.entries.forget(info.sha256)
    assert Entries(tmp_path / "o1" / "entries").get(info.sha256) is None


def test_release_paths_are_recomputed_and_duplicates_left_out():
    files = [{"key": "a/b-1", "cpv": "a/b-1", "build_id": 1, "path": "a/b/b-1-1.gpkg.tar"},
             {"key": "a/b-1::x", "cpv": "a/b-1", "build_id": 1, "path": "a/b/b-1-1.gpkg.tar"}]
    assert [p for _, p in releases.release_paths(files)] == ["a/b/b-1-1.gpkg.tar"]
    with pytest.raises(ArtifactError, match="is not"):
        releases.release_paths([{**files[0], "path": "../../etc/passwd"}])
    with pytest.raises(InputError):
        releases.release_paths([{**files[0], "cpv": "../x/y-1"}])


# --- directories and the symlink -----------------------------------------------------------

def test_build_release_links_indexes_and_renames_atomically(node, tmp_path):
    info = store_gpkg(node, "app-misc/a-1.0")
    root = tmp_path / "releases"
    root.mkdir()
    source = node.receiver.store.path(info.sha256)
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
def component(node):
    store = node.receiver.store
    asked: list[str] = []

    def has(sha: str) -> bool:
        asked.append(sha)
        return store.has(sha)

    node.replicator = SimpleNamespace(has=has, path=store.path, corrupt=lambda sha, why: None, asked=asked)
    comp = Releases(node)
    node.releases = comp
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
    node.receiver.store.path(missing.sha256).unlink()  # not fetched yet
    node.queue.finalize("r-2", 1001.0, True)
    asked = node.replicator.asked
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
    node.config.auto_finalize = True
    receive(node, store_gpkg(node, "app-misc/a-1.0"))
    step(node, comp, lambda: comp.serving is not None, "auto_finalize and its release")
    receive(node, store_gpkg(node, "app-misc/b-1.0"))
    step(node, comp, lambda: len(node.queue.releases) == 2, "a second batch to be released")
    assert [c[0] for c in node.commits].count("finalize") == 2
    assert node.queue.unreleased_batches() == []
