"""Wire messages: round trips, and every malformed frame becomes one ProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmmesh import protocol
from swarmmesh.errors import ProtocolError

SAMPLES = [
    protocol.Request(op="submit", req_id="r1", args={"text": "=a/b-1"}),
    protocol.Reply(req_id="r1", ok=False, code="not_leader", leader="orch-2"),
    protocol.Reply(req_id="r2", ok=True, result=None),
    protocol.Hello(drone="d1", cores=8, slots=2, builder="simulated", running=[["a/b-1", 3]]),
    protocol.Heartbeat(drone="d1"),
    protocol.Welcome(leader="orch-1", term=4, artifacts="tcp://127.0.0.1:1", adopt=[["a/b-1", 3]], drop=["c/d-2"]),
    protocol.NotLeader(leader=None, broker=None),
    protocol.Job(key="a/b-1", cpv="a/b-1", term=4, attempt=1),
    protocol.JobFailed(drone="d1", key="a/b-1", term=4, error="boom"),
    protocol.Cancel(key="a/b-1"),
    protocol.Stored(key="a/b-1", sha256="0" * 64),
    protocol.Rejected(key="a/b-1", reason="sha256 mismatch", retry=True),
    protocol.Ack(key="a/b-1", kind="failed"),
    protocol.Bye(drone="d1", hand_back=["a/b-1"]),
    protocol.Chunk(upload="ab" * 16, seq=0, data=b"\x00" * 100),
    protocol.Trailer(upload="ab" * 16, drone="d1", key="a/b-1", term=4, size=100, sha256="0" * 64, chunks=1),
    protocol.LeaderInfo(name="orch-1", term=4, broker="b", artifacts="a", events="e", binhost="h", sent_at=1.5),
    protocol.NodeInfo(name="orch-1", role="leader", term=4, leader="orch-1", counts={"needed": 1}),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    assert protocol.decode(protocol.encode(msg)) == msg


def _frame(**body) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(("frame", "why"), [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, 2]), "not a map"),
    (_frame(v=99, t="hb", drone="d"), "version"),
    (_frame(v=1, t="nope"), "unknown message type"),
    (_frame(v=1, t="hb"), "bad fields"),
    (_frame(v=1, t="hb", drone="d", extra=1), "bad fields"),
    (_frame(v=1, t="hb", drone=5), "wrong type"),
    (_frame(v=1, t="job", key="k", cpv="c", term=True, attempt=1), "wrong type"),
    (_frame(v=1, t="chunk", upload="u", seq=0, data="text, not bytes"), "wrong type"),
])
def test_malformed_frames_are_protocol_errors(frame, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(frame)


def test_size_is_checked_before_decoding():
    big = protocol.encode(protocol.Chunk(upload="u", seq=0, data=b"x" * 2048))
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode(big, max_size=1024)


@given(st.binary(max_size=256))
def test_random_bytes_never_escape_as_other_errors(data):
    try:
        protocol.decode(data)
    except ProtocolError:
        pass


def test_every_message_type_is_registered_once():
    types = [cls.TYPE for cls in protocol.Message.__subclasses__()]
    assert len(types) == len(set(types))
    assert all(dataclasses.is_dataclass(cls) for cls in protocol.Message.__subclasses__())
