"""Builders: the simulated one, the emerge one (with a stand-in emerge and with real Portage),
and the exact-PF search for the GPKG emerge wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from swarmmesh import builders, gpkg
from swarmmesh.builders import (
    BuildResult,
    EmergeBuilder,
    SimulatedBuilder,
    find_gpkg,
    make_builder,
)
from swarmmesh.config import DroneConfig
from swarmmesh.config import EmergeBuilder as EmergeConfig
from swarmmesh.config import SimulatedBuilder as SimConfig
from swarmmesh.errors import ConfigError
from tests.conftest import wait_until

PREFIX_TOOL = Path(__file__).resolve().parents[2] / "shared" / "gentoo-prefix" / "gentoo-prefix"
PORTAGE_BIN = Path(sys.executable).parent


def build_in_thread(builder, cpv: str, workdir: Path, cancel: threading.Event) -> list[BuildResult]:
    out: list[BuildResult] = []
    def run() -> None:
        out.append(builder.build(cpv, None, workdir, cancel))

    threading.Thread(target=run, daemon=True).start()
    return out


# --- simulated ---------------------------------------------------------------------------------

def test_simulated_plan_is_deterministic_with_a_seed():
    config = SimConfig(min_seconds=0.0, max_seconds=10.0, failure_rate=0.5, seed=7)
    a, b = SimulatedBuilder(config), SimulatedBuilder(config)
    cpvs = [f"cat/pkg{i}-1.0" for i in range(20)]
    assert [a.plan(c) for c in cpvs] == [b.plan(c) for c in cpvs]
    assert len({a.plan(c)[0] for c in cpvs}) > 1  # per-CPV, not one draw for all
    other = SimulatedBuilder(SimConfig(min_seconds=0.0, max_seconds=10.0, failure_rate=0.5, seed=8))
    assert [other.plan(c) for c in cpvs] != [a.plan(c) for c in cpvs]
    assert all(0.0 <= a.plan(c)[0] <= 10.0 for c in cpvs)


def test_simulated_failure_rate_one_always_fails(tmp_path):
    builder = SimulatedBuilder(SimConfig(min_seconds=0.0, max_seconds=0.0, failure_rate=1.0, seed=1))
    result = builder.build("cat/pkg-1.0", None, tmp_path, threading.Event())
    assert (result.ok, result.path, result.error) == (False, None, "simulated failure of cat/pkg-1.0")
    assert list(tmp_path.iterdir()) == []


def test_simulated_output_is_a_valid_gpkg(tmp_path):
    builder = SimulatedBuilder(SimConfig(min_seconds=0.0, max_seconds=0.0, artifact_size=20_000, seed=3))
    result = builder.build("app-misc/foo-1.2.3-r1", "gentoo", tmp_path, threading.Event())
    assert result.ok and result.error == ""
    assert result.path is not None and result.path.parent == tmp_path
    info = gpkg.inspect_gpkg(result.path, expect_cpv="app-misc/foo-1.2.3-r1")
    assert info.cpv == "app-misc/foo-1.2.3-r1"
    assert 10_000 < info.size < 40_000


def test_small_simulated_artifact_is_made_in_memory(tmp_path):
    builder = SimulatedBuilder(SimConfig(min_seconds=0.0, max_seconds=0.0, artifact_size=20_000, seed=3))
    assert not builder.needs_workdir
    result = builder.build("app-misc/foo-1.2.3-r1", "gentoo", None, threading.Event())
    assert result.ok and result.path is None and result.data is not None
    (tmp_path / "got.gpkg.tar").write_bytes(result.data)
    on_disk = builder.build("app-misc/foo-1.2.3-r1", "gentoo", tmp_path, threading.Event())
    assert on_disk.path is not None and on_disk.data is None
    assert gpkg.inspect_gpkg(tmp_path / "got.gpkg.tar", expect_cpv="app-misc/foo-1.2.3-r1").size == len(result.data)
    big = SimulatedBuilder(SimConfig(artifact_size=builders.MEMORY_MAX + 1))
    assert big.needs_workdir and EmergeBuilder(EmergeConfig()).needs_workdir


def test_simulated_cancel_stops_a_long_build_quickly(tmp_path):
    builder = SimulatedBuilder(SimConfig(min_seconds=60.0, max_seconds=60.0, seed=1))
    cancel = threading.Event()
    started = time.monotonic()
    out = build_in_thread(builder, "cat/pkg-1.0", tmp_path, cancel)
    cancel.set()
    result = wait_until(lambda: out and out[0], timeout=5, what="the cancelled build to return")
    assert (result.ok, result.error) == (False, "cancelled")
    assert time.monotonic() - started < 5


def test_zero_second_simulated_builds_are_cheap(tmp_path):
    builder = SimulatedBuilder(SimConfig(min_seconds=0.0, max_seconds=0.0, artifact_size=8192, seed=1))
    started = time.monotonic()
    for i in range(50):
        work = tmp_path / str(i)
        work.mkdir()
        assert builder.build(f"cat/pkg{i}-1.0", None, work, threading.Event()).ok
    assert time.monotonic() - started < 5  # ~5 ms each here; generous for a loaded CI machine


def test_make_builder_picks_the_configured_one():
    assert make_builder(DroneConfig(builder="simulated")).name == "simulated"
    assert make_builder(DroneConfig(builder="emerge")).name == "emerge"
    with pytest.raises(ConfigError, match="unknown"):
        make_builder(DroneConfig(builder="make"))


# --- the GPKG finder (CPV checks: gentoo.cpv_parts, in test_gentoo.py) ---------------------------

def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_find_gpkg_matches_the_pf_exactly(tmp_path):
    short = touch(tmp_path / "cat/foo/foo-1.2-1.gpkg.tar")
    longer = touch(tmp_path / "cat/foo/foo-1.2.3-1.gpkg.tar")
    touch(tmp_path / "cat/foo/foo-1.2-r1-1.gpkg.tar")
    touch(tmp_path / "cat/foo-bar/foo-bar-1.2-1.gpkg.tar")
    assert find_gpkg(tmp_path, "cat/foo-1.2") == short
    assert find_gpkg(tmp_path, "cat/foo-1.2.3") == longer
    assert find_gpkg(tmp_path, "cat/foo-1.3") is None
    assert find_gpkg(tmp_path, "cat/foo-1") is None


def test_find_gpkg_takes_the_newest_build_id_and_the_flat_layout(tmp_path):
    touch(tmp_path / "cat/foo/foo-1.2-2.gpkg.tar")
    newest = touch(tmp_path / "cat/foo/foo-1.2-10.gpkg.tar")
    assert find_gpkg(tmp_path, "cat/foo-1.2") == newest
    flat = touch(tmp_path / "dev/bar-2.0.gpkg.tar")
    touch(tmp_path / "dev/bar-2.0.1.gpkg.tar")
    assert find_gpkg(tmp_path, "dev/bar-2.0") == flat


# --- emerge, with a stand-in emerge --------------------------------------------------------------

FAKE_EMERGE = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    atom = sys.argv[-1]
    Path(os.environ["PKGDIR"], "argv").write_text("\\n".join(sys.argv[1:]))
    Path(os.environ["PKGDIR"], "env").write_text("\\n".join(sorted(os.environ)))
    mode = os.environ.get("FAKE_MODE", "ok")
    print("line one\\nline two\\n\\x1b[31;01m*\\x1b[0m the last line", flush=True)
    if mode == "fail":
        sys.exit(3)
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(os.environ["PKGDIR"], "child").write_text(str(child.pid))
        time.sleep(120)
    if mode == "ok":
        cat, pf = atom.lstrip("=").split("::")[0].split("/")
        out = Path(os.environ["PKGDIR"], cat, pf.rsplit("-", 1)[0], pf + "-1.gpkg.tar")
        out.parent.mkdir(parents=True)
        out.write_bytes(b"gpkg")
""")


