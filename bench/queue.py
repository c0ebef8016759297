"""Queue: submit 20,000 packages through the gateway; time to commit and orchestrator memory.

    python bench/queue.py [--packages 20000]

Target: committed in under 2 s, under 300 MB resident per orchestrator.
"""

from __future__ import annotations

import sys

# This file's name shadows the standard library's `queue` for anything imported after it:
# drop bench/ from the import path before importing the libraries that use `queue`.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402 - after the sys.path fix above
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from swarmmesh.harness import LocalCluster, exit_on_sigterm, wait_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packages", type=int, default=20_000)
    args = parser.parse_args()
    exit_on_sigterm()
    atoms = [f"=app-misc/bench{i}-1.{i % 97}" for i in range(args.packages)]
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-") as tmp:
        c = LocalCluster(Path(tmp) / "cluster", orchestrators=3, drones=0)
        c.up()
        try:
            c.leader(timeout=20)
            base = {n: c.rss_mib(n) for n in c.orchestrators}
            t0 = time.monotonic()
            reply = c.api.submit_packages(atoms, client="bench")
            t_commit = time.monotonic() - t0
            wait_until(lambda: all(c.ask(n, "status")["counts"]["total"] == args.packages
                                   for n in c.orchestrators), 60, "every orchestrator to apply", interval=0.01)
            t_all = time.monotonic() - t0
            t1 = time.monotonic()
            snap = c.api.swarm()
            t_swarm = time.monotonic() - t1
            mem = {n: c.rss_mib(n) for n in c.orchestrators}
        finally:
            c.down()
    assert reply["count"] == args.packages and snap["counts"]["total"] == args.packages
    print(f"packages submitted          {args.packages}")
    print(f"committed (gateway 202)     {t_commit:.3f} s   target < 2 s")
    print(f"applied on all 3            {t_all:.3f} s")
    print(f"GET /swarm of the queue     {t_swarm:.3f} s")
    print(f"{'node':>8} {'RSS before MiB':>15} {'RSS after MiB':>14} {'peak MiB':>9}")
    for n in mem:
        print(f"{n:>8} {base[n][0]:>15.1f} {mem[n][0]:>14.1f} {mem[n][1]:>9.1f}")
    print("target: < 300 MB resident per orchestrator")


if __name__ == "__main__":
    main()
