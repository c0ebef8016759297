"""Clusters on one machine: write node configs, start and stop node processes, report state.

Why separate processes with pid files rather than a supervisor: nodes must outlive the
`swarmmesh cluster up` command that started them, and tests kill them one at a time (SIGKILL
the leader). So each node runs in its own session, is found again through
``<dir>/run/<node>.pid``, and is checked against ``/proc`` before any signal is sent, because
pids get reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import swarmmesh
from swarmmesh.config import NodeConfig, load_config
from swarmmesh.errors import ClusterError, ConfigError
from swarmmesh.tomltable import toml_value

log = logging.getLogger(__name__)

#: Start order: drones and gateways look for orchestrators, never the other way round.
ROLE_ORDER = ("orchestrator", "gateway", "drone")
PORT_KEYS = ("raft_port", "broker_port", "artifacts_port", "events_port", "binhost_port")
GATEWAY_OFFSET = 90
DRONE_SLOTS = 2
LOG_TAIL_LINES = 20
SIGNING_DIR = "signing"  # where `init` puts the swarm's signing key, beside the configs
_DRONE_KEYS = ("cores", "slots", "builder", "work_dir")
_POLL = 0.05
KEYS_DIR = "keys"
AUTHORIZED_DIR = "authorized_keys"
#: The admin: its CURVE key (role client) and its token (DIR/admin.token).
ADMIN = "admin"

ArgvFor = Callable[[NodeConfig], list[str]]


@dataclass(frozen=True)
class NodeProcess:
    name: str
    role: str
    config: Path
    pid: int | None
    alive: bool
    log: Path


# --- init -----------------------------------------------------------------------------------


def _check_layout(orchestrators: int, drones: int, base_port: int) -> None:
    if orchestrators < 1 or drones < 0:
        raise ConfigError(f"cannot make a cluster of {orchestrators} orchestrator(s) and {drones} drone(s); "
                          "use at least 1 orchestrator (3 or 5 to survive failures) and 0 or more drones")
    if base_port == 0:
        return
    if orchestrators > 9 or not 1 <= base_port <= 65535 - GATEWAY_OFFSET:
        raise ConfigError(f"base port {base_port} with {orchestrators} orchestrators does not fit: each "
                          f"takes 10 ports from the base and the gateway takes base + {GATEWAY_OFFSET}; "
                          f"use at most 9 orchestrators and a base port of 1-{65535 - GATEWAY_OFFSET}, "
                          "or base port 0 for free ports")


def _free_ports(count: int) -> list[int]:
    """Ports the kernel calls free right now; all sockets stay open until every port is
    picked, so the ports are distinct."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _port_layout(orchestrators: int, base_port: int) -> tuple[list[dict[str, int]], int]:
    """Ports of each orchestrator and the gateway's port."""
    count = orchestrators * len(PORT_KEYS) + 1
    if base_port:
        flat = [base_port + 10 * i + k for i in range(orchestrators) for k in range(len(PORT_KEYS))]
        flat.append(base_port + GATEWAY_OFFSET)
    else:
        flat = _free_ports(count)
    n = len(PORT_KEYS)
    per_node = [dict(zip(PORT_KEYS, flat[i * n:(i + 1) * n], strict=True)) for i in range(orchestrators)]
    return per_node, flat[-1]


def _table(header: str, values: dict | None) -> str:
    """One TOML table; None values are left out (the loader's default applies), and so is an
    empty table."""
    lines = [f"{key} = {toml_value(value)}\n" for key, value in (values or {}).items() if value is not None]
    return f"\n{header}\n" + "".join(lines) if lines else ""


def _shared_toml(host: str, secret: str, ports: list[dict[str, int]], gateway_port: int, *,
                 raft: dict | None, queue: dict | None, cluster: dict | None = None,
                 gateway: dict | None = None) -> str:
    """The part every node's file has in common: nodes must agree on it."""
    text = _table("[cluster]", {"secret": secret, **(cluster or {})})
    for i, orch in enumerate(ports, 1):
        text += _table("[[orchestrators]]", {"name": f"orch-{i}", "host": host, **orch})
    text += _table("[gateway]", {"host": host, "port": gateway_port, **(gateway or {})})
    return text + _table("[raft]", raft) + _table("[queue]", queue)