@pytest.fixture
def fake_emerge(tmp_path):
    script = tmp_path / "fake_emerge.py"
    script.write_text(FAKE_EMERGE)

    def make(mode: str, **overrides) -> EmergeBuilder:
        config = EmergeConfig(command_prefix=(sys.executable, str(script)), emerge="emerge",
                              env={"FAKE_MODE": mode, "MAKEOPTS": "-j3"}, **overrides)
        return EmergeBuilder(config)

    return make


def test_emerge_argv_is_exact():
    builder = EmergeBuilder(EmergeConfig(command_prefix=("/p/run", "DIR"), emerge="emerge"))
    assert builder.argv("cat/foo-1.0", None) == [
        "/p/run", "DIR", "emerge", "--buildpkg", "--oneshot", "--quiet-build=y", "--color=n", "=cat/foo-1.0"]
    assert builder.argv("cat/foo-1.0", "gentoo")[-1] == "=cat/foo-1.0::gentoo"


def test_emerge_success_finds_the_gpkg_with_its_own_pkgdir_and_env(fake_emerge, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMMESH_CONFIG", "/secret/drone.toml")
    work = tmp_path / "job"
    work.mkdir()
    result = fake_emerge("ok").build("cat/foo-1.2", "gentoo", work, threading.Event())
    assert result.ok, result.error
    assert result.path == work / "pkgdir/cat/foo/foo-1.2-1.gpkg.tar"
    assert (work / "pkgdir/argv").read_text().splitlines()[-1] == "=cat/foo-1.2::gentoo"
    env = (work / "pkgdir/env").read_text().splitlines()
    assert {"PKGDIR", "MAKEOPTS", "PATH"} <= set(env)
    assert "SWARMMESH_CONFIG" not in env
    assert "the last line" in (work / "build.log").read_text()


def test_emerge_failure_reports_the_exit_code_and_the_log_tail(fake_emerge, tmp_path):
    result = fake_emerge("fail", log_tail_lines=2).build("cat/foo-1.2", None, tmp_path, threading.Event())
    assert not result.ok and result.path is None
    assert result.error == "emerge exited with 3\nline two\n* the last line"


def test_emerge_success_without_a_gpkg_is_a_failure(fake_emerge, tmp_path):
    result = fake_emerge("nothing").build("cat/foo-1.2", None, tmp_path, threading.Event())
    assert (result.ok, result.error) == (False, "emerge succeeded but produced no GPKG for cat/foo-1.2")


def test_emerge_refuses_a_bad_cpv_before_running_anything(fake_emerge, tmp_path):
    result = fake_emerge("ok").build("../../etc-1.0", None, tmp_path, threading.Event())
    assert not result.ok and "not a bare category/package-version" in result.error
    assert not (tmp_path / "pkgdir").exists() and not (tmp_path / "build.log").exists()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_emerge_cancel_and_timeout_kill_the_whole_process_group(fake_emerge, tmp_path, how):
    builder = fake_emerge("hang", timeout_seconds=0.5 if how == "timeout" else 60.0)
    cancel = threading.Event()
    out = build_in_thread(builder, "cat/foo-1.2", tmp_path, cancel)
    child = wait_until((tmp_path / "pkgdir/child").read_text, timeout=10, what="the build's child")
    if how == "cancel":
        cancel.set()
    result = wait_until(lambda: out and out[0], timeout=10, what="the build to return")
    assert not result.ok
    assert result.error == "cancelled" if how == "cancel" else result.error.startswith("emerge timed out")
    wait_until(lambda: not pid_alive(int(child)), timeout=5, what="the build's child to die")


# --- emerge, for real -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    needed = [PREFIX_TOOL, PORTAGE_BIN / "emerge"]
    missing = [t for t in ("bash", "zstd", "bzip2", "curl") if shutil.which(t) is None]
    missing += [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"gentoo-prefix cannot run here: missing {', '.join(missing)}")
    root = tmp_path_factory.mktemp("prefix") / "b"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(PORTAGE_BIN), "SLOW_S": "30"}
    done = subprocess.run([str(PREFIX_TOOL), "builder", str(root)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        pytest.skip(f"gentoo-prefix builder failed: {done.stderr.strip()[-500:]}")
    return root


@pytest.fixture
def real_emerge(prefix):
    return EmergeBuilder(EmergeConfig(command_prefix=(str(PREFIX_TOOL), "run", str(prefix)),
                                      env={"PORTAGE_BIN": str(PORTAGE_BIN)}, timeout_seconds=300.0))


@pytest.mark.portage
@pytest.mark.slow
def test_real_emerge_builds_hello(real_emerge, tmp_path):
    result = real_emerge.build("test-cat/hello-1.0", None, tmp_path, threading.Event())
    assert result.ok, result.error
    assert result.path == tmp_path / "pkgdir/test-cat/hello/hello-1.0-1.gpkg.tar"
    assert gpkg.inspect_gpkg(result.path, expect_cpv="test-cat/hello-1.0").cpv == "test-cat/hello-1.0"


@pytest.mark.portage
@pytest.mark.slow
def test_real_emerge_failure_carries_the_log_tail(real_emerge, tmp_path):
    result = real_emerge.build("test-cat/broken-1.0", "test", tmp_path, threading.Event())
    assert not result.ok and result.path is None
    assert result.error.startswith("emerge exited with 1\n")
    assert "this package never builds" in result.error
    assert "\x1b" not in result.error


def build_processes(pkgdir: Path) -> dict[int, str]:
    """{pid: command name} of the processes whose environment names this job's PKGDIR: every
    process of the build inherits it."""
    marker = f"PKGDIR={pkgdir}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    return found


@pytest.mark.portage
@pytest.mark.slow
def test_real_emerge_cancel_kills_the_build_quickly(real_emerge, tmp_path):
    cancel = threading.Event()
    out = build_in_thread(real_emerge, "test-cat/slow-1.0", tmp_path, cancel)
    wait_until(lambda: "sleep" in build_processes(tmp_path / "pkgdir").values(), timeout=60,
               what="the slow package to sleep in src_compile")
    cancel.set()
    started = time.monotonic()
    result = wait_until(lambda: out and out[0], timeout=15, what="the cancelled build to return")
    assert (result.ok, result.error) == (False, "cancelled")
    assert time.monotonic() - started < builders.KILL_GRACE + 2
    wait_until(lambda: not build_processes(tmp_path / "pkgdir"), timeout=5, what="every build process to die")
