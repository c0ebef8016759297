"""A drone: follows the leader, builds what it is given, streams the results back.

One thread owns the DEALER and SUB sockets and every piece of job state (`step()` is one
iteration of its loop, so tests drive it directly). Builds run on a pool of one thread per
slot (a thread started per job cost more than a zero-second simulated build) and the upload
runs in one thread with its own PUSH socket; both only post results back to the loop
(zmq sockets are not thread-safe). Nothing a drone reports is assumed delivered: an artifact
file is deleted only after `Stored`, a failure is repeated until `Ack`, and both are sent
again to whichever leader comes next.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from swarmmesh import gentoo, protocol, transport
from swarmmesh.builders import SIMULATED_ARTIFACT, Builder, BuildResult, check_repo, make_builder
from swarmmesh.config import NodeConfig
from swarmmesh.errors import InputError, ProtocolError
from swarmmesh.protocol import Bye, Heartbeat, Hello, Job, JobFailed, LeaderInfo, Welcome

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 30.0      # no Stored / Ack for this long: send the upload or failure again
MAX_UPLOAD_RETRIES = 3     # re-uploads after `Rejected(retry=True)` before reporting a failure
HELLO_BACKOFF = (0.25, 5.0)
LOST_AFTER_BEATS = 3       # heartbeat periods of silence after which the leader is lost
SEND_TIMEOUT_MS = 10_000   # one chunk may wait this long for a dead leader, then the upload stalls
HANDBACK_WAIT = 2.0
STOP_DRAIN_SECONDS = 30.0
JOIN_SECONDS = 7.0         # an emerge needs up to 5 s to die after SIGTERM
MAX_ERROR = 16_000
MAX_BURST = 1000           # frames read per socket per step, so one socket cannot starve the rest

#: Jobs a drone can hold per slot while every slot builds (announced as Hello.queue; the leader
#: sends that many only while builds are short, see broker.PREFETCH_BELOW).
QUEUE_PER_SLOT = 4
#: A queued job goes back to the leader after waiting this long, so a drone whose builds
#: turned long does not sit on work another drone could start.
QUEUE_WAIT = 5.0
BUILDING, UPLOADING, FAILED, QUEUED = "building", "uploading", "failed", "queued"
_JOB_DIR = re.compile(r"[A-Za-z0-9._-]+-[0-9]+\Z")  # what _make_workdir names


@dataclass(eq=False)
class _Job:
    key: str
    cpv: str
    repo: str | None
    term: int
    workdir: Path | None
    started: float
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event | None = None  # set once its build returned; None: never started
    state: str = BUILDING
    path: Path | None = None
    data: bytes | None = None  # the artifact, when the builder made it in memory
    error: str = ""
    rejections: int = 0
    upload_id: str = ""
    resend_at: float | None = None
    attempt: int = 0

    @property
    def pair(self) -> list:
        return [self.key, self.term]


@dataclass(frozen=True)
class _Upload:
    key: str
    term: int
    path: Path | None
    data: bytes | None
    upload_id: str
    generation: int
    cancel: threading.Event

    def chunks(self) -> Iterator[bytes]:
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
        self._tasks: queue.SimpleQueue[_Upload | None] = queue.SimpleQueue()
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

    def submit(self, task: _Upload) -> None:
        self._tasks.put(task)

    def send_now(self, task: _Upload) -> bool:
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

    def _live(self, task: _Upload) -> bool:
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

    def _send(self, sock: zmq.Socket, task: _Upload) -> tuple[str, str]:
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

    def _frames(self, task: _Upload) -> Iterator[bytes]:
        """The upload's Chunk frames, then its Trailer (size and sha256 of what was sent)."""
        digest, size, seq = hashlib.sha256(), 0, 0
        for chunk in task.chunks():
            yield protocol.encode(protocol.Chunk(upload=task.upload_id, seq=seq, data=chunk))
            digest.update(chunk)
            size, seq = size + len(chunk), seq + 1
        yield protocol.encode(protocol.Trailer(upload=task.upload_id, drone=self.drone, key=task.key,
                                               term=task.term, size=size, sha256=digest.hexdigest(), chunks=seq))


