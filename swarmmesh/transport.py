"""The one place where ZeroMQ sockets are made.

Every socket gets the options that FACTS.md shows we need (bounded LINGER, ZMTP heartbeats
so a frozen peer is noticed, bounded high-water marks, a MAXMSGSIZE) here, and CURVE:
a node makes its context with `context(curve)`, and every socket made from it is a CURVE
server (ROUTER, PUB, PULL: they bind) or client (DEALER, SUB, PUSH: they connect, each
connection checked against the public key of the orchestrator it goes to).

One exception: the artifact stream (PUSH/PULL) has no ZMTP heartbeats, but TCP keepalive.
libzmq 4.3 aborts the whole process (`Assertion failed: !_io_error`, zeromq/libzmq#4364)
when a connection whose input is stopped by a full receive HWM (the leader holding drones
back on purpose) is closed by its peer and a heartbeat timer then fires: a drone killed
mid-upload took the leader down with it. Uploads have liveness of their own: the drone's
send timeout, the leader's idle-upload timeout, and the broker's heartbeats.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from swarmmesh.protocol import MAX_CHUNK_FRAME, MAX_FRAME

log = logging.getLogger(__name__)

#: A socket of the context's own kind: a zmq.asyncio.Context makes awaitable sockets.
_Sock = TypeVar("_Sock", bound=zmq.Socket)

HEARTBEAT_IVL_MS = 250
HEARTBEAT_TIMEOUT_MS = 1000
LINGER_MS = 0
CONTROL_HWM = 10_000
#: Artifact streams: a few chunks in flight keep memory flat for any file size.
CHUNK_HWM = 8
KEEPALIVE_IDLE_S = 5


@dataclass(frozen=True)
class Curve:
    """A node's CURVE key pair (z85) and the public key of every server endpoint it may
    connect to ("host:port" -> key): a client refuses a server that cannot prove it holds
    the key of the orchestrator at that address."""

    public: bytes
    secret: bytes
    servers: Mapping[str, bytes] = field(default_factory=dict)


class Context(zmq.Context):
    """A context whose sockets use `curve` (None: plaintext, for unit tests' stand-ins)."""

    curve: Curve | None = None


class AsyncContext(zmq.asyncio.Context):
    curve: Curve | None = None


def context(curve: Curve | None) -> Context:
    ctx = Context()
    ctx.curve = curve
    return ctx


def async_context(curve: Curve | None) -> AsyncContext:
    ctx = AsyncContext()
    ctx.curve = curve
    return ctx


def _curve_of(sock: zmq.Socket) -> Curve | None:
    return getattr(sock.context, "curve", None)


def _secure(sock: _Sock, server: bool) -> _Sock:
    curve = _curve_of(sock)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        if server:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
    return sock


def connect_to(sock: zmq.Socket, url: str) -> bool:
    """Connect, first telling the socket which server key that address must prove. An address
    with no known key is not connected to (False): it is no orchestrator of this cluster."""
    curve = _curve_of(sock)
    if curve is not None:
        key = curve.servers.get(url.removeprefix("tcp://"))
        if key is None:
            log.error("not connecting to %s: no orchestrator of this cluster listens there "
                      "(no public key for it in [keys] dir)", url)
            return False
        sock.setsockopt(zmq.CURVE_SERVERKEY, key)
    sock.connect(url)
    return True


def user_id(frame: Any) -> str | None:
    """The key a received frame came with (ZAP's User-Id: the client's public key, z85), or
    None on a plaintext socket."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None


def _common(sock: _Sock, max_size: int = MAX_FRAME, heartbeats: bool = True, server: bool = False) -> _Sock:
    _secure(sock, server)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_size)
    if heartbeats:
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    else:  # see the module docstring: the kernel notices a dead peer instead
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


def router(ctx: zmq.Context[_Sock], bind: str) -> _Sock:
    """The orchestrator's request socket: drones and clients are DEALERs."""
    sock = _common(ctx.socket(zmq.ROUTER), server=True)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting drone takes over its identity
    sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
    sock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
    sock.bind(bind)
    return sock


def dealer(ctx: zmq.Context[_Sock], connect: str | None = None, identity: bytes | None = None) -> _Sock:
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
    sock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    if connect:
        connect_to(sock, connect)
    return sock


def pub(ctx: zmq.Context[_Sock], bind: str) -> _Sock:
    sock = _common(ctx.socket(zmq.PUB), server=True)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.bind(bind)
    return sock


def sub(ctx: zmq.Context[_Sock], connects: list[str], topics: list[bytes]) -> _Sock:
    sock = _common(ctx.socket(zmq.SUB))
    sock.setsockopt(zmq.RCVHWM, 1000)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    for url in connects:
        connect_to(sock, url)
    return sock


def push(ctx: zmq.Context[_Sock], connect: str) -> _Sock:
    """Artifact upload: a bounded HWM makes send() block instead of buffering a whole file."""
    sock = _common(ctx.socket(zmq.PUSH), MAX_CHUNK_FRAME, heartbeats=False)
    sock.setsockopt(zmq.SNDHWM, CHUNK_HWM)
    connect_to(sock, connect)
    return sock


def pull(ctx: zmq.Context[_Sock], bind: str) -> _Sock:
    sock = _common(ctx.socket(zmq.PULL), MAX_CHUNK_FRAME, heartbeats=False, server=True)
    sock.setsockopt(zmq.RCVHWM, CHUNK_HWM)
    sock.bind(bind)
    return sock


def tcp_bind(host: str, port: int) -> str:
    """Bind address for a configured host: listen on it (127.0.0.1 in tests)."""
    return f"tcp://{host}:{port}"


class Inbox:
    """Work handed to the thread that owns the sockets, from any other thread.

    ZeroMQ sockets must stay on one thread, so commit callbacks, build threads and upload
    threads post closures here; a pipe wakes the owner's poller (register `fd`), which then
    calls `run_pending()`. One byte per wake-up, not per closure: under load many closures
    share a wake-up, and each write was a system call and often a context switch.
    """

    def __init__(self) -> None:
        self._todo: collections.deque[Callable[[], None]] = collections.deque()
        self.fd, self._wake_w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._woken = False  # a byte is in the pipe (or on its way) that run_pending has not read

    def post(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return  # a thread outlived its owner: nobody is left to run it
        self._todo.append(fn)
        if self._woken:
            return  # the owner is woken already, and reads the queue after clearing the flag
        self._woken = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full (the owner is awake anyway)

    def empty(self) -> bool:
        return not self._todo

    def run_pending(self) -> None:
        """Run what was posted; a failing callback is logged, never fatal to the loop."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        # after the read and before the queue: a closure posted from now on writes a byte again
        self._woken = False
        while self._todo:
            fn = self._todo.popleft()
            try:
                fn()
            except Exception:
                log.exception("a posted callback failed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)
            os.close(self._wake_w)


def drain(sock: zmq.Socket, handle: Callable[[Any], None], limit: int, multipart: bool = True,
          copy: bool = True) -> None:
    """Hand up to `limit` waiting messages to `handle` without blocking (bounded, so one busy
    socket cannot starve the others in a poll loop). ZMQ_EVENTS says when to stop: ending on
    the `zmq.Again` of an empty socket cost an exception (~5 us) per call, on every socket of
    every node, several times per package. `copy=False` hands zmq.Frames, whose `user_id` says
which key sent them."""
    for _ in range(limit):
        if sock.closed:  # a handler closed it (e.g. switched leaders): the rest is stale
            return
        events = sock.get(zmq.EVENTS)
        if not (isinstance(events, int) and events & zmq.POLLIN):
            return
        try:
            handle(sock.recv_multipart(zmq.NOBLOCK, copy=copy) if multipart else sock.recv(zmq.NOBLOCK, copy=copy))
        except zmq.Again:
            return
