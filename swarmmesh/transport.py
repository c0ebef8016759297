"""The one place where ZeroMQ sockets are made.

Every socket gets the options that FACTS.md shows we need (bounded LINGER, ZMTP heartbeats
so a frozen peer is noticed, bounded high-water marks, a MAXMSGSIZE) here, so that adding
CURVE later is a change to this module only.
"""

from __future__ import annotations

import zmq

from swarmmesh.protocol import MAX_CHUNK_FRAME, MAX_FRAME

HEARTBEAT_IVL_MS = 250
HEARTBEAT_TIMEOUT_MS = 1000
LINGER_MS = 0
CONTROL_HWM = 10_000
#: Artifact streams: a few chunks in flight keep memory flat for any file size.
CHUNK_HWM = 8


def _common(sock: zmq.Socket, max_size: int = MAX_FRAME) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_size)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


def router(ctx: zmq.Context, bind: str) -> zmq.Socket:
    """The orchestrator's request socket: drones and clients are DEALERs."""
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting drone takes over its identity
    sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
    sock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
    sock.bind(bind)
    return sock


def dealer(ctx: zmq.Context, connect: str | None = None, identity: bytes | None = None) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
    sock.setsockopt(zmq.RCVHWM, CONTROL_HWM)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    if connect:
        sock.connect(connect)
    return sock


def pub(ctx: zmq.Context, bind: str) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.PUB))
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.bind(bind)
    return sock


def sub(ctx: zmq.Context, connects: list[str], topics: list[bytes]) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.SUB))
    sock.setsockopt(zmq.RCVHWM, 1000)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    for url in connects:
        sock.connect(url)
    return sock


def push(ctx: zmq.Context, connect: str) -> zmq.Socket:
    """Artifact upload: a bounded HWM makes send() block instead of buffering a whole file."""
    sock = _common(ctx.socket(zmq.PUSH), MAX_CHUNK_FRAME)
    sock.setsockopt(zmq.SNDHWM, CHUNK_HWM)
    sock.connect(connect)
    return sock


def pull(ctx: zmq.Context, bind: str) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.PULL), MAX_CHUNK_FRAME)
    sock.setsockopt(zmq.RCVHWM, CHUNK_HWM)
    sock.bind(bind)
    return sock


def tcp_bind(host: str, port: int) -> str:
    """Bind address for a configured host: listen on it (127.0.0.1 in tests)."""
    return f"tcp://{host}:{port}"
