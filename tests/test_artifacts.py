"""Receiving one upload: chunk bookkeeping, transfer damage against a broken build, the store."""

from __future__ import annotations

import hashlib

import pytest
import zmq

from swarmmesh import artifacts, protocol
from swarmmesh.artifacts import Upload
from swarmmesh.errors import ArtifactError, TransferError
from swarmmesh.gpkg_writer import write_gpkg
from swarmmesh.store import Store
from tests.conftest import wait_until
from tests.fakes import FakeNode

CPV = "app-misc/hello-1.0"


def _upload(store: Store, data: bytes, chunk: int = 4096) -> tuple[Upload, protocol.Trailer]:
    up = Upload(store, b"")
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for seq, piece in enumerate(pieces):
        up.add(protocol.Chunk(upload="ab12cd34", seq=seq, data=piece))
    up.to_file()
    trailer = protocol.Trailer(upload="ab12cd34", drone="drone-1", key=CPV, term=1, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), chunks=len(pieces))
    return up, trailer


@pytest.fixture
def gpkg(tmp_path) -> bytes:
    path = tmp_path / "hello.gpkg.tar"
    write_gpkg(path, CPV, size=20_000)
    return path.read_bytes()


def test_an_intact_upload_is_checked_in_one_read(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    artifacts._check_transfer(up, tr)
    info = artifacts._inspect(up.path, tr, CPV)
    assert info.sha256 == tr.sha256 and info.size == len(gpkg) and info.cpv == CPV


def test_bytes_damaged_on_the_way_are_a_transfer_error_not_a_broken_build(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    damaged = bytearray(up.path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    up.path.write_bytes(bytes(damaged))
    with pytest.raises(TransferError, match="sha256 mismatch"):
        artifacts._inspect(up.path, tr, CPV)


def test_an_upload_held_in_memory_is_judged_like_its_file(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    label = tmp_path / "never-written.upload"
    assert artifacts._inspect(label, tr, CPV, gpkg) == artifacts._inspect(up.path, tr, CPV)
    damaged = bytearray(gpkg)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(TransferError, match="sha256 mismatch"):
        artifacts._inspect(label, tr, CPV, bytes(damaged))
    with pytest.raises(ArtifactError, match="expected") as caught:
        artifacts._inspect(label, tr, "app-misc/other-1.0", gpkg)
    assert not isinstance(caught.value, TransferError) and not label.exists()


def test_store_temp_names_are_unique_and_a_removed_directory_comes_back(tmp_path):
    store = Store(tmp_path / "store")
    made = [store.temp_file() for _ in range(3)]
    for _path, fh in made:
        fh.close()
    assert len({path for path, _ in made}) == 3
    sha = "ab" * 32
    store.put(made[0][0], sha)
    store.path(sha).unlink()
    store.path(sha).parent.rmdir()  # removed by hand while the store runs
    assert store.put(made[1][0], sha).is_file()


def test_a_broken_package_sent_intact_is_rejected_for_what_it_is(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    with pytest.raises(ArtifactError, match="expected") as caught:
        artifacts._inspect(up.path, tr, "app-misc/other-1.0")
    assert not isinstance(caught.value, TransferError)


def test_a_valid_package_under_a_wrong_announced_sha256_is_sent_again(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    with pytest.raises(TransferError, match="sha256"):
        artifacts._inspect(up.path, protocol.Trailer(**{**tr.__dict__, "sha256": "0" * 64}), CPV)


def test_chunks_out_of_order_or_missing_break_the_upload(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up = Upload(store, b"")
    up.add(protocol.Chunk(upload="ab12cd34", seq=0, data=gpkg[:4096]))
    up.add(protocol.Chunk(upload="ab12cd34", seq=2, data=gpkg[8192:12288]))
    tr = protocol.Trailer(upload="ab12cd34", drone="d", key=CPV, term=1, size=12288, sha256="0" * 64, chunks=3)
    with pytest.raises(TransferError, match="lost frames"):
        artifacts._check_transfer(up, tr)
    path = up.to_file()
    up.discard()
    assert not path.exists()


def test_a_short_file_is_refused_and_counts_are_checked(tmp_path):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, b"x" * 900)
    with pytest.raises(ArtifactError, match="too small"):
        artifacts._check_transfer(up, tr)
    with pytest.raises(TransferError, match="trailer says"):
        artifacts._check_transfer(up, protocol.Trailer(**{**tr.__dict__, "size": 901}))


def test_the_store_is_content_addressed_and_refuses_other_names(tmp_path, gpkg):
    store = Store(tmp_path / "store")
    up, tr = _upload(store, gpkg)
    dest = store.put(up.path, tr.sha256)
    assert dest == tmp_path / "store" / tr.sha256[:2] / tr.sha256 and store.has(tr.sha256)
    with pytest.raises(ArtifactError, match="not a sha256"):
        store.path("../../etc/passwd")


def test_a_small_upload_stays_in_memory_and_a_big_one_spills_to_one_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SPILL", 10_000)
    store = Store(tmp_path / "store")
    up = Upload(store, b"")
    up.add(protocol.Chunk(upload="ab12cd34", seq=0, data=b"a" * 6000))
    assert up.fh is None and list(store.tmp.iterdir()) == [] and not up.small(b"b" * 6000)
    up.add(protocol.Chunk(upload="ab12cd34", seq=1, data=b"b" * 6000))
    assert up.fh is not None and up.path.parent == store.tmp
    assert up.to_file().read_bytes() == b"a" * 6000 + b"b" * 6000


def test_a_complete_upload_in_memory_is_sealed_into_bytes_once_and_still_written_whole(tmp_path):
    up = Upload(Store(tmp_path / "store"), b"")
    for seq, piece in enumerate((b"a" * 3000, b"b" * 3000)):
        up.add(protocol.Chunk(upload="ab12cd34", seq=seq, data=piece))
    data = up.sealed()
    assert data == b"a" * 3000 + b"b" * 3000 and isinstance(data, bytes)
    assert up.sealed() is data  # the check and the store share one copy
    assert up.to_file().read_bytes() == data


def test_a_bug_in_the_check_on_the_loop_asks_for_the_upload_again_and_keeps_the_loop(tmp_path, monkeypatch):
    """An upload checked on the socket loop: an unexpected error is answered like one in a
    validation thread (send it again), not raised into the loop, and the backlog count drops."""
    node = FakeNode("o1", tmp_path, leader=True)
    node.queue.submit("b1", "c", [(CPV, CPV, None)], None, 0.0)
    node.queue.delegate(CPV, "drone-1", 1, 0.0, 60.0)
    settled: list[str] = []
    ctx = zmq.Context()
    receiver = artifacts.Receiver(node, node.config, node.storage, ctx,
                                  settle=lambda drone, key: settled.append(key))
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        monkeypatch.setattr(artifacts, "_inspect", broken)
        data = b"x" * 2048
        receiver._frame(zmq.Frame(protocol.encode(protocol.Chunk(upload="ab12cd34", seq=0, data=data))))
        receiver._frame(zmq.Frame(protocol.encode(protocol.Trailer(
            upload="ab12cd34", drone="drone-1", key=CPV, term=1, size=len(data),
            sha256=hashlib.sha256(data).hexdigest(), chunks=1))))
        node.run_posted()
        sent = [m for _, m in node.sent]
        assert [(m.key, m.retry) for m in sent] == [(CPV, True)] and "cannot store it: a bug" in sent[0].reason
        assert receiver._validating == 0 and settled == [CPV]
    finally:
        receiver.close()
        node.close()
        ctx.term()


@pytest.fixture
def receiving(tmp_path):
    """A real Receiver on the fake node, leading, with three packages delegated to drone-1."""
    node = FakeNode("o1", tmp_path, leader=True)
    keys = [f"app-misc/p{i}-1.0" for i in range(3)]
    node.queue.submit("b1", "c", [(k, k, None) for k in keys], None, 0.0)
    for key in keys:
        node.queue.delegate(key, "drone-1", 1, 0.0, 60.0)
    settled: list[str] = []
    ctx = zmq.Context()
    receiver = artifacts.Receiver(node, node.config, node.storage, ctx, settle=lambda drone, key: settled.append(key))
    yield node, receiver, settled
    receiver.close()
    node.close()
    ctx.term()


def _send(receiver: artifacts.Receiver, upload: str, key: str, data: bytes, sha256: str | None = None) -> None:
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    for seq, piece in enumerate(pieces):
        receiver._frame(protocol.encode(protocol.Chunk(upload=upload, seq=seq, data=piece)))
    receiver._frame(protocol.encode(protocol.Trailer(
        upload=upload, drone="drone-1", key=key, term=1, size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(), chunks=len(pieces))))


@pytest.mark.parametrize("size", [6_000, 200_000], ids=["checked on the loop", "checked by a validation thread"])
def test_each_verdict_is_answered_committed_and_settled_once_it_lands(receiving, tmp_path, size):
    """Stored: `received` committed, then Stored; retry: Rejected(retry) and nothing in the
    log; invalid: the attempt fails in the log, then Rejected(no retry)."""
    node, receiver, settled = receiving
    good, broken = tmp_path / "good.gpkg.tar", tmp_path / "broken.gpkg.tar"
    write_gpkg(good, "app-misc/p0-1.0", size=size)
    write_gpkg(broken, "app-misc/other-1.0", size=size)  # intact, but not the package delegated
    _send(receiver, "aa000001", "app-misc/p0-1.0", good.read_bytes())
    _send(receiver, "aa000002", "app-misc/p1-1.0", good.read_bytes(), sha256="0" * 64)
    _send(receiver, "aa000003", "app-misc/p2-1.0", broken.read_bytes())

    def answered() -> bool:
        node.run_posted()
        return receiver._validating == 0 and len(node.sent) == 3

    wait_until(answered, 10, what="three answers")
    replies = {m.key: m for _, m in node.sent}
    assert isinstance(replies["app-misc/p0-1.0"], protocol.Stored)
    assert node.storage.store.has(replies["app-misc/p0-1.0"].sha256)
    retry, invalid = replies["app-misc/p1-1.0"], replies["app-misc/p2-1.0"]
    assert (retry.retry, retry.reason) == (True, "transfer: sha256 mismatch")
    assert invalid.retry is False and "app-misc/other-1.0" in invalid.reason
    assert sorted(c[0] for c in node.commits) == ["complete", "fail"]
    assert node.queue.get("app-misc/p1-1.0").state == "delegated"  # it is sent again
    assert sorted(settled) == ["app-misc/p0-1.0", "app-misc/p0-1.0", "app-misc/p1-1.0",
                               "app-misc/p2-1.0", "app-misc/p2-1.0"]  # early, and once it is in the log
