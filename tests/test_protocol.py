"""Wire messages: round trips, and every malformed frame becomes one ProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
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


# --- fuzzing: thousands of hostile frames, nothing escapes but ProtocolError ------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
_TYPE_NAMES = st.sampled_from([cls.TYPE for cls in protocol.Message.__subclasses__()] + ["nope", ""])


@st.composite
def _hostile_bodies(draw) -> bytes:
    """A map that looks like a message: a real type and version, fields of any name and type."""
    cls = draw(st.sampled_from(protocol.Message.__subclasses__()))
    names = [f.name for f in dataclasses.fields(cls)]
    body = {name: draw(_VALUES) for name in draw(st.lists(st.sampled_from(names), unique=True))}
    body |= draw(st.dictionaries(st.text(max_size=6), _VALUES, max_size=2))
    body["v"] = draw(st.sampled_from([protocol.VERSION, protocol.VERSION, 0, "1", None]))
    body["t"] = draw(st.one_of(_TYPE_NAMES, _VALUES))  # a list as the type crashed a live broker once
    return msgpack.packb(body, use_bin_type=True)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_hostile_bodies(), st.binary(max_size=64)))
def test_fuzzed_messages_decode_or_raise_protocol_error_only(frame):
    try:
        msg = protocol.decode(frame)
    except ProtocolError:
        return
    assert protocol.decode(protocol.encode(msg)) == msg  # what is accepted is well-formed


@settings(max_examples=300, deadline=None)
@given(_hostile_bodies(), st.integers(min_value=0, max_value=40))
def test_truncated_frames_raise_protocol_error(frame, cut):
    with pytest.raises(ProtocolError):
        protocol.decode(frame[:max(0, len(frame) - 1 - cut)] if len(frame) > 1 else b"\xc1")
