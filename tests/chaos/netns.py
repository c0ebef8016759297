"""Where the orchestrators run: on plain loopback, or each in its own network namespace.

Why namespaces: a partition must stop traffic between two orchestrators while both keep
running, and on one loopback interface every node shares one address, so there is nothing to
cut. When the machine allows it (root, iproute2, `ip netns`), each orchestrator runs under
`ip netns exec` in a namespace joined to the host by a veth pair on a bridge; drones, the
gateway and this driver stay on the host and reach every orchestrator. Isolating the leader
cuts only the traffic between it and its peers: drones and the gateway
still reach it, which is the nasty case of a leader that hears its workers but not its peers.
The cut is a blackhole route on both sides (only `ip`, no tc qdisc modules needed).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from swarmmesh import cluster as clustermod
from swarmmesh.config import NodeConfig, load_config
from swarmmesh.errors import ClusterError
from swarmmesh.harness import LocalCluster

log = logging.getLogger(__name__)

IP = "ip"


class Loopback:
    """Every node on 127.0.0.1: all faults but the partition."""

    mode = "loopback"

    def __init__(self, why: str = "") -> None:
        self.why = why or "not requested"

    @property
    def can_partition(self) -> bool:
        return False

    def prepare(self, c: LocalCluster) -> None:
        """Nothing to set up: the configs already name 127.0.0.1."""

    def up(self, c: LocalCluster, *names: str, timeout: float = 60.0) -> None:
        clustermod.up(c.dir, nodes=list(names) or None, wait=True, timeout=timeout, argv_for=self.argv_for)

    def argv_for(self, config: NodeConfig) -> list[str]:
        return clustermod.swarmmesh_argv(config)

    def isolate(self, name: str, peers: list[str]) -> None:
        raise ClusterError(f"cannot partition {name}: {self.why}")

    def heal(self, name: str) -> None:
        """Nothing was cut."""

    def close(self) -> None:
        """Nothing to remove."""


class Netns(Loopback):
    """One namespace per orchestrator on a private /24 behind a host bridge."""

    mode = "netns"

    def __init__(self, orchestrators: list[str]) -> None:
        super().__init__()
        tag = f"smc{os.getpid() % 100000}"
        self.bridge = f"{tag}b"
        self.subnet = _free_subnet()
        self.ns = {name: f"{tag}-{name}" for name in orchestrators}
        self.veth = {name: (f"{tag}h{i}", f"{tag}n{i}") for i, name in enumerate(orchestrators, 1)}
        self.addr = {name: f"{self.subnet}.{i + 1}" for i, name in enumerate(orchestrators, 1)}
        self.cut: set[tuple[str, str]] = set()  # (namespace owner, unreachable peer)
        self._made: list[list[str]] = []  # undo commands, run in reverse

    @property
    def can_partition(self) -> bool:
        return True

    def prepare(self, c: LocalCluster) -> None:
        """Build the network, then point every config at the namespace addresses."""
        self._run(IP, "link", "add", self.bridge, "type", "bridge", undo=[IP, "link", "del", self.bridge])
        self._run(IP, "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        self._run(IP, "link", "set", self.bridge, "up")
        for name in self.ns:
            self._namespace(name)
        for path in c.dir.glob("*.toml"):
            path.write_text(rehost(path.read_text(), self.addr))
        c.configs = {p.stem: load_config(p) for p in sorted(c.dir.glob("*.toml"))}

    def _namespace(self, name: str) -> None:
        ns, (host_end, ns_end) = self.ns[name], self.veth[name]
        self._run(IP, "netns", "add", ns, undo=[IP, "netns", "del", ns])
        self._run(IP, "-n", ns, "link", "set", "lo", "up")
        self._run(IP, "link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", ns,
                  undo=[IP, "link", "del", host_end])  # a deleted namespace may keep its veth for long
        self._run(IP, "link", "set", host_end, "master", self.bridge)
        self._run(IP, "link", "set", host_end, "up")
        self._run(IP, "-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", ns_end)
        self._run(IP, "-n", ns, "link", "set", ns_end, "up")

    def argv_for(self, config: NodeConfig) -> list[str]:
        argv = clustermod.swarmmesh_argv(config)
        if config.role == "orchestrator":
            return [IP, "netns", "exec", self.ns[config.name], *argv]
        return argv

    def isolate(self, name: str, peers: list[str]) -> None:
        """Blackhole routes on both sides: no packet between `name` and `peers` is ever sent."""
        routes = [(name, peer) for peer in peers] + [(peer, name) for peer in peers]
        for here, there in routes:
            self._run(IP, "-n", self.ns[here], "route", "add", "blackhole", f"{self.addr[there]}/32")
            self.cut.add((here, there))

    def heal(self, name: str) -> None:
        for here, there in sorted(r for r in self.cut if name in r):
            subprocess.run([IP, "-n", self.ns[here], "route", "del", "blackhole", f"{self.addr[there]}/32"],
                           capture_output=True, check=False)
            self.cut.discard((here, there))

    def close(self) -> None:
        """Undo everything, newest first; a failure here must not hide the run's result."""
        for argv in reversed(self._made):
            done = subprocess.run(argv, capture_output=True, check=False)
            if done.returncode:
                log.warning("cleanup %s failed: %s", " ".join(argv), done.stderr.decode(errors="replace").strip())
        self._made.clear()

    def _run(self, *argv: str, undo: list[str] | None = None) -> None:
        done = subprocess.run(list(argv), capture_output=True, check=False)
        if done.returncode:
            raise ClusterError(f"`{' '.join(argv)}` failed: {done.stderr.decode(errors='replace').strip()}")
        if undo:
            self._made.append(undo)


def rehost(text: str, hosts: dict[str, str]) -> str:
    """A node config with the `host` of each named [[orchestrators]] entry replaced."""
    out, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            current = None
        named = re.match(r'name = "([^"]+)"', line)
        if named:
            current = named.group(1)
        out.append(f'host = "{hosts[current]}"\n' if current in hosts and line.startswith("host = ") else line)
    return "".join(out)


def _free_subnet() -> str:
    used = subprocess.run([IP, "-o", "-4", "addr"], capture_output=True, check=False).stdout.decode()
    for third in range(os.getpid() % 200 + 20, 256):
        if f"10.213.{third}." not in used:
            return f"10.213.{third}"
    raise ClusterError("no free 10.213.x.0/24 subnet for the chaos namespaces; remove stale ones (ip -4 addr)")


def netns_unavailable() -> str:
    """Why orchestrators cannot run in namespaces here ("" when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs)"
    if shutil.which(IP) is None:
        return "needs iproute2 (`ip` not found)"
    if not Path("/proc/self/ns/net").exists():
        return "the kernel has no network namespaces"
    return ""


def make_topology(orchestrators: list[str], want_netns: bool = True) -> Loopback:
    """Namespaces when asked for and possible, else loopback with the reason recorded."""
    if not want_netns:
        return Loopback("network namespaces were turned off (--no-netns)")
    why = netns_unavailable()
    return Loopback(why) if why else Netns(orchestrators)
