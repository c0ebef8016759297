"""The leader's job dispatch: drone sessions, push-based delegation, leases, reconciliation.

Only the leader runs it (a follower answers drones with `NotLeader`). Every delegation,
failure and hand-back is committed before anyone acts on it: a `Job` goes out from the
commit callback, never before. Drone liveness is an expiry time renewed by heartbeats
(zguide Majordomo); a drone that goes silent for `lease_seconds` has its jobs put back to
needed through the log. A heartbeat renews the leases of exactly the jobs the drone says it
holds, so a job the drone never got (a lost `Job`, a drone restarted under the same name)
lapses instead of being renewed forever. Messages carry the Raft term of the delegation;
what a drone reports is reconciled against the log (who holds the package), never applied
blindly. Both clocks are injectable, so tests step time instead of sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmmesh import commands, protocol
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.protocol import Busy, Bye, Heartbeat, Hello, JobFailed

if TYPE_CHECKING:
    from swarmmesh.queue import BuildQueue

log = logging.getLogger(__name__)

EXPIRE_PERIOD = 1.0
MAX_ERROR = 8000
#: A drone whose builds take under this long (moving average) also gets jobs to queue, up to
#: what it said it can hold: each slot then starts its next build the moment it frees, instead
#: of a Raft round trip later, and each log entry carries more delegations. Longer builds gain
#: nothing from that, and a queued job could sit behind them, so those drones get work only
#: for free slots.
PREFETCH_BELOW = 1.0
#: ...and no more queued jobs than its slots build in this long, so the work waiting on one
#: drone stays short (a zero-second build fills the queue; a 0.5 s one gets one per 2 slots).
PREFETCH_WINDOW = 0.25

Clock = Callable[[], float]


@dataclass
class DroneSession:
    name: str
    identity: bytes
    cores: int
    slots: int
    builder: str
    last_seen: float
    queue: int = 0                                   # jobs it holds beyond its slots (Hello)
    running: set[str] = field(default_factory=set)   # committed delegations it builds or queues
    pending: set[str] = field(default_factory=set)   # delegations being committed
    rest_until: float = 0.0                          # said it was busy: no new jobs before this
    sent: dict[str, float] = field(default_factory=dict)  # key -> when its Job went out
    build_seconds: float | None = None               # moving average, Job sent to build ended

    @property
    def free(self) -> int:
        """Slots not building nor promised: what dispatch fills first."""
        return self.slots - len(self.running) - len(self.pending)

    @property
    def room(self) -> int:
        """Jobs it can take now: free slots, plus queued ones while its builds are short."""
        took = self.build_seconds
        if took is None or took >= PREFETCH_BELOW:
            return self.free
        return self.free + min(self.queue, math.ceil(self.slots * PREFETCH_WINDOW / max(took, 0.001)))

    def job_sent(self, key: str, now: float) -> None:
        self.sent[key] = now

    def job_ended(self, key: str, now: float) -> None:
        started = self.sent.pop(key, None)
        if started is not None:
            took = now - started
            self.build_seconds = took if self.build_seconds is None else 0.8 * self.build_seconds + 0.2 * took


class Broker(Component):
    """Component of an Orchestrator (see orchestrator.Orchestrator.components).

    `clock` (monotonic) times drone silence; `wall` stamps lease deadlines, which are
    replicated and so must mean the same on every orchestrator."""

    def __init__(self, node: Node, config: NodeConfig, clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.node = node
        self.policy = config.queue
        self._me = config.me()
        self._orchestrators = config.orchestrators
        self.clock, self.wall = clock, wall
        self.drones: dict[str, DroneSession] = {}
        self.inflight: set[str] = set()
        self._term: int | None = None
        self._grace_until = 0.0
        self._next_expire = 0.0
        self._next_beat = 0.0

    # --- component protocol --------------------------------------------------------------
    def close(self) -> None:
        self.drones.clear()

    def accepts(self, msg: protocol.Message) -> bool:
        return isinstance(msg, Hello | Heartbeat | JobFailed | Bye | Busy)

    def on_leadership(self, term: int | None) -> None:
        """New term: forget sessions (drones re-Hello) and give them a lease's grace before
        anything expires, so a failover alone never requeues a running build."""
        self._term = term
        self.drones.clear()
        self.inflight.clear()
        self._grace_until = self.clock() + self.policy.lease_seconds

    def handle(self, identity: bytes, msg: protocol.Message) -> None:
        if self._term is None:
            self.node.send(identity, self._not_leader())
            return
        drone = getattr(msg, "drone", "")
        if identity != drone.encode():  # drones use their name as their socket identity
            log.warning("rejected a %r message from %r claiming to be drone %r", msg.TYPE, identity, drone)
            return
        # each handler takes its own message type: Any is the one type all of them accept
        handler: dict[type[protocol.Message], Callable[[bytes, Any], None]] = {
            Hello: self._hello, Heartbeat: self._heartbeat, JobFailed: self._failed, Bye: self._bye, Busy: self._busy}
        handler[type(msg)](identity, msg)

    def tick(self, now: float) -> None:
        if self._term is None:
            return
        if now >= self._next_beat:
            self._next_beat = now + self.policy.heartbeat_seconds
            self._beat()
        if now >= self._next_expire and now >= self._grace_until:
            self._next_expire = now + EXPIRE_PERIOD
            self._reap(now)
        self.dispatch()

    # --- messages ----------------------------------------------------------------------
    def _not_leader(self) -> protocol.NotLeader:
        leader = self.node.leader_name()  # asked only while not leading: what Raft says
        addr = next((o for o in self._orchestrators if o.name == leader), None)
        return protocol.NotLeader(leader=leader, broker=addr.broker_url if addr else None)

    def _say_hello(self, identity: bytes) -> None:
        """A drone this leader has no session for: point it here, and it says hello."""
        self.node.send(identity, protocol.NotLeader(leader=self.node.name, broker=self._me.broker_url))

    def _hello(self, identity: bytes, msg: Hello) -> None:
        if not _valid_drone(msg):
            log.warning("rejected a hello from %r: bad name, cores, slots or queue", identity)
            return
        session = DroneSession(msg.drone, identity, msg.cores, msg.slots, msg.builder, self.clock(),
                               queue=msg.queue)
        self.drones[msg.drone] = session
        adopt, drop, stored, resend = self.node.read(lambda q: _reconcile(q, msg))
        session.running.update([k for k, _ in adopt] + [job.key for job in resend])
        log.info("drone %s joined (%d cores, %d slots, %s): adopt %d, drop %d, resend %d",
                 msg.drone, msg.cores, msg.slots, msg.builder, len(adopt), len(drop), len(resend))
        me = self._me
        self.node.send(identity, protocol.Welcome(leader=self.node.name, term=self._term or 0,
                                                  artifacts=me.artifacts_url, staging=me.binhost_url + "staging/",
                                                  adopt=adopt, drop=drop))
        for key, sha in stored:
            self.node.send(identity, protocol.Stored(key=key, sha256=sha))
        for job in resend:  # committed to it, but it did not mention them: it never got them
            self.node.send(identity, job)
            session.job_sent(job.key, self.clock())
        if adopt:
            self._renew(session, [k for k, _ in adopt])
        self.dispatch()

    def _heartbeat(self, identity: bytes, msg: Heartbeat) -> None:
        session = self.drones.get(msg.drone)
        if session is None or session.identity != identity:
            self._say_hello(identity)  # e.g. this leader just took over
            return
        session.last_seen = self.clock()
        held = set(self.node.read(lambda q: q.delegated_to(msg.drone)))
        session.running &= held  # leases that lapsed or were requeued free their slots
        session.sent = {k: t for k, t in session.sent.items() if k in held}
        keys = [k for k, _ in _pairs(msg.running)]
        if keys:
            self._renew(session, keys)

    def _failed(self, identity: bytes, msg: JobFailed) -> None:
        session = self.drones.get(msg.drone)
        if session is not None:
            session.running.discard(msg.key)
            session.job_ended(msg.key, self.clock())
        if not self.node.read(lambda q: _held_by(q, msg.key, msg.drone)):
            log.warning("failure report of %s from %s rejected: the job is not delegated to it", msg.key, msg.drone)
            self.node.send(identity, protocol.Cancel(key=msg.key, reason="not delegated to you"))
            return
        error = msg.error[-MAX_ERROR:]
        log.info("job %s failed on %s: %s", msg.key, msg.drone, (error.splitlines() or [""])[-1])

        def then(result: Any, err: str | None) -> None:
            if err is None:  # committed, whatever the verdict: the report is settled
                self.node.send(identity, protocol.Ack(key=msg.key, kind="failed"))
                if result.get("grounded"):
                    log.warning("drone %s grounded after repeated failures; `swarmmesh unblock %s` "
                                "lets it build again", msg.drone, msg.drone)

        self.node.commit(commands.Fail(msg.key, msg.drone, msg.term, error, self.wall(),
                                       self.policy.max_attempts, self.policy.ground_after), then=then)

    def _busy(self, identity: bytes, msg: Busy) -> None:
        """Our slot count was ahead of the drone's (e.g. a cancelled build still dying): the job
        goes back to needed without an attempt charged, and the drone gets a heartbeat's rest."""
        session = self.drones.get(msg.drone)
        if session is not None:
            session.running.discard(msg.key)
            session.sent.pop(msg.key, None)
            session.rest_until = self.clock() + self.policy.heartbeat_seconds
        if self.node.read(lambda q: _held_by(q, msg.key, msg.drone)):
            log.info("drone %s had no free slot for %s: requeued", msg.drone, msg.key)
            self.node.commit(commands.Requeue([msg.key], f"{msg.drone} had no free slot", self.wall()))

    def _bye(self, identity: bytes, msg: Bye) -> None:
        self.drones.pop(msg.drone, None)
        keys = [k for k in msg.hand_back if isinstance(k, str)]
        held = self.node.read(lambda q: [k for k in keys if _held_by(q, k, msg.drone)])
        log.info("drone %s leaving, handing back %d job(s) (%d held)", msg.drone, len(keys), len(held))

        def acknowledge(result: Any = None, err: str | None = None) -> None:
            if err is None:
                for key in keys:
                    self.node.send(identity, protocol.Ack(key=key, kind="handback"))

        if held:
            self.node.commit(commands.Requeue(held, f"handed back by {msg.drone}", self.wall()), then=acknowledge)
        else:
            acknowledge()

    def drop(self, drone: str, reason: str) -> None:
        """Forget a drone now (its key was revoked): its jobs go back to needed through the log,
        and whatever it sends from now on is refused by the gatekeeper."""
        if self._term is None:
            return  # not leading: the next leader never welcomes it
        self.drones.pop(drone, None)
        log.warning("drone %s dropped: %s; its jobs go back to needed", drone, reason)
        self.node.commit(commands.ReleaseDrone(drone, reason, self.wall()))

    def settle(self, drone: str, key: str) -> None:
        """A build ended (its artifact arrived, or was rejected): free the slot and refill it."""
        session = self.drones.get(drone)
        if session is not None:
            session.running.discard(key)
            session.job_ended(key, self.clock())
        self.dispatch()

    # --- leases --------------------------------------------------------------------------
    def _renew(self, session: DroneSession, keys: list[str]) -> None:
        deadline = self.wall() + self.policy.lease_seconds
        self.node.commit(commands.Renew(session.name, self._term or 0, deadline, keys))

    def _beat(self) -> None:
        for session in list(self.drones.values()):
            self.node.send(session.identity, Heartbeat(drone=self.node.name, running=sorted(session.running)))

    def _reap(self, now: float) -> None:
        """Drones silent for a lease lose their jobs; stray leases (drones that never came
        back after a failover, jobs a drone stopped mentioning) expire through the log."""
        for name, session in list(self.drones.items()):
            if now - session.last_seen > self.policy.lease_seconds:
                del self.drones[name]
                log.warning("drone %s silent for %.1fs: its jobs go back to needed", name, now - session.last_seen)
                self.node.commit(commands.ReleaseDrone(name, "drone went silent", self.wall()))
        wall = self.wall()
        if self.node.read(lambda q: q.lease_overdue(wall)):
            self.node.commit(commands.Expire(wall))

    # --- dispatch ------------------------------------------------------------------------
    def dispatch(self, fresh: list[str] | None = None) -> None:
        """Hand needed packages to drones with room (see DroneSession.room), most free slots
        and cores first. `fresh`: instead of the queue's ready packages, these of a submission
        not yet committed (see dispatch_new)."""
        now = self.clock()
        free = [d for d in self.drones.values() if d.room > 0 and d.rest_until <= now]
        if not free or self._term is None:
            return
        grounded, picks = self.node.read(lambda q: _plan(q, free, self.inflight, fresh))
        free = [d for d in free if d.name not in grounded]
        for key, failed_on in picks:
            drone = _choose(free, failed_on)
            if drone is None:
                return
            self._delegate(key, drone)

    def dispatch_new(self, keys: list[str], deps: dict | None) -> None:
        """Delegate packages of a submission whose `submit` is queued but not yet committed,
        so that they leave in the same log entry, after it: an idle swarm starts building one
        Raft round trip sooner. Only packages not queued yet and with no dependency listed;
        free slots exist only when nothing queued was dispatchable, so no older package is
        passed over. A wrong guess (the submit refused) only fails those delegations."""
        gated = set(deps or ())
        self.dispatch(fresh=[k for k in dict.fromkeys(keys) if k not in gated])

    def _delegate(self, key: str, session: DroneSession) -> None:
        session.pending.add(key)
        self.inflight.add(key)
        now = self.wall()
        term = self._term or 0

        def then(result: Any, err: str | None) -> None:
            session.pending.discard(key)
            self.inflight.discard(key)
            if err is not None or not result.get("ok"):
                log.info("delegation of %s to %s not committed: %s", key, session.name, err or result.get("code"))
                return
            current = self.drones.get(session.name)  # it may have said hello again meanwhile
            if current is None:
                return  # gone: its lease lapses, or it says hello and gets the job again
            current.running.add(key)
            job = self.node.read(lambda q: _job(q, key, term))
            if job is not None and self.node.send(current.identity, job):
                current.job_sent(key, self.clock())
                log.debug("job %s -> %s", key, session.name)

        self.node.commit(commands.Delegate(key, session.name, term, now, now + self.policy.lease_seconds), then=then)

    # --- balance -------------------------------------------------------------------------
    def balance(self, reply: Any) -> None:
        """Reclaim leases from vanished drones (no live session holds them), and have every
        drone that may queue jobs hand back those it has not started, so that idle drones
        take them. (A drone queues only while its builds are short, and hands back by itself
        any job queued for longer than drone.QUEUE_WAIT: this only makes it happen now.)"""
        live = set(self.drones)
        stray = self.node.read(lambda q: q.delegated_elsewhere(live))
        asked = sorted(d.name for d in self.drones.values() if d.queue > 0 and d.running)
        for name in asked:
            self.node.send(self.drones[name].identity, protocol.Unqueue(reason="balance"))

        def then(result: Any, err: str | None) -> None:
            reply({"requeued": stray if err is None else [], "drones": sorted(live), "unqueued": asked,
                   "error": err})

        if not stray:
            reply({"requeued": [], "drones": sorted(live), "unqueued": asked, "error": None})
            return
        self.node.commit(commands.Requeue(stray, "balance: drone gone", self.wall()), then=then)


