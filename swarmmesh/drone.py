"""A drone: follows the leader, builds what it is given, streams the results back.

One thread owns the DEALER and SUB sockets and every piece of job state (`step()` is one
iteration of its loop, so tests drive it directly). Builds run on the threads of a
`swarmmesh.buildpool.BuildPool` and uploads on the `swarmmesh.uploader.Uploader`'s thread with
its own PUSH socket; both only post results back to the loop (zmq sockets are not
thread-safe). Nothing a drone reports is assumed delivered: an artifact file is deleted only
after `Stored`, a failure is repeated until `Ack`, and both are sent again to whichever leader
comes next.
"""

from __future__ import annotations

import collections
import itertools
import logging
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from swarmmesh import gentoo, keys, protocol, transport
from swarmmesh.builders import SIMULATED_ARTIFACT, Builder, BuildResult, check_repo, make_builder
from swarmmesh.buildpool import BUILDING, FAILED, QUEUED, UPLOADING, BuildPool, DroneJob, WorkDirs, remove
from swarmmesh.config import NodeConfig
from swarmmesh.errors import InputError, ProtocolError
from swarmmesh.protocol import Bye, Heartbeat, Hello, Job, JobFailed, LeaderInfo, Welcome
from swarmmesh.uploader import Upload, Uploader

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 30.0      # no Stored / Ack for this long: send the upload or failure again
MAX_UPLOAD_RETRIES = 3     # re-uploads after `Rejected(retry=True)` before reporting a failure
HELLO_BACKOFF = (0.25, 5.0)
LOST_AFTER_BEATS = 3       # heartbeat periods of silence after which the leader is lost
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
        self.workdirs = WorkDirs(self.work_dir)
        self.beat = config.queue.heartbeat_seconds
        self.jobs: dict[str, DroneJob] = {}
        self._queued: collections.deque[DroneJob] = collections.deque()  # QUEUED jobs, oldest first
        self.dying: list[DroneJob] = []       # cancelled builds whose thread has not returned yet
        self.settled = 0
        self.inbox = transport.Inbox()  # builds and uploads run in threads; results come back here
        self.ctx = transport.context(keys.node_curve(config))  # CURVE on every socket made from it
        events = [o.events_url for o in config.orchestrators]
        self.sub = transport.sub(self.ctx, events, [protocol.TOPIC_LEADER])
        self.dealer: zmq.Socket | None = None
        self.broker_url: str | None = None
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.inbox.fd, zmq.POLLIN)
        self.uploader = Uploader(self.ctx, self.name, self._upload_report)
        self._pool = BuildPool(self.dc.slots, self.name)
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
        self.workdirs.clear_leftovers()
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
        job = DroneJob(msg.key, msg.cpv, msg.repo, msg.term, None, self.clock(), attempt=msg.attempt)
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

    def _hand_back(self, job: DroneJob, why: str) -> None:
        """A queued job goes back to needed, no attempt charged (`Busy` does that)."""
        self._queued.remove(job)
        self.jobs.pop(job.key, None)
        self._send(protocol.Busy(drone=self.name, key=job.key, term=job.term))
        self._ended(job, f"handed back unstarted ({why})")

    def _start(self, job: DroneJob) -> None:
        try:
            gentoo.cpv_parts(job.cpv)  # its parts may become paths: refuse what is not a CPV
            check_repo(job.repo)
            if getattr(self.builder, "needs_workdir", True):
                job.workdir = self.workdirs.make(job.key)
        except (InputError, OSError) as exc:
            self._fail(job, f"cannot start the build: {exc}")
            return
        self._pool.build(self.builder, job, self._build_report)
        log.debug("job %s (attempt %d, term %d) started in %s", job.key, job.attempt, job.term, job.workdir)

    def _build_report(self, job: DroneJob, result: BuildResult) -> None:
        """Called on a build thread: hand the result to the loop."""
        self._post(lambda: self._on_built(job, result))

    def _on_built(self, job: DroneJob, result: BuildResult) -> None:
        if job in self.dying:
            self.dying.remove(job)
            remove(job.workdir)
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
            remove(job.workdir)
        self._ended(job, f"cancelled ({reason})")

    # --- reporting results ---------------------------------------------------------------------
    def _fail(self, job: DroneJob, error: str) -> None:
        if len(error) > MAX_ERROR:
            error = error[: MAX_ERROR // 4] + "\n[...]\n" + error[-MAX_ERROR // 2:]
        job.state, job.error = FAILED, error
        self._report(job)

    def _report(self, job: DroneJob) -> None:
        """Send (or send again) what the leader must acknowledge: the artifact or the failure."""
        job.resend_at = None
        if not self.welcomed:
            return  # sent once a leader welcomes us
        if job.state == FAILED:
            self._send(JobFailed(drone=self.name, key=job.key, term=job.term, error=job.error))
            job.resend_at = self.clock() + ANSWER_TIMEOUT
        elif job.state == UPLOADING and (job.path or job.data) is not None:
            job.upload_id = uuid.uuid4().hex
            task = Upload(job.key, job.term, job.path, job.data, job.upload_id, self._generation, job.cancel)
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

    def _settle(self, job: DroneJob, outcome: str) -> None:
        self.jobs.pop(job.key, None)
        remove(job.workdir)
        self._ended(job, outcome)

    def _ended(self, job: DroneJob, outcome: str) -> None:
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

    def _keep(self, job: DroneJob) -> None:
        """An artifact never stored outlives the drone: one held in memory is written out."""
        try:
            if job.path is None and job.data is not None:
                job.workdir = self.workdirs.make(job.key)
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
                remove(job.workdir)
        self._pool.close()
        self.uploader.close()
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close(0)
        self.ctx.term()
        self.inbox.close()


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


def run_drone(config: NodeConfig, once: bool = False) -> None:
    """Blocking entry point for `swarmmesh drone`: SIGTERM stops gracefully, a second one at once."""
    drone = Drone(config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping%s", signum, "" if not drone.stop_requested else " now")
        drone.stop(graceful=True)

    signal.signal(signal.SIGTERM, on_signal)
    drone.run(once=once)
