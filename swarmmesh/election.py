"""The PySyncObj shell around the build queue: replication, persistence, leadership.

The queue itself (queue.py) is pure; this module only forwards `@replicated` commands to it,
under a lock because PySyncObj applies commands on its own thread while the orchestrator's
socket loop reads the queue. Results come back to callers through callbacks (as values,
never as exceptions across threads), so nothing ever blocks the Raft thread.

Leadership is judged conservatively: a node acts as leader only when PySyncObj says so AND
its own `note_leader` entry for the current term has been applied, which proves that every
entry of earlier terms is applied locally and that a majority accepted this leader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, replicated

from swarmmesh import commands
from swarmmesh.commands import Command, NoteLeader
from swarmmesh.config import MIN_SECRET_LENGTH, NodeConfig
from swarmmesh.errors import ConfigError
from swarmmesh.queue import BuildQueue
from swarmmesh.raftcipher import SealedSyncObj

log = logging.getLogger(__name__)

T = TypeVar("T")

_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER

#: callback(result, error_text); error_text is None on success.
Done = Callable[[Any, "str | None"], None]

_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the Raft command queue is full; retry shortly",
    FAIL_REASON.MISSING_LEADER: "no leader is known; retry once an election has finished",
    FAIL_REASON.DISCARDED: "a new leader discarded the command; retry",
    FAIL_REASON.NOT_LEADER: "this orchestrator lost leadership before committing; retry",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the command committed; retry",
    FAIL_REASON.REQUEST_DENIED: "the command was denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "the outcome of the command is unknown; check status and retry",
}



class QueueState(SyncObjConsumer):
    """The replicated part: a BuildQueue plus the commands that change it."""

    def __init__(self) -> None:
        # set before super().__init__, so kept out of snapshots: local bookkeeping only
        self.lock = threading.RLock()
        self._changes = 0
        self._fingerprint = (-1, "")
        super().__init__()
        self.queue = BuildQueue()

    def _deserialize(self, data: dict) -> None:
        with self.lock:
            super()._deserialize(data)
            self._changes += 1

    def _apply(self, cmd: Command) -> Any:
        with self.lock:
            if isinstance(cmd, NoteLeader) and self._stale_claim(cmd.term):
                return {"ok": False, "code": "stale_claim", "term": cmd.term}
            self._changes += 1
            return self.queue.apply(cmd)

    def _stale_claim(self, term: int) -> bool:
        """A claim to lead term T counts only if the leader of T appended it, i.e. its log entry
        is of term T. A claim queued by a leader that stepped down before appending it is
        forwarded by PySyncObj to the next leader and lands in a later term: that one is stale,
        not a second leader. Every node applies the same entry, so all decide alike."""
        entry = _entry_term(getattr(self, "_syncObj", None))
        return entry is not None and entry != term

    def fingerprint(self) -> str:
        """The queue's fingerprint, hashed again only after a change: `status` asks for it on
        every call (gateway /status, health checks) and a 20k-package hash costs ~0.1 s."""
        with self.lock:
            if self._fingerprint[0] != self._changes:
                self._fingerprint = (self._changes, self.queue.fingerprint())
            return self._fingerprint[1]

    # One @replicated method per command, named as the command: these names are the journal's
    # and the wire's (PySyncObj numbers the methods by their sorted names), the arguments
    # those of commands.py, in field order.
    @replicated
    def note_leader(self, *args: Any) -> dict:
        return self._apply(commands.NoteLeader(*args))

    @replicated
    def submit(self, *args: Any) -> dict:
        return self._apply(commands.Submit(*args))

    @replicated
    def delegate(self, *args: Any) -> dict:
        return self._apply(commands.Delegate(*args))

    @replicated
    def renew(self, *args: Any) -> dict:
        return self._apply(commands.Renew(*args))

    @replicated
    def complete(self, *args: Any) -> dict:
        return self._apply(commands.Complete(*args))

    @replicated
    def fail(self, *args: Any) -> dict:
        return self._apply(commands.Fail(*args))

    @replicated
    def requeue(self, *args: Any) -> dict:
        return self._apply(commands.Requeue(*args))

    @replicated
    def expire(self, *args: Any) -> dict:
        return self._apply(commands.Expire(*args))

    @replicated
    def release_drone(self, *args: Any) -> dict:
        return self._apply(commands.ReleaseDrone(*args))

    @replicated
    def unblock(self, *args: Any) -> dict:
        return self._apply(commands.Unblock(*args))

    @replicated
    def finalize(self, *args: Any) -> dict:
        return self._apply(commands.Finalize(*args))

    @replicated
    def reset(self, *args: Any) -> dict:
        return self._apply(commands.Reset(*args))

    @replicated
    def rollback(self, *args: Any) -> dict:
        return self._apply(commands.Rollback(*args))

    @replicated
    def hold(self, *args: Any) -> dict:
        return self._apply(commands.Hold(*args))

    @replicated
    def unhold(self, *args: Any) -> dict:
        return self._apply(commands.Unhold(*args))

    @replicated
    def lose(self, *args: Any) -> dict:
        return self._apply(commands.Lose(*args))

    @replicated
    def update(self, commands: list) -> list:
        """Several commands in one log entry, applied in order, one result each.

        Why: under load each package costs a delegation, a completion and a `hold` per
        follower; one entry per loop pass instead of one per command cuts Raft's per-entry
        work (pickling, encryption, journal, an append round per entry) several-fold.
        Named to sort after every other command: PySyncObj numbers commands by name, so a
        journal written before this command existed replays unchanged."""
        with self.lock:
            return [self._apply_listed(name, args) for name, args in commands]

    def _apply_listed(self, name: str, args: list) -> Any:
        cmd = commands.decode(name, args)
        if cmd is None:
            log.error("ignored unknown command %r in a batch", name)
            return {"ok": False, "code": "unknown_command"}
        return self._apply(cmd)


def _entry_term(raft: Any) -> int | None:
    """The term of the log entry PySyncObj is applying (entry lastApplied + 1, on its thread);
    None if this PySyncObj does not expose it (then claims are taken as they come)."""
    try:
        index = raft._SyncObj__raftLastApplied + 1
        return int(raft._SyncObj__getEntries(index, 1)[0][2])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def raft_conf(config: NodeConfig, on_state: Callable[[int, int], None] | None = None) -> SyncObjConf:
    """PySyncObj settings from the node config: fast failover, persistence. Encryption is
    `SealedSyncObj`'s (raftcipher.py), keyed by the secret checked here."""
    if len(config.secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{config.path}: [cluster] secret: missing or shorter than {MIN_SECRET_LENGTH} characters; "
            "without it Raft traffic is unauthenticated pickles. Set the same long random secret "
            "on every orchestrator (`swarmmesh cluster init` generates one)."
        )
    data = Path(config.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    tuning = config.raft
    return SyncObjConf(
        password=None,  # SealedSyncObj seals every message with the secret instead of Fernet
        raftMinTimeout=tuning.election_min,
        raftMaxTimeout=tuning.election_max,
        appendEntriesPeriod=tuning.append_period,
        leaderFallbackTimeout=tuning.leader_fallback,
        connectionRetryTime=tuning.connection_retry,
        connectionTimeout=tuning.connection_timeout,
        fullDumpFile=str(data / "raft.dump"),
        journalFile=str(data / "raft.journal"),
        commandsWaitLeader=False,
        appendEntriesUseBatch=False,  # with batching each commit waits one append period (FACTS.md)
        dynamicMembershipChange=False,
        useFork=False,
        logCompactionMinEntries=20_000,
        logCompactionMinTime=60,
        bindAddress=f"{config.me().host}:{config.me().raft_port}",
        onStateChanged=on_state,
    )


class Election:
    """One orchestrator's Raft membership: commit commands, read state, judge leadership."""

    def __init__(self, config: NodeConfig) -> None:
        self.name = config.name
        self.state = QueueState()
        self._names = {o.raft_address: o.name for o in config.orchestrators}
        peers = [p.raft_address for p in config.peers()]
        self._won: int | None = None  # the term this node last became leader in (set on the Raft thread)
        conf = raft_conf(config, self._on_state)
        self._raft = SealedSyncObj(config.secret, config.me().raft_address, peers, conf, consumers=[self.state])

    def _on_state(self, old: int, new: int) -> None:
        """Raft thread: the term is read where it cannot change under us. Read from another
        thread, a leader stepping down shows the new term with the old role for a moment, and
        a claim made then would name this node leader of a term another node leads."""
        self._won = self._raft.raftCurrentTerm if new == _LEADER else None

    def close(self) -> None:
        self._raft.destroy()

    # --- committing --------------------------------------------------------------------
    def commit(self, cmd: Command, done: Done | None = None) -> None:
        """Replicate `cmd`; `done(result, error)` runs on the Raft thread."""
        self.commit_many([(cmd, done)])

    def commit_many(self, batch: Sequence[tuple[Command, Done | None]],
                    landed: Callable[[], None] | None = None) -> None:
        """Replicate several commands as one log entry (see `QueueState.update`); each `done`
        gets its own command's result, or the entry's error; then `landed()` runs."""

        def callback(results: Any, err: int) -> None:
            error = None if err == FAIL_REASON.SUCCESS else _FAIL_TEXT.get(err, f"failed ({err})")
            if len(batch) == 1:
                results = [results]
            for i, (_cmd, done) in enumerate(batch):
                if done is not None:
                    done(results[i] if error is None else None, error)
            if landed is not None:
                landed()

        if len(batch) == 1:
            cmd = batch[0][0]
            getattr(self.state, cmd.NAME)(*cmd.args(), callback=callback)
            return
        self.state.update([commands.encode(cmd) for cmd, _done in batch], callback=callback)

    # --- reading -----------------------------------------------------------------------
    def fingerprint(self) -> str:
        return self.state.fingerprint()

    def read(self, fn: Callable[[BuildQueue], T]) -> T:
        """Run `fn` on the queue under the lock: a consistent view, even mid-apply."""
        with self.state.lock:
            return fn(self.state.queue)

    @property
    def term(self) -> int:
        return self._raft.raftCurrentTerm

    def raft_is_leader(self) -> bool:
        return self._raft._isLeader()

    def won_term(self) -> int | None:
        """The term this node won and still leads in Raft's eyes, else None: what it may claim."""
        won = self._won
        if won is None or not self._raft._isLeader() or self._raft.raftCurrentTerm != won:
            return None
        return won

    def is_leader(self) -> bool:
        """Leader in Raft's eyes and our own claim for this term is applied."""
        term = self.won_term()
        return term is not None and self.read(lambda q: q.leader_of(term)) == self.name

    def leader_name(self) -> str | None:
        leader = self._raft._getLeader()
        if leader is None:
            return None
        return self._names.get(getattr(leader, "address", str(leader)), str(leader))

    def role(self) -> str:
        status = self._raft.getStatus()
        return {0: "follower", 1: "candidate", 2: "leader"}.get(status["state"], "unknown")

    def indexes(self) -> tuple[int, int]:
        return self._raft.raftCommitIndex, self._raft.raftLastApplied
