"""Unit tests of the CLI alone: the gateway client, the node runners and the cluster functions
are stand-ins installed in `sys.modules`, so these tests check parsing, output, exit codes
and the calls made, not the cluster. (One role-mismatch test loads a real example config.)
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import swarmmesh
from swarmmesh import errors, logs
from swarmmesh.cli import DEFAULT_GATEWAY, cli, exit_code, main

ROOT = Path(__file__).resolve().parent.parent
COORDINATOR = ROOT / "bin" / "swarm-coordinator"

STATUS = {
    "gateway": {"name": "gw-1"},
    "leader": "orch-1",
    "term": 4,
    "binhost": "http://127.0.0.1:7104",
    "orchestrators": [
        {"name": "orch-1", "role": "leader", "healthy": True, "term": 4, "last_seen": 0.2,
         "broker": "tcp://127.0.0.1:7101", "binhost": "http://127.0.0.1:7104"},
        {"name": "orch-2", "role": "follower", "healthy": True, "term": 4, "last_seen": 0.5,
         "broker": "tcp://127.0.0.1:7111", "binhost": "http://127.0.0.1:7114"},
        {"name": "orch-3", "role": "follower", "healthy": False, "term": 3, "last_seen": None,
         "broker": "tcp://127.0.0.1:7121", "binhost": "http://127.0.0.1:7124"},
    ],
    "counts": {"needed": 3, "delegated": 2, "received": 10, "failed": 1, "total": 16},
}


def _install(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> types.ModuleType:
    """Put a stand-in module `swarmmesh.<name>` where the CLI's lazy imports will find it."""
    module = types.ModuleType(f"swarmmesh.{name}")
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(swarmmesh, name, module, raising=False)
    return module


