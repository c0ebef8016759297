"""One chaos run: start a real cluster, load it, break it on schedule, settle, check, stop.

3 orchestrators (in network namespaces when possible), a gateway and 3 drones on the
simulated builder (random durations, a small failure rate, drone-3 with artifacts large
enough to be killed mid-upload). Two clients submit the planned batches while the planned
faults hit; then every fault is undone, the queue settles, a release is finalized, and the
final state of every node is checked (checks.py). Every process is killed at the end.
"""

from __future__ import annotations

import logging
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarmmesh.config import load_config
from swarmmesh.errors import ClusterError, SwarmError
from swarmmesh.harness import LocalCluster, wait_until
from tests.chaos import checks, evidence, workload
from tests.chaos import plan as p
from tests.chaos.faults import Injector, job_dirs, now_clock
from tests.chaos.netns import Loopback, make_topology
from tests.chaos.report import Report

log = logging.getLogger(__name__)

DRONE_SETTINGS = {"min_seconds": 0.5, "max_seconds": 3.0, "failure_rate": 0.04, "artifact_size": 16384,
                  "slots": 2}
BIG_ARTIFACT = 2 * 1024 * 1024     # drone-3: uploads last long enough to be killed mid-way
BIG_DRONE = "drone-3"
QUEUE_SETTINGS = {"lease_seconds": 3.0}
START_TIMEOUT = 90.0
SETTLE_TIMEOUT = 120.0
CONVERGE_TIMEOUT = 30.0
FINALIZE_TIMEOUT = 30.0
QUIET_TIMEOUT = 30.0


@dataclass
class Run:
    """What a run accumulates while it goes (the report is built from it)."""

    c: LocalCluster
    topo: Loopback
    plan: p.Plan
    inj: Injector | None = None
    monitor: workload.Monitor | None = None
    clients: list[workload.Client] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    crashed: list[str] = field(default_factory=list)


def run_chaos(seed: int, minutes: float, directory: Path, packages: int | None = None,
              want_netns: bool = True, settle_timeout: float = SETTLE_TIMEOUT) -> Report:
    """The whole run; the cluster and the namespaces are gone when this returns."""
    plan = p.make_plan(seed, minutes, packages)
    started = time.monotonic()
    # unsigned: a leader killed between storing a signed upload and committing it leaves that
    # copy behind, and the drone's resend is signed again into other bytes (signatures carry
    # a random salt and the time); the store check would call the first copy a stray until the
    # replicator's garbage collection (GC_GRACE) removes it
    c = LocalCluster(Path(directory) / "cluster", orchestrators=3, drones=3,
                     builder_overrides={**DRONE_SETTINGS, "seed": seed}, queue_overrides=QUEUE_SETTINGS,
                     sign=False)
    _bigger_artifacts(c, BIG_DRONE)
    run = Run(c, make_topology(c.orchestrators, want_netns), plan)
    report = Report(seed=seed, minutes=minutes, plan=plan, cluster_dir=c.dir)
    try:
        run.topo = _prepare(run.topo, c)
        report.topology = f"{run.topo.mode}" + ("" if run.topo.can_partition else f" ({run.topo.why})")
        _load(run, settle_timeout, report)
    except (ClusterError, TimeoutError) as exc:
        report.aborted = f"{type(exc).__name__}: {exc}"
        log.error("chaos run aborted: %s", exc)
    finally:
        report.logs = c.logs(lines=200)
        _stop(run)
    report.elapsed = time.monotonic() - started
    return report


def _bigger_artifacts(c: LocalCluster, drone: str) -> None:
    path = c.dir / f"{drone}.toml"
    path.write_text(re.sub(r"(?m)^artifact_size = \d+$", f"artifact_size = {BIG_ARTIFACT}", path.read_text()))
    c.configs[drone] = load_config(path)


