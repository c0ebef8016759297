"""Issue 5, the CI entry: one short chaos seed against a real cluster (about 90 s on 2 cores).

Longer runs (`python -m tests.chaos --seed N --minutes 3`) are for the figures in
bench/README.md. On failure the report carries the seed, the fault schedule and node logs.
"""

from __future__ import annotations

import pytest

from tests.chaos import plan as p
from tests.chaos.runner import run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

CI_SEED = 20261126
CI_MINUTES = 1.0
CI_PACKAGES = 200
CI_SETTLE = 45.0   # a queue that has not settled 45 s after the last fault is reported, not waited on


def test_no_work_lost_under_crashes_restarts_and_partitions(tmp_path, capsys):
    report = run_chaos(CI_SEED, CI_MINUTES, tmp_path, packages=CI_PACKAGES, settle_timeout=CI_SETTLE)
    with capsys.disabled():
        print("\n" + report.text(with_logs=False))
    assert report.ok, report.text(with_logs=True)
    expected = set(p.KINDS) - (set() if report.topology.startswith("netns") else {p.PARTITION_LEADER})
    missing = expected - set(report.injected())
    assert not missing, f"faults planned but never injected: {sorted(missing)}\n" + report.text(with_logs=False)
    assert report.figures()["processed"] >= CI_PACKAGES * 0.9