class FakeGateway:
    """Stand-in for swarmmesh.api.GatewayClient: records calls, returns canned replies."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.tokens: list[str | None] = []
        self.calls: list[tuple[str, tuple, dict]] = []
        self.status_reply: dict = json.loads(json.dumps(STATUS))
        self.fail: dict[str, Exception] = {}

    def client_class(self) -> type:
        gateway = self

        class GatewayClient:
            def __init__(self, url: str, timeout: float = 10.0, token: str | None = None) -> None:
                gateway.urls.append(url)
                gateway.tokens.append(token)

            def __getattr__(self, method: str) -> Any:
                return lambda *args, **kwargs: gateway.call(method, args, kwargs)

        return GatewayClient

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        self.calls.append((method, args, kwargs))
        if method in self.fail:
            raise self.fail[method]
        return {
            "status": self.status_reply,
            "binhost": "http://127.0.0.1:7104",
            "submit_text": {"batch": 7, "count": 2, "new": 1},
            "swarm": {"counts": STATUS["counts"], "packages": [
                {"cpv": "dev-libs/a-1", "state": "received", "drone": "drone-1", "attempts": 1,
                 "error": None},
                {"cpv": "dev-libs/b-2", "state": "failed", "drone": "drone-2", "attempts": 3,
                 "error": "emerge exited 1"}]},
        }.get(method, {"message": "ok"})

    def called(self, method: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for name, args, kwargs in self.calls if name == method]


@pytest.fixture(autouse=True)
def _clean_env_and_logging(monkeypatch: pytest.MonkeyPatch):
    """Keep the developer's environment out, and the CLI's logging setup in, each test."""
    monkeypatch.delenv("SWARMMESH_GATEWAY", raising=False)
    monkeypatch.delenv("SWARMMESH_CONFIG", raising=False)
    monkeypatch.delenv("SWARMMESH_TOKEN", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    fake = FakeGateway()
    _install(monkeypatch, "api", GatewayClient=fake.client_class())
    return fake


def _config(name: str, role: str, gateway_url: str = "http://127.0.0.1:9999") -> SimpleNamespace:
    return SimpleNamespace(name=name, role=role, log_level="INFO", gateway=SimpleNamespace(url=gateway_url))


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> dict[str, SimpleNamespace]:
    """Stand-in swarmmesh.config: load_config looks the path up in this dict."""
    table: dict[str, SimpleNamespace] = {}

    def load_config(path: str | None) -> SimpleNamespace:
        if path not in table:
            raise errors.ConfigError(f"{path}: no such config file; pass --config FILE")
        return table[path]

    def load_client(path: str) -> tuple[str, str | None]:
        config = load_config(path)
        return config.gateway.url, getattr(config, "client_token", None)

    _install(monkeypatch, "config", load_config=load_config, load_client=load_client)
    return table


def run(*args: str, input: bytes | str | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("swarmmesh: error:")]


# --- submit -----------------------------------------------------------------------------

def test_submit_from_file(gateway: FakeGateway, tmp_path: Path) -> None:
    listing = tmp_path / "world.txt"
    listing.write_text("dev-libs/a-1\n=dev-libs/b-2\n")
    result = run("submit", str(listing), "--client", "alice@box")
    assert result.exit_code == 0, result.output
    assert result.stdout == "queued batch 7: 2 packages (1 new)\n"
    assert gateway.called("submit_text") == [(("dev-libs/a-1\n=dev-libs/b-2\n",), {"client": "alice@box"})]


@pytest.mark.parametrize("args", [(), ("-",)])
def test_submit_from_stdin_with_default_client(gateway: FakeGateway, args: tuple[str, ...]) -> None:
    result = run("submit", *args, input=b"dev-libs/a-1\n")
    assert result.exit_code == 0, result.output
    [(text,), kwargs] = gateway.called("submit_text")[0]
    assert text == "dev-libs/a-1\n"
    user, _, host = kwargs["client"].partition("@")
    assert user and host


def test_submit_bad_atoms_lists_every_line_and_exits_2(gateway: FakeGateway) -> None:
    bad = [(n, f"junk{n}", "not a valid atom") for n in range(1, 13)]
    gateway.fail["submit_text"] = errors.BadAtomsError(bad)
    result = run("submit", input="junk\n")
    assert result.exit_code == 2
    for n in range(1, 13):
        assert f"line {n}: 'junk{n}' (not a valid atom)" in result.stderr
    assert len(_error_lines(result)) == 1
    assert "nothing was queued" in _error_lines(result)[0]
    assert result.stdout == ""


def test_submit_non_utf8_exits_2_without_calling_the_gateway(gateway: FakeGateway) -> None:
    result = run("submit", input=b"dev-libs/a-1\n\xff\xfe\n")
    assert result.exit_code == 2
    assert result.stderr.startswith("swarmmesh: error: stdin is not UTF-8 text")
    assert len(result.stderr.splitlines()) == 1
    assert gateway.calls == []


# --- status -----------------------------------------------------------------------------

def test_status_text_shows_leader_orchestrators_and_counts(gateway: FakeGateway) -> None:
    result = run("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "orch-1" in out and "term 4" in out and "http://127.0.0.1:7104" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  orch-")}
    assert "follower" in lines["orch-2"] and "healthy" in lines["orch-2"]
    assert "UNHEALTHY" in lines["orch-3"] and "never" in lines["orch-3"]
    assert "needed 3, delegated 2, received 10, failed 1, total 16" in out


def test_status_json_is_the_gateway_json_unchanged(gateway: FakeGateway) -> None:
    result = run("status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data == STATUS
    assert {"leader", "term", "orchestrators", "counts"} <= data.keys()
    assert {"needed", "delegated", "received", "failed"} <= data["counts"].keys()


def test_status_check_healthy_exits_0(gateway: FakeGateway) -> None:
    result = run("status", "--check")
    assert result.exit_code == 0
    assert result.stdout.startswith("ok: leader orch-1")


def test_status_check_without_leader_exits_1_with_one_line(gateway: FakeGateway) -> None:
    gateway.status_reply.update(leader=None, term=None, counts=None)
    result = run("status", "--check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["unhealthy: no leader is known (2 of 3 orchestrators healthy)"]


def test_status_check_with_minority_healthy_exits_1(gateway: FakeGateway) -> None:
    gateway.status_reply["orchestrators"][1]["healthy"] = False
    result = run("status", "--check")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1
    assert "only 1 of 3 orchestrators are healthy" in result.stdout


def test_status_check_json_keeps_stdout_pure_json(gateway: FakeGateway) -> None:
    gateway.status_reply["leader"] = None
    result = run("status", "--json", "--check")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["leader"] is None
    assert result.stderr.startswith("unhealthy: no leader")


def test_status_without_leader_shows_unknown_counts(gateway: FakeGateway) -> None:
    gateway.status_reply.update(leader=None, counts=None)
    result = run("status")
    assert result.exit_code == 0
    assert "(none)" in result.stdout and "packages: unknown" in result.stdout


# --- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "code"), [
    (errors.InputError("x"), 2), (errors.BadAtomsError([(1, "x", "y")]), 2), (errors.ConfigError("x"), 2),
    (errors.RefusedError("x"), 3), (errors.ClusterError("x"), 1), (errors.NoLeaderError("x"), 1),
    (errors.NotLeaderError("orch-2"), 1), (errors.ProtocolError("x"), 1), (errors.SwarmError("x"), 1),
])
def test_exit_code_table(exc: errors.SwarmError, code: int) -> None:
    assert exit_code(exc) == code


def test_refused_finalize_exits_3_with_one_clean_line(gateway: FakeGateway) -> None:
    gateway.fail["finalize"] = errors.RefusedError("2 packages are still building; wait or pass --force")
    result = run("finalize")
    assert result.exit_code == 3
    assert result.stderr == "swarmmesh: error: 2 packages are still building; wait or pass --force\n"
    assert gateway.called("finalize") == [((), {"force": False})]


def test_unreachable_gateway_is_one_line_exit_1(gateway: FakeGateway) -> None:
    gateway.fail["status"] = errors.ClusterError("cannot reach http://127.0.0.1:8090;\nis the gateway up?")
    result = run("status")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "swarmmesh: error: cannot reach http://127.0.0.1:8090; is the gateway up?"]
    assert "Traceback" not in result.output


def test_no_leader_exits_1(gateway: FakeGateway) -> None:
    gateway.fail["balance"] = errors.NoLeaderError("no leader is known; retry in a few seconds")
    result = run("balance")
    assert result.exit_code == 1
    assert _error_lines(result) == ["swarmmesh: error: no leader is known; retry in a few seconds"]


def test_reset_without_yes_refuses_with_exit_2(gateway: FakeGateway) -> None:
    result = run("reset")
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert gateway.called("reset") == []
    assert run("reset", "--yes").exit_code == 0
    assert gateway.called("reset") == [((), {})]


def test_main_exits_with_the_mapped_code(gateway: FakeGateway) -> None:
    gateway.fail["binhost"] = errors.RefusedError("nothing released yet; run swarmmesh finalize")
    with pytest.raises(SystemExit) as exited:
        main(["binhost"])
    assert exited.value.code == 3


# --- other client commands --------------------------------------------------------------

def test_finalize_force_balance_binhost(gateway: FakeGateway) -> None:
    assert run("finalize", "--force").exit_code == 0
    assert gateway.called("finalize") == [((), {"force": True})]
    result = run("balance")
    assert result.exit_code == 0 and result.stdout.startswith("balance: ok")
    assert run("binhost").stdout == "http://127.0.0.1:7104\n"


def test_unblock_with_and_without_cpvs(gateway: FakeGateway) -> None:
    assert run("unblock").exit_code == 0
    assert run("unblock", "dev-libs/a-1", "dev-libs/b-2").exit_code == 0
    assert gateway.called("unblock") == [((None,), {}), ((["dev-libs/a-1", "dev-libs/b-2"],), {})]


def test_swarm_text_and_json(gateway: FakeGateway) -> None:
    text = run("swarm").stdout.splitlines()
    assert text[0].startswith("packages: needed 3")
    assert "failed" in text[2] and "dev-libs/b-2" in text[2] and "drone-2" in text[2]
    assert "attempts 3" in text[2] and "emerge exited 1" in text[2]
    assert json.loads(run("swarm", "--json").stdout)["packages"][0]["cpv"] == "dev-libs/a-1"


# --- gateway URL resolution -------------------------------------------------------------

def test_gateway_defaults_to_localhost(gateway: FakeGateway) -> None:
    assert run("binhost").exit_code == 0
    assert gateway.urls == [DEFAULT_GATEWAY]


def test_gateway_from_env_beats_config(gateway: FakeGateway, configs: dict) -> None:
    configs["node.toml"] = _config("drone-1", "drone", "http://127.0.0.1:9001")
    result = run("binhost", "--config", "node.toml", env={"SWARMMESH_GATEWAY": "http://127.0.0.1:9002"})
    assert result.exit_code == 0
    assert gateway.urls == ["http://127.0.0.1:9002"]


def test_gateway_from_swarmmesh_config_env(gateway: FakeGateway, configs: dict) -> None:
    configs["node.toml"] = _config("drone-1", "drone", "http://127.0.0.1:9001")
    env = {"SWARMMESH_CONFIG": "node.toml"}
    assert run("status", env=env).exit_code == 0
    assert run("status", "--gateway", "http://127.0.0.1:9003", env=env).exit_code == 0
    assert gateway.urls == ["http://127.0.0.1:9001", "http://127.0.0.1:9003"]


def test_the_token_comes_from_the_option_the_environment_or_the_config(gateway: FakeGateway, configs: dict) -> None:
    configs["node.toml"] = SimpleNamespace(**vars(_config("gateway", "gateway")), client_token="from-the-config")
    assert run("finalize", "--token", "from-the-option", "--config", "node.toml").exit_code == 0
    assert run("finalize", "--config", "node.toml", env={"SWARMMESH_TOKEN": "from-the-env"}).exit_code == 0
    assert run("finalize", "--config", "node.toml").exit_code == 0
    assert run("finalize").exit_code == 0
    assert gateway.tokens == ["from-the-option", "from-the-env", "from-the-config", None]


def test_keygen_writes_a_key_pair_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    result = run("keygen", "drone-7", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "drone-7.key").exists() and (tmp_path / "drone-7.key_secret").stat().st_mode & 0o777 == 0o600
    again = run("keygen", "drone-7", "--dir", str(tmp_path))
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert run("keygen", "--dir", str(tmp_path)).exit_code == 2  # NAME is required (unless another kind of key)


def test_bad_client_config_exits_2(gateway: FakeGateway, configs: dict) -> None:
    result = run("status", "--config", "missing.toml")
    assert result.exit_code == 2
    assert _error_lines(result) == ["swarmmesh: error: missing.toml: no such config file; pass --config FILE"]


# --- node roles -------------------------------------------------------------------------

def test_orchestrator_runs_with_node_logging(monkeypatch: pytest.MonkeyPatch, configs: dict) -> None:
    configs["orch.toml"] = _config("orch-1", "orchestrator")
    started = []

    def run_orchestrator(config: SimpleNamespace) -> None:
        started.append(config)
        logging.getLogger("swarmmesh.orchestrator").info("ready")

    _install(monkeypatch, "orchestrator", run_orchestrator=run_orchestrator)
    result = run("orchestrator", "--config", "orch.toml")
    assert result.exit_code == 0, result.output
    assert started == [configs["orch.toml"]]
    assert f" INFO     orch-1[{os.getpid()}] swarmmesh.orchestrator: ready" in result.stderr


def test_node_config_from_env_and_log_level_override(monkeypatch: pytest.MonkeyPatch, configs: dict) -> None:
    configs["gw.toml"] = _config("gw-1", "gateway")
    levels = []
    _install(monkeypatch, "gateway", run_gateway=lambda config: levels.append(logging.getLogger().level))
    result = run("--log-level", "DEBUG", "gateway", env={"SWARMMESH_CONFIG": "gw.toml"})
    assert result.exit_code == 0, result.output
    assert levels == [logging.DEBUG]


def test_node_without_config_is_a_usage_error() -> None:
    result = run("gateway")
    assert result.exit_code == 2
    assert "--config" in result.stderr


def test_role_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, configs: dict) -> None:
    configs["drone.toml"] = _config("drone-1", "drone")
    started = []
    _install(monkeypatch, "orchestrator", run_orchestrator=started.append)
    result = run("orchestrator", "--config", "drone.toml")
    assert result.exit_code == 2
    assert _error_lines(result) == ['swarmmesh: error: drone.toml is a drone config (role = "drone"); '
                                    "start it with `swarmmesh drone --config drone.toml`"]
    assert started == []


def test_role_mismatch_with_a_real_example_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uses the real swarmmesh.config on conf/drone-1.toml: the check reads the real `role`."""
    path = str(ROOT / "conf" / "drone-1.toml")
    result = run("gateway", "--config", path)
    assert result.exit_code == 2
    assert f"start it with `swarmmesh drone --config {path}`" in result.stderr


