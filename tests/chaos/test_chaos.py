"""Issue 5, the CI entry: chaos runs against a real cluster, two per CI run.

One fixed seed (the same every run, about 90 s on 2 cores), and a shorter one whose seed comes
from the commit hash (issue 19), so every commit explores another schedule while CI time stays
bounded. The second seed is printed with the command that replays it; `SWARMMESH_CHAOS_SEED=N`
replays a given seed in the second test. Longer runs (`python -m tests.chaos --seed N
--minutes 3`) are for the figures in bench/README.md. On failure the report carries the seed,
the fault schedule and node logs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.chaos import plan as p
from tests.chaos.runner import run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

CI_SEED = 20261126
CI_MINUTES = 1.0
CI_PACKAGES = 200
CI_SETTLE = 45.0   # a queue that has not settled 45 s after the last fault is reported, not waited on
COMMIT_MINUTES = 0.5
COMMIT_PACKAGES = 150
SEED_ENV = "SWARMMESH_CHAOS_SEED"
ROOT = Path(__file__).resolve().parents[2]


def commit_seed() -> tuple[int, str]:
    """(seed, where it came from): $SWARMMESH_CHAOS_SEED, else the first 8 hex digits of HEAD,
    never CI_SEED (that one runs anyway)."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV]), f"${SEED_ENV}"
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          timeout=10, check=False)
    if done.returncode != 0:
        pytest.fail(f"no commit to take the second chaos seed from (git: {done.stderr.strip()}); "
                    f"set {SEED_ENV}=N to choose one")
    head = done.stdout.strip()
    seed = int(head[:8], 16)
    return (seed + 1 if seed == CI_SEED else seed), f"commit {head[:12]}"


#: Faults that need a drone caught in one phase of a job; a short run of an arbitrary seed can
#: drain its workload before one of them comes due, so there it may be skipped (reported, not
#: failed). The fixed CI seed is known to reach them all and must inject every kind.
OPPORTUNISTIC = frozenset({p.KILL_DRONE_BUILD, p.KILL_DRONE_UPLOAD})


def run_and_judge(seed: int, minutes: float, packages: int, tmp_path: Path, capsys,
                  may_skip: frozenset[str] = frozenset()) -> None:
    report = run_chaos(seed, minutes, tmp_path, packages=packages, settle_timeout=CI_SETTLE)
    with capsys.disabled():
        print("\n" + report.text(with_logs=False))
    replay = f"replay: python -m tests.chaos --seed {seed} --minutes {minutes:g} --packages {packages}\n"
    assert report.ok, replay + report.text(with_logs=True)
    expected = set(p.KINDS) - (set() if report.topology.startswith("netns") else {p.PARTITION_LEADER})
    missing = expected - set(report.injected()) - may_skip
    assert not missing, f"faults planned but never injected: {sorted(missing)}\n{replay}" + report.text(with_logs=False)
    assert report.figures()["processed"] >= packages * 0.9, replay


def test_no_work_lost_under_crashes_restarts_and_partitions(tmp_path, capsys):
    run_and_judge(CI_SEED, CI_MINUTES, CI_PACKAGES, tmp_path, capsys)


def test_a_seed_from_the_commit_hash(tmp_path, capsys):
    seed, source = commit_seed()
    with capsys.disabled():  # printed first, so a run that hangs still names its seed
        print(f"\nsecond chaos seed {seed} (from {source}); replay: python -m tests.chaos --seed {seed} "
              f"--minutes {COMMIT_MINUTES:g} --packages {COMMIT_PACKAGES}")
    run_and_judge(seed, COMMIT_MINUTES, COMMIT_PACKAGES, tmp_path, capsys, may_skip=OPPORTUNISTIC)
