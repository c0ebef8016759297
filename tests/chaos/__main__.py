"""`python -m tests.chaos --seed N --minutes M`: one chaos run, its report, exit 1 on a violation."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos.runner import run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="every random choice of the run comes from it")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the fault phase")
    parser.add_argument("--packages", type=int, default=None, help="default: 200 per minute, at least 150")
    parser.add_argument("--dir", type=Path, default=None, help="keep the cluster here (default: a temp dir, "
                        "removed unless the run failed)")
    parser.add_argument("--no-netns", action="store_true", help="orchestrators on loopback: no partition")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    parser.add_argument("--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = args.dir or Path(tempfile.mkdtemp(prefix=f"swarmmesh-chaos-{args.seed}-"))
    report = run_chaos(args.seed, args.minutes, root, packages=args.packages, want_netns=not args.no_netns)
    print(report.text())
    if args.json:
        print(json.dumps(report.figures(), default=str))
    if report.ok and args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
