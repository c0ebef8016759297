"""Node configuration: one TOML file per node, loaded into frozen dataclasses.

Why so strict: the nodes of a cluster must agree on the orchestrator list, the ports and the
secret, and a typo that is silently ignored (``raft_prot = 7100``) surfaces hours later as a
node that never joins. So every key is checked for type and range, unknown keys are errors,
and every message names the file and the key, says what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmmesh.errors import ConfigError
from swarmmesh.tomltable import MISSING, NAME_RE, Table, describe

log = logging.getLogger(__name__)

ROLES = ("orchestrator", "drone", "gateway")
ENV_VAR = "SWARMMESH_CONFIG"
BUILDERS = ("simulated", "emerge")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_SECRET_LENGTH = 16
#: Secrets containing this marker are the placeholders of conf/*.toml: warn, never trust them.
PLACEHOLDER_MARKER = "change-me"
_SECTIONS = ("node", "cluster", "orchestrators", "gateway", "raft", "queue", "drone", "signing", "keys", "client")
MIN_TOKEN_LENGTH = 16
_PORT_KEYS = ("raft_port", "broker_port", "artifacts_port", "events_port", "binhost_port")


@dataclass(frozen=True)
class OrchestratorAddr:
    """One ``[[orchestrators]]`` entry. Every node carries the whole list: drones and gateways
    follow the leader by name, and each orchestrator finds its own ports under its name."""

    name: str
    host: str
    raft_port: int
    broker_port: int
    artifacts_port: int
    events_port: int
    binhost_port: int
    priority: int = 0

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def broker_url(self) -> str:
        return f"tcp://{self.host}:{self.broker_port}"

    @property
    def artifacts_url(self) -> str:
        return f"tcp://{self.host}:{self.artifacts_port}"

    @property
    def events_url(self) -> str:
        return f"tcp://{self.host}:{self.events_port}"

    @property
    def binhost_url(self) -> str:
        return f"http://{self.host}:{self.binhost_port}/"


@dataclass(frozen=True)
class RaftTuning:
    """``[raft]``, seconds. Defaults are well below PySyncObj's, which take seconds to notice
    a dead leader and call a frozen leader "leader" for 30 s."""

    election_min: float = 0.3
    election_max: float = 0.6
    append_period: float = 0.05
    leader_fallback: float = 1.5
    connection_retry: float = 0.5
    connection_timeout: float = 1.0


@dataclass(frozen=True)
class QueuePolicy:
    """``[queue]``: how long a drone may hold a job silently, and when to stop trusting it."""

    max_attempts: int = 3
    lease_seconds: float = 5.0
    heartbeat_seconds: float = 1.0
    ground_after: int = 5


@dataclass(frozen=True)
class GatewayConfig:
    """``[gateway]``; `tokens` (``[gateway.tokens]``, name -> token) steer the cluster over HTTP."""

    host: str = "127.0.0.1"
    port: int = 8090
    tokens: dict[str, str] = field(default_factory=dict)
    open_reads: bool = True          # GET endpoints need no token
    build_rate: float = 60.0         # POST /build per client address per minute

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class SimulatedBuilder:
    """``[drone.simulated]``: stands in for emerge in tests and the demo; same protocol, real GPKG."""

    min_seconds: float = 0.2
    max_seconds: float = 1.0
    failure_rate: float = 0.0
    artifact_size: int = 8192
    seed: int | None = None


@dataclass(frozen=True)
class EmergeBuilder:
    """``[drone.emerge]``: the prefix lets a drone build inside a Gentoo Prefix or chroot."""

    command_prefix: tuple[str, ...] = ()
    emerge: str = "emerge"
    timeout_seconds: float = 7200.0
    log_tail_lines: int = 40
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SigningConfig:
    """``[signing]`` (orchestrators): the swarm's OpenPGP key, which signs every package.

    Either `key_file` (a secret key without passphrase, from ``swarmmesh keygen --signing``)
    or `gnupg_home` + `key` (a key in an existing GnuPG home, used through gpg). `trusted`
    names further public keys whose signatures stay valid: the old key during a rotation."""

    key_file: Path | None = None
    gnupg_home: Path | None = None
    key: str | None = None
    trusted: tuple[Path, ...] = ()


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class DroneConfig:
    cores: int = field(default_factory=_cpu_count)
    slots: int = 1
    builder: str = "simulated"
    work_dir: Path | None = None
    simulated: SimulatedBuilder = field(default_factory=SimulatedBuilder)
    emerge: EmergeBuilder = field(default_factory=EmergeBuilder)


@dataclass(frozen=True)
class KeysConfig:
    """``[keys]``: where this node's CURVE key pair (and the orchestrators' public keys) live,
    and, on an orchestrator, the directory of public keys it accepts."""

    dir: Path
    authorized: Path


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    name: str
    role: str
    data_dir: Path
    secret: str
    orchestrators: tuple[OrchestratorAddr, ...]
    gateway: GatewayConfig
    raft: RaftTuning
    queue: QueuePolicy
    drone: DroneConfig | None
    auto_finalize: bool = False
    keep_releases: int = 5
    log_level: str = "INFO"
    scrub_interval: float = 600.0  # seconds between two passes of the store's scrubber
    signing: SigningConfig | None = None  # None: packages are served unsigned
    #: None only for configs made in code (unit tests' stand-ins): such a node is plaintext
    keys: KeysConfig | None = None
    client_token: str | None = None  # ``[client] token``: what client commands send

    def me(self) -> OrchestratorAddr:
        """This node's own entry: an orchestrator binds the ports listed under its name."""
        for addr in self.orchestrators:
            if addr.name == self.name:
                return addr
        raise ConfigError(
            f"{self.path}: [node] name: {self.name!r} is not an orchestrator (role {self.role}); "
            "only orchestrator nodes have their own [[orchestrators]] entry"
        )

    def peers(self) -> tuple[OrchestratorAddr, ...]:
        return tuple(addr for addr in self.orchestrators if addr.name != self.name)