class Drone:
    """The drone's state and its poll loop; see the module docstring for the threads."""

    def __init__(self, config: NodeConfig, builder: Builder | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if config.drone is None:
            raise InputError(f"{config.name} has no [drone] section; start a drone with a drone config")
        self.config, self.name, self.clock = config, config.name, clock
        self.dc = config.drone
        self.builder = builder or make_builder(self.dc)
        self.work_dir = self.dc.work_dir or config.data_dir / "work"
        self.beat = config.queue.heartbeat_seconds
        self.jobs: dict[str, _Job] = {}
        self._queued: collections.deque[_Job] = collections.deque()  # QUEUED jobs, oldest first
        self.dying: list[_Job] = []       # cancelled builds whose thread has not returned yet
        self.settled = 0
        self._counter = itertools.count(1)
        self.inbox = transport.Inbox()  # builds and uploads run in threads; results come back here
        self.ctx = zmq.Context()
        events = [o.events_url for o in config.orchestrators]
        self.sub = transport.sub(self.ctx, events, [protocol.TOPIC_LEADER])
        self.dealer: zmq.Socket | None = None
        self.broker_url: str | None = None
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.inbox.fd, zmq.POLLIN)
        self.uploader = Uploader(self.ctx, self.name, self._upload_report)
        self._pool = _BuildPool(self.dc.slots, self.name)
        self._orchestrators = itertools.cycle(config.orchestrators)
        self.latest: LeaderInfo | None = None
        self._latest_at = 0.0
        self.following: tuple[str | None, int] = (None, -1)
        self.welcomed = False
        self._artifacts: str | None = None
        self._generation = 0
        self._last_heard = self._lost_since = clock()
        self._hello_at: float | None = None
        self._backoff = HELLO_BACKOFF[0]
        self._next_beat = 0.0
        self.stop_requested = False
        self._graceful = True
        self._stopping = False
        self._bye_sent = False
        self._handback_wait: set[str] = set()
        self._closed = False

    # --- the loop --------------------------------------------------------------------------
    def step(self, timeout: float = 0.1) -> None:
        """One iteration: read what arrived (or wait up to `timeout`), then run the timers."""
        events = dict(self.poller.poll(0 if not self.inbox.empty() else int(timeout * 1000)))
        if self.sub in events:
            transport.drain(self.sub, self._on_event, MAX_BURST)
        if self.dealer is not None and self.dealer in events:
            transport.drain(self.dealer, self._on_frame, MAX_BURST)
        self.inbox.run_pending()
        self._start_queued()
        self._tick(self.clock())

    def run(self, once: bool = False) -> None:
        """Loop until stop(); with `once`, until one job is settled. Then stop as asked."""
        _clear_leftovers(self.work_dir)
        line = f"swarmmesh drone {self.name} ready"
        log.info("%s (%s builder, %d slots, work dir %s)", line, self.builder.name, self.dc.slots,
                 self.work_dir)
        print(line, flush=True)  # supervisors and tests wait for this line
        try:
            while not self.stop_requested and not (once and self.settled):
                self.step()
            self.shutdown()
        finally:
            self.close()

    def stop(self, graceful: bool = True) -> None:
        """Only sets flags, so signal handlers may call it; a second stop is never graceful."""
        self._graceful = self._graceful and graceful and not self.stop_requested
        self.stop_requested = True

    def _post(self, fn: Callable[[], None]) -> None:
        """Hand work from a build or upload thread to the loop (a no-op once closed)."""
        self.inbox.post(fn)

    def _tick(self, now: float) -> None:
        if not self.welcomed:
            if self._hello_at is None or now - self._hello_at >= self._backoff:
                self._retry_hello(now)
            return
        if now - self._last_heard > LOST_AFTER_BEATS * self.beat and not self._bye_sent:
            log.warning("no word from leader %s for %.1fs: looking for the leader", self.following[0],
                        now - self._last_heard)
            self._lose_leader()
            return
        if now >= self._next_beat and not self._bye_sent:
            self._next_beat = now + self.beat
            self._send(Heartbeat(drone=self.name, running=self._pairs(BUILDING, UPLOADING, QUEUED)))
        for job in list(self.jobs.values()):
            if job.resend_at is not None and now >= job.resend_at:
                self._report(job)
        while self._queued and now - self._queued[0].started > QUEUE_WAIT:
            self._hand_back(self._queued[0], f"queued for over {QUEUE_WAIT:g}s")

    # --- following the leader ----------------------------------------------------------------
    def _on_event(self, parts: list[bytes]) -> None:
        msg = _decode(parts[1]) if len(parts) == 2 and parts[0] == protocol.TOPIC_LEADER else None
        if not isinstance(msg, LeaderInfo):
            return
        if self.latest is None or msg.term >= self.latest.term:
            self.latest, self._latest_at = msg, self.clock()
        if msg.term >= self.following[1] and (msg.name, msg.term) != self.following:
            log.info("leader is %s (term %d) at %s", msg.name, msg.term, msg.broker)
            self._follow(msg.name, msg.term, msg.broker)

    def _follow(self, name: str | None, term: int, broker: str) -> None:
        same = broker == self.broker_url
        self.following = (name, term)
        if same and not self.welcomed and self._hello_at is not None:
            return  # a Hello is already on its way there
        self._lose_leader()
        if not same:
            self._connect(broker)
        self._hello()

    def _retry_hello(self, now: float) -> None:
        """Nobody answered (or nobody is known): reconnect, say hello again, back off."""
        recent = self.latest is not None and now - self._latest_at <= LOST_AFTER_BEATS * self.beat
        url = self.latest.broker if recent and self.latest else next(self._orchestrators).broker_url
        if self._hello_at is not None:
            self._backoff = min(self._backoff * 2, HELLO_BACKOFF[1])
            log.debug("no answer to hello; trying %s (next retry in %.2fs)", url, self._backoff)
        self._connect(url)
        self._hello()

    def _connect(self, url: str) -> None:
        if self.dealer is not None:
            self.poller.unregister(self.dealer)
            self.dealer.close(0)
        self.dealer = transport.dealer(self.ctx, url, identity=self.name.encode())
        self.broker_url = url
        self.poller.register(self.dealer, zmq.POLLIN)

    def _hello(self) -> None:
        self._hello_at = self.clock()
        self._send(Hello(drone=self.name, cores=self.dc.cores, slots=self.dc.slots, builder=self.builder.name,
                         running=self._pairs(BUILDING, QUEUED), uploads=self._pairs(UPLOADING),
                         queue=QUEUE_PER_SLOT * self.dc.slots))

    def _lose_leader(self) -> None:
        """Stop talking to the old leader: uploads in flight stop, everything waits for a Welcome."""
        if self.welcomed:
            self._lost_since = self.clock()
        self.welcomed, self._hello_at, self._artifacts = False, None, None
        self._generation = self.uploader.retarget(None)
        for job in self.jobs.values():
            job.upload_id, job.resend_at = "", None

    def _on_welcome(self, msg: Welcome) -> None:
        same = self.following == (msg.leader, msg.term) and self._artifacts == msg.artifacts
        again = self.welcomed and same
        self.following, self.welcomed = (msg.leader, msg.term), True
        self._backoff, self._next_beat = HELLO_BACKOFF[0], 0.0
        log.info("welcomed by leader %s (term %d): adopt %d, drop %d", msg.leader, msg.term,
                 len(msg.adopt), len(msg.drop))
        for key, term in _pairs(msg.adopt):
            if key in self.jobs:
                self.jobs[key].term = term
        for key in msg.drop:
            if isinstance(key, str):
                self._cancel(key, "dropped by the leader")
        if not again:
            self._artifacts = msg.artifacts
            self._generation = self.uploader.retarget(msg.artifacts)
            for job in list(self.jobs.values()):
                self._report(job)

    def _on_not_leader(self, msg: protocol.NotLeader) -> None:
        if msg.broker is None:
            self._lose_leader()
            self._hello_at = self.clock()  # retry after the backoff
        elif not (self._bye_sent and msg.broker == self.broker_url):
            log.info("not the leader; going to %s at %s", msg.leader or "?", msg.broker)
            self._follow(msg.leader, self.following[1], msg.broker)

    # --- messages from the leader --------------------------------------------------------------
    def _on_frame(self, parts: list[bytes]) -> None:
        msg = _decode(parts[-1]) if parts else None
        if msg is None:
            return
        self._last_heard = self.clock()
        handler = self._handlers().get(type(msg))
        if handler is None:
            log.warning("unexpected %r message from the leader: dropped", msg.TYPE)
        else:
            handler(msg)

    def _handlers(self) -> dict[type, Callable[[Any], None]]:
        p = protocol
        return {Welcome: self._on_welcome, p.NotLeader: self._on_not_leader, Job: self._on_job,
                p.Cancel: lambda m: self._cancel(m.key, m.reason or "cancelled by the leader"),
                p.Unqueue: lambda m: self._hand_back_queued(m.reason or "asked by the leader"),
                p.Stored: self._on_stored, p.Rejected: self._on_rejected, p.Ack: self._on_ack,
                Heartbeat: lambda m: None}

    def _on_job(self, msg: Job) -> None:
        if self._stopping:
            self._send(Bye(drone=self.name, hand_back=[msg.key]))
            return
        old = self.jobs.get(msg.key)
        if old is not None and (old.state != FAILED or msg.attempt <= old.attempt):
            old.term = msg.term  # delivered again (new leader, new term): one build is enough
            return  # (and a failure of this very attempt is still being reported)
        if old is not None:
            self._settle(old, "superseded by a new attempt")
        job = _Job(msg.key, msg.cpv, msg.repo, msg.term, None, self.clock(), attempt=msg.attempt)
        if self._busy() < self.dc.slots:
            self.jobs[msg.key] = job
            self._start(job)
        elif len(self._queued) < QUEUE_PER_SLOT * self.dc.slots:  # announced as `queue` in our Hello
            job.state = QUEUED
            self.jobs[msg.key] = job
            self._queued.append(job)
        else:
            self._send(protocol.Busy(drone=self.name, key=msg.key, term=msg.term))

    def _start_queued(self) -> None:
        """Queued jobs take the slots that freed, oldest first (none once stopping)."""
        while self._queued and self._busy() < self.dc.slots and not self._stopping:
            job = self._queued.popleft()
            job.state = BUILDING
            self._start(job)

    def _hand_back_queued(self, why: str) -> None:
        while self._queued:
            self._hand_back(self._queued[0], why)

    def _hand_back(self, job: _Job, why: str) -> None:
        """A queued job goes back to needed, no attempt charged (`Busy` does that)."""
        self._queued.remove(job)
        self.jobs.pop(job.key, None)
        self._send(protocol.Busy(drone=self.name, key=job.key, term=job.term))
        self._ended(job, f"handed back unstarted ({why})")

    def _start(self, job: _Job) -> None:
        try:
            gentoo.cpv_parts(job.cpv)  # its parts may become paths: refuse what is not a CPV
            check_repo(job.repo)
            if getattr(self.builder, "needs_workdir", True):
                job.workdir = self._make_workdir(job.key)
        except (InputError, OSError) as exc:
            self._fail(job, f"cannot start the build: {exc}")
            return
        job.finished = threading.Event()
        self._pool.submit(lambda: self._build(job))
        log.debug("job %s (attempt %d, term %d) started in %s", job.key, job.attempt, job.term, job.workdir)

    def _make_workdir(self, key: str) -> Path:
        """A fresh directory named by us: the key only lends a readable, sanitized prefix."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64].strip("._-") or "job"
        while True:
            path = self.work_dir / f"{safe}-{next(self._counter)}"
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                continue

    def _build(self, job: _Job) -> None:
        """Worker thread: run the builder; whatever happens, the loop hears about it."""
        try:
            result = self.builder.build(job.cpv, job.repo, job.workdir, job.cancel)
        except Exception as exc:  # noqa: BLE001 - a builder bug must not lose the job
            log.exception("builder crashed on %s", job.key)
            result = BuildResult(ok=False, path=None, error=f"builder crashed: {exc!r}", seconds=0.0)
        finally:
            assert job.finished is not None
            job.finished.set()
        self._post(lambda: self._on_built(job, result))

    def _on_built(self, job: _Job, result: BuildResult) -> None:
        if job in self.dying:
            self.dying.remove(job)
            _remove(job.workdir)
        elif self.jobs.get(job.key) is job and result.ok and (result.path or result.data) is not None:
            job.state, job.path, job.data = UPLOADING, result.path, result.data
            log.debug("job %s built in %.2fs", job.key, result.seconds)
            self._report(job)
        elif self.jobs.get(job.key) is job:
            self._fail(job, result.error or "the build failed without saying why")

    def _on_stored(self, msg: protocol.Stored) -> None:
        job = self.jobs.get(msg.key)
        if job is not None and job.state == UPLOADING:
            self._settle(job, f"stored (sha256 {msg.sha256[:12]})")

    def _on_rejected(self, msg: protocol.Rejected) -> None:
        job = self.jobs.get(msg.key)
        if job is None or job.state != UPLOADING:
            return
        again = ", sending again" if msg.retry else ""
        log.warning("upload of %s rejected (%s)%s", msg.key, msg.reason, again)
        if not msg.retry:
            self._settle(job, f"rejected: {msg.reason}")
        elif job.rejections < MAX_UPLOAD_RETRIES:
            job.rejections += 1
            self._report(job)
        else:
            self._fail(job, f"upload rejected {job.rejections + 1} times: {msg.reason}")

    def _on_ack(self, msg: protocol.Ack) -> None:
        job = self.jobs.get(msg.key)
        if msg.kind == "failed" and job is not None and job.state == FAILED:
            self._settle(job, "failed")
        elif msg.kind == "handback":
            self._handback_wait.discard(msg.key)

    def _cancel(self, key: str, reason: str) -> None:
        job = self.jobs.pop(key, None)
        if job is None:
            return
        if job.state == QUEUED:
            self._queued.remove(job)
        job.cancel.set()
        if job.state == BUILDING and job.finished is not None:
            self.dying.append(job)  # its files go when the build has stopped writing them
        else:
            _remove(job.workdir)
        self._ended(job, f"cancelled ({reason})")

    # --- reporting results ---------------------------------------------------------------------
    def _fail(self, job: _Job, error: str) -> None:
        if len(error) > MAX_ERROR:
            error = error[: MAX_ERROR // 4] + "\n[...]\n" + error[-MAX_ERROR // 2:]
        job.state, job.error = FAILED, error
        self._report(job)

    def _report(self, job: _Job) -> None:
        """Send (or send again) what the leader must acknowledge: the artifact or the failure."""
        job.resend_at = None
        if not self.welcomed:
            return  # sent once a leader welcomes us
        if job.state == FAILED:
            self._send(JobFailed(drone=self.name, key=job.key, term=job.term, error=job.error))
            job.resend_at = self.clock() + ANSWER_TIMEOUT
        elif job.state == UPLOADING and (job.path or job.data) is not None:
            job.upload_id = uuid.uuid4().hex
            task = _Upload(job.key, job.term, job.path, job.data, job.upload_id, self._generation, job.cancel)
            if self.uploader.send_now(task):
                self._on_upload(job.key, job.upload_id, "sent", "")
            else:
                self.uploader.submit(task)

    def _upload_report(self, key: str, upload_id: str, outcome: str, detail: str) -> None:
        """Called on the upload thread: hand the outcome to the loop."""
        self._post(lambda: self._on_upload(key, upload_id, outcome, detail))

    def _on_upload(self, key: str, upload_id: str, outcome: str, detail: str) -> None:
        job = self.jobs.get(key)
        if job is None or job.state != UPLOADING or job.upload_id != upload_id or outcome == "aborted":
            return
        if outcome == "sent":
            job.resend_at = self.clock() + ANSWER_TIMEOUT
        elif outcome == "stalled":
            log.warning("upload of %s stalled (%s); trying again", key, detail)
            job.resend_at = self.clock() + self.beat
        else:
            self._fail(job, f"cannot upload the artifact: {detail}")

    def _settle(self, job: _Job, outcome: str) -> None:
        self.jobs.pop(job.key, None)
        _remove(job.workdir)
        self._ended(job, outcome)

    def _ended(self, job: _Job, outcome: str) -> None:
        self.settled += 1
        first = job.error.splitlines()[0] if job.state == FAILED and job.error else ""
        log.info("job %s %s after %.2fs%s", job.key, outcome, self.clock() - job.started,
                 f": {first}" if first else "")

    def _send(self, msg: protocol.Message) -> None:
        if self.dealer is None:
            return
        try:
            self.dealer.send(protocol.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("could not send %s to %s: queue full", msg.TYPE, self.broker_url)

    def _busy(self) -> int:
        return len(self._pairs(BUILDING)) + len(self.dying)

    def _pairs(self, *states: str) -> list[list]:
        return [job.pair for job in self.jobs.values() if job.state in states]

    # --- stopping ------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Take no new jobs, let builds finish within a lease, hand back the rest, finish the
        uploads the leader can still take. Never deletes an artifact that was not stored."""
        self._stopping = True
        self._hand_back_queued("drone stopping")
        self._wait(lambda: not self._pairs(BUILDING), self.config.queue.lease_seconds)
        running = [job.key for job in self.jobs.values() if job.state == BUILDING]
        for key in running:
            self._cancel(key, "drone stopping")
        if running:
            self._bye(running)
            self._wait(lambda: not self._handback_wait, HANDBACK_WAIT)
        self._wait(self._drained, STOP_DRAIN_SECONDS)
        if self.jobs or not self._bye_sent:
            self._bye(list(self.jobs))  # what is left goes back to the queue: no attempt lost
        for job in self.jobs.values():
            if job.state == UPLOADING:
                self._keep(job)

    def _keep(self, job: _Job) -> None:
        """An artifact never stored outlives the drone: one held in memory is written out."""
        try:
            if job.path is None and job.data is not None:
                job.workdir = self._make_workdir(job.key)
                job.path = job.workdir / SIMULATED_ARTIFACT
                job.path.write_bytes(job.data)
            log.warning("job %s: artifact kept at %s (never stored)", job.key, job.path)
        except OSError as exc:
            log.error("job %s: its artifact (never stored) could not be kept: %s", job.key, exc)

    def _bye(self, keys: list[str]) -> None:
        self._send(Bye(drone=self.name, hand_back=keys))
        self._bye_sent = True
        self._handback_wait.update(keys)

    def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        deadline = self.clock() + seconds
        while not done() and self.clock() < deadline and self._graceful:
            self.step(0.05)

    def _drained(self) -> bool:
        gone = not self.welcomed and self.clock() - self._lost_since > LOST_AFTER_BEATS * self.beat
        return not self.jobs or gone

    def close(self) -> None:
        """Release sockets and threads; cancelled builds get JOIN_SECONDS to die."""
        if self._closed:
            return
        self._closed = True
        for job in [j for j in self.jobs.values() if j.state == BUILDING]:
            self._cancel(job.key, "drone closing")
        deadline = time.monotonic() + JOIN_SECONDS
        for job in self.dying:
            if job.finished is None or job.finished.wait(max(0.0, deadline - time.monotonic())):
                _remove(job.workdir)
        self._pool.close()
        self.uploader.close()
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close(0)
        self.ctx.term()
        self.inbox.close()


