"""One orchestrator node: Raft membership, the ROUTER loop, leader events.

A single thread owns every ZeroMQ socket. `run` is a loop over `step(now)`: one pass reads
what arrived, then gives the parts their periodic work at `now`; everything a pass does is
stamped with its `now` (monotonic) and `wall` time, which the parts ask of their `Node`
instead of reading clocks themselves, so a test can step a node through time.

PySyncObj applies commands on its own thread; commit callbacks never touch sockets, they
post a closure to the `Inbox` (transport.py), which wakes the loop through a pipe, so
replies go out only after the command is committed.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import zmq

from swarmmesh import commands, keys, protocol, transport
from swarmmesh.artifacts import Receiver
from swarmmesh.binhost import Binhost
from swarmmesh.broker import Broker
from swarmmesh.commands import Command
from swarmmesh.component import Component, Then
from swarmmesh.config import NodeConfig
from swarmmesh.control import Control
from swarmmesh.election import Election
from swarmmesh.errors import ProtocolError
from swarmmesh.groupcommit import Outbox
from swarmmesh.incoming import Incoming
from swarmmesh.queue import BuildQueue
from swarmmesh.releases import Releases
from swarmmesh.replication import Replicator
from swarmmesh.signer import from_config as signer_from_config
from swarmmesh.store import Storage

log = logging.getLogger(__name__)

TICK = 0.1
EVENT_PERIOD = 0.5

T = TypeVar("T")


class Orchestrator:
    """Wires election, control API and (when leading) the broker around one poll loop; as
    `Node` (component.py), the one thing its parts know of it."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock, self._wall_clock = clock, wall
        self._now, self._wall = clock(), wall()  # the time of the current pass
        self.me = config.me()
        self.election = Election(config)
        self.ctx = transport.context(keys.node_curve(config))
        self.gate = self._gatekeeper(config)
        self.router = transport.router(self.ctx, transport.tcp_bind(self.me.host, self.me.broker_port))
        self.events = transport.pub(self.ctx, transport.tcp_bind(self.me.host, self.me.events_port))
        self.inbox = transport.Inbox()
        self._stop = False
        self._leading_term: int | None = None
        self._claimed_term: int | None = None
        self._next_event = 0.0
        self._outgoing: Outbox[tuple[Command, Callable[[Any, str | None], None]]] = Outbox()
        # The wiring diagram. Each part gets this node (the `Node` interface), its settings,
        # the node's storage if it keeps or serves files, and the functions of other parts it
        # calls; nothing else reaches it.
        self.storage = Storage(Path(config.data_dir))
        self.signer = signer_from_config(config.signing, self.storage.store.tmp)  # None: unsigned
        self.broker = Broker(self, config, clock=self.now, wall=self.wall)
        self.receiver = Receiver(self, config, self.storage, self.ctx, settle=self.broker.settle,
                                 signer=self.signer, gate=self.gate)
        self.releases = Releases(self, config, self.storage, signer=self.signer)
        self.replicator = Replicator(self, config, self.storage, relink=self.releases.relink)
        self.incoming = Incoming(self, config, self.storage, signer=self.signer)
        self.binhost = Binhost(self, config, self.storage, serving=self.releases.serving_release,
                               staging_feed=self.releases.staging_feed, signer=self.signer)
        self.control = Control(self, config, fingerprint=self.election.fingerprint,
                               dispatch_new=self.broker.dispatch_new, balance=self.broker.balance,
                               serving=self.releases.serving_release)
        # the order of each loop pass: requests and timeouts first, then jobs, uploads, files
        self.components: list[Component] = [self.control, self.broker, self.receiver, self.replicator,
                                            self.releases, self.incoming, self.binhost]
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.inbox.fd, zmq.POLLIN)
        for comp in self.components:
            comp.register(self.poller)

    def _gatekeeper(self, config: NodeConfig) -> keys.Gatekeeper:
        """CURVE on: only authorized keys connect, and each message is checked against its key;
        a key removed from the directory has its drone's session dropped at once."""
        if self.ctx.curve is None or config.keys is None:
            return keys.Gatekeeper()
        authorized = keys.AuthorizedKeys(config.keys.authorized,
                                         on_removed=lambda gone: self.inbox.post(lambda: self._revoked(gone)))
        return keys.Gatekeeper(authorized, self.ctx)

    def _revoked(self, gone: list[keys.KeyInfo]) -> None:
        for info in gone:
            if info.role == "drone":
                self.broker.drop(info.name, f"its key {info.short} was revoked")

    # --- the Node interface (component.py): what the parts may ask -----------------------
    def commit(self, cmd: Command, then: Then | None = None, lazy: bool = False) -> None:
        """Replicate `cmd` (commands.py); `then(result, error)` runs later on this loop's thread.

        Commands leave together, as one log entry, when groupcommit.py says so: under load one
        entry carries many commands, when idle a command leaves at the end of the loop pass.
        `lazy`: bookkeeping nobody waits for, which may wait longer for company."""

        def done(result: Any, err: str | None) -> None:
            if then is not None:
                self.inbox.post(lambda: then(result, err))

        self._outgoing.add((cmd, done), self._now, lazy=lazy)

    def _flush(self, now: float) -> None:
        for batch in self._outgoing.take(now):
            self.election.commit_many(batch, landed=lambda: self.inbox.post(self._outgoing.landed))

    def _poll_ms(self, now: float) -> int:
        """Sleep until the next tick, or until the queued commands are due if that is sooner."""
        due = self._outgoing.due()
        wait = TICK if due is None else min(TICK, max(0.0, due - now))
        return math.ceil(wait * 1000)

    def send(self, identity: bytes, msg: protocol.Message) -> bool:
        try:
            self.router.send_multipart([identity, protocol.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # unknown peer (ROUTER_MANDATORY) or full queue
            log.warning("could not send %s to %r: %s", msg.TYPE, identity, exc)
            return False

    def is_leader(self) -> bool:
        return self._leading_term is not None

    @property
    def term(self) -> int:
        return self.election.term

    def leader_name(self) -> str | None:
        return self.name if self.is_leader() else self.election.leader_name()

    @property
    def name(self) -> str:
        return self.config.name

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread (components' worker threads must not touch sockets)."""
        self.inbox.post(fn)

    def role(self) -> str:
        return "leader" if self.is_leader() else self.election.role()

    def read(self, fn: Callable[[BuildQueue], T]) -> T:
        return self.election.read(fn)

    def indexes(self) -> tuple[int, int]:
        return self.election.indexes()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        """Until `stop()`: wait for input (at most until the next tick, or until the queued
        commands are due), then one `step`."""
        self._announce_ready()
        while not self._stop:
            ready = dict(self.poller.poll(self._poll_ms(self._clock())))
            self.step(self._clock(), ready=ready)

    def step(self, now: float, wall: float | None = None, ready: dict | None = None) -> None:
        """One pass of the loop at `now` (monotonic; `wall`: epoch seconds, read from the
        clock if not given): what the sockets and the inbox hold (`ready`: what a poll found,
        else polled without waiting), the parts' periodic work, the commands that are due."""
        self._now, self._wall = now, wall if wall is not None else self._wall_clock()
        if ready is None:
            ready = dict(self.poller.poll(0))
        if self.router in ready:
            transport.drain(self.router, self._dispatch, 1000, copy=False)
        if self.inbox.fd in ready:
            self.inbox.run_pending()
        for comp in self.components:
            comp.on_poll(ready)
        self._tick(now)
        self._flush(now)

    def stop(self) -> None:
        self._stop = True

    def close(self) -> None:
        for comp in self.components:
            comp.close()
        self.storage.close()
        self.election.close()
        self.gate.close()
        self.router.close(0)
        self.events.close(0)
        self.ctx.term()
        self.inbox.close()

    def _announce_ready(self) -> None:
        line = f"swarmmesh orchestrator {self.name} ready"
        log.info("%s (raft %s, broker %s)", line, self.me.raft_address, self.me.broker_url)
        print(line, flush=True)

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 2:
            log.warning("dropped a message of %d frames (expected identity + payload)", len(frames))
            return
        identity, payload = frames[0].bytes, frames[1]
        try:
            msg = protocol.decode(payload.buffer)
        except ProtocolError as exc:
            log.warning("rejected a frame from %r: %s", identity, exc)
            return
        if not self.gate.allows(payload, msg, identity):
            return
        for comp in self.components:
            if comp.accepts(msg):
                comp.handle(identity, msg)
                return
        log.warning("no handler for a %r message from %r", msg.TYPE, identity)

    # --- leadership and events ---------------------------------------------------------
    def _tick(self, now: float) -> None:
        self._check_leadership()
        if now >= self._next_event:
            self._next_event = now + EVENT_PERIOD
            self._publish()
        for comp in self.components:
            comp.tick(now)

    def _check_leadership(self) -> None:
        term = self.election.won_term()
        if term is None:
            self._set_leading(None)
            return
        if self.election.is_leader():
            self._set_leading(term)
        elif self._claimed_term != term:
            self._claimed_term = term
            self.commit(commands.NoteLeader(term, self.name), then=self._on_claim)

    def _on_claim(self, result: Any, err: str | None) -> None:
        if err is not None:
            log.warning("could not claim leadership: %s", err)
            self._claimed_term = None

    def _set_leading(self, term: int | None) -> None:
        if term == self._leading_term:
            return
        previous, self._leading_term = self._leading_term, term
        if term is not None:
            log.info("leading in term %d", term)
            self._publish()
        elif previous is not None:
            log.info("no longer leading (was term %d)", previous)
        for comp in self.components:
            comp.on_leadership(term)

    def _publish(self) -> None:
        counts = self.election.read(lambda q: q.counts())
        commit, applied = self.election.indexes()
        node = protocol.NodeInfo(
            name=self.name, role=self.role(),
            term=self.election.term, leader=self.leader_name(), commit_index=commit,
            applied_index=applied, counts=counts, sent_at=self._wall,
        )
        self.events.send_multipart([protocol.TOPIC_NODE, protocol.encode(node)])
        if self.is_leader():
            self.events.send_multipart([protocol.TOPIC_LEADER, protocol.encode(self.leader_info())])

    def leader_info(self) -> protocol.LeaderInfo:
        return protocol.LeaderInfo(
            name=self.name, term=self._leading_term or self.election.term,
            broker=self.me.broker_url, artifacts=self.me.artifacts_url, events=self.me.events_url,
            binhost=self.me.binhost_url, sent_at=self._wall,
        )


def run_orchestrator(config: NodeConfig) -> None:
    """Blocking entry point for `swarmmesh orchestrator`: runs until SIGTERM/SIGINT."""
    node = Orchestrator(config)

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.run()
    finally:
        node.close()
        sys.stdout.flush()