# --- the sections --------------------------------------------------------------------------


def _orchestrator(t: Table, index: int) -> OrchestratorAddr:
    name, host = t.name("name", f"orch-{index}"), t.host("host", example=f"orch-{index}.lan")
    ports = {key: t.port(key, example=7100 + n) for n, key in enumerate(_PORT_KEYS)}
    addr = OrchestratorAddr(name=name, host=host, priority=t.integer("priority", 0, lo=0), **ports)
    t.finish()
    return addr


def _orchestrators(root: Table) -> tuple[OrchestratorAddr, ...]:
    entries = root.get("orchestrators", "an array of tables", [])
    if not entries:
        root.fail("orchestrators", "no orchestrators are listed",
                  "add one [[orchestrators]] table per orchestrator (3 or 5 survive a failure)")
    tables = [Table(root.source, f"[[orchestrators]] #{i}", e) for i, e in enumerate(entries, 1)]
    addrs = tuple(_orchestrator(t, i) for i, t in enumerate(tables, 1))
    if len(addrs) % 2 == 0:
        log.warning("%s: %d orchestrators: an even count tolerates no more failures than %d; "
                    "use an odd number", root.source, len(addrs), len(addrs) - 1)
    return addrs


def _check_unique(source: str, addrs: tuple[OrchestratorAddr, ...], gateway: GatewayConfig) -> None:
    names: dict[str, int] = {}
    used = {(gateway.host, gateway.port): "[gateway] port"}
    for i, addr in enumerate(addrs, 1):
        t = Table(source, f"[[orchestrators]] #{i}", {})
        if addr.name in names:
            t.fail("name", f"{addr.name!r} is also the name of [[orchestrators]] #{names[addr.name]}",
                   "give every orchestrator a unique name")
        names[addr.name] = i
        for key in _PORT_KEYS:
            endpoint = (addr.host, getattr(addr, key))
            if endpoint in used:
                t.fail(key, f"{addr.host}:{endpoint[1]} is already used by {used[endpoint]}",
                       "give every port on one host its own number")
            used[endpoint] = f"{t.label} {key}"


def _raft(t: Table) -> RaftTuning:
    d = RaftTuning()
    raft = RaftTuning(*(t.number(k, getattr(d, k)) for k in (
        "election_min", "election_max", "append_period", "leader_fallback", "connection_retry",
        "connection_timeout")))
    t.finish()
    if raft.election_max <= raft.election_min:
        t.fail("election_max", f"{raft.election_max} must be greater than election_min ({raft.election_min})",
               "raise election_max or lower election_min")
    if raft.append_period >= raft.election_min / 3:
        t.fail("append_period", f"{raft.append_period} must be less than election_min / 3 "
               f"({raft.election_min / 3:.3g}), or followers start elections under a healthy leader",
               "lower append_period or raise election_min")
    return raft


