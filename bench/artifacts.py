"""Artifacts: upload, replication and binhost serving, against `rsync -a` in the same run.

    python bench/artifacts.py [--files 8] [--size-mib 128] [--clients 16] [--seconds 3] [--signing both]

`--signing both` (the default) runs everything twice: without, then with the leader signing
every package (signing rewrites each file once, after validation and before `received`).

1. `rsync -a` of the GPKGs between two local directories (best of 3): the baseline. And
   `rsync -a --fsync` (best of 3): the same copy made durable, as the leader must before it
   acknowledges an upload (the issue asks for an fsync before `received`); on this machine's
   disk that, not the network path, is what bounds (a) and (b).
2. A real cluster (3 orchestrators + gateway as processes); a real `Drone` in this process
   whose builder hands over the pre-built GPKGs, so only the transfer is measured. One
   follower is stopped (SIGKILL) before the submission:
   (a) from submit until every package is received (uploaded, fsynced, validated, stored,
       committed) on the leader;
   (b) until a majority (the leader and the running follower) hold every file;
   (c) replication alone: from the restarted follower's readiness until it holds every file
       (fetched from the two holders, sha256 checked, `hold` committed).
3. Peak resident memory (VmHWM) of every process.
4. The binhost: requests per second for `Packages` and for a 10 MiB package file, with
   concurrent aiohttp clients against one orchestrator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's `queue`, which the drone imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import aiohttp  # noqa: E402

from swarmmesh import gentoo, gpkg_writer  # noqa: E402
from swarmmesh.builders import BuildResult  # noqa: E402
from swarmmesh.drone import Drone  # noqa: E402
from swarmmesh.harness import CURVE_CHOICES, LocalCluster, curve_modes, wait_until  # noqa: E402

MIB = 1024 * 1024


class Prebuilt:
    """A builder that "builds" by hard-linking a GPKG made before the clock started."""

    name = "prebuilt"

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def build(self, cpv: str, repo: str | None, workdir: Path, cancel: threading.Event) -> BuildResult:
        workdir.mkdir(parents=True, exist_ok=True)
        dest = workdir / "artifact.gpkg.tar"
        os.link(self.files[cpv], dest)
        return BuildResult(ok=True, path=dest, error="", seconds=0.0)


def make_gpkgs(folder: Path, count: int, size: int, name: str = "big") -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {}
    for i in range(count):
        cpv = f"app-misc/{name}{i}-1.0"
        files[cpv] = folder / f"{name}{i}-1.0-1.gpkg.tar"
        gpkg_writer.write_gpkg(files[cpv], cpv, size=size, seed=i)
    return files


def rsync_seconds(src: Path, dst: Path, *options: str) -> float:
    best = float("inf")
    for _ in range(3):
        shutil.rmtree(dst, ignore_errors=True)
        os.sync()  # every phase starts without dirty pages: writeback of the last must not count
        start = time.perf_counter()
        subprocess.run(["rsync", "-a", *options, f"{src}/", f"{dst}/"], check=True)
        best = min(best, time.perf_counter() - start)
    shutil.rmtree(dst, ignore_errors=True)
    return best


def peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))


def holders_at_least(c: LocalCluster, leader: str, keys: set[str], n: int) -> bool:
    packages = c.ask(leader, "swarm", timeout=5)["packages"]
    return all(len(p.get("holders", [])) >= n for p in packages if p["key"] in keys) and \
        keys <= {p["key"] for p in packages if p["state"] == "received"}


def upload_and_replicate(c: LocalCluster, files: dict[str, Path]) -> tuple[float, float, float]:
    leader = c.leader(timeout=20)
    stopped = next(n for n in c.orchestrators if n != leader)
    keys = set(files)
    c.kill(stopped)
    os.sync()
    start = time.perf_counter()
    c.api.submit_packages(sorted(keys), client="bench")
    wait_until(lambda: c.ask(leader, "status")["counts"]["received"] >= len(keys), 600, "received",
               interval=0.01)
    t_a = time.perf_counter() - start
    wait_until(lambda: holders_at_least(c, leader, keys, 2), 600, "a majority", interval=0.02)
    t_b = time.perf_counter() - start
    os.sync()
    c.up(stopped)
    resumed = time.perf_counter()
    wait_until(lambda: holders_at_least(c, leader, keys, 3), 600, "the restarted follower", interval=0.02)
    return t_a, t_b, time.perf_counter() - resumed


async def _hammer(url: str, clients: int, seconds: float) -> tuple[int, int]:
    done, size = 0, 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done, size
        while time.perf_counter() < deadline:
            async with session.get(url) as resp:
                body = await resp.read()
                assert resp.status == 200
            done, size = done + 1, size + len(body)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return done, size


def binhost_bench(c: LocalCluster, builder: Prebuilt, tmp: Path, clients: int,
                  seconds: float) -> list[tuple[str, float, float]]:
    ten = make_gpkgs(tmp / "ten", 1, 10 * MIB, name="ten")
    builder.files.update(ten)
    cpv = next(iter(ten))
    c.api.submit_packages([cpv], client="bench")
    leader = c.leader()
    wait_until(lambda: holders_at_least(c, leader, {cpv}, 3), 120, "the 10 MiB package")
    release = c.api.finalize(force=True)["release"]
    wait_until(lambda: all(c.ask(n, "releases")["serving"] == release for n in c.orchestrators), 60, "release")
    base = c.configs[leader].me().binhost_url
    rows = []
    for what, url in (("Packages", base + "Packages"), ("10 MiB file", base + gentoo.gpkg_relpath(cpv, 1))):
        done, size = asyncio.run(_hammer(url, clients, seconds))
        rows.append((what, done / seconds, size / MIB / seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--keep", metavar="DIR", help="Work in DIR (must not exist) and keep it: logs, stores.")
    parser.add_argument("--signing", choices=("on", "off", "both"), default="both",
                        help="the leader signing every package, not, or both in turn (default)")
    parser.add_argument("--curve", choices=CURVE_CHOICES, default="on",
                        help="CURVE on every socket, off (plaintext, benchmarks only), or both, side by side")
    args = parser.parse_args()
    keep = args.keep
    for mode in curve_modes(args.curve):
        for sign in {"on": [True], "off": [False], "both": [False, True]}[args.signing]:
            print(f"--- {mode}, signing {'on' if sign else 'off'}")
            if keep and (args.curve == "both" or args.signing == "both"):
                args.keep = f"{keep}-{mode.split()[-1]}-{'signed' if sign else 'unsigned'}"
            run(args, sign)


def run(args: argparse.Namespace, sign: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-") as tmp_name:
        tmp = Path(args.keep) / ("signed" if sign else "unsigned") if args.keep else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=bool(not args.keep))
        files = make_gpkgs(tmp / "gpkgs", args.files, args.size_mib * MIB)
        total = sum(p.stat().st_size for p in files.values()) / MIB
        t_rsync = rsync_seconds(tmp / "gpkgs", tmp / "rsync-copy")
        t_durable = rsync_seconds(tmp / "gpkgs", tmp / "rsync-copy", "--fsync")
        c = LocalCluster(tmp / "cluster", orchestrators=3, drones=1, builder_overrides={"slots": args.files},
                         sign=sign)
        c.up(*c.orchestrators, "gateway")
        builder = Prebuilt(dict(files))
        drone = Drone(c.configs["drone-1"], builder=builder)
        runner = threading.Thread(target=drone.run, daemon=True)
        runner.start()
        try:
            t_a, t_b, t_c = upload_and_replicate(c, files)
            rss = {name: c.rss_mib(name)[1] for name in (*c.orchestrators, "gateway")}
            rss["drone (this process)"] = peak_rss_mib()
            serving = binhost_bench(c, builder, tmp, args.clients, args.seconds)
        finally:
            drone.stop()
            runner.join(30)
            c.down()
    report(total, (t_rsync, t_durable), (t_a, t_b, t_c), rss, serving, args)


def report(total: float, baselines: tuple[float, float], times: tuple[float, float, float], rss: dict[str, float],
           serving: list[tuple[str, float, float]], args: argparse.Namespace) -> None:
    rsync, durable = (total / t for t in baselines)
    print(f"{args.files} GPKGs x {args.size_mib} MiB = {total:.0f} MiB")
    print(f"{'what':<44} {'seconds':>8} {'MiB/s':>8} {'x rsync':>8} {'x fsync':>8}  target")
    for name, t in zip(("rsync -a (best of 3)", "rsync -a --fsync (best of 3)"), baselines, strict=True):
        print(f"{name:<44} {t:>8.2f} {total / t:>8.0f} {total / t / rsync:>8.2f} {total / t / durable:>8.2f}")
    targets = ("≥ 1.5x rsync", "≥ 1.0x rsync", "")
    names = ("(a) drone -> leader: stored, checked, committed", "(b) held by a majority (2 of 3)",
             "(c) a restarted follower catching up")
    for name, t, target in zip(names, times, targets, strict=True):
        print(f"{name:<44} {t:>8.2f} {total / t:>8.0f} {total / t / rsync:>8.2f} {total / t / durable:>8.2f}"
              f"  {target}")
    print("peak RSS (MiB): " + ", ".join(f"{n} {v:.0f}" for n, v in rss.items()) + "  (target < 100 each)")
    print(f"binhost, {args.clients} concurrent clients for {args.seconds:g} s:")
    for what, rps, mibs in serving:
        print(f"  {what:<12} {rps:>8.0f} req/s {mibs:>8.0f} MiB/s")


if __name__ == "__main__":
    main()
