"""Failover: SIGKILL the leader N times; time to a new leader and to the gateway's /binhost.

    python bench/failover.py [--rounds 10]

Prints one row per round and the median / worst. Target: median < 1 s, worst < 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from swarmmesh.harness import LocalCluster, exit_on_sigterm, wait_until


def one_round(c: LocalCluster) -> tuple[str, str, float, float]:
    old = c.leader(timeout=20)
    survivors = [n for n in c.orchestrators if n != old]
    t0 = time.monotonic()
    c.kill(old)
    new = wait_until(lambda: c.node_leader(survivors), 10, "a new leader", interval=0.005)
    t_leader = time.monotonic() - t0
    want = c.configs[new].me().binhost_url
    wait_until(lambda: c.api.binhost() == want, 10, "the gateway to follow", interval=0.005)
    t_gateway = time.monotonic() - t0
    c.up(old)  # back to three before the next round
    wait_until(c.converged, 20, "the restarted node to catch up")
    return old, new, t_leader, t_gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-") as tmp:
        c = LocalCluster(Path(tmp) / "cluster", orchestrators=3, drones=0)
        c.up()
        try:
            c.api.submit_packages([f"=app-misc/bench{i}-1.0" for i in range(200)], client="bench")
            rows = [one_round(c) for _ in range(args.rounds)]
        finally:
            c.down()
    print(f"{'round':>5} {'killed':>8} {'new':>8} {'leader s':>9} {'gateway s':>10}")
    for i, (old, new, tl, tg) in enumerate(rows, 1):
        print(f"{i:>5} {old:>8} {new:>8} {tl:>9.3f} {tg:>10.3f}")
    lead = [r[2] for r in rows]
    gate = [r[3] for r in rows]
    print(f"{'median':>23} {statistics.median(lead):>9.3f} {statistics.median(gate):>10.3f}")
    print(f"{'worst':>23} {max(lead):>9.3f} {max(gate):>10.3f}")
    print("target: median < 1 s, worst < 2 s")


if __name__ == "__main__":
    main()
