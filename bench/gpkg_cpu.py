"""GPKG CPU micro-benchmark: microseconds per call of `gpkg_bytes` and `inspect_gpkg(..., data=...)`.

    python bench/gpkg_cpu.py [--packages 200] [--repeat 7]

In memory, one thread, no files: what a drone spends making a simulated package and what the
leader spends validating an upload it holds in memory. Each row runs `--packages` different
packages (distinct CPVs, as in a cluster run) and reports the best of `--repeat` rounds, per call,
in CPU time. To compare with other code, point PYTHONPATH at another checkout of the package.

Two columns for gpkg_bytes: as a drone makes packages (BUILD_TIME, hence every tar mtime, is the
current second, shared by the packages of that second) and with a new second for every package
(the worst case for what is cached per mtime). The leader parses the expected CPV before it
inspects the upload, so the atom cache of `swarmmesh.gentoo` is warm for `expect_cpv` here too.
"""

from __future__ import annotations

import sys

# bench/queue.py shadows the standard library's `queue` (which swarmmesh.gpkg uses) for anything imported
# after this file starts: drop bench/ from the import path first.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402 - after the sys.path fix above
import contextlib  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

from swarmmesh import gpkg, gpkg_writer  # noqa: E402

SIZES = (("2 KiB", 2048), ("64 KiB", 64 << 10))


def _per_call(run: Callable[[], None], count: int, repeat: int) -> float:
    """Best round, in CPU microseconds per call: CPU time, not wall time, so that other work on
    the machine disturbs the figures less (it still does, through caches and clock speed)."""
    return min(timeit.repeat(run, number=1, repeat=repeat, timer=time.process_time)) / count * 1e6


@contextlib.contextmanager
def _new_second_each_call() -> Iterator[None]:
    """time.time() a second later at every call (gpkg_bytes reads it once, for BUILD_TIME)."""
    real, seconds = time.time, itertools.count(int(time.time()))
    time.time = lambda: float(next(seconds))
    try:
        yield
    finally:
        time.time = real


def _row(size: int, count: int, repeat: int) -> tuple[int, float, float, float]:
    cpvs = [f"app-misc/bench{i}-1.{i % 7}" for i in range(count)]
    blobs = [gpkg_writer.gpkg_bytes(cpv, size=size, seed=i) for i, cpv in enumerate(cpvs)]
    pairs = list(zip(cpvs, blobs, strict=True))

    def make() -> None:
        for i, cpv in enumerate(cpvs):
            gpkg_writer.gpkg_bytes(cpv, size=size, seed=i)

    def inspect() -> None:
        for cpv, blob in pairs:
            gpkg.inspect_gpkg("upload.gpkg.tar", expect_cpv=cpv, data=blob)

    made = _per_call(make, count, repeat)
    with _new_second_each_call():
        made_cold = _per_call(make, count, repeat)
    return len(blobs[0]), made, made_cold, _per_call(inspect, count, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"swarmmesh.gpkg from {os.path.dirname(os.path.dirname(gpkg.__file__))}; "
          f"{args.packages} packages per round, best of {args.repeat}, CPU us per call")
    print(f"{'package':<8} {'bytes':>7} {'gpkg_bytes':>11} {'(new second each)':>18} {'inspect_gpkg':>13}")
    for label, size in SIZES:
        actual, made, made_cold, inspected = _row(size, args.packages, args.repeat)
        print(f"{label:<8} {actual:>7} {made:>11.1f} {made_cold:>18.1f} {inspected:>13.1f}")


if __name__ == "__main__":
    main()
