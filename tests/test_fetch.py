"""Fetching store files from a peer's binhost: one by one, or many small ones per request."""

from __future__ import annotations

import hashlib

import pytest

from swarmmesh import binhost, peerauth
from swarmmesh.errors import ArtifactError, FetchError
from swarmmesh.fetch import Source, fetch, fetch_bundle, fetch_from, small
from swarmmesh.store import Store
from tests.conftest import free_port
from tests.fakes import store_gpkg

KEY = peerauth.peer_key("s" * 16)  # the fake node's cluster secret


def test_fetch_from_checks_sha256_and_size_and_leaves_no_temp_file(holder, tmp_path):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    dest = Store(tmp_path / "o2" / "store")
    fetch_from(dest, info.sha256, info.size, "127.0.0.1", host.port, key=KEY)
    assert hashlib.sha256(dest.path(info.sha256).read_bytes()).hexdigest() == info.sha256
    with pytest.raises(ArtifactError, match="HTTP 403"):  # unsigned: another cluster's node
        fetch_from(Store(tmp_path / "o5" / "store"), info.sha256, info.size, "127.0.0.1", host.port)
    with pytest.raises(ArtifactError, match="HTTP 404"):
        fetch_from(dest, "1" * 64, None, "127.0.0.1", host.port, key=KEY)
    with pytest.raises(ArtifactError, match="more than"):
        fetch_from(Store(tmp_path / "o3" / "store"), info.sha256, 10, "127.0.0.1", host.port, key=KEY)
    path = src.storage.store.path(info.sha256)
    data = bytearray(path.read_bytes())
    data[3000] ^= 0xFF
    path.write_bytes(bytes(data))
    other = Store(tmp_path / "o4" / "store")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        fetch_from(other, info.sha256, info.size, "127.0.0.1", host.port, key=KEY)
    assert not other.has(info.sha256) and list(other.tmp.iterdir()) == []


def test_fetch_tries_every_source_and_says_why_each_failed(holder, tmp_path):
    src, host = holder
    info = store_gpkg(src, "app-misc/a-1.0")
    dest = Store(tmp_path / "o2" / "store")
    dead = Source("dead", "127.0.0.1", free_port())
    assert fetch(dest, info.sha256, info.size, [dead, Source("o1", "127.0.0.1", host.port, KEY)]) == "o1"
    with pytest.raises(FetchError, match="dead: .*refused"):
        fetch(dest, "3" * 64, None, [dead])


def test_a_bundle_brings_many_small_files_checked_and_says_which_it_lacked(holder, tmp_path):
    src, host = holder
    infos = [store_gpkg(src, f"app-misc/s{i}-1.0", seed=i) for i in range(5)]
    missing = "4" * 64
    dest = Store(tmp_path / "o2" / "store")
    asked = [(i.sha256, i.size) for i in infos[:2]] + [(missing, 6000)] + [(i.sha256, i.size) for i in infos[2:]]
    got = fetch_bundle(dest, asked, Source("o1", "127.0.0.1", host.port, KEY))
    assert {sha: got[sha] for sha, _ in asked if sha != missing} == {i.sha256: "o1" for i in infos}
    assert isinstance(got[missing], FetchError) and "not in its bundle" in str(got[missing])
    for info in infos:
        assert hashlib.sha256(dest.path(info.sha256).read_bytes()).hexdigest() == info.sha256
    assert list(dest.tmp.iterdir()) == []


def test_a_corrupt_part_fails_alone_and_a_dead_source_fails_them_all(holder, tmp_path):
    src, host = holder
    good, bad = store_gpkg(src, "app-misc/g-1.0"), store_gpkg(src, "app-misc/b-1.0", seed=1)
    path = src.storage.store.path(bad.sha256)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = Store(tmp_path / "o2" / "store")
    got = fetch_bundle(dest, [(bad.sha256, bad.size), (good.sha256, good.size)],
                       Source("o1", "127.0.0.1", host.port, KEY))
    assert isinstance(got[bad.sha256], ArtifactError) and "sha256 mismatch" in str(got[bad.sha256])
    assert got[good.sha256] == "o1" and not dest.has(bad.sha256) and dest.has(good.sha256)
    dead = fetch_bundle(dest, [(good.sha256, good.size)], Source("dead", "127.0.0.1", free_port()))
    assert isinstance(dead[good.sha256], FetchError) and "dead" in str(dead[good.sha256])


def test_a_part_of_another_size_than_the_log_says_breaks_the_bundle(holder, tmp_path):
    src, host = holder
    info = store_gpkg(src, "app-misc/g-1.0")
    dest = Store(tmp_path / "o2" / "store")
    got = fetch_bundle(dest, [(info.sha256, info.size - 1)], Source("o1", "127.0.0.1", host.port, KEY))
    assert isinstance(got[info.sha256], FetchError) and "log says" in str(got[info.sha256])
    assert not dest.has(info.sha256)


def test_only_small_files_of_a_known_size_are_bundled():
    assert small(6000) and small(binhost.BUNDLE_FILE_MAX)
    assert not small(binhost.BUNDLE_FILE_MAX + 1) and not small(None) and not small(0)