def _drone_toml(overrides: dict | None) -> str:
    """[drone] and its builder tables. Overrides are [drone.simulated] keys, except that
    [drone] keys (cores, slots, builder, work_dir) go to [drone] and an ``emerge`` dict
    becomes [drone.emerge]."""
    drone: dict = {"cores": os.cpu_count() or 1, "slots": DRONE_SLOTS, "builder": "simulated"}
    simulated: dict = {}
    emerge: dict = {}
    for key, value in (overrides or {}).items():
        if key in _DRONE_KEYS:
            drone[key] = value
        elif key in ("emerge", "simulated") and isinstance(value, dict):
            (emerge if key == "emerge" else simulated).update(value)
        else:
            simulated[key] = value
    tables = (("[drone]", drone), ("[drone.simulated]", simulated), ("[drone.emerge]", emerge))
    return "".join(_table(header, values) for header, values in tables)


def _node_toml(name: str, role: str, shared: str, builder_overrides: dict | None, *, token: str,
               signing: str = "") -> str:
    head = "# Written by `swarmmesh cluster init`; conf/*.toml in the source explains every key.\n"
    text = head + _table("[node]", {"name": name, "role": role, "data_dir": f"data/{name}"}) + shared
    keys = {"dir": KEYS_DIR, "authorized": AUTHORIZED_DIR if role == "orchestrator" else None}
    text += _table("[keys]", keys)
    if role == "gateway":  # the admin token: the gateway checks it, client commands send it
        text += _table("[gateway.tokens]", {ADMIN: token}) + _table("[client]", {"token": token})
    return text + (_drone_toml(builder_overrides) if role == "drone" else "") + \
        (signing if role == "orchestrator" else "")


def _signing_toml(root: Path, sign: bool) -> str:
    """[signing] of the orchestrators: a key made here (``SIGNING_DIR``), or reused if one is."""
    if not sign:
        return ""
    from swarmmesh import signing

    folder = root / SIGNING_DIR
    if not (folder / signing.SECRET_FILE).exists():
        made = signing.generate_key(folder)
        log.info("made the signing key %s in %s", made.fingerprint, folder)
    return _table("[signing]", {"key_file": f"{SIGNING_DIR}/{signing.SECRET_FILE}"})


def _make_keys(root: Path, names: list[tuple[str, str]]) -> None:
    """A key pair per node and one for the admin (harness, tests, scripts) in keys/, and the
    public keys that orchestrators accept (everyone but the orchestrators) in authorized_keys/."""
    from swarmmesh import keys

    authorized = root / AUTHORIZED_DIR
    authorized.mkdir(parents=True, exist_ok=True)
    for name, role in [*names, (ADMIN, "client")]:
        public, _secret = keys.keygen(name, root / KEYS_DIR, role=role)
        if role != "orchestrator":
            shutil.copyfile(public, authorized / public.name)


