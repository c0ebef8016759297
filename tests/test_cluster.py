"""Local clusters: config generation, and process handling against a stand-in node command.

The real node commands are tested elsewhere (tests/integration); here `up` starts a tiny Python
script that behaves like a node (prints the readiness line, exits early, ignores SIGTERM...),
so pids, logs, readiness, status and down can be checked in well under a second each.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib

import pytest

from swarmmesh import cluster
from swarmmesh.cluster import process_exists as alive
from swarmmesh.config import load_config
from swarmmesh.errors import ClusterError, ConfigError

NODES = ["orch-1", "orch-2", "orch-3", "drone-1", "drone-2", "gateway"]
ROLES = {"orch": "orchestrator", "drone": "drone", "gateway": "gateway"}

READY = ("import sys, time; print('swarmmesh %s %s ready' % (sys.argv[2], sys.argv[3]), flush=True); "
         "time.sleep(60)")
EARLY_EXIT = "import sys; print('boom: cannot bind', file=sys.stderr); sys.exit(3)"
SILENT = "import time; print('still starting', flush=True); time.sleep(60)"
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('swarmmesh %s %s ready' % (sys.argv[2], sys.argv[3]), flush=True); time.sleep(60)")


def stand_in(script: str):
    """An argv_for that runs `script` with a command line that looks like a node's."""
    return lambda config: [sys.executable, "-c", script, "swarmmesh", config.role, config.name,
                           "--config", str(config.path)]


@pytest.fixture
def small(tmp_path):
    """A 1-orchestrator, 1-drone cluster directory; every process is stopped at teardown."""
    directory = tmp_path / "c"
    cluster.init_cluster(directory, orchestrators=1, drones=1, base_port=0)
    yield directory
    cluster.down(directory, kill=True, timeout=5)


# --- init_cluster ------------------------------------------------------------------------------


def test_init_fixed_port_layout(tmp_path):
    paths = cluster.init_cluster(tmp_path, base_port=7100)
    assert [p.name for p in paths] == [f"{n}.toml" for n in NODES]
    configs = {p.stem: load_config(p) for p in paths}
    orch2 = configs["orch-1"].orchestrators[1]
    assert (orch2.name, orch2.raft_port, orch2.broker_port, orch2.artifacts_port, orch2.events_port,
            orch2.binhost_port) == ("orch-2", 7110, 7111, 7112, 7113, 7114)
    assert configs["orch-3"].me().binhost_port == 7124
    assert configs["drone-1"].gateway.url == "http://127.0.0.1:7190"
    for name, config in configs.items():
        assert config.role == ROLES[name.split("-")[0]]
        assert config.data_dir == tmp_path / "data" / name
        assert config.orchestrators == configs["orch-1"].orchestrators
        assert config.secret == configs["orch-1"].secret and len(config.secret) >= 32
    drone = configs["drone-2"].drone
    assert drone is not None
    assert (drone.builder, drone.slots, drone.cores) == ("simulated", 2, os.cpu_count())


def test_init_free_ports_are_distinct_and_free(tmp_path):
    paths = cluster.init_cluster(tmp_path, orchestrators=3, drones=1, base_port=0)
    config = load_config(paths[0])
    ports = [getattr(o, key) for o in config.orchestrators for key in cluster.PORT_KEYS]
    ports.append(config.gateway.port)
    assert len(ports) == len(set(ports)) == 16
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_init_writes_files_round_trip_and_private(tmp_path):
    secret = 'a "quoted" \\ secret with\ttab, newline\n, DEL\x7f and ünïcode'
    paths = cluster.init_cluster(tmp_path, orchestrators=1, drones=1, base_port=0, secret=secret)
    for path in paths:
        assert load_config(path).secret == secret
        assert tomllib.loads(path.read_text())["cluster"]["secret"] == secret
        assert path.stat().st_mode & 0o777 == 0o600


def test_init_random_secret_differs_between_clusters(tmp_path):
    a = cluster.init_cluster(tmp_path / "a", orchestrators=1, drones=0, base_port=0)[0]
    b = cluster.init_cluster(tmp_path / "b", orchestrators=1, drones=0, base_port=0)[0]
    assert load_config(a).secret != load_config(b).secret


