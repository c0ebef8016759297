"""Wire messages: one frozen dataclass per type, msgpack on the wire, one ProtocolError.

Every frame is a msgpack map ``{"v": VERSION, "t": <type>, ...fields}``. Decoding checks the
size before unpacking, the version, the type and every field's type, so a malformed or
hostile frame becomes a `ProtocolError` at the edge and never reaches the queue.

Sockets and what travels on them:

* orchestrator ROUTER (broker port) <- DEALER: `Request`/`Reply` (control API, from the
  gateway and the CLI), and the drone conversation (`Hello`, `Heartbeat`, `Job`,
  `JobFailed`, `Busy`, `Bye`, `Cancel`, `Unqueue`, `NotLeader`, `Welcome`, `Stored`, `Rejected`,
  `Ack`).
* orchestrator PULL (artifacts port) <- drone PUSH: `Chunk`... then `Trailer`.
* orchestrator PUB (events port) -> SUB: topic frame + one message: `LeaderInfo` on topic
  ``leader`` (leader only), `NodeInfo` on topic ``node`` (every orchestrator).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from swarmmesh.errors import ProtocolError

VERSION = 1
#: Largest control/drone frame we accept; artifact chunks have their own bound.
MAX_FRAME = 32 * 1024 * 1024
#: Artifact chunk size; frames on the artifact socket may be this plus a small header.
CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_FRAME = CHUNK_SIZE + 4096

TOPIC_LEADER = b"leader"
TOPIC_NODE = b"node"

_TYPES: dict[str, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    """Base of all wire messages; subclasses set TYPE and are registered by it."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            _TYPES[cls.TYPE] = cls


# --- control API -------------------------------------------------------------------------

@dataclass(frozen=True)
class Request(Message):
    """A control operation: submit, status, swarm, finalize, balance, unblock, reset."""

    TYPE: ClassVar[str] = "req"
    op: str
    req_id: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reply(Message):
    """Answer to a Request. `code` is an errors.SwarmError code when ok is False."""

    TYPE: ClassVar[str] = "rep"
    req_id: str
    ok: bool
    result: Any = None
    error: str = ""
    code: str = "ok"
    leader: str | None = None


# --- drone conversation ------------------------------------------------------------------

@dataclass(frozen=True)
class Hello(Message):
    """A drone introduces itself (also after a leader change) with the jobs it runs."""

    TYPE: ClassVar[str] = "hello"
    drone: str
    cores: int
    slots: int
    builder: str
    running: list = field(default_factory=list)   # [[key, term], ...] building or queued
    uploads: list = field(default_factory=list)   # [[key, term], ...] built, awaiting ack
    queue: int = 0            # jobs it holds beyond its slots, started as slots free (0: none)


@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "hb"
    drone: str
    running: list = field(default_factory=list)   # [[key, term], ...]


@dataclass(frozen=True)
class Welcome(Message):
    """The leader accepted a Hello; `term` fences every job it hands out."""

    TYPE: ClassVar[str] = "welcome"
    leader: str
    term: int
    artifacts: str            # endpoint of the leader's PULL socket
    staging: str = ""         # URL of the staging binhost feed (PORTAGE_BINHOST for drones)
    adopt: list = field(default_factory=list)    # [[key, term], ...] keep building these
    drop: list = field(default_factory=list)     # [key, ...] stop these: not yours any more


@dataclass(frozen=True)
class NotLeader(Message):
    TYPE: ClassVar[str] = "not_leader"
    leader: str | None = None
    broker: str | None = None


@dataclass(frozen=True)
class Job(Message):
    TYPE: ClassVar[str] = "job"
    key: str
    cpv: str
    term: int
    attempt: int
    repo: str | None = None


@dataclass(frozen=True)
class JobFailed(Message):
    TYPE: ClassVar[str] = "failed"
    drone: str
    key: str
    term: int
    error: str


@dataclass(frozen=True)
class Busy(Message):
    """The drone has no free slot for `key`: put it back without charging an attempt."""

    TYPE: ClassVar[str] = "busy"
    drone: str
    key: str
    term: int


@dataclass(frozen=True)
class Unqueue(Message):
    """`balance`: hand back every job queued and not started yet, each as a `Busy`."""

    TYPE: ClassVar[str] = "unqueue"
    reason: str = ""


@dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    key: str
    reason: str = ""


@dataclass(frozen=True)
class Stored(Message):
    """The artifact for `key` is stored and `received` is committed: delete your copy."""

    TYPE: ClassVar[str] = "stored"
    key: str
    sha256: str