def _write_new(path: Path, text: str) -> None:
    """Create, never overwrite; owner-only, since the file holds the cluster secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _write_all(files: dict[Path, str]) -> None:
    """All files or none: a cluster with half its configs would start in confusing ways."""
    written: list[Path] = []
    try:
        for path, text in files.items():
            _write_new(path, text)
            written.append(path)
        for path in written:
            if path.suffix == ".toml":
                load_config(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def init_cluster(directory: str | os.PathLike[str], orchestrators: int = 3, drones: int = 2,
                 base_port: int = 7100, host: str = "127.0.0.1", *, secret: str | None = None,
                 builder_overrides: dict | None = None, queue_overrides: dict | None = None,
                 raft_overrides: dict | None = None, cluster_overrides: dict | None = None,
                 gateway_overrides: dict | None = None, sign: bool = True) -> list[Path]:
    """Write one config per node into `directory` and return their paths (orchestrators,
    drones, gateway), with a CURVE key pair per node in keys/, the public keys orchestrators
    accept in authorized_keys/, and an admin token in admin.token (0600) and the gateway's
    config. Every file is loaded back before this returns, so what it writes is what nodes
    will accept. `sign`: make a signing key (in ``signing/``) that every orchestrator signs
    packages with."""
    _check_layout(orchestrators, drones, base_port)
    root = Path(directory)
    names = [(f"orch-{i}", "orchestrator") for i in range(1, orchestrators + 1)]
    names += [(f"drone-{i}", "drone") for i in range(1, drones + 1)] + [("gateway", "gateway")]
    existing = [str(root / f"{name}.toml") for name, _ in names if (root / f"{name}.toml").exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite existing node config(s): {', '.join(existing)}; "
                          "choose another directory or remove them first")
    existing += [str(p) for p in (root / KEYS_DIR, root / "admin.token") if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite existing cluster files: {', '.join(existing)}; "
                          "choose another directory or remove them first")
    ports, gateway_port = _port_layout(orchestrators, base_port)
    shared = _shared_toml(host, secret if secret is not None else secrets.token_urlsafe(32), ports,
                          gateway_port, raft=raft_overrides, queue=queue_overrides, cluster=cluster_overrides,
                          gateway=gateway_overrides)
    token = secrets.token_urlsafe(32)
    root.mkdir(parents=True, exist_ok=True)
    signing = _signing_toml(root, sign)
    files = {root / f"{n}.toml": _node_toml(n, role, shared, builder_overrides, token=token, signing=signing)
             for n, role in names}
    files[root / "admin.token"] = token + "\n"
    _write_all(files)
    _make_keys(root, names)
    configs = [path for path in files if path.suffix == ".toml"]
    log.info("wrote %d node configs and their keys into %s", len(configs), root)
    return configs


# --- finding nodes and their processes ------------------------------------------------------

#: Processes this interpreter started, so they can be reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in name.replace("-", " ").split())


def _configs(root: Path) -> list[NodeConfig]:
    """Every node config of the directory, in start order."""
    configs = [load_config(path) for path in sorted(root.glob("*.toml"))]
    if not configs:
        raise ConfigError(f"{root}: no node configs (*.toml) here; "
                          f"create them with `swarmmesh cluster init {root}`")
    return sorted(configs, key=lambda c: (ROLE_ORDER.index(c.role), _natural(c.name)))


def _select(configs: list[NodeConfig], nodes: Iterable[str] | None) -> list[NodeConfig]:
    if nodes is None:
        return configs
    wanted = list(nodes)
    known = {c.name for c in configs}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(f"no node named {', '.join(unknown)} in this cluster; "
                          f"known nodes: {', '.join(sorted(known, key=_natural))}")
    return [c for c in configs if c.name in wanted]


def _pid_file(root: Path, name: str) -> Path:
    return root / "run" / f"{name}.pid"


def _log_file(root: Path, name: str) -> Path:
    return root / "logs" / f"{name}.log"


def _read_pid(root: Path, name: str) -> int | None:
    try:
        text = _pid_file(root, name).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def process_exists(pid: int) -> bool:
    """A process (not a zombie) has this pid. A signalled node loses its command line before
    it has closed its sockets, so this, not `_is_ours`, says when it is gone."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _CHILDREN[pid]  # reaped: no zombie left behind
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _is_ours(pid: int, config: Path) -> bool:
    """A live process running this node's config. Pids get reused, so a live pid alone proves
    nothing: the command line must name swarmmesh and this very config file."""
    if not process_exists(pid):
        return False
    try:
        os.kill(pid, 0)
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return False
    args = raw.decode(errors="replace").split("\0")
    return any("swarmmesh" in a for a in args) and str(config) in args


def _describe(root: Path, config: NodeConfig, pid: int | None = None) -> NodeProcess:
    pid = _read_pid(root, config.name) if pid is None else pid
    alive = pid is not None and _is_ours(pid, config.path)
    return NodeProcess(config.name, config.role, config.path, pid, alive, _log_file(root, config.name))


def status(directory: str | os.PathLike[str]) -> list[NodeProcess]:
    """Every node of the directory, running or not, in start order."""
    root = Path(directory).resolve()
    return [_describe(root, config) for config in _configs(root)]


def node_pid(directory: str | os.PathLike[str], name: str) -> int | None:
    """The pid of the running node `name`, or None if it is not running."""
    root = Path(directory).resolve()
    node = _describe(root, _select(_configs(root), [name])[0])
    return node.pid if node.alive else None


# --- up ---------------------------------------------------------------------------------------


def swarmmesh_argv(config: NodeConfig) -> list[str]:
    """The real node command; `up` takes another for tests of process handling."""
    return [sys.executable, "-m", "swarmmesh", config.role, "--config", str(config.path)]


@dataclass(frozen=True)
class _Started:
    config: NodeConfig
    proc: subprocess.Popen[bytes]
    log: Path
    offset: int  # log size before the start: only what follows counts as this run's output


