"""Old-style drones: GPKGs rsynced into staging/incoming/ are judged like uploads."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from pathlib import Path

import pytest

from swarmmesh import gpkg_writer, incoming
from swarmmesh.incoming import Incoming
from swarmmesh.queue import RECEIVED
from tests.conftest import wait_until
from tests.fakes import FakeNode


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(incoming, "SETTLE", 0.0)
    node = FakeNode("o1", tmp_path / "data", leader=True)
    node.queue.submit("b1", "t", [(k, k, None) for k in ("app-misc/a-1.0", "app-misc/b-1.0")], None, 0.0)
    comp = Incoming(node, node.config, node.storage)
    yield node, comp
    comp.close()
    node.close()


def drop(comp: Incoming, name: str, data: bytes) -> Path:
    """Write like rsync: a dot-named temp file, renamed into place."""
    path = comp.dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".XyZ123")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def gpkg_bytes(tmp_path: Path, cpv: str, size: int = 20_000) -> bytes:
    path = tmp_path / "built.gpkg.tar"
    gpkg_writer.write_gpkg(path, cpv, size=size)
    return path.read_bytes()


def run(node: FakeNode, comp: Incoming, until, what: str) -> None:
    def once():
        comp.tick(time.monotonic())
        node.run_posted()
        return until()

    wait_until(once, 10, what=what)


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_valid_gpkg_for_a_needed_package_is_stored_and_received(setup, tmp_path):
    node, comp = setup
    path = drop(comp, "app-misc/a/a-1.0-1.gpkg.tar", gpkg_bytes(tmp_path, "app-misc/a-1.0"))
    run(node, comp, lambda: node.queue.get("app-misc/a-1.0").state == RECEIVED, "the package to be received")
    result = node.queue.get("app-misc/a-1.0").result
    assert node.storage.store.has(result["sha256"]) and result["holders"] == ["o1"]
    assert result["path"] == "app-misc/a/a-1.0-1.gpkg.tar" and not path.exists()
    assert node.queue.get("app-misc/a-1.0").drone == incoming.DRONE


def tar_with(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue() + bytes(4096)


def tampered(data: bytes) -> bytes:
    """Flip one byte inside image.tar.gz (the bulk of the file, after metadata)."""
    spoiled = bytearray(data)
    spoiled[len(data) * 2 // 3] ^= 0x55
    return bytes(spoiled)


BAD = {
    "tampered image": lambda tmp: tampered(gpkg_bytes(tmp, "app-misc/b-1.0")),
    "another CPV": lambda tmp: gpkg_bytes(tmp, "app-misc/zzz-1.0"),
    "../ members": lambda tmp: tar_with([("b-1.0-1/gpkg-1", b""), ("../../../escaped", b"x" * 2000)]),
    "leading ../": lambda tmp: tar_with([("../../escaped/gpkg-1", b"x" * 2000)]),
    "junk bytes": lambda tmp: os.urandom(50_000),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_are_rejected_and_nothing_escapes_the_data_directory(setup, tmp_path, caplog, kind):
    node, comp = setup
    data_dir = Path(node.config.data_dir)
    outside = everything_under(tmp_path) - {str(p.relative_to(tmp_path)) for p in data_dir.rglob("*")}
    caplog.set_level(logging.WARNING, logger="swarmmesh.incoming")
    path = drop(comp, "app-misc/b/b-1.0-1.gpkg.tar", BAD[kind](tmp_path))
    run(node, comp, lambda: "rejected and deleted" in caplog.text, f"{kind} to be rejected")
    assert not path.exists() and node.queue.get("app-misc/b-1.0").state != RECEIVED
    assert list(node.storage.store.tmp.iterdir()) == [] and not any(node.storage.store.root.glob("??/*"))
    now = everything_under(tmp_path) - {str(p.relative_to(tmp_path)) for p in data_dir.rglob("*")}
    assert now - outside <= {"built.gpkg.tar"}


def test_a_symlink_is_deleted_not_followed(setup, tmp_path, caplog):
    node, comp = setup
    target = tmp_path / "precious.gpkg.tar"
    target.write_bytes(gpkg_bytes(tmp_path, "app-misc/a-1.0"))
    link = comp.dir / "a-1.0-1.gpkg.tar"
    link.symlink_to(target)
    caplog.set_level(logging.WARNING, logger="swarmmesh.incoming")
    run(node, comp, lambda: "not a regular file" in caplog.text, "the link to be rejected")
    assert not link.is_symlink() and target.exists()
    assert node.queue.get("app-misc/a-1.0").state != RECEIVED


def test_followers_leave_files_for_the_leader_and_temp_names_are_ignored(setup, tmp_path):
    node, comp = setup
    node.leader = False
    path = drop(comp, "a-1.0-1.gpkg.tar", gpkg_bytes(tmp_path, "app-misc/a-1.0"))
    partial = comp.dir / ".b-1.0-1.gpkg.tar.AbC"
    partial.write_bytes(b"half")
    for _ in range(3):
        comp.tick(time.monotonic())
        node.run_posted()
    assert path.exists() and partial.exists()
    node.leader = True
    comp.on_leadership(2)
    run(node, comp, lambda: node.queue.get("app-misc/a-1.0").state == RECEIVED, "the new leader to take it")
    assert partial.exists()