@dataclass(frozen=True)
class Rejected(Message):
    """The upload or result for `key` was refused; `retry` says whether to send it again."""

    TYPE: ClassVar[str] = "rejected"
    key: str
    reason: str
    retry: bool = False


@dataclass(frozen=True)
class Ack(Message):
    """The leader committed what the drone reported about `key` (a failure, a hand-back)."""

    TYPE: ClassVar[str] = "ack"
    key: str
    kind: str                 # "failed" | "handback"


@dataclass(frozen=True)
class Bye(Message):
    """A drone is stopping; `hand_back` are jobs it will not finish (requeued, no attempt lost)."""

    TYPE: ClassVar[str] = "bye"
    drone: str
    hand_back: list = field(default_factory=list)   # [key, ...]


# --- artifact stream ---------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk(Message):
    TYPE: ClassVar[str] = "chunk"
    upload: str
    seq: int
    data: bytes


@dataclass(frozen=True)
class Trailer(Message):
    TYPE: ClassVar[str] = "trailer"
    upload: str
    drone: str
    key: str
    term: int
    size: int
    sha256: str
    chunks: int


# --- events ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaderInfo(Message):
    """Published by the leader at least once a second and at once on change."""

    TYPE: ClassVar[str] = "leader"
    name: str
    term: int
    broker: str
    artifacts: str
    events: str
    binhost: str
    sent_at: float = 0.0


@dataclass(frozen=True)
class NodeInfo(Message):
    """Every orchestrator's own health beacon (role, term, who it thinks leads)."""

    TYPE: ClassVar[str] = "node"
    name: str
    role: str                 # leader | follower | candidate
    term: int
    leader: str | None
    commit_index: int = 0
    applied_index: int = 0
    counts: dict = field(default_factory=dict)
    sent_at: float = 0.0


# --- encode / decode ---------------------------------------------------------------------

def encode(msg: Message) -> bytes:
    body = {name: getattr(msg, name) for name, _check in _spec(type(msg))}
    body["v"] = VERSION
    body["t"] = msg.TYPE
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes | memoryview, max_size: int = MAX_FRAME) -> Message:
    """Turn one frame into a Message, or raise ProtocolError saying why not."""
    if len(frame) > max_size:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {max_size}-byte limit")
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {exc.__class__.__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("frame is not a map")
    return _build(body)


def _build(body: dict) -> Message:
    if body.pop("v", None) != VERSION:
        raise ProtocolError(f"unsupported protocol version (this node speaks {VERSION})")
    kind = body.pop("t", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None  # a list here is unhashable
    if cls is None:
        raise ProtocolError("unknown message type")
    try:
        msg = cls(**body)
    except TypeError as exc:
        raise ProtocolError(f"bad fields for {cls.TYPE!r}: {exc}") from None
    _check_types(msg)
    return msg


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "bytes": bytes, "float": (int, float), "list": list, "dict": dict,
}


def _check_types(msg: Message) -> None:
    for name, check in _spec(type(msg)):
        if not check(getattr(msg, name)):
            raise ProtocolError(f"field {name!r} of {msg.TYPE!r} has the wrong type")


_Spec = tuple[tuple[str, Callable[[Any], bool]], ...]
_SPECS: dict[type[Message], _Spec] = {}


def _spec(cls: type[Message]) -> _Spec:
    """(field name, type check) per field, worked out once per class: every chunk and trailer
    of every upload goes through encode and decode. A plain dict rather than functools.cache,
    whose `Hashable` argument type mypy cannot match with a dataclass's class object."""
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = tuple((f.name, _checker(str(f.type))) for f in dataclasses.fields(cls))
    return spec


def _checker(annotation: str) -> Callable[[Any], bool]:
    options = [part.strip() for part in annotation.split("|")]
    if "Any" in options:
        return lambda value: True
    none_ok = "None" in options
    unknown = [opt for opt in options if opt != "None" and opt not in _SCALARS]
    if unknown:
        raise TypeError(f"wire field annotation {annotation!r}: {unknown} cannot be checked")
    types = tuple(t for opt in options if opt != "None" for t in _as_tuple(_SCALARS[opt]))
    exact_int = "int" in options and "bool" not in options  # a bool is an int to isinstance

    def check(value: Any) -> bool:
        if value is None:
            return none_ok
        if exact_int and value.__class__ is bool:
            return False
        return isinstance(value, types)
    return check


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)
