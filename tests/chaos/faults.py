"""Fault injectors: what each planned fault does to the real processes, and how it is undone.

A fault acts at once (SIGKILL, SIGSTOP, a cut) and schedules its own end (restart, SIGCONT,
heal) `hold` seconds later; `due()` runs the ends whose time has come. Targets are picked at
the moment of the fault (who leads *now*, which drone is uploading *now*) and recorded, so the
report shows what really happened. Every wait is bounded.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from swarmmesh.cluster import process_exists as alive
from swarmmesh.errors import ClusterError
from swarmmesh.harness import LocalCluster, wait_until
from tests.chaos import plan as p
from tests.chaos.netns import Loopback

log = logging.getLogger(__name__)

LEADER_WAIT = 15.0
POWER_WAIT = 30.0    # a power loss waits this long for every orchestrator to be up
DRONE_WAIT = 20.0
ARTIFACT_GLOB = "*.gpkg.tar"
T = TypeVar("T")


@dataclass
class Record:
    """One fault as it happened."""

    kind: str
    planned: float           # when the plan said
    at: float = 0.0          # when it hit (a fault may first wait for its target's phase)
    target: str = ""
    hold: float = 0.0
    term: int = 0            # the leader's term just before a leader-loss fault
    baseline: int = -1       # received + failed just before it (-1: unknown)
    pending: int = -1        # needed + delegated just before it
    skipped: str = ""        # why it was not injected

    def line(self) -> str:
        what = f"SKIPPED ({self.skipped})" if self.skipped else f"{self.target}, hold {self.hold:.1f}s"
        late = f" (planned t+{self.planned:.1f}s)" if self.at - self.planned > 1.0 else ""
        return f"t+{self.at:6.1f}s  {self.kind:<18} {what}{late}"


@dataclass
class Injector:
    c: LocalCluster
    topo: Loopback
    clock: Callable[[], float]
    rng: random.Random
    records: list[Record] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    orphans: dict[str, set[str]] = field(default_factory=dict)   # drone -> dirs of killed processes
    _ends: list[tuple[float, int, str, str]] = field(default_factory=list)
    _seq: int = 0

    # --- the plan's entry points -------------------------------------------------------------
    def inject(self, fault: p.Fault) -> Record:
        rec = Record(fault.kind, fault.at, self.clock(), hold=fault.hold)
        try:
            getattr(self, f"_{fault.kind}")(rec)
        except (ClusterError, TimeoutError) as exc:
            rec.skipped = rec.skipped or str(exc)
        self.records.append(rec)
        log.info("fault %s", rec.line())
        return rec

    def due(self) -> None:
        """Run the ends (restarts, resumes, heals) whose time has come."""
        while self._ends and self._ends[0][0] <= self.clock():
            _, _, action, node = heapq.heappop(self._ends)
            self._end(action, node)

    def next_end(self) -> float | None:
        return self._ends[0][0] if self._ends else None

    def end_all(self) -> None:
        """Undo every fault now (before the final checks)."""
        while self._ends:
            _, _, action, node = heapq.heappop(self._ends)
            self._end(action, node)

    def reachable(self) -> list[str]:
        """Orchestrators that can answer right now (not killed, not frozen)."""
        return [n for n in self.c.orchestrators if n not in self.down and n not in self.paused]

    # --- faults ------------------------------------------------------------------------------
    def _kill_leader(self, rec: Record) -> None:
        leader = self._leader(rec)
        self._kill([leader])
        self._later(rec, "restart", leader)

    def _kill_follower(self, rec: Record) -> None:
        leader = self._leader(rec)
        followers = [n for n in self.reachable() if n != leader]
        if not followers:
            raise ClusterError("no live follower to kill")
        victim = self.rng.choice(sorted(followers))
        self._kill([victim])
        rec.target = f"{victim} (the leader is {leader})"
        self._later(rec, "restart", victim)

    def _power_loss(self, rec: Record) -> None:
        """Every orchestrator at once: first wait (bounded, ending earlier faults on time) until
        all of them run. If one is still down at the deadline, what hits the others is recorded
        as what it was (a partial power loss), never as a power loss."""
        if self._down_orchestrators():
            try:
                self._await(lambda: not self._down_orchestrators(), POWER_WAIT, "every orchestrator up")
            except TimeoutError as exc:
                log.warning("power loss: %s; injecting it on the survivors as a partial power loss", exc)
        self._leader(rec)
        victims = [n for n in self.c.orchestrators if n not in self.down]
        already = self._down_orchestrators()
        self._kill(victims)
        self.paused.difference_update(victims)
        if already:
            rec.kind = p.PARTIAL_POWER_LOSS
            rec.target = (f"{len(victims)} of {len(self.c.orchestrators)} orchestrators: {', '.join(victims)} "
                          f"({', '.join(already)} already down)")
        else:
            rec.target = "all orchestrators: " + ", ".join(victims)
        for name in victims:
            self._later(rec, "restart", name)

    def _down_orchestrators(self) -> list[str]:
        return [n for n in self.c.orchestrators if n in self.down]

    def _pause_leader(self, rec: Record) -> None:
        leader = self._leader(rec)
        self.c.kill(leader, signal.SIGSTOP)
        self.paused.add(leader)
        self._later(rec, "resume", leader)

    def _partition_leader(self, rec: Record) -> None:
        if not self.topo.can_partition:
            raise ClusterError(f"partition skipped: {self.topo.why}")
        leader = self._leader(rec)
        self.topo.isolate(leader, [n for n in self.c.orchestrators if n != leader])
        rec.target = f"{leader} cut off from its peers (drones and gateway still reach it)"
        self._later(rec, "heal", leader)

    def _kill_drone_build(self, rec: Record) -> None:
        self._kill_drone(rec, uploading=False)

    def _kill_drone_upload(self, rec: Record) -> None:
        self._kill_drone(rec, uploading=True)

    def _kill_drone(self, rec: Record, uploading: bool) -> None:
        """Wait (bounded) until a drone has a job in the wanted phase, then SIGKILL it at once."""
        what = "an artifact waiting for Stored" if uploading else "a build running"
        drone = self._await(lambda: self._drone_in_phase(uploading), DRONE_WAIT, f"a drone with {what}",
                            interval=0.005)
        rec.at = self.clock()
        self._kill([drone])
        rec.target = f"{drone} ({what})"
        self._later(rec, "restart", drone)

    # --- helpers -----------------------------------------------------------------------------
    def _leader(self, rec: Record) -> str:
        """The current leader (asked directly), with the term and progress just before the fault."""
        leader = self._await(lambda: self.c.node_leader(self.reachable()), LEADER_WAIT, "a leader")
        st = self.c.ask(leader, "status", timeout=1.0)
        rec.at = self.clock()
        counts = st["counts"]
        rec.target, rec.term = leader, st["term"]
        rec.baseline = counts["received"] + counts["failed"]
        rec.pending = counts["needed"] + counts["delegated"]
        return leader

    def _await(self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
        """wait_until that keeps ending earlier faults on time while it waits."""

        def check() -> T:
            self.due()
            return predicate()

        return wait_until(check, timeout, what, interval=interval)

    def _kill(self, names: list[str]) -> None:
        """SIGKILL all of them first, then wait for each to be gone: "at once" for a power loss."""
        pids = {name: self.c.pid(name) for name in names}
        for pid in pids.values():
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        for name, pid in pids.items():
            if pid is not None:
                wait_until(lambda pid=pid: not alive(pid), 10, f"{name} (pid {pid}) to die")
        self.down.update(names)

    def _later(self, rec: Record, action: str, node: str) -> None:
        self._seq += 1
        heapq.heappush(self._ends, (self.clock() + rec.hold, self._seq, action, node))

    def _end(self, action: str, node: str) -> None:
        try:
            if action == "restart":
                self._restart(node)
            elif action == "resume":
                self._resume(node)
            else:
                self.topo.heal(node)
        except (ClusterError, TimeoutError) as exc:
            log.warning("could not %s %s: %s", action, node, exc)

    def _restart(self, node: str) -> None:
        if node not in self.down:
            return
        if node in self.c.drones:
            self.orphans.setdefault(node, set()).update(job_dirs(self.work_dir(node)))
        self.topo.up(self.c, node, timeout=60)
        self.down.discard(node)

    def _resume(self, node: str) -> None:
        if node in self.paused:
            pid = self.c.pid(node)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            self.paused.discard(node)

    def work_dir(self, drone: str) -> Path:
        cfg = self.c.configs[drone]
        return cfg.drone.work_dir or (self.c.dir / cfg.data_dir / "work")

    def _drone_in_phase(self, uploading: bool) -> str | None:
        for drone in self.c.drones:
            if drone in self.down:
                continue
            dirs = [d for d in job_dirs(self.work_dir(drone)) if d not in self.orphans.get(drone, set())]
            if any(has_artifact(self.work_dir(drone) / d) == uploading for d in dirs):
                return drone
        return None


def job_dirs(work: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(work) if e.is_dir()}
    except FileNotFoundError:
        return set()


def has_artifact(job_dir: Path) -> bool:
    try:
        return any(job_dir.glob(ARTIFACT_GLOB))
    except OSError:
        return False


def now_clock(start: float) -> Callable[[], float]:
    """Seconds since `start` (monotonic): every time in a report is relative to the run."""
    return lambda: time.monotonic() - start
