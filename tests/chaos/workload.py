"""The load while faults happen: two clients submitting batches, and a monitor sampling progress.

Each runs in its own thread so faults, clients and measurement overlap as they would in
production. A client retries a batch the cluster could not take (no leader, not committed)
until it is acknowledged or a deadline passes, like a CI job would. The monitor asks every
reachable orchestrator for `status` ten times a second; recovery times come from its samples.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from swarmmesh.api import GatewayClient
from swarmmesh.errors import ClusterError, SwarmError
from swarmmesh.harness import LocalCluster
from tests.chaos import plan as p

log = logging.getLogger(__name__)

RETRY_FOR = 60.0       # a batch not acknowledged within this is reported
RETRY_PAUSE = 0.5
SAMPLE_PERIOD = 0.1
ASK_TIMEOUT = 0.3


# --- clients ---------------------------------------------------------------------------------


@dataclass
class Submission:
    batch: p.Batch
    batch_id: str | None = None
    acked_at: float | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class Client(threading.Thread):
    """One client: submits its planned batches at their planned times."""

    def __init__(self, name: str, batches: list[p.Batch], gateway_url: str, clock: Callable[[], float],
                 stop: threading.Event, token: str | None = None) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.client, self.batches, self.clock, self.stop = name, batches, clock, stop
        self.api = GatewayClient(gateway_url, timeout=10.0, token=token)
        self.submissions: list[Submission] = []

    def run(self) -> None:
        for batch in self.batches:
            if self.stop.wait(max(0.0, batch.at - self.clock())):
                return
            self.submissions.append(self._submit(batch))

    def _submit(self, batch: p.Batch) -> Submission:
        sub = Submission(batch)
        end = self.clock() + RETRY_FOR
        while self.clock() < end and not self.stop.is_set():
            sub.attempts += 1
            try:
                reply = self.api.submit_packages(list(batch.packages), client=self.client, deps=batch.deps or None)
            except ClusterError as exc:  # no leader, not committed, gateway unreachable: retry
                sub.errors.append(f"t+{self.clock():.1f}s {type(exc).__name__}: {exc}")
                self.stop.wait(RETRY_PAUSE)
                continue
            except SwarmError as exc:  # refused as input: our bug, retrying cannot help
                sub.errors.append(f"t+{self.clock():.1f}s {type(exc).__name__}: {exc}")
                return sub
            sub.batch_id, sub.acked_at = reply["batch"], self.clock()
            log.info("%s: batch %s of %d packages acknowledged after %d attempt(s)", self.client,
                     sub.batch_id, len(batch.packages), sub.attempts)
            return sub
        return sub


# --- monitor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    leader: str | None
    term: int
    progress: int   # received + failed, on the leader
    pending: int    # needed + delegated, on the leader


class Monitor(threading.Thread):
    """Samples who leads and how much is done, from the orchestrators themselves."""

    def __init__(self, c: LocalCluster, reachable: Callable[[], list[str]], clock: Callable[[], float]) -> None:
        super().__init__(name="chaos-monitor", daemon=True)
        self.c, self.reachable, self.clock = c, reachable, clock
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_PERIOD):
            self.samples.append(self._sample())

    def _sample(self) -> Sample:
        t, best = self.clock(), None
        for name in self.reachable():
            try:
                st = self.c.ask(name, "status", timeout=ASK_TIMEOUT)
            except ClusterError:
                continue
            if st["role"] == "leader" and (best is None or st["term"] > best["term"]):
                best = st
        if best is None:
            return Sample(t, None, 0, -1, -1)
        k = best["counts"]
        return Sample(t, best["node"], best["term"], k["received"] + k["failed"], k["needed"] + k["delegated"])


# --- recovery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    kind: str
    at: float
    to_leader: float | None     # until a leader of a newer term answers
    to_progress: float | None   # until that leader has committed a new result (received/failed)
    idle: bool                  # nothing was left to build: progress cannot be measured
    overlapped: bool            # another leader-loss fault came before it recovered

    def line(self) -> str:
        def fmt(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f}s"

        progress = "n/a (queue idle)" if self.idle else fmt(self.to_progress)
        tag = "  (overlapped by the next fault)" if self.overlapped else ""
        return f"t+{self.at:6.1f}s  {self.kind:<18} leader {fmt(self.to_leader):>7}  dispatching {progress}{tag}"


def recoveries(records: list, samples: list[Sample]) -> list[Recovery]:
    """Leader death to dispatching again, for every leader-loss fault that was injected."""
    losses = [r for r in records if r.kind in p.LEADER_LOSS and not r.skipped]
    out = []
    for i, rec in enumerate(losses):
        after = [s for s in samples if s.t > rec.at and s.leader is not None and s.term > rec.term]
        to_leader = after[0].t - rec.at if after else None
        moved = [s for s in after if s.progress > rec.baseline]
        to_progress = moved[0].t - rec.at if moved else None
        next_at = losses[i + 1].at if i + 1 < len(losses) else None
        end = rec.at + (to_progress if to_progress is not None else to_leader or 0.0)
        overlapped = next_at is not None and next_at < end
        out.append(Recovery(rec.kind, rec.at, to_leader, to_progress, rec.pending == 0, overlapped))
    return out
