"""Dispatch: latency from submit to a drone starting the job, and end-to-end throughput.

    python bench/dispatch.py [--trials 200] [--packages 5000] [--skip-latency] [--skip-throughput]

(a) Latency, drones idle: 3 orchestrators + gateway and one real `Drone` running in this
    process (its builder records `time.monotonic()` when a build starts), so the submit time
    and the start time are read from the same clock. One package per trial, submitted through
    the gateway (`POST /build`, what users do) or straight to the leader's ROUTER; the next
    trial starts once the previous package is stored. Target: median under 5 ms.
(b) Throughput: 3 orchestrators, 4 drone processes x 4 slots, zero-second simulated builds
    with 2 KiB artifacts (`artifact_size = 2048`; a GPKG is never under ~5.5 KiB), 5,000
    packages in one submission. The clock stops at the last "stored" line of the drone logs
    (each drone logs one line per job). Target: at least 500 packages/s. `--signing both` (the
    default) runs it without and then with the leader signing every package (target with
    signing: at least 400 packages/s).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the standard library's `queue` (which the drone uses) for any
# script started from this directory: take the directory off the path before importing more.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime  # noqa: E402

from swarmmesh import protocol, transport  # noqa: E402
from swarmmesh.builders import SimulatedBuilder  # noqa: E402
from swarmmesh.drone import Drone  # noqa: E402
from swarmmesh.harness import CURVE_CHOICES, LocalCluster, curve_modes, wait_until  # noqa: E402

ZERO = 1e-6  # the config refuses max_seconds = 0; a microsecond is as good as zero
STORED = re.compile(r"^(\S+) .* swarmmesh\.drone: job (\S+) stored ", re.M)


class TimedBuilder(SimulatedBuilder):
    """The simulated builder, noting when each build starts (the drone's worker calls it)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.started: dict[str, float] = {}

    def build(self, cpv, repo, workdir, cancel):
        self.started[cpv] = time.monotonic()
        return super().build(cpv, repo, workdir, cancel)


class RouterClient:
    """A persistent DEALER to the leader, for submits that skip the gateway's HTTP."""

    def __init__(self, url: str, curve: transport.Curve | None) -> None:
        self.ctx = transport.context(curve)  # the cluster's admin key (None: CURVE off)
        self.sock = transport.dealer(self.ctx, url)

    def submit(self, atom: str) -> None:
        self.call("submit", {"packages": [atom], "client": "bench"})

    def call(self, op: str, args: dict | None = None):
        self.sock.send(protocol.encode(protocol.Request(op=op, req_id=uuid.uuid4().hex, args=args or {})))
        if not self.sock.poll(5000):
            raise TimeoutError(f"the leader did not answer a {op} within 5 s")
        reply = protocol.decode(self.sock.recv())
        assert isinstance(reply, protocol.Reply) and reply.ok, reply
        return reply.result

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(trials: int) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-") as tmp:
        c = LocalCluster(Path(tmp) / "cluster", orchestrators=3, drones=1,
                         builder_overrides={"min_seconds": 0.0, "max_seconds": ZERO, "artifact_size": 2048})
        try:
            c.up(*c.orchestrators, "gateway")
            return _with_drone(c, trials)
        finally:
            c.down()


def _with_drone(c: LocalCluster, trials: int) -> dict[str, dict[str, list[float]]]:
    """drone-1 runs here, on a thread, with the timing builder."""
    config = c.configs["drone-1"]
    builder = TimedBuilder(config.drone.simulated)
    drone = Drone(config, builder=builder)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            drone.step(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        leader = c.leader(timeout=20)
        wait_until(lambda: drone.welcomed, 10, "the drone to be welcomed")
        router = RouterClient(c.configs[leader].me().broker_url, c.curve)
        ways = {"gateway HTTP": lambda atom: c.api.submit_packages([atom], client="bench"),
                "leader ROUTER": router.submit}
        results = {way: _trials(way, submit, trials, builder, drone) for way, submit in ways.items()}
        router.close()
        return results
    finally:
        stop.set()
        thread.join(10)
        drone.close()


def _trials(way: str, submit, trials: int, builder: TimedBuilder, drone: Drone) -> dict[str, list[float]]:
    start, reply = [], []
    tag = "gw" if way.startswith("gateway") else "rt"
    for i in range(trials):
        cpv = f"app-misc/lat-{tag}{i}-1.0"
        done = drone.settled
        t0 = time.monotonic()
        submit(f"={cpv}")
        reply.append(time.monotonic() - t0)
        wait_until(lambda c=cpv: c in builder.started, 5, f"{cpv} to start", interval=0.0005)
        start.append(builder.started[cpv] - t0)
        wait_until(lambda d=done: drone.settled > d, 10, f"{cpv} to be stored", interval=0.001)
    return {"start": start, "reply": reply}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stored_count(c: LocalCluster) -> int:
    """Cheap, so polling it does not steal CPU from the cluster being measured."""
    return sum((c.dir / "logs" / f"{name}.log").read_bytes().count(b" stored (") for name in c.drones)


def _stored_times(c: LocalCluster) -> list[float]:
    times = []
    for name in c.drones:
        text = (c.dir / "logs" / f"{name}.log").read_text(errors="replace")
        times += [datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp() for m in STORED.finditer(text)]
    return times


def throughput(packages: int, where: str | None = None, sign: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-", dir=where) as tmp:
        c = LocalCluster(Path(tmp) / "cluster", orchestrators=3, drones=4,
                         builder_overrides={"min_seconds": 0.0, "max_seconds": ZERO, "artifact_size": 2048,
                                            "slots": 4}, sign=sign)
        try:
            c.up()
            leader = c.leader(timeout=20)
            pids = {name: c.pid(name) for name in c.configs}
            cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
            atoms = [f"=app-misc/tp{i}-1.{i % 97}" for i in range(packages)]
            router = RouterClient(c.configs[leader].me().broker_url, c.curve)
            index0 = router.call("status")["commit_index"]
            t0 = time.time()
            c.api.submit_packages(atoms, client="bench")
            wait_until(lambda: _stored_count(c) >= packages, 600, "every package stored", interval=0.2)
            t_end = max(_stored_times(c))
            cpu = {name: (_cpu(pid) - cpu0[name]) for name, pid in pids.items()}
            status = router.call("status")
            router.close()
            counts, entries = status["counts"], status["commit_index"] - index0
        finally:
            c.down()
    assert counts["received"] == packages, counts
    return {"seconds": t_end - t0, "packages": packages, "leader": leader, "cpu": cpu, "entries": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--packages", type=int, default=5000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--dir", help="where (b) keeps its cluster's data (default: the system's temp dir)")
    parser.add_argument("--signing", choices=("on", "off", "both"), default="both",
                        help="(b) with the leader signing every package, without, or both in turn (default)")
    parser.add_argument("--curve", choices=CURVE_CHOICES, default="on",
                        help="CURVE on every socket, off (plaintext, benchmarks only), or both, side by side")
    args = parser.parse_args()
    for mode in curve_modes(args.curve):
        print(f"=== {mode} ===")
        run(args)


def run(args: argparse.Namespace) -> None:
    if not args.skip_latency:
        print(f"(a) submit -> build start, drones idle, {args.trials} trials each")
        head = ("median ms", "p90 ms", "p99 ms", "max ms", "reply median ms")
        print(f"{'submitted via':<15} {head[0]:>10} {head[1]:>8} {head[2]:>8} {head[3]:>8} {head[4]:>16}")
        for way, r in latency(args.trials).items():
            ms = [x * 1000 for x in r["start"]]
            print(f"{way:<15} {statistics.median(ms):>10.2f} {_pct(ms, .9):>8.2f} {_pct(ms, .99):>8.2f} "
                  f"{max(ms):>8.2f} {statistics.median(r['reply']) * 1000:>16.2f}")
        print("target: median < 5 ms")
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.signing]
    for sign in modes if not args.skip_throughput else []:
        r = throughput(args.packages, args.dir, sign)
        rate = r["packages"] / r["seconds"]
        print(f"\n(b) {r['packages']} zero-second builds, 2 KiB artifacts, 3 orchestrators, 4 drones x 4 slots, "
              f"signing {'on' if sign else 'off'}")
        print(f"{'seconds':>8} {'packages/s':>11}")
        print(f"{r['seconds']:>8.2f} {rate:>11.1f}   target >= {400 if sign else 500} packages/s")
        total = sum(r["cpu"].values())
        print(f"\nCPU per package (ms), {os.cpu_count()} cores; leader {r['leader']}")
        for name, sec in sorted(r["cpu"].items()):
            print(f"  {name:<10} {sec / r['packages'] * 1000:>6.2f}")
        print(f"  {'total':<10} {total / r['packages'] * 1000:>6.2f}   (cores busy: {total / r['seconds']:.2f})")
        print(f"Raft log entries per package: {r['entries'] / r['packages']:.2f}")


if __name__ == "__main__":
    main()
