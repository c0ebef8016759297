"""A drone's artifact stream: every built package goes to the leader's PULL in chunks, then a
trailer with its size and sha256.

One thread with its own PUSH socket sends file artifacts (zmq sockets are not thread-safe, so
the drone's loop never touches this one); a bounded HWM keeps memory flat for any file size.
Nothing here decides whether an upload worked: the thread only says how sending went
("sent", "stalled", "error", "aborted") through the `report` callback, and the drone waits
for the leader's `Stored` or `Rejected`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq

from swarmmesh import protocol, transport

SEND_TIMEOUT_MS = 10_000   # one chunk may wait this long for a dead leader, then the upload stalls


@dataclass(frozen=True)
class Upload:
    """One attempt to send one artifact (`upload_id` names the attempt, `generation` the leader
    it was meant for); `cancel` is the job's, set when the job is dropped."""

    key: str
    term: int
    path: Path | None
    data: bytes | None
    upload_id: str
    generation: int
    cancel: threading.Event

    def chunks(self) -> Iterator[bytes]:
        """CHUNK_SIZE pieces of the artifact, read from the file only as they are sent."""
        if self.data is not None:
            yield from (self.data[i:i + protocol.CHUNK_SIZE] for i in range(0, len(self.data), protocol.CHUNK_SIZE))
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while chunk := f.read(protocol.CHUNK_SIZE):
                yield chunk


class Uploader:
    """One thread and one PUSH socket stream artifacts to the leader's PULL, in CHUNK_SIZE
    pieces with a bounded HWM (flat memory for any file size). A leader change bumps the
    generation: the upload in flight stops between chunks and the drone sends it again.

    An artifact of one chunk held in memory skips the thread (`send_now`): the hand-offs to it
    and back cost more than sending a small package."""

    def __init__(self, ctx: zmq.Context, drone: str, report: Callable[[str, str, str, str], None]) -> None:
        self.ctx, self.drone, self.report = ctx, drone, report
        self._tasks: queue.SimpleQueue[Upload | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._target: str | None = None
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name=f"upload-{drone}", daemon=True)
        self._thread.start()
        self._quick: zmq.Socket | None = None  # send_now's socket, owned by the drone's loop thread
        self._quick_url: str | None = None

    def retarget(self, url: str | None) -> int:
        """On the loop thread: a new leader's PULL (None: no leader). `send_now`'s socket to the
        old one closes now rather than at the next small upload, so it stops reconnecting to a
        node that may be gone."""
        if self._quick is not None and self._quick_url != url:
            self._quick.close(0)
            self._quick = self._quick_url = None
        with self._lock:
            self._generation += 1
            self._target = url
            return self._generation

    def submit(self, task: Upload) -> None:
        self._tasks.put(task)

    def send_now(self, task: Upload) -> bool:
        """On the loop thread: send a one-chunk artifact held in memory at once, as one
        multipart message (ZeroMQ queues all of it or nothing; the leader reads the frames one
        by one as usual). False if it must go through `submit`: too big, no leader, or the
        leader is holding uploads back (HWM reached)."""
        target = self._current()[0]
        if task.data is None or len(task.data) > protocol.CHUNK_SIZE or target is None:
            return False
        if self._quick is None or self._quick_url != target:
            if self._quick is not None:
                self._quick.close(0)
            self._quick, self._quick_url = transport.push(self.ctx, target), target
        try:
            self._quick.send_multipart(list(self._frames(task)), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """On the loop thread."""
        self.retarget(None)
        self._tasks.put(None)
        self._thread.join(timeout)
        if self._quick is not None:
            self._quick.close(0)

    def _current(self) -> tuple[str | None, int]:
        with self._lock:
            return self._target, self._generation

    def _live(self, task: Upload) -> bool:
        target, generation = self._current()
        return target is not None and generation == task.generation and not task.cancel.is_set()

    def _run(self) -> None:
        sock: zmq.Socket | None = None
        url: str | None = None
        try:
            while (task := self._tasks.get()) is not None:
                target = self._current()[0]
                if not self._live(task) or target is None:
                    self.report(task.key, task.upload_id, "aborted", "")
                    continue
                if sock is None or url != target:
                    if sock is not None:
                        sock.close(0)
                    sock, url = self._connect(target), target
                outcome, detail = self._send(sock, task)
                if outcome == "stalled":  # its queue is full of frames nobody reads: start afresh
                    sock.close(0)
                    sock = None
                self.report(task.key, task.upload_id, outcome, detail)
        finally:
            if sock is not None:
                sock.close(0)

    def _connect(self, url: str) -> zmq.Socket:
        sock = transport.push(self.ctx, url)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        return sock

    def _send(self, sock: zmq.Socket, task: Upload) -> tuple[str, str]:
        try:
            for frame in self._frames(task):
                if not self._live(task):
                    return "aborted", ""
                sock.send(frame)
        except zmq.Again:
            return "stalled", f"the leader took no data for {SEND_TIMEOUT_MS / 1000:g} s"
        except OSError as exc:
            return "error", f"cannot read {task.path and task.path.name}: {exc.strerror or exc}"
        return "sent", ""

    def _frames(self, task: Upload) -> Iterator[bytes]:
        """The upload's Chunk frames, then its Trailer (size and sha256 of what was sent)."""
        digest, size, seq = hashlib.sha256(), 0, 0
        for chunk in task.chunks():
            yield protocol.encode(protocol.Chunk(upload=task.upload_id, seq=seq, data=chunk))
            digest.update(chunk)
            size, seq = size + len(chunk), seq + 1
        yield protocol.encode(protocol.Trailer(upload=task.upload_id, drone=self.drone, key=task.key,
                                               term=task.term, size=size, sha256=digest.hexdigest(), chunks=seq))
