"""A local cluster driven from Python: for the demo, the benchmarks and the tests.

It starts real node processes through `cluster.up` (the CLI's own path), talks to them the
way users do (the gateway's HTTP API) or straight to an orchestrator's ROUTER, and kills
them by pid. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import zmq

from swarmmesh import cluster as clustermod
from swarmmesh import keys, protocol, transport
from swarmmesh.api import GatewayClient
from swarmmesh.config import NodeConfig, load_config
from swarmmesh.errors import ClusterError

T = TypeVar("T")

#: Raft timing for loopback clusters: fast elections, a deposed leader steps down in 1.5 s.
FAST_RAFT = {"election_min": 0.3, "election_max": 0.6, "append_period": 0.05,
             "leader_fallback": 1.5, "connection_retry": 0.3, "connection_timeout": 1.0}


#: Tests, benches and the demo submit from one address, far faster than a person: no rate limit.
UNLIMITED_BUILDS = 1e9


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll until `predicate()` is truthy (exceptions count as "not yet"); raise at the deadline."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a node may still be starting
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}"
                               + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def _context(curve: transport.Curve | None) -> zmq.Context:
    """One context per key pair and server keys, kept for the process (ask is called in loops)."""
    key = (curve.public, frozenset(curve.servers.items())) if curve else None
    if key not in _CONTEXTS:
        _CONTEXTS[key] = transport.context(curve)
    return _CONTEXTS[key]


_CONTEXTS: dict[tuple[bytes, frozenset] | None, zmq.Context] = {}


CURVE_CHOICES = ("on", "off", "both")


def curve_modes(choice: str) -> Iterator[str]:
    """Benchmarks only: yield "CURVE on" and/or "CURVE off" with every node started meanwhile
    (and this process's own drones) using CURVE or plaintext, to measure what CURVE costs."""
    modes = {"on": ["on"], "off": ["off"], "both": ["on", "off"]}[choice]
    before = os.environ.get(keys.PLAINTEXT_ENV)
    try:
        for mode in modes:
            os.environ[keys.PLAINTEXT_ENV] = "1" if mode == "off" else "0"
            yield f"CURVE {mode}"
    finally:
        if before is None:
            os.environ.pop(keys.PLAINTEXT_ENV, None)
        else:
            os.environ[keys.PLAINTEXT_ENV] = before


def ask(url: str, op: str, args: dict | None = None, timeout: float = 5.0,
        curve: transport.Curve | None = None) -> Any:
    """One control request straight to an orchestrator's ROUTER (bypassing the gateway), with
    the key pair `curve` (a cluster's admin key: `LocalCluster.curve`)."""
    sock: zmq.Socket = transport.dealer(_context(curve), url)
    try:
        req = protocol.Request(op=op, req_id=uuid.uuid4().hex, args=args or {})
        if not sock.poll(int(timeout * 1000), zmq.POLLOUT):  # no key for that address: not connected
            raise ClusterError(f"could not connect to {url} within {timeout}s (no server key for it?)")
        sock.send(protocol.encode(req))
        if not sock.poll(int(timeout * 1000)):
            raise ClusterError(f"{url} did not answer {op!r} within {timeout}s")
        reply = protocol.decode(sock.recv())
        if not isinstance(reply, protocol.Reply) or reply.req_id != req.req_id:
            raise ClusterError(f"{url} answered {op!r} with an unexpected message")
        if not reply.ok:
            raise ClusterError(f"{op} failed on {url}: {reply.code}: {reply.error}")
        return reply.result
    finally:
        sock.close(0)


def index_entries(index: bytes) -> list[dict[str, str]]:
    """The package stanzas of a Portage `Packages` file (the first stanza is the header)."""
    stanzas = [s for s in index.decode("utf-8", "replace").split("\n\n") if s.strip()]
    return [dict(line.split(": ", 1) for line in st.splitlines() if ": " in line) for st in stanzas[1:]]


def http_get(url: str, timeout: float = 10.0) -> bytes:
    """GET a loopback URL (no proxies); ClusterError on anything but 200."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:  # noqa: S310 - our own binhost URL
            return resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ClusterError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None


def check_binhost(base: str) -> tuple[bytes, list[str]]:
    """What a Portage client would check: the `Packages` a binhost serves, and every file it
    lists downloading with the index's SIZE, MD5 and SHA1. Returns (index, problems)."""
    index = http_get(base + "Packages")
    problems = []
    for entry in index_entries(index):
        body = http_get(base + entry["PATH"])
        got = (str(len(body)), hashlib.md5(body).hexdigest(), hashlib.sha1(body).hexdigest())  # noqa: S324
        if got != (entry.get("SIZE"), entry.get("MD5"), entry.get("SHA1")):
            problems.append(f"{base}{entry['PATH']}: served {got}, index says "
                            f"{(entry.get('SIZE'), entry.get('MD5'), entry.get('SHA1'))}")
    return index, problems


def exit_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit so `finally`/`with` blocks stop the
    cluster: node processes run in their own sessions and would otherwise outlive a killed script."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


class LocalCluster:
    """A loopback cluster in `directory` (configs written by `cluster.init_cluster`)."""

    def __init__(self, directory: Path, orchestrators: int = 3, drones: int = 0, **overrides: Any) -> None:
        self.dir = Path(directory)
        overrides.setdefault("raft_overrides", FAST_RAFT)
        overrides.setdefault("gateway_overrides", {"build_rate": UNLIMITED_BUILDS})
        clustermod.init_cluster(self.dir, orchestrators=orchestrators, drones=drones, base_port=0, **overrides)
        self.configs: dict[str, NodeConfig] = {p.stem: load_config(p) for p in sorted(self.dir.glob("*.toml"))}
        self.orchestrators = [n for n, c in self.configs.items() if c.role == "orchestrator"]
        self.drones = [n for n, c in self.configs.items() if c.role == "drone"]
        self.gateway_url = self.configs["gateway"].gateway.url
        self.token = (self.dir / "admin.token").read_text().strip()
        self.api = GatewayClient(self.gateway_url, timeout=10.0, token=self.token)
        self._curves: dict[tuple[str, tuple], transport.Curve] = {}

    def add_key(self, name: str, role: str = "drone") -> transport.Curve | None:
        """A new key pair in keys/, authorized on every orchestrator (they pick it up without a
        restart): what an operator does to add a drone. Returns it, for sockets of the test's own."""
        public, _secret = keys.keygen(name, self.dir / clustermod.KEYS_DIR, role=role)
        shutil.copyfile(public, self.dir / clustermod.AUTHORIZED_DIR / public.name)
        running = [o for o in self.orchestrators if self.pid(o) is not None]
        # A CURVE handshake refused once is never retried by libzmq: connect only after every
        # running orchestrator has read the new key (it logs that line).
        wait_until(lambda: all(f"authorized keys: added {name}" in self._log(o) for o in running), 10,
                   f"{', '.join(running)} to accept the key of {name}")
        return self.admin_curve(name)

    def _log(self, name: str) -> str:
        path = self.dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def revoke(self, name: str) -> None:
        """Remove `name`'s public key from the authorized keys: refused at once, no restart."""
        (self.dir / clustermod.AUTHORIZED_DIR / f"{name}.key").unlink()

    @property
    def curve(self) -> transport.Curve | None:
        """The admin's key pair, for the orchestrators as `configs` lists them now (a test may
        move them: the chaos run puts them in network namespaces)."""
        return self.admin_curve()

    def admin_curve(self, name: str = clustermod.ADMIN) -> transport.Curve | None:
        """The key pair of `name` (default: the admin's), to talk to the orchestrators directly
        as the CLI's admin does; None when benchmarks turned CURVE off."""
        if os.environ.get(keys.PLAINTEXT_ENV) == "1":
            return None
        addrs = self.configs[self.orchestrators[0]].orchestrators
        if (name, addrs) not in self._curves:
            self._curves[name, addrs] = keys.load_curve(self.dir / clustermod.KEYS_DIR, name, addrs)
        return self._curves[name, addrs]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- processes -----------------------------------------------------------------------
    def up(self, *nodes: str, timeout: float = 60.0) -> None:
        clustermod.up(self.dir, nodes=list(nodes) or None, wait=True, timeout=timeout)

    def down(self) -> None:
        clustermod.down(self.dir, kill=True, timeout=10)

    def pid(self, name: str) -> int | None:
        return clustermod.node_pid(self.dir, name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal a node; for SIGKILL, wait until the process is gone."""
        pid = self.pid(name)
        if pid is None:
            raise ClusterError(f"{name} is not running")
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            wait_until(lambda: not clustermod.process_exists(pid), 10, f"{name} (pid {pid}) to die")
        return pid

    def rss_mib(self, name: str) -> tuple[float, float]:
        """(current, peak) resident memory of a node, from /proc."""
        fields = {}
        with open(f"/proc/{self.pid(name)}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024

    def logs(self, lines: int = 200) -> str:
        out = []
        for log in sorted((self.dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            out.append(f"===== {log.name} (last {lines} lines) =====\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    # --- views -----------------------------------------------------------------------------
    def ask(self, name: str, op: str, args: dict | None = None, timeout: float = 5.0) -> Any:
        return ask(self.configs[name].me().broker_url, op, args, timeout, curve=self.curve)

    def leader(self, timeout: float = 10.0, exclude: str | None = None) -> str:
        """The leader as the gateway reports it (and it is not `exclude`)."""

        def found() -> str:
            name = self.api.status()["leader"]
            return name if name and name != exclude else ""

        return wait_until(found, timeout, f"a leader other than {exclude}")

    def node_leader(self, candidates: list[str]) -> str | None:
        """The orchestrator among `candidates` that says it leads (asked directly)."""
        for name in candidates:
            try:
                if self.ask(name, "status", timeout=0.5)["role"] == "leader":
                    return name
            except ClusterError:
                continue
        return None

    def converged(self, names: list[str] | None = None) -> str:
        """The common queue fingerprint when every named orchestrator has applied the same state."""
        prints = {self.ask(n, "status", timeout=2)["fingerprint"] for n in names or self.orchestrators}
        return prints.pop() if len(prints) == 1 else ""