def _queue(t: Table) -> QueuePolicy:
    queue = QueuePolicy(
        max_attempts=t.integer("max_attempts", 3), lease_seconds=t.number("lease_seconds", 5.0),
        heartbeat_seconds=t.number("heartbeat_seconds", 1.0), ground_after=t.integer("ground_after", 5),
    )
    t.finish()
    if queue.heartbeat_seconds >= queue.lease_seconds:
        t.fail("heartbeat_seconds", f"{queue.heartbeat_seconds} must be shorter than lease_seconds "
               f"({queue.lease_seconds}), or healthy leases expire", "lower heartbeat_seconds")
    return queue


def _gateway(t: Table) -> GatewayConfig:
    tokens = t.table("tokens")
    for name, token in tokens.data.items():
        if not NAME_RE.match(name):
            tokens.fail(name, "is not a valid token name", "name tokens with letters, digits, '.', '_' or '-'")
        _token(tokens, name, token)
    tokens.known.extend(tokens.data)
    gateway = GatewayConfig(
        host=t.host("host", "127.0.0.1"), port=t.port("port", 8090), tokens=dict(tokens.data),
        open_reads=t.get("open_reads", "a boolean", True),
        build_rate=t.number("build_rate", 60.0),
    )
    t.finish()
    return gateway