def test_init_refuses_to_overwrite(tmp_path):
    cluster.init_cluster(tmp_path, orchestrators=1, drones=1, base_port=0)
    before = (tmp_path / "orch-1.toml").read_text()
    with pytest.raises(ConfigError, match="refusing to overwrite") as info:
        cluster.init_cluster(tmp_path, orchestrators=3, drones=1, base_port=0)
    assert str(tmp_path / "orch-1.toml") in str(info.value)
    assert (tmp_path / "orch-1.toml").read_text() == before
    assert not (tmp_path / "orch-2.toml").exists()


def test_init_overrides(tmp_path):
    paths = cluster.init_cluster(
        tmp_path, orchestrators=1, drones=1, base_port=0,
        builder_overrides={"min_seconds": 0.05, "max_seconds": 0.1, "failure_rate": 0.25, "seed": 7,
                           "slots": 3},
        queue_overrides={"lease_seconds": 2.0, "heartbeat_seconds": 0.2},
        raft_overrides={"election_min": 0.2, "election_max": 0.4, "append_period": 0.03})
    drone = load_config(paths[1])
    assert drone.drone is not None
    assert (drone.drone.simulated.failure_rate, drone.drone.simulated.seed, drone.drone.slots) == (0.25, 7, 3)
    assert (drone.queue.lease_seconds, drone.queue.heartbeat_seconds) == (2.0, 0.2)
    assert (drone.raft.election_min, drone.raft.append_period) == (0.2, 0.03)


