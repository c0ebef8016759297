"""The README's first command, `swarmmesh demo`, must keep working end to end."""

from __future__ import annotations

import pytest

from tests.integration.conftest import swarmmesh

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def test_demo_builds_fails_over_and_releases():
    proc = swarmmesh("demo", timeout=150)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    assert "SIGKILL the leader" in out and "finalized release" in out
    assert "FAILED" not in out
    assert "binhost              http://127.0.0.1:" in out
