"""CURVE key pairs, the authorized-keys directory, and who may say what on an orchestrator.

Why keys and not only the cluster secret: the secret seals Raft between orchestrators, but
drones, gateways and admin clients speak ZeroMQ, where anyone who reached a port could join,
take jobs and upload packages that every client installs as root. With CURVE every
connection is encrypted, every server proves it holds its orchestrator's key, and an
orchestrator accepts only clients whose public key is a file in its authorized-keys
directory. The directory is watched: a key added is accepted at its next connection, a key
removed is refused at once (`Gatekeeper` checks every message's key, since CURVE checks
only at the handshake) and its drone's jobs go back to needed.

A key's name is its file name (``drone-1.key``); a drone is its key: its messages must name
that drone, so a drone cannot act for another. A key's role (written by `keygen`) limits
what it may do: drones speak the drone protocol only; gateways, admin clients and
orchestrators may send control requests.

Files use ZeroMQ's certificate format (``NAME.key`` public, ``NAME.key_secret`` both halves,
mode 0600), so ``zmq.auth.load_certificate`` and czmq tools read them too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth.thread
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_EVENTS_LOST,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from swarmmesh import transport
from swarmmesh.errors import ConfigError
from swarmmesh.tomltable import NAME_RE

log = logging.getLogger(__name__)

ROLES = ("drone", "gateway", "client", "orchestrator")
#: Control operations that change the cluster: never from a drone's key.
MUTATING_OPS = frozenset({"submit", "finalize", "balance", "unblock", "reset", "rollback"})
#: Roles whose keys may send control requests that change the cluster.
STEERING_ROLES = frozenset({"gateway", "client", "orchestrator"})
#: How often one refused key is logged (a refused client retries every second or so).
REFUSAL_LOG_PERIOD = 10.0
#: Bench-only: the same nodes with CURVE off, to measure what it costs. Never in production.
PLAINTEXT_ENV = "SWARMMESH_BENCH_PLAINTEXT"

#: watchdog events that change the directory (not the opens and reads that reload() causes)
_CHANGES = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED, EVENT_TYPE_MODIFIED,
                      EVENT_TYPE_CLOSED, EVENT_TYPE_EVENTS_LOST})
_KEY_RE = re.compile(rb'^\s*(public-key|secret-key)\s*=\s*"([0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40})"\s*$')
_META_RE = re.compile(r'^\s+([a-z][a-z0-9_-]*)\s*=\s*"?([A-Za-z0-9._-]*)"?\s*$')


@dataclass(frozen=True)
class KeyInfo:
    """One authorized public key: the node it names and what that node may do."""

    name: str
    role: str
    public: str  # z85, 40 characters

    @property
    def short(self) -> str:
        """Enough of the key for a log line (as ssh prints a fingerprint)."""
        return self.public[:12]


# --- files ----------------------------------------------------------------------------------

def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a valid key name; use 1-63 letters, digits, '.', '_' or '-' "
                          "(the node's name), starting with a letter or digit")
    return name


def _banner(kind: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"#   ****  Generated on {stamp} by swarmmesh keygen  ****\n#   ZeroMQ CURVE {kind} Certificate\n"


def _cert_text(kind: str, name: str, role: str, public: str, secret: str | None = None) -> str:
    text = _banner(kind) + f'metadata\n    name = "{name}"\n    role = "{role}"\ncurve\n    public-key = "{public}"\n'
    return text + (f'    secret-key = "{secret}"\n' if secret else "")


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def keygen(name: str, directory: str | os.PathLike[str], role: str = "drone") -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (0600) into `directory`; never
    overwrite (a replaced key locks its node out of every cluster that knew the old one)."""
    check_name(name)
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = root / f"{name}.key", root / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} exists; keys are never overwritten: remove it first (and revoke the "
                              "old public key wherever it is authorized) or choose another name")
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    _write_new(secret_path, _cert_text("Secret", name, role, public, secret), 0o600)
    _write_new(public_path, _cert_text("Public", name, role, public), 0o644)
    return public_path, secret_path