def test_init_invalid_override_leaves_no_files(tmp_path):
    with pytest.raises(ConfigError, match=r"\[raft\] append_period"):
        cluster.init_cluster(tmp_path, orchestrators=1, drones=1, base_port=0,
                             raft_overrides={"election_min": 0.1, "election_max": 0.2})
    with pytest.raises(ConfigError, match=r"\[drone.simulated\] failure_rat: unknown key"):
        cluster.init_cluster(tmp_path, orchestrators=1, drones=1, base_port=0,
                             builder_overrides={"failure_rat": 0.5})
    assert list(tmp_path.glob("*.toml")) == []


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"orchestrators": 0}, "at least 1 orchestrator"),
    ({"drones": -1}, "0 or more drones"),
    ({"orchestrators": 10, "base_port": 7100}, "at most 9 orchestrators"),
    ({"base_port": 65500}, "base port"),
])
def test_init_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        cluster.init_cluster(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- up / status / down against a stand-in ---------------------------------------------------


def test_up_status_down(small):
    nodes = cluster.up(small, argv_for=stand_in(READY), timeout=20)
    assert [(n.name, n.role, n.alive) for n in nodes] == [
        ("orch-1", "orchestrator", True), ("gateway", "gateway", True), ("drone-1", "drone", True)]
    for node in nodes:
        assert node.pid is not None and alive(node.pid)
        assert (small / "run" / f"{node.name}.pid").read_text().strip() == str(node.pid)
        assert f"swarmmesh {node.role} {node.name} ready" in node.log.read_text()
        assert node.config == (small / f"{node.name}.toml").resolve()
        assert os.getpgid(node.pid) == node.pid  # its own session: `down` signals the group
    assert cluster.status(small) == nodes
    assert cluster.node_pid(small, "drone-1") == nodes[2].pid

    again = cluster.up(small, argv_for=stand_in(READY), timeout=20)
    assert [n.pid for n in again] == [n.pid for n in nodes]  # not started twice

    stopped = cluster.down(small)
    assert {n.name for n in stopped} == {"orch-1", "gateway", "drone-1"}
    assert not any(n.alive for n in stopped)
    assert not any(alive(n.pid) for n in nodes if n.pid)
    assert list((small / "run").glob("*.pid")) == []
    assert [n.alive for n in cluster.status(small)] == [False, False, False]
    assert cluster.node_pid(small, "orch-1") is None


def test_up_only_named_nodes(small):
    cluster.up(small, nodes=["drone-1"], argv_for=stand_in(READY), timeout=20)
    running = {n.name for n in cluster.status(small) if n.alive}
    assert running == {"drone-1"}
    cluster.down(small, nodes=["drone-1"])
    assert not any(n.alive for n in cluster.status(small))


def test_unknown_node_name(small):
    with pytest.raises(ConfigError, match="no node named drone-9"):
        cluster.up(small, nodes=["drone-9"], argv_for=stand_in(READY))
    with pytest.raises(ConfigError, match="no node named nope"):
        cluster.node_pid(small, "nope")


def test_up_without_configs(tmp_path):
    with pytest.raises(ConfigError, match="cluster init"):
        cluster.up(tmp_path)


def test_early_exit_is_reported_with_its_log(small):
    with pytest.raises(ClusterError) as info:
        cluster.up(small, argv_for=stand_in(EARLY_EXIT), timeout=20)
    message = str(info.value)
    assert "orch-1" in message and "exited with code 3 before it was ready" in message
    assert "boom: cannot bind" in message


def test_timeout_names_the_nodes_and_their_logs(small):
    with pytest.raises(ClusterError) as info:
        cluster.up(small, nodes=["orch-1"], argv_for=stand_in(SILENT), timeout=0.5)
    message = str(info.value)
    assert "not ready after 0.5 s: orch-1" in message and "still starting" in message
    assert cluster.node_pid(small, "orch-1") is not None  # left running for `down`


def test_readiness_counts_only_this_start(small):
    log = small / "logs" / "orch-1.log"
    log.parent.mkdir()
    log.write_text("swarmmesh orchestrator orch-1 ready\n")  # from an earlier run
    with pytest.raises(ClusterError, match="not ready"):
        cluster.up(small, nodes=["orch-1"], argv_for=stand_in(SILENT), timeout=0.5)
    assert log.read_text().startswith("swarmmesh orchestrator orch-1 ready\nstill starting")


def test_up_no_wait(small):
    nodes = cluster.up(small, wait=False, argv_for=stand_in(SILENT))
    assert all(n.pid is not None for n in nodes)


def test_down_kills_what_ignores_sigterm(small, caplog):
    nodes = cluster.up(small, nodes=["orch-1"], argv_for=stand_in(STUBBORN), timeout=20)
    cluster.down(small, timeout=0.3)
    assert not alive(nodes[0].pid)
    assert "orch-1" in caplog.text and "still running 0.3 s after SIGTERM" in caplog.text


def test_nodes_started_by_another_process(small):
    """As with `swarmmesh cluster up` then `cluster down`: the nodes are not our children."""
    script = (f"import sys; from swarmmesh import cluster; "
              f"argv = lambda c: [sys.executable, '-c', {READY!r}, 'swarmmesh', c.role, c.name, '--config', "
              f"str(c.path)]; "
              f"cluster.up({str(small)!r}, argv_for=argv, timeout=20)")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=cluster._child_env())
    nodes = cluster.status(small)
    assert all(n.alive for n in nodes)
    cluster.down(small)
    assert not any(alive(n.pid) for n in nodes if n.pid)


def test_down_with_kill(small):
    nodes = cluster.up(small, nodes=["gateway"], argv_for=stand_in(STUBBORN), timeout=20)
    cluster.down(small, kill=True, timeout=5)
    assert not alive(nodes[0].pid)


def test_stale_pid_file_of_another_program_is_never_signalled(small):
    other = subprocess.Popen(["sleep", "30"])
    try:
        (small / "run").mkdir()
        (small / "run" / "orch-1.pid").write_text(f"{other.pid}\n")
        assert cluster.node_pid(small, "orch-1") is None
        assert cluster.status(small)[0].alive is False
        stopped = cluster.down(small)
        assert [(n.name, n.pid, n.alive) for n in stopped] == [("orch-1", other.pid, False)]
        assert other.poll() is None  # still running: not ours
        assert not (small / "run" / "orch-1.pid").exists()
        (small / "run" / "orch-1.pid").write_text(f"{other.pid}\n")
        started = cluster.up(small, nodes=["orch-1"], argv_for=stand_in(READY), timeout=20)
        assert started[0].pid != other.pid and started[0].alive
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_default_command_is_the_real_node(small):
    config = load_config(small / "drone-1.toml")
    assert cluster.swarmmesh_argv(config) == [sys.executable, "-m", "swarmmesh", "drone", "--config",
                                              str(config.path)]
