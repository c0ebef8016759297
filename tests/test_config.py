"""Node config loading: the examples load, and every mistake is reported with file, key and fix."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from swarmmesh.config import ENV_VAR, NodeConfig, load_config
from swarmmesh.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf"

ORCH = """\
[node]
name = "orch-1"
role = "orchestrator"
data_dir = "state/orch-1"

[cluster]
secret = "0123456789abcdef-secret"

[[orchestrators]]
name = "orch-1"
host = "127.0.0.1"
raft_port = 7100
broker_port = 7101
artifacts_port = 7102
events_port = 7103
binhost_port = 7104
priority = 2

[[orchestrators]]
name = "orch-2"
host = "127.0.0.1"
raft_port = 7110
broker_port = 7111
artifacts_port = 7112
events_port = 7113
binhost_port = 7114

[[orchestrators]]
name = "orch-3"
host = "127.0.0.1"
raft_port = 7120
broker_port = 7121
artifacts_port = 7122
events_port = 7123
binhost_port = 7124

[gateway]
host = "127.0.0.1"
port = 7190
"""

DRONE = ORCH.replace('name = "orch-1"\nrole = "orchestrator"', 'name = "drone-1"\nrole = "drone"', 1) + """
[drone]
cores = 4
slots = 2
"""


@pytest.fixture
def write(tmp_path):
    """write(text, old=new, ...) -> path of a config file with those replacements made."""

    def make(text: str = ORCH, *replacements: tuple[str, str], name: str = "node.toml") -> Path:
        for old, new in replacements:
            assert old in text, f"test bug: {old!r} not in the base config"
            text = text.replace(old, new, 1)
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


def error_of(path: Path | str | None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def assert_names(message: str, path: Path, where: str, *fragments: str) -> None:
    assert message.startswith(f"{path}: {where}: "), message
    for fragment in fragments:
        assert fragment in message, message


# --- the examples and a valid file -----------------------------------------------------------


def test_conf_examples_are_the_home_lab():
    assert sorted(p.name for p in CONF.glob("*.toml")) == [
        "drone-1.toml", "gateway.toml", "orch-1.toml", "orch-2.toml", "orch-3.toml"]


@pytest.mark.parametrize("name", ["orch-1", "orch-2", "orch-3", "drone-1", "gateway"])
def test_conf_example_loads(name):
    config = load_config(CONF / f"{name}.toml")
    assert config.name == name
    assert [o.name for o in config.orchestrators] == ["orch-1", "orch-2", "orch-3"]
    assert config.role == {"orch": "orchestrator", "drone": "drone", "gateway": "gateway"}[name.split("-")[0]]
    assert (config.drone is not None) == (config.role == "drone")


def test_conf_examples_use_no_private_addresses():
    for path in CONF.glob("*.toml"):
        text = path.read_text()
        assert "192.168." not in text and "10.0." not in text and "172.16." not in text, path


def test_valid_orchestrator(write):
    path = write()
    config = load_config(path)
    assert config.path == path.resolve()
    assert config.data_dir == path.parent / "state" / "orch-1"
    assert config.me().raft_address == "127.0.0.1:7100"
    assert [p.name for p in config.peers()] == ["orch-2", "orch-3"]
    orch2 = config.peers()[0]
    assert orch2.broker_url == "tcp://127.0.0.1:7111"
    assert orch2.artifacts_url == "tcp://127.0.0.1:7112"
    assert orch2.events_url == "tcp://127.0.0.1:7113"
    assert orch2.binhost_url == "http://127.0.0.1:7114/"
    assert (config.me().priority, orch2.priority) == (2, 0)
    assert config.gateway.url == "http://127.0.0.1:7190"
    assert (config.raft.election_min, config.queue.max_attempts, config.keep_releases) == (0.3, 3, 5)
    assert config.drone is None and config.log_level == "INFO" and config.auto_finalize is False
    assert config.scrub_interval == 600.0


def test_config_is_frozen(write):
    config = load_config(write())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]


def test_data_dir_defaults_next_to_the_file(write):
    config = load_config(write(ORCH, ('data_dir = "state/orch-1"\n', "")))
    assert config.data_dir == config.path.parent / "data" / "orch-1"


def test_drone_defaults_and_relative_work_dir(write):
    config = load_config(write(DRONE))
    assert config.drone is not None
    assert (config.drone.cores, config.drone.slots, config.drone.builder) == (4, 2, "simulated")
    assert config.drone.work_dir == config.data_dir / "work"
    assert config.drone.simulated.artifact_size == 8192 and config.drone.simulated.seed is None
    config = load_config(write(DRONE + 'work_dir = "w"\n[drone.emerge]\ncommand_prefix = ["/p", "run"]\n'
                                       'env = { MAKEOPTS = "-j2" }\n'))
    assert config.drone.work_dir == config.path.parent / "w"
    assert config.drone.emerge.command_prefix == ("/p", "run")
    assert config.drone.emerge.env == {"MAKEOPTS": "-j2"}


def test_drone_needs_no_secret_and_is_not_an_orchestrator(write):
    config = load_config(write(DRONE, ('secret = "0123456789abcdef-secret"\n', "")))
    assert config.secret == ""
    assert len(config.peers()) == 3
    with pytest.raises(ConfigError, match="not an orchestrator"):
        config.me()


def test_log_level_is_case_insensitive(write):
    assert load_config(write(ORCH, ('data_dir', 'log_level = "debug"\ndata_dir'))).log_level == "DEBUG"


# --- where the file comes from ---------------------------------------------------------------


def test_env_var_fallback(write, monkeypatch):
    path = write()
    monkeypatch.setenv(ENV_VAR, str(path))
    assert load_config().name == "orch-1"
    assert load_config(None).path == path.resolve()


def test_no_path_and_no_env_var(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    message = error_of(None)
    assert "--config FILE" in message and ENV_VAR in message


def test_missing_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.toml"
    message = error_of(missing)
    assert message.startswith(f"{missing}: ") and "No such file" in message and "--config" in message
    monkeypatch.setenv(ENV_VAR, str(missing))
    assert error_of(None).startswith(f"{missing}: ")


def test_directory_instead_of_file(tmp_path):
    assert error_of(tmp_path).startswith(f"{tmp_path}: cannot read")


def test_toml_syntax_error(write):
    path = write(ORCH, ("raft_port = 7100", "raft_port = = 7100"))
    message = error_of(path)
    assert message.startswith(f"{path}: TOML syntax error") and "line 12" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b'[node]\nname = "\xff"\n')
    assert "UTF-8" in error_of(path)


# --- key errors ---------------------------------------------------------------------------------


def test_role_typo_exact_message(write):
    path = write(ORCH, ('role = "orchestrator"', 'role = "orchestrater"'))
    assert error_of(path) == (f"{path}: [node] role: 'orchestrater' is not one of orchestrator, drone, "
                              'gateway; set role = "orchestrator"')


def test_missing_key(write):
    path = write(ORCH, ("raft_port = 7110\n", ""))
    assert_names(error_of(path), path, "[[orchestrators]] #2 raft_port", "is missing", "add raft_port = ")


def test_missing_key_points_at_its_misspelling(write):
    path = write(ORCH, ("raft_port = 7110", "raft_prot = 7110"))
    assert_names(error_of(path), path, "[[orchestrators]] #2 raft_port", "raft_prot")


def test_missing_node_section(write):
    path = write(ORCH, ("[node]", "[nodes]"))
    assert_names(error_of(path), path, "[nodes]", "unknown section", "did you mean node?")


def test_unknown_key_with_suggestion(write):
    path = write(ORCH, ("data_dir =", "data_dri ="))
    assert_names(error_of(path), path, "[node] data_dri", "unknown key", "did you mean data_dir?")


def test_unknown_key_in_optional_section(write):
    path = write(ORCH + "[raft]\nelection_minimum = 0.5\n")
    assert_names(error_of(path), path, "[raft] election_minimum", "unknown key", "election_min")


def test_unknown_key_in_builder_section(write):
    path = write(DRONE + "[drone.simulated]\nfailure_rat = 0.5\n")
    assert_names(error_of(path), path, "[drone.simulated] failure_rat", "unknown key", "failure_rate")


@pytest.mark.parametrize(("old", "new", "where", "fragment"), [
    ("raft_port = 7100", 'raft_port = "7100"', "[[orchestrators]] #1 raft_port", "raft_port = 7100 without"),
    ("port = 7190", "port = 7190.0", "[gateway] port", "expected an integer, got a float"),
    ('name = "orch-1"', "name = 1", "[node] name", "expected a string, got an integer"),
    ("priority = 2", "priority = true", "[[orchestrators]] #1 priority", "got a boolean"),
])
def test_wrong_type(write, old, new, where, fragment):
    path = write(ORCH, (old, new))
    assert_names(error_of(path), path, where, "expected", fragment)


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_bad_port(write, port):
    path = write(ORCH, ("events_port = 7113", f"events_port = {port}"))
    assert_names(error_of(path), path, "[[orchestrators]] #2 events_port", "out of range 1-65535")


def test_missing_secret_for_orchestrator(write):
    path = write(ORCH, ('secret = "0123456789abcdef-secret"\n', ""))
    assert_names(error_of(path), path, "[cluster] secret", "is missing", "secret = ")


def test_short_secret(write):
    path = write(ORCH, ('"0123456789abcdef-secret"', '"short"'))
    assert_names(error_of(path), path, "[cluster] secret", "at least 16", "secrets.token_urlsafe")


def test_placeholder_secret_warns(write, caplog):
    with caplog.at_level(logging.WARNING, logger="swarmmesh.config"):
        load_config(write(ORCH, ('"0123456789abcdef-secret"', '"CHANGE-ME-0123456789"')))
    assert "placeholder" in caplog.text


def test_bad_node_name(write):
    path = write(ORCH, ('name = "orch-1"', 'name = "../orch-1"'))
    assert_names(error_of(path), path, "[node] name", "not a valid node name")


# --- cross-field checks ------------------------------------------------------------------------


def test_duplicate_orchestrator_names(write):
    path = write(ORCH, ('name = "orch-3"', 'name = "orch-2"'))
    assert_names(error_of(path), path, "[[orchestrators]] #3 name", "also the name of [[orchestrators]] #2")


def test_duplicate_host_port(write):
    path = write(ORCH, ("binhost_port = 7124", "binhost_port = 7101"))
    assert_names(error_of(path), path, "[[orchestrators]] #3 binhost_port",
                 "127.0.0.1:7101 is already used by [[orchestrators]] #1 broker_port")


def test_same_ports_on_different_hosts_are_fine(write):
    text = ORCH
    for i in (2, 3):
        text = text.replace(f"71{i - 1}", "710").replace(f'name = "orch-{i}"\nhost = "127.0.0.1"',
                                                          f'name = "orch-{i}"\nhost = "orch-{i}.lan"')
    config = load_config(write(text))
    assert {o.raft_port for o in config.orchestrators} == {7100}


def test_gateway_port_clash(write):
    path = write(ORCH, ("port = 7190", "port = 7102"))
    assert_names(error_of(path), path, "[[orchestrators]] #1 artifacts_port",
                 "already used by [gateway] port")


def test_orchestrator_not_in_list(write):
    path = write(ORCH, ('name = "orch-1"\nrole', 'name = "orch-9"\nrole'))
    assert_names(error_of(path), path, "[node] name", "'orch-9' is not in the [[orchestrators]] list")


def without_orchestrators(text: str, replacement: str) -> str:
    return text[:text.index("[[orchestrators]]")] + replacement + text[text.index("[gateway]"):]


def test_no_orchestrators(write):
    path = write(without_orchestrators(ORCH, "orchestrators = []\n"))
    assert_names(error_of(path), path, "[orchestrators]", "no orchestrators")


def test_orchestrators_as_a_single_table(write):
    start = ORCH.index("[[orchestrators]]")
    first = ORCH[start:ORCH.index("[[orchestrators]]", start + 1)]
    single = first.replace("[[orchestrators]]", "[orchestrators]")
    path = write(without_orchestrators(ORCH, single))
    assert_names(error_of(path), path, "[orchestrators]", "expected an array of tables",
                 "[[orchestrators]] table (double brackets)")


def test_even_orchestrator_count_warns(write, caplog):
    text = ORCH[:ORCH.index("[[orchestrators]]\nname = \"orch-3\"")] + ORCH[ORCH.index("[gateway]"):]
    with caplog.at_level(logging.WARNING, logger="swarmmesh.config"):
        config = load_config(write(text))
    assert len(config.orchestrators) == 2
    assert "even" in caplog.text and "odd" in caplog.text


def test_scrub_interval(write):
    assert load_config(write(ORCH.replace("[cluster]\n", "[cluster]\nscrub_interval = 30\n", 1))).scrub_interval == 30
    path = write(ORCH.replace("[cluster]\n", "[cluster]\nscrub_interval = 0\n", 1))
    assert_names(error_of(path), path, "[cluster] scrub_interval", "a number > 0")


def test_drone_section_missing_for_drone(write):
    path = write(DRONE[:DRONE.index("[drone]")])
    assert_names(error_of(path), path, "[drone]", "role is 'drone'", "add a [drone] section")


def test_drone_section_on_orchestrator(write):
    path = write(ORCH + "[drone]\nslots = 2\n")
    assert_names(error_of(path), path, "[drone]", "only drones read this section")


@pytest.mark.parametrize(("extra", "where", "fragment"), [
    ("[raft]\nappend_period = 0.2\n", "[raft] append_period", "less than election_min / 3"),
    ("[raft]\nelection_max = 0.3\n", "[raft] election_max", "greater than election_min"),
    ("[raft]\nleader_fallback = 0\n", "[raft] leader_fallback", "set leader_fallback to a number > 0"),
    ("[queue]\nheartbeat_seconds = 5.0\n", "[queue] heartbeat_seconds", "shorter than lease_seconds"),
    ("[queue]\nmax_attempts = 0\n", "[queue] max_attempts", "integer >= 1"),
])
def test_range_checks(write, extra, where, fragment):
    path = write(ORCH + extra)
    assert_names(error_of(path), path, where, fragment)


@pytest.mark.parametrize(("extra", "where", "fragment"), [
    ("[drone.simulated]\nartifact_size = 1000\n", "[drone.simulated] artifact_size", ">= 2048"),
    ("[drone.simulated]\nfailure_rate = 1.5\n", "[drone.simulated] failure_rate", "<= 1.0"),
    ("[drone.simulated]\nmin_seconds = 2.0\n", "[drone.simulated] max_seconds", "less than min_seconds"),
    ("[drone.emerge]\ncommand_prefix = \"/p run\"\n", "[drone.emerge] command_prefix", "array of strings"),
    ("[drone.emerge]\nenv = { JOBS = 2 }\n", "[drone.emerge] env", "table of strings"),
])
def test_drone_checks(write, extra, where, fragment):
    path = write(DRONE + extra)
    assert_names(error_of(path), path, where, fragment)


def test_builder_typo(write):
    path = write(DRONE + 'builder = "emrge"\n')
    assert error_of(path) == (f"{path}: [drone] builder: 'emrge' is not one of simulated, emerge; "
                              'set builder = "emerge"')


def test_node_config_fields_match_the_interface():
    names = [f.name for f in dataclasses.fields(NodeConfig)]
    assert names == ["path", "name", "role", "data_dir", "secret", "orchestrators", "gateway", "raft",
                     "queue", "drone", "auto_finalize", "keep_releases", "log_level", "scrub_interval", "signing",
                     "keys", "client_token"]
    assert ENV_VAR == "SWARMMESH_CONFIG"
