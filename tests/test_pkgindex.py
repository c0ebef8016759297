"""The Packages index: what Portage reads, byte-identical on every node, the PATHs in it, and each
package's entry (with a real `emerge --buildpkg` + `emaint binhost --fix` as the referee, slow and
optional: it needs the gentoo-prefix)."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest
from portage.getbinpkg import PackageIndex

from swarmmesh import gentoo, gpkg, pkgindex
from swarmmesh.errors import ArtifactError, InputError
from swarmmesh.gpkg_writer import write_gpkg
from tests.conftest import PREFIX_TOOL, VENV_BIN, prefix_ready
from tests.fakes import FakeNode, logged, store_gpkg


def entry_for(node: FakeNode, info: gpkg.GpkgInfo) -> dict:
    record = node.storage.entries.compute(info.sha256, node.storage.store.path(info.sha256), logged(info))
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


# --------------------------------------------------------------------------------------------- index entries


def test_index_entry_of_a_written_package(package: Path) -> None:
    info = gpkg.inspect_gpkg(package)
    entry = pkgindex.packages_index_entry(info, gentoo.gpkg_relpath(info.cpv), 1700000001)
    assert entry["CPV"] == "x11-themes/my-theme-1.0"
    assert entry["PATH"] == "x11-themes/my-theme/my-theme-1.0-1.gpkg.tar"
    assert (entry["SIZE"], entry["MTIME"], entry["MD5"], entry["SHA1"]) == (
        str(info.size), "1700000001", info.md5, info.sha1)
    assert (entry["REPO"], entry["BUILD_ID"], entry["BUILD_TIME"]) == ("localrepo", "1", "1700000000")
    assert entry["RDEPEND"] == "x11-libs/gtk+ dev-libs/a"  # USE conditionals resolved like binarytree
    assert "DEPEND" not in entry and "repository" not in entry
    assert int(entry["SIZE"]) > int(info.metadata["SIZE"])  # index SIZE is the file, metadata SIZE the image


def test_index_entry_rejects_broken_dependencies(tmp_path: Path) -> None:
    write_gpkg(tmp_path / "p", "cat/pkg-1.0", metadata={"RDEPEND": "foo? ( cat/x"})
    with pytest.raises(ArtifactError, match="invalid RDEPEND"):
        pkgindex.packages_index_entry(gpkg.inspect_gpkg(tmp_path / "p"), "cat/pkg/pkg-1.0-1.gpkg.tar", 0)

# ------------------------------------------------------------------------------------- Portage as referee




@pytest.mark.portage
@pytest.mark.slow
@pytest.mark.skipif(prefix_ready() is not None, reason=str(prefix_ready()))
def test_real_portage_build_and_binhost_index_agree(tmp_path: Path) -> None:
    """A real `emerge --buildpkg` GPKG passes inspect_gpkg, and our entries (for it and for a
    simulated package) agree with the Packages file `emaint binhost --fix` writes."""
    prefix = tmp_path / "b"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(VENV_BIN)}
    _prefix(env, "builder", str(prefix))
    _prefix(env, "run", str(prefix), "emerge", "--buildpkg", "--oneshot", "=test-cat/hello-1.0")
    pkgdir = prefix / "var/cache/binpkgs"
    sim = pkgdir / gentoo.gpkg_relpath("x11-themes/my-theme-1.0")
    sim.parent.mkdir(parents=True)
    write_gpkg(sim, "x11-themes/my-theme-1.0", size=20_000, repo="localrepo",
               metadata={"USE": "a", "RDEPEND": "a? ( test-cat/hello ) !a? ( x/y )"})
    _prefix(env, "run", str(prefix), "emaint", "binhost", "--fix")
    header, entries = _read_packages(pkgdir / "Packages")
    for cpv in ("test-cat/hello-1.0", "x11-themes/my-theme-1.0"):
        path = pkgdir / gentoo.gpkg_relpath(cpv)
        info = gpkg.inspect_gpkg(path, expect_cpv=cpv)
        ours = pkgindex.packages_index_entry(info, gentoo.gpkg_relpath(cpv), int(path.stat().st_mtime))
        theirs = {k: v for k, v in entries[cpv].items() if k != "REPO_REVISIONS"}  # emerge-time only
        assert {k: ours.get(k) for k in theirs} == theirs
        # Whatever Portage left out is a value its writer drops as a default or as the header's.
        extra = {k: v for k, v in ours.items() if k not in theirs}
        assert extra == {k: {"SLOT": "0", "CHOST": header.get("CHOST")}.get(k) for k in extra}


def _prefix(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([str(PREFIX_TOOL), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"gentoo-prefix {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _read_packages(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    blocks = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
              for block in path.read_text().split("\n\n") if block.strip()]
    return blocks[0], {block["CPV"]: block for block in blocks[1:]}