class _BuildPool:
    """One daemon thread per slot: a build that ignores its cancel cannot hold up the exit of
    the drone (a ThreadPoolExecutor's threads are joined when the interpreter exits)."""

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._size = size
        for i in range(size):
            threading.Thread(target=self._work, name=f"build-{name}-{i + 1}", daemon=True).start()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def close(self) -> None:
        for _ in range(self._size):
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()


def _decode(frame: bytes) -> protocol.Message | None:
    try:
        return protocol.decode(frame)
    except ProtocolError as exc:
        log.warning("dropped a bad frame: %s", exc)
        return None


def _pairs(raw: Any) -> list[tuple[str, int]]:
    items = raw if isinstance(raw, list) else []
    return [(i[0], i[1]) for i in items
            if isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) and isinstance(i[1], int)]


def _remove(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _clear_leftovers(work_dir: Path) -> None:
    """A drone process starts with no jobs, so the job directories in its work dir are what a
    killed predecessor left behind (its leases lapse and the jobs are built again). Only
    directories named like ours go: the work dir may be a path an admin also uses."""
    try:
        stale = [e.path for e in os.scandir(work_dir) if e.is_dir(follow_symlinks=False) and _JOB_DIR.match(e.name)]
    except OSError:
        return  # not there yet: created with the first job
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        log.info("removed %d job director%s left by a previous run from %s", len(stale),
                 "y" if len(stale) == 1 else "ies", work_dir)


def run_drone(config: NodeConfig, once: bool = False) -> None:
    """Blocking entry point for `swarmmesh drone`: SIGTERM stops gracefully, a second one at once."""
    drone = Drone(config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping%s", signum, "" if not drone.stop_requested else " now")
        drone.stop(graceful=True)

    signal.signal(signal.SIGTERM, on_signal)
    drone.run(once=once)