def _prepare(topo: Loopback, c: LocalCluster) -> Loopback:
    """Namespaces if they can be built here, else loopback (and say why)."""
    try:
        topo.prepare(c)
        return topo
    except ClusterError as exc:
        topo.close()
        log.warning("network namespaces unavailable, partitions skipped: %s", exc)
        return Loopback(f"could not build the namespaces: {exc}")


def _load(run: Run, settle_timeout: float, report: Report) -> None:
    c = run.c
    run.topo.up(c, timeout=START_TIMEOUT)
    wait_until(lambda: c.node_leader(c.orchestrators), 30, "a first leader")
    clock = now_clock(time.monotonic())
    run.inj = Injector(c, run.topo, clock, random.Random(run.plan.seed))
    run.monitor = workload.Monitor(c, run.inj.reachable, clock)
    run.monitor.start()
    for name in p.CLIENTS:
        batches = [b for b in run.plan.batches if b.client == name]
        run.clients.append(workload.Client(name, batches, c.gateway_url, clock, run.stop, token=c.token))
    for client in run.clients:
        client.start()
    _faults(run, clock)
    _settle(run, settle_timeout, report)


def _faults(run: Run, clock) -> None:
    """Inject the planned faults at their planned times; undo each when its hold is over."""
    assert run.inj is not None
    for fault in run.plan.faults:
        _until(run.inj, clock, fault.at)
        run.inj.inject(fault)
    _until(run.inj, clock, run.plan.seconds)
    run.inj.end_all()


def _until(inj: Injector, clock, t: float) -> None:
    """The schedule's own delay: sleep to the next planned moment, undoing faults on time."""
    while clock() < t:
        inj.due()
        nxt = inj.next_end()
        time.sleep(max(0.0, (t if nxt is None else min(t, nxt)) - clock()))
    inj.due()


def _settle(run: Run, settle_timeout: float, report: Report) -> None:
    """Let the queue settle, release, and judge the final state of every node."""
    settled, release = _wind_down(run, settle_timeout)
    c, inj, monitor = run.c, run.inj, run.monitor
    assert inj is not None and monitor is not None
    monitor.halt.set()
    monitor.join(5)
    leader = wait_until(lambda: c.node_leader(c.orchestrators), 15, "a leader for the final snapshot")
    snapshot = c.ask(leader, "swarm", timeout=10)
    ev = evidence.gather(c, inj, snapshot, settled, release, run.plan.deps())
    subs = [s for client in run.clients for s in client.submissions]
    report.fill(inj.records, subs, workload.recoveries(inj.records, monitor.samples), snapshot, release,
                checks.run_all(ev, subs) + [_crash_verdict(run.crashed)])


def _wind_down(run: Run, settle_timeout: float) -> tuple[bool, str | None]:
    """Every fault is undone: wait (bounded) for the clients, the queue, a release, every
    orchestrator and binhost to agree, and the drones to clear their work dirs."""
    c, inj = run.c, run.inj
    assert inj is not None
    run.crashed = _restart_crashed(run)
    for client in run.clients:
        client.join(workload.RETRY_FOR + 15)
    settled = _wait(_Settled(c, run.plan.deps()), settle_timeout, "every package to settle", interval=0.5)
    if not settled:
        _freeze_drones(c)
    counts = _counts(c)
    release = _finalize(c, force=counts["needed"] + counts["delegated"] + counts["failed"] > 0)
    _wait(c.converged, CONVERGE_TIMEOUT, "every orchestrator to apply the release")
    _wait_for_binhosts(c, release)
    if settled:
        _wait(lambda: not _live_job_dirs(inj), QUIET_TIMEOUT, "drones to clear their work dirs")
    return settled, release


def _restart_crashed(run: Run) -> list[str]:
    """Every node must be running once every fault is undone; one that is not either died on
    its own or could not be restarted: both are bugs. It is started again for the checks."""
    c, inj = run.c, run.inj
    assert inj is not None
    problems = []
    for name in [n for n in c.configs if c.pid(n) is None]:
        why = "could not be restarted after its fault" if name in inj.down else "died on its own"
        problems.append(f"{name} {why}")
        log.error("%s %s; starting it again", name, why)
        run.topo.up(c, name, timeout=START_TIMEOUT)
        inj.down.discard(name)
    return problems


