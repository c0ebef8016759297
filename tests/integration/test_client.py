"""`swarmmesh client` against a real cluster (3 orchestrators, 2 simulated drones, a gateway):
saved `emerge --tree` output goes in, the batch is built in dependency order, released, and the
binrepos.conf entry points at a binhost that serves it. The real-Portage end to end (emerge
drones, a client prefix installing from the release) is in test_client_portage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmmesh.harness import check_binhost, index_entries
from tests.integration.conftest import swarmmesh

TREE = Path(__file__).resolve().parents[1] / "data" / "pretend" / "world-tree.txt"

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_client_from_file_builds_in_order_finalizes_and_writes_binrepos(make_cluster, tmp_path: Path) -> None:
    c = make_cluster(orchestrators=3, drones=2)
    binrepos = tmp_path / "binrepos.conf" / "swarmmesh.conf"
    done = swarmmesh("client", "--from-file", str(TREE), "--gateway", c.gateway_url, "--token", c.token,
                     "--client", "box", "--finalize", "--write-binrepos", str(binrepos), "--timeout", "60", timeout=90)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode() + out
    assert "queued batch" in out and "7/7 done" in out and "released r-" in out
    assert out.rstrip().endswith("then run: emerge --update --deep --newuse --getbinpkg @world")
    url = binrepos.read_text().split("sync-uri = ")[1].strip()
    index, problems = check_binhost(url)
    assert problems == []
    assert sorted(e["CPV"] for e in index_entries(index)) == sorted(f"test-cat/{p}-1.0" for p in
                                  ("base", "mid-a", "mid-b", "libgreet", "flavour", "greeter", "top"))
    swarm = c.api.swarm()
    [batch] = [b for b in swarm["batches"] if b["client"] == "box"]
    assert batch["counts"]["received"] == 7

    again = swarmmesh("client", "--from-file", str(TREE), "--gateway", c.gateway_url, "--token", c.token,
                      "--no-wait", timeout=30)
    assert again.returncode == 0, again.stderr.decode()
    assert "7 packages (0 new)" in again.stdout.decode()  # the same configuration is built once