def test_drone_once(monkeypatch: pytest.MonkeyPatch, configs: dict) -> None:
    configs["drone.toml"] = _config("drone-1", "drone")
    calls = []
    _install(monkeypatch, "drone", run_drone=lambda config, once=False: calls.append((config.name, once)))
    assert run("drone", "--config", "drone.toml", "--once").exit_code == 0
    assert calls == [("drone-1", True)]


def test_drone_role_missing_from_this_version(monkeypatch: pytest.MonkeyPatch, configs: dict) -> None:
    configs["drone.toml"] = _config("drone-1", "drone")
    monkeypatch.setitem(sys.modules, "swarmmesh.drone", None)  # makes the import fail
    result = run("drone", "--config", "drone.toml")
    assert result.exit_code == 1
    assert _error_lines(result) == ["swarmmesh: error: the drone role is not available in this version"]


# --- cluster ----------------------------------------------------------------------------

def _node(name: str, alive: bool = True) -> SimpleNamespace:
    return SimpleNamespace(name=name, role="orchestrator", config=Path(f"/c/{name}.toml"),
                           pid=4242 if alive else None, alive=alive, log=Path(f"/c/{name}.log"))


@pytest.fixture
def local_cluster(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []

    def record(name: str, result: Any):
        return lambda *args, **kwargs: calls.append((name, args, kwargs)) or result

    _install(monkeypatch, "cluster", init_cluster=record("init", [Path("/c/orch-1.toml")]),
             up=record("up", [_node("orch-1")]), down=record("down", [_node("orch-1", False)]),
             status=record("status", [_node("orch-1"), _node("orch-2", alive=False)]))
    return calls


def test_cluster_init_defaults_and_options(local_cluster: list, tmp_path: Path) -> None:
    assert run("cluster", "init", str(tmp_path)).stdout == "wrote /c/orch-1.toml\n"
    assert run("cluster", "init", str(tmp_path), "--orchestrators", "5", "--drones", "0",
               "--base-port", "0", "--host", "127.0.0.1", "--no-signing").exit_code == 0
    assert [kwargs for _, _, kwargs in local_cluster] == [
        {"orchestrators": 3, "drones": 2, "base_port": 7100, "host": "127.0.0.1", "sign": True},
        {"orchestrators": 5, "drones": 0, "base_port": 0, "host": "127.0.0.1", "sign": False}]
    assert run("cluster", "init", str(tmp_path), "--orchestrators", "0").exit_code == 2


def test_cluster_up_down(local_cluster: list, tmp_path: Path) -> None:
    result = run("cluster", "up", str(tmp_path), "--node", "orch-1", "--node", "orch-2",
                 "--no-wait", "--timeout", "5")
    assert result.exit_code == 0 and "started orch-1" in result.stdout
    assert run("cluster", "down", str(tmp_path), "--kill").exit_code == 0
    assert local_cluster == [
        ("up", (tmp_path,), {"nodes": ["orch-1", "orch-2"], "wait": False, "timeout": 5.0}),
        ("down", (tmp_path,), {"nodes": None, "kill": True})]


def test_cluster_status_json_and_text(local_cluster: list, tmp_path: Path) -> None:
    nodes = json.loads(run("cluster", "status", str(tmp_path), "--json").stdout)
    assert nodes[1] == {"name": "orch-2", "role": "orchestrator", "config": "/c/orch-2.toml",
                        "pid": None, "alive": False, "log": "/c/orch-2.log"}
    text = run("cluster", "status", str(tmp_path)).stdout
    assert "running (pid 4242)" in text and "stopped" in text


def test_cluster_commands_need_an_existing_directory(local_cluster: list, tmp_path: Path) -> None:
    assert run("cluster", "up", str(tmp_path / "nope")).exit_code == 2
    assert local_cluster == []


# --- swarm-coordinator ------------------------------------------------------------------

def test_coordinator_help_in_a_subprocess() -> None:
    done = subprocess.run([sys.executable, str(COORDINATOR), "--help"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    for old in ("init-from-list", "status", "balance", "finalize", "unblock"):
        assert f"\n  {old}" in done.stdout


def test_coordinator_unknown_command_exits_2() -> None:
    done = subprocess.run([sys.executable, str(COORDINATOR), "launch"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "Usage: swarm-coordinator" in done.stderr and "unknown command 'launch'" in done.stderr


def _coordinator(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run bin/swarm-coordinator in this process (so stand-ins apply); return its exit code."""
    monkeypatch.setattr(sys, "argv", [str(COORDINATOR), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(COORDINATOR), run_name="__main__")
    return exited.value.code


def test_coordinator_init_from_list_submits(monkeypatch: pytest.MonkeyPatch, gateway: FakeGateway,
                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("dev-libs/a-1\n")
    assert _coordinator(monkeypatch, "init-from-list", str(listing), "--client", "old") == 0
    assert capsys.readouterr().out == "queued batch 7: 2 packages (1 new)\n"
    assert gateway.called("submit_text") == [(("dev-libs/a-1\n",), {"client": "old"})]


def test_coordinator_maps_the_other_commands(monkeypatch: pytest.MonkeyPatch, gateway: FakeGateway,
                                             capsys: pytest.CaptureFixture) -> None:
    for args in (["status"], ["balance"], ["finalize", "--force"], ["unblock", "dev-libs/a-1"]):
        assert _coordinator(monkeypatch, *args) == 0
    assert [name for name, _, _ in gateway.calls] == ["status", "balance", "finalize", "unblock"]
    assert gateway.called("finalize") == [((), {"force": True})]
    assert _coordinator(monkeypatch, "init-from-list") == 2  # FILE is required


# --- logs and start-up ------------------------------------------------------------------

def test_logs_one_line_per_event_with_node_and_pid(capsys: pytest.CaptureFixture) -> None:
    logs.configure("info", node="orch-2")
    logs.configure("info", node="orch-2")  # again: replaces, does not double
    logging.getLogger("swarmmesh.test").info("hello\tworld")
    logging.getLogger("swarmmesh.test").debug("hidden")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(f" INFO     orch-2[{os.getpid()}] swarmmesh.test: hello\tworld")


def test_logs_reject_unknown_level() -> None:
    with pytest.raises(errors.ConfigError, match="use one of debug"):
        logs.configure("loud")


def test_help_imports_no_role_module() -> None:
    code = ("import sys; from swarmmesh.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('swarmmesh.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "orchestrator" in done.stdout and "cluster" in done.stdout
    assert done.stdout.splitlines()[-1] == "['swarmmesh.cli', 'swarmmesh.errors', 'swarmmesh.logs']"


def test_keygen_signing_and_client_trust_print(tmp_path: Path) -> None:
    made = run("keygen", "--signing", "--dir", str(tmp_path / "k"))
    assert made.exit_code == 0 and "fingerprint " in made.stdout
    assert run("keygen", "--dir", str(tmp_path / "other")).exit_code != 0  # which key: --signing
    shown = run("client", "trust", "--key", str(tmp_path / "k" / "signing-key.asc"),
                "--gnupg-home", str(tmp_path / "gnupg"), "--print")
    assert shown.exit_code == 0, shown.output
    assert f"--quick-lsign-key {made.stdout.split()[-1]}" in shown.stdout
    assert f"gpg --homedir {tmp_path / 'gnupg'} --batch --no-tty --import" in shown.stdout