def _token(t: Table, key: str, value: Any) -> str:
    if not isinstance(value, str):
        t.fail(key, f"expected a string, got {describe(value)}", f'write it like {key} = "<token>"')
    if len(value) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in value):
        t.fail(key, f"a token must be at least {MIN_TOKEN_LENGTH} characters without spaces",
               "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return value


def _keys(t: Table, base: Path) -> KeysConfig:
    keys = KeysConfig(dir=t.path("dir", base, "keys"), authorized=t.path("authorized", base, "authorized_keys"))
    t.finish()
    return keys


def _client(t: Table) -> str | None:
    token = _token(t, "token", t.data["token"]) if "token" in t.data else None
    t.known.append("token")
    t.finish()
    return token


def _simulated(t: Table) -> SimulatedBuilder:
    sim = SimulatedBuilder(
        min_seconds=t.number("min_seconds", 0.2, zero_ok=True), max_seconds=t.number("max_seconds", 1.0),
        failure_rate=t.number("failure_rate", 0.0, hi=1.0, zero_ok=True),
        artifact_size=t.integer("artifact_size", 8192, lo=2048), seed=t.get("seed", "an integer", None, 42),
    )
    t.finish()
    if sim.max_seconds < sim.min_seconds:
        t.fail("max_seconds", f"{sim.max_seconds} is less than min_seconds ({sim.min_seconds})",
               "raise max_seconds or lower min_seconds")
    return sim


def _emerge(t: Table) -> EmergeBuilder:
    emerge = EmergeBuilder(
        command_prefix=tuple(t.get("command_prefix", "an array of strings", [], ["/opt/gentoo-prefix/run"])),
        emerge=t.string("emerge", "emerge"), timeout_seconds=t.number("timeout_seconds", 7200.0),
        log_tail_lines=t.integer("log_tail_lines", 40, lo=0),
        env=dict(t.get("env", "a table of strings", {}, {"MAKEOPTS": "-j8"})),
    )
    t.finish()
    return emerge


def _drone(t: Table, base: Path, data_dir: Path) -> DroneConfig:
    drone = DroneConfig(
        cores=t.integer("cores", _cpu_count()), slots=t.integer("slots", 1),
        builder=t.choice("builder", BUILDERS, "simulated"),
        work_dir=t.path("work_dir", base, str(data_dir / "work")),
        simulated=_simulated(t.table("simulated")), emerge=_emerge(t.table("emerge")),
    )
    t.finish()
    return drone


def _signing(t: Table, base: Path) -> SigningConfig | None:
    if not t.data:
        return None
    def path(key: str) -> Path | None:
        return t.path(key, base, "") if key in t.data else None
    trusted = tuple((base / Path(p).expanduser()).absolute()
                    for p in t.get("trusted", "an array of strings", [], ["old-key/signing-key.asc"]))
    signing = SigningConfig(key_file=path("key_file"), gnupg_home=path("gnupg_home"),
                            key=t.string("key", None, "0123456789ABCDEF0123456789ABCDEF01234567"), trusted=trusted)
    t.finish()
    if (signing.key_file is None) == (signing.gnupg_home is None):
        t.fail("key_file", "name the signing key either by key_file or by gnupg_home and key, exactly one way",
               'set key_file = "signing/signing-key.sec.asc" (make one with `swarmmesh keygen --signing '
               '--dir signing`) or gnupg_home and key')
    if signing.gnupg_home is not None and signing.key is None:
        t.missing("key", "add key = the fingerprint of the secret key in gnupg_home")
    return signing


def _secret(t: Table, role: str) -> str:
    secret = t.get("secret", "a string", "" if role != "orchestrator" else MISSING, "<32 random characters>")
    if (secret or role == "orchestrator") and len(secret) < MIN_SECRET_LENGTH:
        t.fail("secret", f"is {len(secret)} characters long; at least {MIN_SECRET_LENGTH} are needed",
               "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if PLACEHOLDER_MARKER in secret.lower():
        log.warning("%s: [cluster] secret is the example placeholder; anyone who read the example can "
                    "join the cluster: replace it on every node", t.source)
    return secret


def _node(root: Table, base: Path) -> tuple[Table, str, str, Path, str]:
    node = root.table("node", required=True)
    name, role = node.name("name", "orch-1"), node.choice("role", ROLES)
    data_dir = node.path("data_dir", base, f"data/{name}")
    log_level = node.string("log_level", "INFO").upper()
    if log_level not in LOG_LEVELS:
        node.fail("log_level", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}",
                  'set log_level = "INFO"')
    node.finish()
    return node, name, role, data_dir, log_level


def _check_role(
    root: Table, node: Table, name: str, role: str, addrs: tuple[OrchestratorAddr, ...]
) -> None:
    names = [a.name for a in addrs]
    if role == "orchestrator" and name not in names:
        node.fail("name", f"{name!r} is not in the [[orchestrators]] list ({', '.join(names)})",
                  "add an [[orchestrators]] table for this node or fix its name")
    if role == "drone" and "drone" not in root.data:
        root.fail("drone", "section is missing, and role is 'drone'",
                  "add a [drone] section (cores, slots, builder)")
    if role != "drone" and "drone" in root.data:
        root.fail("drone", f"only drones read this section, but role is {role!r}",
                  "remove [drone] from this file")


def _build(source: str, file: Path, data: dict[str, Any]) -> NodeConfig:
    root, base = Table(source, "", data), file.parent
    root.known.extend(_SECTIONS)
    root.finish()  # a misspelled section name explains whatever else looks missing: report it first
    node, name, role, data_dir, log_level = _node(root, base)
    cluster = root.table("cluster")
    addrs = _orchestrators(root)
    gateway = _gateway(root.table("gateway"))
    _check_unique(source, addrs, gateway)
    _check_role(root, node, name, role, addrs)
    drone = root.table("drone")
    config = NodeConfig(
        path=file, name=name, role=role, data_dir=data_dir, secret=_secret(cluster, role),
        orchestrators=addrs, gateway=gateway,
        raft=_raft(root.table("raft")), queue=_queue(root.table("queue")),
        drone=_drone(drone, base, data_dir) if role == "drone" else None,
        auto_finalize=cluster.get("auto_finalize", "a boolean", False),
        keep_releases=cluster.integer("keep_releases", 5), log_level=log_level,
        scrub_interval=cluster.number("scrub_interval", 600.0),
        signing=_signing(root.table("signing"), base),
        keys=_keys(root.table("keys"), base), client_token=_client(root.table("client")),
    )
    cluster.finish()
    root.finish()
    return config


def _read_toml(source: str, file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the config file ({exc.strerror or exc}); pass --config FILE "
            f"with the path of a node config, or set {ENV_VAR}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source}: TOML syntax error: {exc}; fix it there (conf/*.toml has examples)"
        ) from None


def load_client(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """(gateway URL, ``[client] token``) of a file for client commands: a node config, or a
    file holding only a ``[client]`` table with `gateway` and `token` (an admin's workstation
    has no node config)."""
    source = os.fspath(path)
    file = Path(source).expanduser().resolve()
    data = _read_toml(source, file)
    if "node" in data:
        config = _build(source, file, data)
        return config.gateway.url, config.client_token
    root = Table(source, "", data)
    root.known.append("client")
    root.finish()
    client = root.table("client", required=True)
    gateway = client.get("gateway", "a string", None, "http://127.0.0.1:8090")
    return gateway, _client(client)


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Load and validate one node's config; ``path=None`` reads ``$SWARMMESH_CONFIG`` so that
    every command of a node can share one environment variable."""
    if path is None or os.fspath(path) == "":
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        raise ConfigError(f"no config file given; pass --config FILE or set {ENV_VAR}=FILE")
    source = os.fspath(path)
    file = Path(source).expanduser().resolve()
    return _build(source, file, _read_toml(source, file))
