"""`swarmmesh demo`: the main job, on a real local cluster in a temporary directory.

3 orchestrators, 2 drones on the simulated builder and a gateway, all real processes. It
submits a sample `emerge -puDN @world`, SIGKILLs the leader halfway through the builds,
waits for everything to be built, brings the killed node back, finalizes, and checks that
every orchestrator serves the same release, every file checked as a Portage client would.
Progress goes through `say` (the CLI prints it).
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from swarmmesh.errors import ClusterError
from swarmmesh.harness import LocalCluster, check_binhost, http_get, index_entries, wait_until

Say = Callable[[str], None]

DRONE_SETTINGS = {"min_seconds": 0.3, "max_seconds": 1.2, "artifact_size": 16384, "slots": 2}
QUEUE_SETTINGS = {"lease_seconds": 3.0}


@dataclass
class DemoReport:
    binhost: str = ""
    release: str = ""
    packages: int = 0
    counts: dict = field(default_factory=dict)
    killed: str = ""
    new_leader: str = ""
    failover_seconds: float = 0.0
    total_seconds: float = 0.0
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def lines(self) -> list[str]:
        """The table `swarmmesh demo` ends with: each check, then the figures."""
        rows = [("packages submitted", self.packages), ("counts", self.counts),
                ("leader killed", f"{self.killed} -> {self.new_leader} in {self.failover_seconds:.2f}s"),
                ("release", self.release), ("binhost", self.binhost),
                ("total time", f"{self.total_seconds:.1f}s")]
        return ["", f"{'check':<60} result",
                *(f"{what:<60} {'ok' if ok else 'FAILED'}  {detail}" for what, ok, detail in self.checks),
                "", *(f"{name:<20} {value}" for name, value in rows)]


def sample_packages() -> str:
    return resources.files("swarmmesh").joinpath("data/sample-world.txt").read_text()


def run_demo(say: Say, keep: Path | None = None, timeout: float = 90.0) -> DemoReport:
    """Run the whole scenario; the cluster is always stopped, even on failure."""
    report = DemoReport()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swarmmesh-demo-") as tmp:
        root = keep or Path(tmp)
        c = LocalCluster(root / "cluster", orchestrators=3, drones=2,
                         builder_overrides=DRONE_SETTINGS, queue_overrides=QUEUE_SETTINGS)
        say(f"cluster directory: {c.dir}")
        try:
            _scenario(c, say, report, timeout)
        except (ClusterError, TimeoutError) as exc:
            say(f"demo failed: {exc}")
            say(c.logs(lines=30))
            report.checks.append(("scenario completed", False, str(exc)))
        finally:
            c.down()
            say("cluster stopped")
    report.total_seconds = time.monotonic() - started
    return report


def _scenario(c: LocalCluster, say: Say, report: DemoReport, timeout: float) -> None:
    say("starting 3 orchestrators, a gateway and 2 drones (simulated builder)...")
    c.up(timeout=60)
    leader = c.leader(timeout=20)
    say(f"leader: {leader}")
    batch = c.api.submit_text(sample_packages(), client="demo")
    report.packages = batch["count"]
    say(f"submitted batch {batch['batch']}: {batch['count']} packages from a sample emerge -puDN @world")

    half = report.packages // 2
    wait_until(lambda: c.api.status()["counts"]["received"] >= half, timeout, "half of the packages")
    say(f"{half}+ packages received; SIGKILL the leader {leader}")
    t0 = time.monotonic()
    c.kill(leader)
    new = c.leader(timeout=10, exclude=leader)
    report.killed, report.new_leader, report.failover_seconds = leader, new, time.monotonic() - t0
    say(f"new leader {new} after {report.failover_seconds:.2f}s; drones follow it")

    wait_until(lambda: _settled(c), timeout, "every package to be built")
    say(f"all built: {c.api.status()['counts']}; restarting {leader}")
    c.up(leader)
    wait_until(c.converged, 30, f"{leader} to catch up")

    release = c.api.finalize()
    report.release = release["release"]
    say(f"finalized release {report.release} with {release['count']} packages")
    _check(c, report)
    report.binhost = c.api.binhost()
    report.counts = c.api.status()["counts"]


def _settled(c: LocalCluster) -> bool:
    counts = c.api.status()["counts"]
    return counts["total"] > 0 and counts["needed"] == 0 and counts["delegated"] == 0


def _check(c: LocalCluster, report: DemoReport) -> None:
    """Every orchestrator applied the same state and serves the release: the same `Packages`,
    every file in it matching its SIZE/MD5/SHA1."""
    fingerprint = wait_until(c.converged, 20, "every orchestrator to apply the release")
    report.checks.append(("all 3 orchestrators hold the same queue state", True, fingerprint[:16]))
    indexes = {}
    for name in c.orchestrators:
        base = c.configs[name].me().binhost_url
        wait_until(functools.partial(_serves, base, report), 30, f"{name} to serve {report.release}")
        index, problems = check_binhost(base)
        indexes[name] = index
        entries = len(index_entries(index))
        report.checks.append((f"{name} serves {report.release}: {entries} files verified",
                              not problems and entries == report.packages, "; ".join(problems[:3])))
    same = len(set(indexes.values())) == 1
    report.checks.append(("Packages byte-identical on every orchestrator", same, ""))
    counts = c.api.status()["counts"]
    report.checks.append(("nothing left needed or building",
                          counts["needed"] == 0 and counts["delegated"] == 0, str(counts)))


def _serving(base: str) -> str | None:
    return json.loads(http_get(base + "release"))["serving"]


def _serves(base: str, report: DemoReport) -> bool:
    return _serving(base) == report.release
