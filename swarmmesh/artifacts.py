"""Artifacts: receive uploads from drones, validate, store content-addressed, commit.

An upload is `Chunk` frames then a `Trailer` on the leader's PULL socket. PUSH has no
acknowledgement and a frame can be lost when a connection drops, so the application checks
everything: chunks in sequence, total size, sha256, and the GPKG itself for the CPV that was
delegated. Data goes to a temp file named by us (never by the drone; a small upload stays in
memory until then), is renamed into the store under its sha256 and made durable (file and
rename, by a filesystem sync that concurrent uploads share: `SyncBarrier`); only after
`received` is committed does the drone get `Stored` and delete its copy.

Every upload takes one path, whichever thread checks it: `Receiver._examine` (on the loop
for a small upload, on a validation thread otherwise) judges it, keeps it, waits for the disk
and hands one `Verdict` (stored, retry or invalid) to the loop, where `_conclude` commits it
and `_answer` replies once the log has moved.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zmq

from swarmmesh import commands, gentoo, gpkg, protocol, transport
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import ArtifactError, ProtocolError, TransferError
from swarmmesh.keys import Gatekeeper
from swarmmesh.signer import PackageSigner
from swarmmesh.store import Storage, Store

log = logging.getLogger(__name__)

MAX_ARTIFACT = 8 * 1024**3
MIN_ARTIFACT = 1024
UPLOAD_IDLE_TIMEOUT = 60.0
_UPLOAD_ID = re.compile(r"^[0-9a-f]{8,64}$")
#: Uploads validated at once off the socket loop: those over INLINE_CHECK, or arriving while the
#: writer thread is busy (GPKG inspection of a big upload must not stall dispatch). Two are
#: enough now that the waits for the disk are on the SyncBarrier's thread: interleaved runs of
#: 5,000 small packages measured the same with 2 and with 4 (205-214/s against 210-225/s), big
#: uploads too (131-134 MiB/s), and every thread costs GIL hand-offs.
FINISH_WORKERS = 2
#: Up to this many uploads awaiting validation, an arrived trailer frees the drone's build slot
#: at once (the build is over); beyond it, slots free only as commits land (backpressure).
EARLY_SETTLE_BACKLOG = 32
#: Chunks (1 MiB each) queued for the writer thread before the loop stops reading the socket.
WRITE_BACKLOG = 8
#: An upload stays in memory up to this size; beyond, it goes to a temp file (writer thread).
SPILL = 1 << 20
#: An upload held in memory up to this size is checked on the socket loop (~0.3 ms for a small
#: package, a few ms at this size) and written by the SyncBarrier's thread: a hand-off to a
#: validation thread and back cost more than the check (GIL hand-offs and context switches).
INLINE_CHECK = 64 * 1024


@dataclass
class Upload:
    """An upload being received: in memory while small (a 2 KiB package never touches the
    disk from the socket loop), spilled to a temp file of the store beyond SPILL bytes."""

    store: Store
    sender: bytes
    buf: bytearray | bytes = field(default_factory=bytearray)  # bytes once sealed
    path: Path | None = None
    fh: BinaryIO | None = None
    size: int = 0
    next_seq: int = 0
    broken: str = ""
    last_activity: float = 0.0  # the loop's time when its last chunk arrived (Receiver._chunk)

    def add(self, chunk: protocol.Chunk) -> None:
        if self.broken:
            return
        if chunk.seq != self.next_seq:
            self.broken = f"chunk {chunk.seq} arrived where {self.next_seq} was expected (lost frames)"
            return
        if self.size + len(chunk.data) > MAX_ARTIFACT:
            self.broken = f"upload exceeds {MAX_ARTIFACT} bytes"
            return
        if self.fh is None and len(self.buf) + len(chunk.data) > SPILL:
            self.path, self.fh = self.store.temp_file()
            self.fh.write(self.buf)
            self.buf = bytearray()
        if self.fh is None:
            self.buf += chunk.data
        else:
            self.fh.write(chunk.data)
        self.size += len(chunk.data)
        self.next_seq += 1

    def sealed(self) -> bytes:
        """The whole upload, still in memory, as bytes: copied from the buffer once however
        often it is asked for (the check and the store both need it). Only once it is complete."""
        if not isinstance(self.buf, bytes):
            self.buf = bytes(self.buf)
        return self.buf

    def small(self, data: bytes) -> bool:
        """Whether adding `data` stays in memory (cheap enough for the socket loop)."""
        return self.fh is None and len(self.buf) + len(data) <= SPILL

    def to_file(self) -> Path:
        """The upload as a closed temp file of the store (not fsynced: see Receiver._finish)."""
        if self.fh is None:
            self.path, self.fh = self.store.temp_file()
            self.fh.write(self.buf)
            self.buf = bytearray()
        self.fh.close()
        assert self.path is not None
        return self.path

    def replace(self, data: bytes | None, path: Path | None) -> None:
        """The signed package takes the upload's place: its bytes, or a temp file of the store."""
        if data is not None:
            self.buf, self.size = data, len(data)
            return
        assert path is not None
        self.to_file().unlink(missing_ok=True)
        self.path, self.fh = path, open(path, "rb")  # noqa: SIM115 - closed by to_file/discard
        self.size = path.stat().st_size

    def discard(self) -> None:
        self.buf = bytearray()
        if self.fh is not None:
            self.fh.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Receiver(Component):
    """Component of an Orchestrator: owns the PULL socket, and writes uploads into the node's
    storage. `settle(drone, key)`: the broker's, frees the drone's build slot; `gate` says
    which key sent a frame (only drones upload, each as itself)."""

    def __init__(self, node: Node, config: NodeConfig, storage: Storage, ctx: zmq.Context, *,
                 settle: Callable[[str, str], None], signer: PackageSigner | None = None,
                 gate: Gatekeeper | None = None) -> None:
        self.node = node
        self._signer = signer  # signs each validated package; None: stored unsigned
        self._gate = gate if gate is not None else Gatekeeper()
        me = config.me()
        self._policy = config.queue
        self._settle = settle
        self.store = storage.store
        self._storage = storage
        self._entries = storage.entries
        self.durable = storage.durable
        self.pull = transport.pull(ctx, transport.tcp_bind(me.host, me.artifacts_port))
        self.uploads: dict[str, Upload] = {}
        self._pool = ThreadPoolExecutor(FINISH_WORKERS, thread_name_prefix="receive")
        self._validating = 0
        self._writer = _Writer(WRITE_BACKLOG, resume=lambda: node.post(self._resume))
        self._poller: zmq.Poller | None = None
        self._paused = False

    # --- component protocol --------------------------------------------------------------
    def register(self, poller: zmq.Poller) -> None:
        self._poller = poller
        poller.register(self.pull, zmq.POLLIN)

    def on_poll(self, ready: dict) -> None:
        if self.pull in ready:
            transport.drain(self.pull, self._frame, max(1, min(256, self._writer.room())), multipart=False,
                            copy=False)
            if self._writer.room() <= 0:
                self._pause()

    def _pause(self) -> None:
        """The disk is behind: stop reading the socket (ZeroMQ's HWM then holds the drones back)
        instead of blocking the loop in write(), which would starve heartbeats and commits."""
        if not self._paused and self._poller is not None:
            self._paused = True
            self._poller.unregister(self.pull)
            self._writer.want_resume()

    def _resume(self) -> None:
        if self._paused and self._poller is not None:
            self._paused = False
            self._poller.register(self.pull, zmq.POLLIN)

    def on_leadership(self, term: int | None) -> None:
        if term is None:
            self._drop_all("leadership lost")

    def tick(self, now: float) -> None:
        for upload_id, up in list(self.uploads.items()):
            if now - up.last_activity > UPLOAD_IDLE_TIMEOUT:
                log.warning("upload %s idle for %.0fs: discarded", upload_id, now - up.last_activity)
                del self.uploads[upload_id]
                self._writer.put(up.discard)

    def close(self) -> None:
        self._drop_all("shutting down")
        self._writer.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.pull.close(0)

    # --- frames --------------------------------------------------------------------------
    def _frame(self, frame: zmq.Frame | bytes) -> None:
        try:
            data = frame.buffer if isinstance(frame, zmq.Frame) else frame
            msg = protocol.decode(data, max_size=protocol.MAX_CHUNK_FRAME)
        except ProtocolError as exc:
            log.warning("rejected an artifact frame: %s", exc)
            return
        if self._gate.on and not self._from_drone(frame, msg):
            return
        if isinstance(msg, protocol.Chunk):
            self._chunk(msg)
        elif isinstance(msg, protocol.Trailer):
            self._trailer(msg)
        else:
            log.warning("unexpected %r message on the artifact socket", msg.TYPE)

    def _from_drone(self, frame: zmq.Frame | bytes, msg: protocol.Message) -> bool:
        """Only drones' keys upload, and a trailer must name the drone whose key sent it."""
        if isinstance(msg, protocol.Trailer):
            return self._gate.allows(frame, msg)
        sender = self._gate.sender(frame)
        return sender is not None and sender.role == "drone"

    def _chunk(self, chunk: protocol.Chunk) -> None:
        if not self.node.is_leader() or not _UPLOAD_ID.match(chunk.upload):
            return
        up = self.uploads.get(chunk.upload)
        if up is None:
            if chunk.seq != 0:
                return  # the start of this upload was lost; the trailer will be rejected
            up = self.uploads[chunk.upload] = Upload(self.store, b"")
        up.last_activity = self.node.now()
        self._writer.run(functools.partial(up.add, chunk), small=up.small(chunk.data))

    def _trailer(self, tr: protocol.Trailer) -> None:
        identity = tr.drone.encode()
        up = self.uploads.pop(tr.upload, None)
        if not self.node.is_leader():
            if up:
                self._writer.put(up.discard)
            return
        pkg = self.node.read(lambda q: _delegation(q.peek(tr.key)))
        if pkg is None or pkg[0] != tr.drone:
            if up:
                self._writer.put(up.discard)
            reason = "not in the queue" if pkg is None else f"not delegated to {tr.drone}"
            log.warning("upload of %s from %s rejected: %s", tr.key, tr.drone, reason)
            self.node.send(identity, protocol.Rejected(key=tr.key, reason=reason, retry=False))
            return
        self._validating += 1
        if up is not None and up.fh is None and up.size <= INLINE_CHECK and self._writer.idle():
            self._examine(identity, up, tr, pkg[1], inline=True)
        else:  # after the writer: validation starts once every chunk before the trailer is written
            self._writer.run(functools.partial(self._pool.submit, self._examine, identity, up, tr, pkg[1]),
                             small=True)
        if self._validating <= EARLY_SETTLE_BACKLOG:
            self._free_slot(tr)  # the build is over; beyond the backlog, slots free as commits land

    # --- the upload path: examine (any thread), then conclude (the loop) ---------------------
    def _examine(self, identity: bytes, up: Upload | None, tr: protocol.Trailer, cpv: str,
                 inline: bool = False) -> None:
        """The one path of every upload: judged, kept in the store, made durable, and the
        verdict handed to the loop, which owns the sockets. `inline`: a small upload checked
        on the loop itself (from memory; the SyncBarrier's thread writes it); else a validation
        thread, which writes it too."""
        verdict = _judge(up, tr, cpv)
        if verdict.info is not None and up is not None:
            verdict = self._sign(up, verdict, tr)
        if verdict.info is None or up is None:
            self._hand_over(identity, tr, verdict)
            return
        landed = functools.partial(self._durable, identity, tr, verdict)
        keep = functools.partial(self._keep, up, verdict.info)
        if inline:
            self.durable.after(landed, write=keep)
            return
        try:
            keep()
        except Exception as exc:  # the store's disk, or a bug: never leave an upload unanswered
            landed(exc)
            return
        self.durable.after(landed)  # `received` only once the file and its rename are on disk

    def _durable(self, identity: bytes, tr: protocol.Trailer, verdict: Verdict, error: Exception | None) -> None:
        self._hand_over(identity, tr, verdict if error is None else Verdict.of(error, tr))

    def _hand_over(self, identity: bytes, tr: protocol.Trailer, verdict: Verdict) -> None:
        self.node.post(functools.partial(self._conclude, identity, tr, verdict))

    def _sign(self, up: Upload, verdict: Verdict, tr: protocol.Trailer) -> Verdict:
        """Validated, so signed by the swarm key (signer.py), before anything is kept or
        committed: the signed file replaces the upload. A signing failure is not the build's
        fault: the drone sends it again."""
        if self._signer is None or verdict.info is None:
            return verdict
        try:
            info, signed = self._signer.sign(verdict.info, up.sealed() if up.fh is None else up.to_file(), tr.key)
        except Exception as exc:  # gpg, the disk, or a bug: never leave an upload unanswered
            up.discard()
            log.error("cannot sign %s: %s", tr.key, exc)
            return Verdict(retry=True, reason=f"{TransferError.PREFIX}cannot sign it: {exc}")
        up.replace(signed.data, signed.path)
        return Verdict.stored(info)

    def _keep(self, up: Upload, info: gpkg.GpkgInfo) -> None:
        """Into the store (made durable by self.durable, in groups) and the index journal."""
        data = up.sealed() if up.fh is None else None
        try:
            self.store.put(up.to_file(), info.sha256)
        except BaseException:
            up.discard()
            raise
        if data is not None:
            self.store.recent.put(info.sha256, data)
        self._entries.record(info)  # parsed in full just now: no second read

    def _conclude(self, identity: bytes, tr: protocol.Trailer, verdict: Verdict) -> None:
        """On the loop: act on the verdict, unless this node stopped leading meanwhile."""
        self._validating -= 1
        if not self.node.is_leader():
            return
        if verdict.info is not None:
            self._commit_received(identity, tr, verdict.info)
        elif verdict.retry:
            log.warning("upload of %s from %s incomplete: %s", tr.key, tr.drone, verdict.reason)
            self.node.send(identity, protocol.Rejected(key=tr.key, reason=verdict.reason, retry=True))
        else:
            self._commit_failed(identity, tr, verdict.reason)

    def _commit_received(self, identity: bytes, tr: protocol.Trailer, info: gpkg.GpkgInfo) -> None:
        result = received_result(info, self.node.name)

        def then(res: Any, err: str | None) -> None:
            if err is not None:
                self.node.send(identity, protocol.Rejected(key=tr.key, reason=err, retry=True))
                return
            if not res.get("ok"):
                self._drop_unreferenced(info.sha256)
            if res.get("ok") or res.get("code") == "duplicate":
                log.info("received %s from %s (%d bytes, sha256 %s)", tr.key, tr.drone, info.size, info.sha256[:12])
                self._answer(identity, tr, protocol.Stored(key=tr.key, sha256=info.sha256))
            else:
                self._answer(identity, tr, protocol.Rejected(key=tr.key, reason=f"not accepted: {res.get('code')}"))

        self.node.commit(commands.Complete(tr.key, tr.drone, tr.term, result, self.node.wall()), then=then)

    def _drop_unreferenced(self, sha256: str) -> None:
        """A commit that did not take our file (a duplicate upload, a stale one): signed again,
        its bytes differ from the received file's, so nothing refers to them; removed now,
        not left for the garbage collection."""
        if self.node.read(lambda q: q.artifact(sha256)) is not None:
            return  # the same bytes as the received file (unsigned): they are the package's
        self.store.path(sha256).unlink(missing_ok=True)
        self._storage.forget(sha256)
        log.info("dropped %s: the package was already received with another file", sha256[:12])

    def _reject(self, identity: bytes, tr: protocol.Trailer, reason: str) -> None:
        if isinstance(reason, str) and reason.startswith(TransferError.PREFIX):
            log.warning("upload of %s from %s incomplete: %s", tr.key, tr.drone, reason)
            self.node.send(identity, protocol.Rejected(key=tr.key, reason=reason, retry=True))
            return

    def _commit_failed(self, identity: bytes, tr: protocol.Trailer, reason: str) -> None:
        log.warning("artifact for %s from %s rejected: %s", tr.key, tr.drone, reason)
        policy = self._policy

        def then(res: Any, err: str | None) -> None:
            self._answer(identity, tr, protocol.Rejected(key=tr.key, reason=reason, retry=False))

        self.node.commit(commands.Fail(tr.key, tr.drone, tr.term, f"invalid artifact: {reason}", self.node.wall(),
                                       policy.max_attempts, policy.ground_after), then=then)

    def _answer(self, identity: bytes, tr: protocol.Trailer, reply: protocol.Message) -> None:
        """The log now records how the build ended (received, or failed): the drone hears it,
        and its slot is settled (again, if `_trailer` freed it early: the broker refills it
        now that the log has moved, e.g. with a package that waited for this one)."""
        self.node.send(identity, reply)
        self._free_slot(tr)

    def _free_slot(self, tr: protocol.Trailer) -> None:
        """The one place a drone's build slot is settled (the broker's `settle`)."""
        self._settle(tr.drone, tr.key)

    def _drop_all(self, why: str) -> None:
        for up in self.uploads.values():
            self._writer.put(up.discard)
        if self.uploads:
            log.info("dropped %d partial upload(s): %s", len(self.uploads), why)
        self.uploads.clear()


