"""Keys on a real cluster: outsiders get nothing, a drone cannot act for another, and a key
removed while its drone is connected is refused without a restart (its jobs built elsewhere).

The outsiders are what issue 13 tried: a drone config copied from drone-1.toml and renamed,
with its own key and secret but the cluster's orchestrator public keys (they are public), and
a gateway set up the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from swarmmesh import keys, protocol, transport
from swarmmesh.errors import ClusterError
from swarmmesh.harness import ask
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration]

RECEIVED = re.compile(r"swarmmesh\.artifacts: received (\S+) from (\S+) ")


def log_of(c, node: str) -> str:
    path = c.dir / "logs" / f"{node}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def received(c, orch: str) -> dict[str, str]:
    """key -> the drone it was received from, from the orchestrator's log."""
    return dict(RECEIVED.findall(log_of(c, orch)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outsider(c, template: str, name: str, where: Path, gateway_port: int | None = None) -> tuple[Path, str]:
    """A copy of node `template`'s config named `name`, with its own key pair and secret; it
    knows the orchestrators' public keys. Returns the config and the start of its public key."""
    text = (c.dir / f"{template}.toml").read_text()
    text = text.replace(f'name = "{template}"', f'name = "{name}"', 1)
    text = re.sub(r'secret = "[^"]*"', 'secret = "another-cluster-secret-0123456789"', text)
    if gateway_port is not None:
        text = re.sub(r"(\[gateway\]\nhost = \"127.0.0.1\"\nport = )\d+", rf"\g<1>{gateway_port}", text)
    where.mkdir(parents=True, exist_ok=True)
    public, _secret = keys.keygen(name, where / "keys", role=c.configs[template].role)
    for orch in c.orchestrators:
        shutil.copyfile(c.dir / "keys" / f"{orch}.key", where / "keys" / f"{orch}.key")
    path = where / f"{name}.toml"
    path.write_text(text)
    return path, keys.read_cert(public)[0].short


def start(role: str, config: Path) -> subprocess.Popen:
    with open(config.with_suffix(".log"), "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "swarmmesh", role, "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # its readiness line (bounded by the test's timeout)
    assert "ready" in line, line
    return proc


def status(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/status", timeout=10) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read())


@pytest.mark.timeout(90)
def test_a_drone_and_a_gateway_from_another_cluster_get_nothing(make_cluster, tmp_path):
    c = make_cluster(orchestrators=1, drones=1, builder_overrides={"min_seconds": 0.01, "max_seconds": 0.05})
    (orch,) = c.orchestrators
    c.leader(timeout=20)
    evil_config, evil_key = outsider(c, "drone-1", "evil", tmp_path / "evil")
    port = _free_port()
    gw_config, gw_key = outsider(c, "gateway", "gateway", tmp_path / "other", gateway_port=port)
    procs = [start("drone", evil_config), start("gateway", gw_config)]
    try:
        wait_until(lambda: all(f"refused key {k}" in log_of(c, orch) for k in (evil_key, gw_key)), 20,
                   what="the orchestrator to refuse both outsiders' keys")
        c.api.submit_packages([f"=app-misc/in{i}-1.0" for i in range(6)], client="itest")
        wait_until(lambda: len(received(c, orch)) == 6, 30, what="6 packages received")
        assert set(received(c, orch).values()) == {"drone-1"}
        assert status(f"http://127.0.0.1:{port}")["leader"] is None  # learns no leader: no event reached it
        with pytest.raises(ClusterError, match="did not answer"):  # and no control reply
            ask(c.configs[orch].me().broker_url, "status", timeout=1.0,
                curve=keys.load_curve(tmp_path / "evil" / "keys", "evil", c.configs[orch].orchestrators))
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=10)


@pytest.mark.timeout(90)
def test_a_drone_claiming_another_name_is_refused_and_a_revoked_drone_is_dropped_live(make_cluster):
    c = make_cluster(orchestrators=1, drones=2, queue_overrides={"lease_seconds": 30},
                     builder_overrides={"min_seconds": 1.0, "max_seconds": 1.5})
    (orch,) = c.orchestrators
    c.leader(timeout=20)

    # an authorized key that claims to be drone-1: no welcome, and the log names the key
    curve = c.add_key("drone-9")
    assert curve is not None
    ctx = transport.context(curve)
    try:
        dealer = transport.dealer(ctx, c.configs[orch].me().broker_url, identity=b"drone-1")
        dealer.send(protocol.encode(protocol.Hello(drone="drone-1", cores=1, slots=4, builder="simulated")))
        claim = "belongs to drone 'drone-9', which claims to be drone 'drone-1'"
        wait_until(lambda: claim in log_of(c, orch), 10, what="the false claim to be logged")
        assert f"refused key {curve.public.decode()[:12]}" in log_of(c, orch)
        deadline = time.monotonic() + 0.5  # its ROUTER identity may catch drone-1's heartbeats, no welcome
        while (left := deadline - time.monotonic()) > 0:
            if dealer.poll(int(left * 1000) + 1):
                assert not isinstance(protocol.decode(dealer.recv()), protocol.Welcome | protocol.Job)
    finally:
        ctx.destroy(linger=0)

    # drone-2 holds jobs; its key is removed: dropped in seconds, its jobs built by drone-1
    c.api.submit_packages([f"=app-misc/slow{i}-1.0" for i in range(8)], client="itest")
    held = wait_until(lambda: [p["key"] for p in c.api.swarm()["packages"] if p.get("drone") == "drone-2"
                               and p.get("state") == "delegated"], 15, what="drone-2 to hold jobs")
    revoked_at = time.monotonic()
    c.revoke("drone-2")
    wait_until(lambda: "drone drone-2 dropped" in log_of(c, orch), 5, what="drone-2's session to be dropped")
    assert time.monotonic() - revoked_at < 5
    wait_until(lambda: len(received(c, orch)) == 8, 45, what="all 8 packages received")
    got = received(c, orch)
    assert {got[k] for k in held if k in got} <= {"drone-1"}, (held, got)
    assert c.pid(orch) is not None  # the orchestrator was never restarted