def _valid_drone(msg: Hello) -> bool:
    return (0 < len(msg.drone) <= 64 and msg.drone.isprintable() and 0 < msg.slots <= 256 and 0 < msg.cores <= 4096
            and 0 <= msg.queue <= 256)


def _held_by(q: BuildQueue, key: str, drone: str) -> bool:
    pkg = q.get(key)
    return pkg is not None and pkg.state == "delegated" and pkg.drone == drone


def _job(q: BuildQueue, key: str, term: int) -> protocol.Job | None:
    pkg = q.peek(key)
    if pkg is None:
        return None
    return protocol.Job(key=key, cpv=pkg.cpv, term=term, attempt=pkg.attempts, repo=pkg.repo)


def _reconcile(q: BuildQueue, msg: Hello) -> tuple[list, list, list, list[protocol.Job]]:
    """What a (re)joining drone keeps, drops, may delete as stored, and was never sent.

    Only the drone the log names as the package's last holder may keep it: an upload for a
    package that went to another drone meanwhile is dropped, not raced."""
    adopt, drop, stored = [], [], []
    announced = _pairs(msg.running) + _pairs(msg.uploads)
    uploads = {k for k, _ in _pairs(msg.uploads)}
    for key, _term in announced:
        pkg = q.get(key)
        if pkg is None or pkg.drone != msg.drone:
            drop.append(key)
        elif pkg.state == "received" and key in uploads and pkg.result:
            stored.append((key, pkg.result.get("sha256", "")))
        elif pkg.state == "delegated" or (key in uploads and pkg.state == "needed"):
            adopt.append([key, pkg.term])
        else:
            drop.append(key)
    known = {k for k, _ in announced}
    resend = [_job(q, k, pkg.term) for k in q.delegated_to(msg.drone)  # delegated keys are all queued
              if k not in known and (pkg := q.peek(k)) is not None]
    return adopt, drop, stored, [j for j in resend if j is not None]