def read_cert(path: Path) -> tuple[KeyInfo, str | None]:
    """A certificate file: its key and, in a secret file, the secret. The key's name is its
    `name` metadata (so a new key can sit beside the old one under another file name while
    keys are rotated), else the file name without ``.key``/``.key_secret``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path} ({exc.strerror or exc}); make it with "
                          f"`swarmmesh keygen {path.stem} --dir {path.parent}`") from None
    found: dict[bytes, str] = {}
    meta: dict[str, str] = {}
    for line in raw.splitlines()[:64]:
        if m := _KEY_RE.match(line):
            found[m.group(1)] = m.group(2).decode("ascii")
        elif item := _META_RE.match(line.decode("utf-8", "replace")):
            meta.setdefault(item.group(1), item.group(2))
    role = meta.get("role", "drone")
    name = meta.get("name") or path.name.removesuffix("_secret").removesuffix(".key")
    if b"public-key" not in found or role not in ROLES:
        raise ConfigError(f"{path} is not a swarmmesh key file (no public-key line, or role {role!r} is not "
                          f"one of {', '.join(ROLES)}); make one with `swarmmesh keygen NAME --dir DIR`")
    if not NAME_RE.match(name):
        raise ConfigError(f"{path} names the node {name!r}, which is not a valid node name")
    return KeyInfo(name, role, found[b"public-key"]), found.get(b"secret-key")


def load_authorized(directory: Path) -> dict[str, KeyInfo]:
    """public key (z85) -> KeyInfo of every NAME.key in the directory; bad files are skipped
    with a warning (a half-copied file is read again at its next change event)."""
    keys: dict[str, KeyInfo] = {}
    for path in sorted(directory.glob("*.key")):
        try:
            info, _secret = read_cert(path)
        except ConfigError as exc:
            log.warning("authorized keys: skipped %s", exc)
            continue
        if info.public in keys:
            log.warning("authorized keys: %s holds the same key as %s.key; using %s", path, keys[info.public].name,
                        keys[info.public].name)
            continue
        keys[info.public] = info
    return keys


# --- a node's keys ------------------------------------------------------------------------

def node_curve(config: Any) -> transport.Curve | None:
    """This node's key pair and every orchestrator's public key, from `[keys] dir`; None for a
    config made in code without keys (unit tests) and in benchmark runs with CURVE off."""
    keys = getattr(config, "keys", None)
    if keys is None:
        return None
    if os.environ.get(PLAINTEXT_ENV) == "1":
        log.warning("%s=1: CURVE is OFF, every socket is plaintext and unauthenticated (benchmarks only)",
                    PLAINTEXT_ENV)
        return None
    return load_curve(keys.dir, config.name, config.orchestrators)


def load_curve(directory: Path, name: str, orchestrators: Any) -> transport.Curve:
    own, secret = read_cert(directory / f"{name}.key_secret")
    if secret is None:
        raise ConfigError(f"{directory / (name + '.key_secret')} has no secret-key line; it must be the "
                          "secret half that `swarmmesh keygen` wrote")
    servers: dict[str, bytes] = {}
    for addr in orchestrators:
        info, _ = read_cert(directory / f"{addr.name}.key")
        for port in (addr.broker_port, addr.artifacts_port, addr.events_port):
            servers[f"{addr.host}:{port}"] = info.public.encode("ascii")
    return transport.Curve(public=own.public.encode("ascii"), secret=secret.encode("ascii"), servers=servers)


# --- the orchestrator's side --------------------------------------------------------------

class AuthorizedKeys:
    """The authorized-keys directory, read again on every change (watchdog), safe to read from
    any thread: the map is replaced whole, never mutated."""

    def __init__(self, directory: Path, on_removed: Callable[[list[KeyInfo]], None] = lambda gone: None) -> None:
        if not directory.is_dir():
            raise ConfigError(f"authorized keys directory {directory} does not exist; create it and put the "
                              "public keys (NAME.key) of the drones, gateways and clients there "
                              "(`swarmmesh cluster init` lays one out), or fix [keys] authorized")
        self.directory = directory
        self._on_removed = on_removed
        self._lock = threading.Lock()
        self.keys = load_authorized(directory)
        self._observer: Any = None
        self._logged: dict[str, float] = {}

    def get(self, public: str) -> KeyInfo | None:
        return self.keys.get(public)

    def start(self) -> None:
        handler = FileSystemEventHandler()
        handler.on_any_event = self._changed  # type: ignore[method-assign]
        self._observer = Observer()
        self._observer.schedule(handler, str(self.directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    def _changed(self, event: FileSystemEvent) -> None:
        """Only changes count: reading the keys opens them, and reacting to those open/close
        events would reload in a loop (inotify reports reads too)."""
        if event.event_type in _CHANGES:
            self.reload()

    def reload(self) -> None:
        """Read the directory again; report keys that are gone (on watchdog's thread)."""
        with self._lock:
            old, self.keys = self.keys, load_authorized(self.directory)
        gone = [info for public, info in old.items() if public not in self.keys]
        added = [info.name for public, info in self.keys.items() if public not in old]
        if added:
            log.info("authorized keys: added %s", ", ".join(sorted(added)))
        if gone:
            log.warning("authorized keys: revoked %s", ", ".join(sorted(f"{k.name} ({k.short})" for k in gone)))
            self._on_removed(gone)

    def refused(self, public: str, why: str) -> None:
        """Log a refused key, at most once per REFUSAL_LOG_PERIOD per key and reason."""
        now = time.monotonic()
        if now - self._logged.get(public + why, -REFUSAL_LOG_PERIOD) >= REFUSAL_LOG_PERIOD:
            self._logged[public + why] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            log.warning("refused key %s: %s", public[:12] or "(none)", why)


class _Zap(zmq.auth.thread.ThreadAuthenticator):
    """The ZAP handler of an orchestrator's context: a CURVE client is let in only if its key
    is authorized right now."""

    def __init__(self, ctx: zmq.Context, keys: AuthorizedKeys) -> None:
        super().__init__(ctx, log=logging.getLogger(__name__ + ".zap"))
        self.authorized = keys

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        public = zmq.utils.z85.encode(client_key).decode("ascii")
        if self.authorized.get(public) is None:
            self.authorized.refused(public, f"a connection: not in {self.authorized.directory}")
            return False, b"Unknown key"
        return True, b"OK"


class Gatekeeper:
    """Checks each message an orchestrator receives against the key that sent it.

    With CURVE off (`keys` None) everything passes: the broker's own check that a drone's
    socket identity matches its name still applies."""

    def __init__(self, keys: AuthorizedKeys | None = None, ctx: zmq.Context | None = None) -> None:
        self.keys = keys
        self._zap: _Zap | None = None
        if keys is not None and ctx is not None:
            self._zap = _Zap(ctx, keys)
            self._zap.start()
            keys.start()

    @property
    def on(self) -> bool:
        return self.keys is not None

    def sender(self, frame: Any) -> KeyInfo | None:
        """The authorized key a received frame came with (None: unknown or revoked)."""
        if self.keys is None:
            return None
        public = transport.user_id(frame)
        return self.keys.get(public) if public else None

    def allows(self, frame: Any, msg: Any, identity: bytes | None = None) -> bool:
        """Whether `msg` (decoded from `frame`, sent from ROUTER `identity` if given) may be
        acted on; a refusal is logged with the key."""
        if self.keys is None:
            return True
        public = transport.user_id(frame) or ""
        info = self.keys.get(public)
        why = refusal(info, msg) or _identity_refusal(info, msg, identity)
        if why is not None:
            self.keys.refused(public, f"a {getattr(msg, 'TYPE', '?')!r} message: {why}")
        return why is None

    def close(self) -> None:
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
        if self.keys is not None:
            self.keys.close()


def _identity_refusal(info: KeyInfo | None, msg: Any, identity: bytes | None) -> str | None:
    """A drone's socket identity is its name (the ROUTER routes replies by it): a key that
    speaks the drone protocol under another drone's identity is taking over that drone's
    route, which ROUTER_HANDOVER allows at the socket level."""
    if info is None or identity is None or getattr(msg, "drone", None) is None:
        return None
    if identity != info.name.encode():
        return f"it belongs to drone {info.name!r}, whose socket claims to be {identity!r}"
    return None


def refusal(info: KeyInfo | None, msg: Any) -> str | None:
    """Why the holder of key `info` may not send `msg`, or None if it may."""
    if info is None:
        return "the key is not authorized (revoked since it connected)"
    claimed = getattr(msg, "drone", None)
    if claimed is not None:
        if info.role != "drone":
            return f"it belongs to {info.role} {info.name!r}, not to a drone"
        if claimed != info.name:
            return f"it belongs to drone {info.name!r}, which claims to be drone {claimed!r}"
        return None
    op = getattr(msg, "op", None)
    if op is not None and op in MUTATING_OPS and info.role not in STEERING_ROLES:
        return f"{info.role} {info.name!r} may not send {op!r} requests (only gateways and admin clients may)"
    return None
