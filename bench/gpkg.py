"""GPKG: per-call cost of writing, inspecting and indexing a small package; inspect throughput on a big one.

    python bench/gpkg.py [--packages 300] [--big-mib 128] [--rounds 5]

In-process, no cluster. Small: `--packages` GPKGs of size=2048 (what the cluster benchmark
builds) written, inspected and metadata-read; the baseline is `tarfile.open` + iterating every
member of the same files, in the same run (the tarfile-based implementation is gone). Big: one
GPKG of `--big-mib` MiB, inspect_gpkg against hashlib.sha256 of the same file in 1 MiB reads.
Best of `--rounds`; CPU is this process's (all threads), wall is elapsed. inspect_gpkg hashes
every byte five times: sha256, md5 and sha1 of the file (for the index) and BLAKE2B and SHA512 of
each member (every digest the Manifest lists is checked, as on a Portage client).

Targets per small package: write <= 0.4 ms, inspect <= 0.3 ms, read_gpkg_metadata <= 0.15 ms.
"""

from __future__ import annotations

import sys

# bench/queue.py shadows the standard library's `queue` (which swarmmesh.gpkg uses) for anything imported
# after this file starts: drop bench/ from the import path first.
sys.path[:] = [p for p in sys.path if not p.endswith("bench")]

import argparse  # noqa: E402 - after the sys.path fix above
import hashlib  # noqa: E402
import os  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from swarmmesh import gpkg, gpkg_writer  # noqa: E402


def _best(rounds: int, run: Callable[[], None]) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest round."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def _tarfile_iterate(path: Path) -> None:
    with tarfile.open(path) as tar:
        for _member in tar:
            pass


def _sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)


def small(root: Path, count: int, rounds: int) -> None:
    paths = [root / f"small-{i}.gpkg.tar" for i in range(count)]
    counter = iter(range(1 << 30))

    def write() -> None:
        batch = next(counter)  # new file names each round: a drone writes new files, not overwrites
        for i, path in enumerate(paths):
            gpkg_writer.write_gpkg(path.with_suffix(f".{batch}"), f"app-misc/bench{i}-1.0", size=2048, seed=i)

    def files_only() -> None:
        batch = next(counter)
        for path in paths:
            tmp = path.with_suffix(f".{batch}.tmp")
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, path.with_suffix(f".{batch}"))

    write()
    for path in paths:
        path.with_suffix(".0").rename(path)
    data = paths[0].read_bytes()
    rows = [  # writes last: their file-system writeback would slow the reads measured after them
        ("inspect_gpkg", lambda: [gpkg.inspect_gpkg(p) for p in paths], "<= 0.3"),
        ("read_gpkg_metadata", lambda: [gpkg.read_gpkg_metadata(p) for p in paths], "<= 0.15"),
        ("tarfile.open + iterate (baseline)", lambda: [_tarfile_iterate(p) for p in paths], ""),
        ("write_gpkg", write, "<= 0.4"),
        ("  file create+write+rename alone", files_only, ""),
    ]
    print(f"{count} packages of size=2048 ({paths[0].stat().st_size} bytes each), best of {rounds}")
    print(f"{'per package':<36} {'wall ms':>8} {'CPU ms':>8} {'target ms':>10}")
    for name, run, target in rows:
        wall, cpu = _best(rounds, run)
        print(f"{name:<36} {wall / count * 1e3:>8.3f} {cpu / count * 1e3:>8.3f} {target:>10}")


def big(root: Path, mib: int, rounds: int) -> None:
    path = root / "big.gpkg.tar"
    started = time.perf_counter()
    gpkg_writer.write_gpkg(path, "app-misc/big-1.0", size=mib << 20)
    written = time.perf_counter() - started
    size = path.stat().st_size
    sha_wall, sha_cpu = _best(rounds, lambda: _sha256(path))
    ins_wall, ins_cpu = _best(rounds, lambda: gpkg.inspect_gpkg(path))
    meta_wall, _cpu = _best(rounds, lambda: gpkg.read_gpkg_metadata(path))
    print(f"\none GPKG of {size / 2**20:.1f} MiB (written in {written:.2f} s), best of {rounds}")
    print(f"{'':<30} {'MiB/s':>8} {'CPU s':>7} {'ratio':>6}")
    print(f"{'hashlib.sha256, 1 MiB reads':<30} {size / sha_wall / 2**20:>8.0f} {sha_cpu:>7.2f} {1:>6.2f}")
    print(f"{'inspect_gpkg':<30} {size / ins_wall / 2**20:>8.0f} {ins_cpu:>7.2f} {sha_wall / ins_wall:>6.2f}")
    print(f"read_gpkg_metadata of it: {meta_wall * 1e3:.3f} ms (headers only; the image is seeked over)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--big-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swarmmesh-bench-gpkg-") as tmp:
        small(Path(tmp), args.packages, args.rounds)
        if args.big_mib > 0:
            big(Path(tmp), args.big_mib, args.rounds)
    print(f"\n{os.cpu_count()} CPUs; figures are noisy when other work shares the machine")


if __name__ == "__main__":
    main()
