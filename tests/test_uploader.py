"""The drone's artifact stream against a real PULL socket on loopback: chunks then a trailer,
what `send_now` takes, and how a send that cannot finish is reported (never raised)."""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

import pytest
import zmq

from swarmmesh import protocol, transport, uploader
from swarmmesh.uploader import Upload, Uploader
from tests.conftest import free_port


@pytest.fixture
def pull(ctx):
    sock = transport.pull(ctx, f"tcp://127.0.0.1:{free_port()}")
    yield sock
    sock.close(0)


@pytest.fixture
def reports():
    return queue.SimpleQueue()


@pytest.fixture
def up(ctx, reports):
    made = Uploader(ctx, "drone-1", lambda *outcome: reports.put(outcome))
    yield made
    made.close()


def upload(generation: int, path: Path | None = None, data: bytes | None = None, key: str = "cat/pkg-1.0",
           cancel: threading.Event | None = None) -> Upload:
    return Upload(key, 3, path, data, f"up-{key}", generation, cancel or threading.Event())


def received(pull: zmq.Socket) -> tuple[list[protocol.Chunk], protocol.Trailer]:
    """One whole upload from the PULL: its chunks, then its trailer (every wait bounded)."""
    chunks: list[protocol.Chunk] = []
    while True:
        assert pull.poll(5000), "no frame from the uploader within 5 s"
        msg = protocol.decode(pull.recv(), protocol.MAX_CHUNK_FRAME)
        if isinstance(msg, protocol.Trailer):
            return chunks, msg
        chunks.append(msg)


def test_a_file_goes_in_chunks_then_a_trailer_with_its_size_and_sha256(up, pull, reports, tmp_path):
    data = bytes(range(256)) * (protocol.CHUNK_SIZE * 5 // 2 // 256)
    (tmp_path / "a.gpkg.tar").write_bytes(data)
    generation = up.retarget(pull.LAST_ENDPOINT.decode())
    up.submit(upload(generation, path=tmp_path / "a.gpkg.tar"))
    chunks, trailer = received(pull)
    assert [c.seq for c in chunks] == [0, 1, 2] and b"".join(c.data for c in chunks) == data
    assert all(len(c.data) <= protocol.CHUNK_SIZE for c in chunks)
    assert (trailer.drone, trailer.key, trailer.term, trailer.upload) == ("drone-1", "cat/pkg-1.0", 3, "up-cat/pkg-1.0")
    assert (trailer.size, trailer.sha256, trailer.chunks) == (len(data), hashlib.sha256(data).hexdigest(), 3)
    assert reports.get(timeout=5) == ("cat/pkg-1.0", "up-cat/pkg-1.0", "sent", "")


def test_send_now_takes_only_one_chunk_held_in_memory_and_only_with_a_leader(up, pull, tmp_path):
    small = b"g" * 2048
    assert not up.send_now(upload(0, data=small))  # no leader yet
    generation = up.retarget(pull.LAST_ENDPOINT.decode())
    (tmp_path / "f").write_bytes(small)
    assert not up.send_now(upload(generation, path=tmp_path / "f"))  # a file goes through the thread
    assert not up.send_now(upload(generation, data=b"g" * (protocol.CHUNK_SIZE + 1)))
    assert up.send_now(upload(generation, data=small))
    chunks, trailer = received(pull)
    assert [c.data for c in chunks] == [small] and trailer.size == len(small)


def test_an_upload_meant_for_another_leader_or_cancelled_is_aborted_unsent(up, pull, reports):
    generation = up.retarget(pull.LAST_ENDPOINT.decode())
    up.submit(upload(generation - 1, data=b"old", key="cat/old-1.0"))
    cancelled = threading.Event()
    cancelled.set()
    up.submit(upload(generation, data=b"dropped", key="cat/dropped-1.0", cancel=cancelled))
    assert reports.get(timeout=5) == ("cat/old-1.0", "up-cat/old-1.0", "aborted", "")
    assert reports.get(timeout=5) == ("cat/dropped-1.0", "up-cat/dropped-1.0", "aborted", "")
    assert not pull.poll(100)


def test_an_unreadable_file_is_reported_as_an_error(up, pull, reports, tmp_path):
    generation = up.retarget(pull.LAST_ENDPOINT.decode())
    up.submit(upload(generation, path=tmp_path / "gone.gpkg.tar"))
    key, _id, outcome, detail = reports.get(timeout=5)
    assert (key, outcome) == ("cat/pkg-1.0", "error") and "cannot read gone.gpkg.tar" in detail


def test_a_leader_that_takes_no_data_stalls_the_upload(ctx, reports, monkeypatch):
    monkeypatch.setattr(uploader, "SEND_TIMEOUT_MS", 100)
    up = Uploader(ctx, "drone-1", lambda *outcome: reports.put(outcome))
    try:  # nobody listens there: past the HWM, a chunk waits SEND_TIMEOUT_MS, then gives up
        generation = up.retarget(f"tcp://127.0.0.1:{free_port()}")
        up.submit(upload(generation, data=b"s" * (protocol.CHUNK_SIZE * (transport.CHUNK_HWM + 4))))
        key, _id, outcome, detail = reports.get(timeout=5)
        assert (key, outcome) == ("cat/pkg-1.0", "stalled") and "took no data for 0.1 s" in detail
    finally:
        up.close()
