"""Real clusters for integration tests: processes started through the CLI, killed by pid.

Every node is a real `python -m swarmmesh <role>` process on loopback ports the kernel
picked. On a failing test the node logs are printed; every process is killed at teardown.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarmmesh.harness import LocalCluster


def swarmmesh(*args: str, timeout: float = 60.0, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "swarmmesh", *args], capture_output=True,
                          timeout=timeout, input=input, check=False)


@pytest.fixture
def make_cluster(request, tmp_path):
    """Factory: make_cluster(orchestrators=3, drones=0, start=True, **overrides) -> LocalCluster."""
    made: list[LocalCluster] = []

    def make(orchestrators: int = 3, drones: int = 0, start: bool = True, **overrides) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(made)}", orchestrators, drones, **overrides)
        made.append(c)
        if start:
            up = swarmmesh("cluster", "up", str(c.dir), "--timeout", "60", timeout=90)
            assert up.returncode == 0, up.stderr.decode(errors="replace") + c.logs()
        return c

    yield make
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.logs())
        c.down()