def _pairs(raw: list) -> list[tuple[str, int]]:
    out = []
    for item in raw:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int):
            out.append((item[0], item[1]))
    return out


def _plan(q: BuildQueue, free: list[DroneSession], inflight: set[str],
          fresh: list[str] | None) -> tuple[set[str], list[tuple[str, list]]]:
    """Grounded drones, and the next dispatchable packages for the capacity left (one read);
    with `fresh`, those of its keys that are not queued yet instead."""
    grounded = set(q.grounded())
    capacity = sum(d.room for d in free if d.name not in grounded)
    if capacity <= 0:
        return grounded, []
    if fresh is not None:
        return grounded, [(k, []) for k in fresh if k not in inflight and q.peek(k) is None][:capacity]
    return grounded, [(k, list(pkg.failed_on)) for k in q.dispatchable(capacity, exclude=inflight)
                      if (pkg := q.peek(k)) is not None]  # dispatchable keys are all queued


def _choose(free: list[DroneSession], failed_on: list[str]) -> DroneSession | None:
    """Most free slots, then most room to queue, then most cores; a retry prefers a drone it
    has not failed on."""
    candidates = [d for d in free if d.room > 0]
    fresh = [d for d in candidates if d.name not in failed_on]
    pool = fresh or candidates
    if not pool:
        return None
    return max(pool, key=lambda d: (d.free, d.room, d.cores, d.name))