@dataclass(frozen=True)
class Verdict:
    """What becomes of one upload, whichever thread judged it: stored (`info`: what the
    package says of itself, about to be committed `received`), retry (the bytes did not
    arrive intact, or this node could not keep them: the drone sends it again) or invalid (a
    broken build: the attempt fails in the log). `reason` is what the drone is told."""

    info: gpkg.GpkgInfo | None = None
    retry: bool = False
    reason: str = ""

    @classmethod
    def stored(cls, info: gpkg.GpkgInfo) -> Verdict:
        return cls(info=info)

    @classmethod
    def of(cls, exc: Exception, tr: protocol.Trailer) -> Verdict:
        """The verdict on an upload that could not be checked or kept: a bad package is
        invalid; damage on the way, the disk or a bug ask the drone to send it again."""
        if isinstance(exc, TransferError):
            return cls(retry=True, reason=str(exc))
        if isinstance(exc, ArtifactError):
            return cls(reason=str(exc))
        log.error("cannot store the upload of %s: %s", tr.key, exc, exc_info=not isinstance(exc, OSError) and exc)
        return cls(retry=True, reason=f"{TransferError.PREFIX}cannot store it: {exc}")


def _judge(up: Upload | None, tr: protocol.Trailer, cpv: str) -> Verdict:
    """Check the transfer, then the package (never raises: a bug in the check must not escape
    into the socket loop). The sha256 comes out of the same read as the GPKG checks (not
    hashed chunk by chunk on the socket loop): every byte is read once. An upload still in
    memory is checked there and written once, not written and read back."""
    if up is None:
        return Verdict.of(TransferError("no data arrived for this upload (lost frames); send it again"), tr)
    try:
        _check_transfer(up, tr)
        if up.fh is None:
            return Verdict.stored(_inspect(Path(f"{tr.upload}.upload"), tr, cpv, up.sealed()))
        return Verdict.stored(_inspect(up.to_file(), tr, cpv))
    except Exception as exc:
        up.discard()
        return Verdict.of(exc, tr)
    except BaseException:
        up.discard()
        raise


