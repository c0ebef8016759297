"""GPKG CPU micro-benchmark: microseconds per call of `gpkg_bytes` and `inspect_gpkg(..., data=...)`.

    python bench/gpkg_cpu.py [--packages 200] [--repeat 7]

In memory, one thread, no files: what a drone spends making a simulated package and what the
leader spends validating an upload it holds in memory. Each row runs `--packages` different
packages (distinct CPVs, as in a cluster run) and reports the best of `--repeat` rounds, per call.
To compare with other code, point PYTHONPATH at another checkout of the package.

The leader parses the expected CPV once before it inspects the upload, so the atom cache of
`swarmmesh.gentoo` is warm for `expect_cpv` in both cases here, as in the cluster.
"""

from __future__ import annotations

import sys

# bench/queue.py shadows the standard library's `queue` (which swarmmesh.gpkg uses) for anything imported
# after this file starts: drop bench/ from the import path first.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402 - after the sys.path fix above
import os  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402

from swarmmesh import gpkg  # noqa: E402

SIZES = (("2 KiB", 2048), ("64 KiB", 64 << 10))


def _per_call(run, count: int, repeat: int) -> float:
    """Best round, in CPU microseconds per call: CPU time, not wall time, so that other work on
    the machine disturbs the figures less (it still does, through caches and clock speed)."""
    return min(timeit.repeat(run, number=1, repeat=repeat, timer=time.process_time)) / count * 1e6


def _row(label: str, size: int, count: int, repeat: int) -> tuple[str, int, float, float]:
    cpvs = [f"app-misc/bench{i}-1.{i % 7}" for i in range(count)]
    blobs = [gpkg.gpkg_bytes(cpv, size=size, seed=i) for i, cpv in enumerate(cpvs)]
    pairs = list(zip(cpvs, blobs, strict=True))

    def make() -> None:
        for i, cpv in enumerate(cpvs):
            gpkg.gpkg_bytes(cpv, size=size, seed=i)

    def inspect() -> None:
        for cpv, blob in pairs:
            gpkg.inspect_gpkg("upload.gpkg.tar", expect_cpv=cpv, data=blob)

    return label, len(blobs[0]), _per_call(make, count, repeat), _per_call(inspect, count, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"swarmmesh.gpkg from {os.path.dirname(os.path.dirname(gpkg.__file__))}; "
          f"{args.packages} packages per round, best of {args.repeat}")
    print(f"{'package':<8} {'bytes':>7} {'gpkg_bytes us':>14} {'inspect_gpkg us':>16}  (CPU)")
    for label, size in SIZES:
        name, actual, make, inspect = _row(label, size, args.packages, args.repeat)
        print(f"{name:<8} {actual:>7} {make:>14.1f} {inspect:>16.1f}")


if __name__ == "__main__":
    main()