def _child_env() -> dict[str, str]:
    """Children import the same swarmmesh as this process, installed or not, and write
    their readiness line unbuffered."""
    source_root = str(Path(swarmmesh.__file__).resolve().parent.parent)
    path = [source_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


def _start(root: Path, config: NodeConfig, argv_for: ArgvFor) -> _Started:
    log_path = _log_file(root, config.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(root, config.name).parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv_for(config), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=root, env=_child_env(), start_new_session=True)
    _CHILDREN[proc.pid] = proc
    tmp = _pid_file(root, config.name).with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(_pid_file(root, config.name))
    log.info("started %s %s, pid %d, log %s", config.role, config.name, proc.pid, log_path)
    return _Started(config, proc, log_path, offset)


def _new_output(started: _Started) -> str:
    with open(started.log, "rb") as fh:
        fh.seek(started.offset)
        return fh.read().decode(errors="replace")


def _tail(started: _Started) -> str:
    lines = _new_output(started).splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(f"    {line}" for line in lines) if lines else "    (nothing logged)"


def _is_ready(started: _Started) -> bool:
    """Ready once this run's log has the readiness line; a node that exits first is an error."""
    config = started.config
    if f"swarmmesh {config.role} {config.name} ready" in _new_output(started):
        return True
    code = started.proc.poll()
    if code is not None:
        _CHILDREN.pop(started.proc.pid, None)  # reaped by poll()
        raise ClusterError(f"{config.name} ({config.role}) exited with code {code} before it was ready; "
                           f"last lines of {started.log}:\n{_tail(started)}")
    return False


def _wait_ready(started: list[_Started], deadline: float, timeout: float) -> None:
    pending = started
    while pending:
        pending = [s for s in pending if not _is_ready(s)]
        if pending and time.monotonic() > deadline:
            tails = "\n".join(f"  {s.config.name}, last lines of {s.log}:\n{_tail(s)}" for s in pending)
            raise ClusterError(f"not ready after {timeout:g} s: {', '.join(s.config.name for s in pending)}; "
                               f"see their logs (stop everything with `swarmmesh cluster down`):\n{tails}")
        if pending:
            time.sleep(_POLL)


def up(directory: str | os.PathLike[str], nodes: list[str] | None = None, wait: bool = True,
       timeout: float = 30.0, argv_for: ArgvFor | None = None) -> list[NodeProcess]:
    """Start the nodes (all, or those named) in the background, orchestrators first; with
    `wait`, return only when each started node has logged its readiness line. Nodes already
    running are left alone. Nodes started before a failure keep running: `down` stops them."""
    root = Path(directory).resolve()
    configs = _select(_configs(root), nodes)
    deadline = time.monotonic() + timeout
    for role in ROLE_ORDER:
        group = [c for c in configs if c.role == role and not _describe(root, c).alive]
        started = [_start(root, config, argv_for or swarmmesh_argv) for config in group]
        if wait:
            _wait_ready(started, deadline, timeout)
    return [_describe(root, config) for config in configs]


# --- down -------------------------------------------------------------------------------------


def _signal(pid: int | None, sig: signal.Signals) -> None:
    """Signal the node's whole process group (its builds too) when it leads one. A node that
    has no pid (no pid file) has nothing to signal."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(running: list[NodeProcess], deadline: float) -> list[NodeProcess]:
    while True:
        running = [n for n in running if n.pid is not None and process_exists(n.pid)]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(_POLL)


def down(directory: str | os.PathLike[str], nodes: list[str] | None = None, timeout: float = 10.0,
         kill: bool = False) -> list[NodeProcess]:
    """Stop the nodes (all, or those named), drones first; returns those that had a pid file.
    A stale pid file (process gone or pid reused by another program) is only removed."""
    root = Path(directory).resolve()
    configs = list(reversed(_select(_configs(root), nodes)))
    known = [_describe(root, c) for c in configs if _read_pid(root, c.name) is not None]
    running = [n for n in known if n.alive]
    for node in running:
        _signal(node.pid, signal.SIGKILL if kill else signal.SIGTERM)
    left = _wait_gone(running, time.monotonic() + timeout)
    for node in left:
        log.warning("%s (pid %s) still running %g s after SIGTERM; killing it", node.name, node.pid, timeout)
        _signal(node.pid, signal.SIGKILL)
    left = _wait_gone(left, time.monotonic() + min(timeout, 5.0))
    for node in known:
        if node not in left:
            _pid_file(root, node.name).unlink(missing_ok=True)
    if left:
        raise ClusterError(f"could not stop {', '.join(f'{n.name} (pid {n.pid})' for n in left)}; "
                           "check them with `ps` and kill them by hand")
    return [dataclasses.replace(node, alive=False) for node in known]