def _delegation(pkg: Any) -> tuple[str | None, str] | None:
    return None if pkg is None else (pkg.drone, pkg.cpv)


def received_result(info: gpkg.GpkgInfo, holder: str) -> dict:
    """What `complete` records of a stored, validated GPKG (uploaded or dropped into incoming/)."""
    build_id = info.build_id or 1
    return {"sha256": info.sha256, "size": info.size, "md5": info.md5, "sha1": info.sha1, "build_id": build_id,
            "path": gentoo.gpkg_relpath(info.cpv, build_id), "holders": [holder], "metadata": info.metadata,
            **({"signer": info.signer} if info.signer else {})}


class _Writer:
    """One thread that writes upload chunks (and runs what must follow them) in arrival order,
    so a slow disk holds back the drones through ZeroMQ's HWM, never the socket loop."""

    def __init__(self, limit: int, resume: Callable[[], None]) -> None:
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._limit = limit
        self._resume = resume
        self._wants_resume = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-writer", daemon=True)
        self._thread.start()

    def room(self) -> int:
        return self._limit - self._queue.qsize()

    def put(self, work: Callable[[], Any]) -> None:
        self._queue.put(work)

    def run(self, work: Callable[[], Any], small: bool) -> None:
        """Small work runs at once on the caller's thread when nothing is queued (order is kept,
        and a 2 KiB package costs no thread hand-off); anything else is queued."""
        if small and self.idle():
            work()
        else:
            self._queue.put(work)

    def idle(self) -> bool:
        """Nothing queued or running: work done now keeps the arrival order."""
        return self._queue.unfinished_tasks == 0

    def want_resume(self) -> None:
        """Call `resume` (once) when the backlog is down to half."""
        self._wants_resume.set()
        if self.room() >= self._limit // 2:
            self._resumed()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # a bug must not stop every later upload
                log.exception("upload writer: %r failed", work)
            finally:
                self._queue.task_done()
            if self._wants_resume.is_set() and self.room() >= self._limit // 2:
                self._resumed()

    def _resumed(self) -> None:
        if self._wants_resume.is_set():
            self._wants_resume.clear()
            self._resume()


def _check_transfer(up: Upload, tr: protocol.Trailer) -> None:
    if up.broken:
        raise TransferError(up.broken)
    if up.next_seq != tr.chunks or up.size != tr.size:
        raise TransferError(f"got {up.next_seq} chunks / {up.size} bytes, trailer says {tr.chunks} / {tr.size}")
    if up.size < MIN_ARTIFACT:
        raise ArtifactError(f"artifact of {up.size} bytes is too small to be a package (minimum {MIN_ARTIFACT})")


def _inspect(path: Path, tr: protocol.Trailer, cpv: str, data: bytes | None = None) -> gpkg.GpkgInfo:
    """Validate the package (`data`: its bytes, held in memory; else the file); a file that
    fails only because its bytes were damaged on the way is a transfer error (send it again),
    not a broken build."""
    try:
        info = gpkg.inspect_gpkg(path, expect_cpv=cpv, data=data)
    except ArtifactError:
        actual = hashlib.sha256(data).hexdigest() if data is not None else _sha256_of(path)
        if actual != tr.sha256:
            raise TransferError("sha256 mismatch") from None
        raise
    if info.sha256 != tr.sha256:
        raise TransferError("sha256 mismatch")
    return info


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