def _freeze_drones(c: LocalCluster) -> None:
    """The queue did not settle: SIGSTOP the drones so the state and the stores stop changing
    while the evidence is collected (a later receipt would look like a stray file)."""
    for drone in c.drones:
        if c.pid(drone) is not None:
            c.kill(drone, signal.SIGSTOP)
    log.error("the queue never settled; drones frozen for the checks")


def _crash_verdict(problems: list[str]) -> checks.Verdict:
    return checks.verdict("every node ran until the end, except while an injected fault held it", problems)


def _wait(predicate, timeout: float, what: str, interval: float = 0.1) -> bool:
    try:
        wait_until(predicate, timeout, what, interval=interval)
        return True
    except TimeoutError as exc:
        log.error("%s", exc)
        return False


def _counts(c: LocalCluster) -> dict:
    leader = wait_until(lambda: c.node_leader(c.orchestrators), 15, "a leader")
    return c.ask(leader, "status", timeout=2)["counts"]


class _Settled:
    """Nothing is building and nothing needed can ever be dispatched (every needed package
    waits on a failed one), twice in a row half a second apart: the queue has settled."""

    def __init__(self, c: LocalCluster, deps: dict[str, list[str]]) -> None:
        self.c, self.deps, self.streak = c, deps, 0

    def __call__(self) -> bool:
        leader = wait_until(lambda: self.c.node_leader(self.c.orchestrators), 15, "a leader")
        snap = self.c.ask(leader, "swarm", timeout=5)
        pkgs = {pkg["key"]: pkg for pkg in snap["packages"]}
        held = checks.blocked(pkgs, self.deps)
        idle = pkgs and all(p["state"] in ("received", "failed") or k in held for k, p in pkgs.items())
        self.streak = self.streak + 1 if idle else 0
        return self.streak >= 2


def _finalize(c: LocalCluster, force: bool) -> str | None:
    """Finalize through the gateway, as a user would; retried while the cluster cannot commit."""
    def attempt() -> str | None:
        try:
            return c.api.finalize(force=force)["release"]
        except ClusterError as exc:
            log.info("finalize: %s; retrying", exc)
            return None

    try:
        release = wait_until(attempt, FINALIZE_TIMEOUT, "finalize to be committed", interval=0.5)
    except (TimeoutError, SwarmError) as exc:
        log.error("finalize failed: %s", exc)
        return None
    log.info("finalized release %s (force=%s)", release, force)
    return release


def _wait_for_binhosts(c: LocalCluster, release: str | None) -> None:
    """Give every orchestrator a bounded time to serve the final release (the same Packages,
    and `/release` naming it); whatever it serves at the deadline is what the checks judge."""
    if release is None:
        return

    def serving() -> bool:
        bases = [c.configs[n].me().binhost_url for n in c.orchestrators]
        if any(evidence.serving(b) != release for b in bases):
            return False
        got = [evidence.fetch(b + "Packages") for b in bases]
        return all(isinstance(i, bytes) for i in got) and len(set(got)) == 1

    _wait(serving, CONVERGE_TIMEOUT, f"every binhost to serve release {release}", interval=0.5)


def _live_job_dirs(inj: Injector) -> list[str]:
    return [f"{d}/{j}" for d in inj.c.drones for j in job_dirs(inj.work_dir(d)) - inj.orphans.get(d, set())]


def _stop(run: Run) -> None:
    """Kill every process and remove the namespaces, whatever happened before."""
    run.stop.set()
    if run.monitor is not None:
        run.monitor.halt.set()
    try:
        run.c.down()
    except ClusterError as exc:
        log.error("stopping the cluster: %s", exc)
    for client in run.clients:
        client.join(15)
    if run.monitor is not None:
        run.monitor.join(5)
    run.topo.close()

