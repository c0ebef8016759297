"""The Packages index: what Portage reads, byte-identical on every node, and the PATHs in it."""

from __future__ import annotations

import io
import time

import pytest
from portage.getbinpkg import PackageIndex

from swarmmesh import gentoo, gpkg, pkgindex
from swarmmesh.errors import ArtifactError, InputError
from tests.fakes import FakeNode, logged, store_gpkg


def entry_for(node: FakeNode, info: gpkg.GpkgInfo) -> dict:
    record = node.releases.entries.compute(info.sha256, node.receiver.store.path(info.sha256), logged(info))
    return pkgindex.index_entry(record, gentoo.gpkg_relpath(info.cpv, 1))


def read_index(data: bytes) -> PackageIndex:
    index = PackageIndex(default_pkg_data=pkgindex._DEFAULT_PKG_DATA, inherited_keys=pkgindex._INHERITED,
                         translated_keys=pkgindex._TRANSLATED)
    index.read(io.StringIO(data.decode()))
    return index


def test_packages_is_portage_readable_and_a_pure_function_of_entries_and_stamp(node, monkeypatch):
    infos = [store_gpkg(node, f"app-misc/p{i}-1.0", seed=i) for i in range(3)]
    entries = [entry_for(node, info) for info in reversed(infos)]
    data = pkgindex.render_packages(entries, 1_700_000_123)
    monkeypatch.setattr(time, "time", lambda: 42.0)  # the local clock must not matter
    assert pkgindex.render_packages(entries, 1_700_000_123) == data
    index = read_index(data)
    assert index.header["TIMESTAMP"] == "1700000123" and index.header["PACKAGES"] == "3"
    assert index.header["VERSION"] == "0" and index.header["CHOST"] == "x86_64-pc-linux-gnu"
    assert [p["CPV"] for p in index.packages] == ["app-misc/p0-1.0", "app-misc/p1-1.0", "app-misc/p2-1.0"]
    first = index.packages[0]
    assert first["SIZE"] == str(infos[0].size) and (first["MD5"], first["SHA1"]) == (infos[0].md5, infos[0].sha1)
    assert first["PATH"] == "app-misc/p0/p0-1.0-1.gpkg.tar" and first["repository"] == "gentoo"
    assert first["_mtime_"] == infos[0].metadata["BUILD_TIME"] and first["CHOST"] == "x86_64-pc-linux-gnu"
    assert b"\nSLOT:" not in data and b"\nCHOST:" not in data.partition(b"\n\n")[2]  # defaults left out


def test_release_paths_are_recomputed_and_duplicates_left_out():
    files = [{"key": "a/b-1", "cpv": "a/b-1", "build_id": 1, "path": "a/b/b-1-1.gpkg.tar"},
             {"key": "a/b-1::x", "cpv": "a/b-1", "build_id": 1, "path": "a/b/b-1-1.gpkg.tar"}]
    assert [p for _, p in pkgindex.release_paths(files)] == ["a/b/b-1-1.gpkg.tar"]
    with pytest.raises(ArtifactError, match="is not"):
        pkgindex.release_paths([{**files[0], "path": "../../etc/passwd"}])
    with pytest.raises(InputError):
        pkgindex.release_paths([{**files[0], "cpv": "../x/y-1"}])


def test_packages_is_a_header_plus_blocks_sorted_by_cpv(node):
    infos = [store_gpkg(node, f"app-misc/p{i}-1.0", seed=i) for i in range(4)]
    entries = [entry_for(node, info) for info in reversed(infos)]
    entries[0]["CHOST"] = entries[1]["CHOST"] = "aarch64-unknown-linux-gnu"
    entries.append({**entries[2], "PATH": "app-misc/p1/p1-1.0-2.gpkg.tar", "BUILD_ID": "2"})  # same CPV twice
    for chosts in (["aarch64-unknown-linux-gnu"] * 3, [None] * 5):
        for entry, chost in zip(entries, chosts, strict=False):
            entry.pop("CHOST") if chost is None else entry.update(CHOST=chost)
        chost = pkgindex.common_chost(e.get("CHOST") for e in entries)
        blocks = sorted(enumerate(entries), key=lambda ie: (ie[1]["CPV"], ie[0]))
        joined = pkgindex.packages_header(len(entries), chost, 77) + "".join(
            pkgindex.render_entry(e, chost) for _, e in blocks)
        assert joined.encode() == pkgindex.render_packages(entries, 77)
