"""Shared test helpers: one way to wait, one way to find a free port, shared fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import zmq

from swarmmesh import harness

T = TypeVar("T")
#: Set to 1 by .ci/run where real Portage can run (../shared/gentoo-prefix, as root): there a
#: test marked `portage` that skips fails instead, so CI cannot go green without Portage's word.
REQUIRE_PORTAGE = "SWARMMESH_REQUIRE_PORTAGE"
#: The real-Portage tooling (../shared/gentoo-prefix) and where pip put emerge (next to python).
PREFIX_TOOL = Path(__file__).resolve().parents[2] / "shared" / "gentoo-prefix" / "gentoo-prefix"
VENV_BIN = Path(sys.executable).parent


def prefix_ready() -> str | None:
    """Why a test that runs real Portage in a prefix cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "gentoo-prefix runs as root"
    if not PREFIX_TOOL.exists() or not (VENV_BIN / "emerge").exists():
        return "gentoo-prefix or the venv's emerge is missing"
    missing = [tool for tool in ("bash", "zstd", "bzip2") if shutil.which(tool) is None]
    return f"missing {missing}" if missing else None


@pytest.fixture
def ctx():
    """A ZeroMQ context per test."""
    context = zmq.Context()
    yield context
    # destroy, not term: a socket a failed test left open must not hang the run in zmq_ctx_term
    # (blocked in C, where pytest-timeout's signal cannot interrupt it)
    context.destroy(linger=0)


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "") -> T:
    """harness.wait_until, failing the test (not erroring) at the deadline."""
    try:
        return harness.wait_until(predicate, timeout, what or str(predicate), interval=interval)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A real GPKG with USE-conditional dependencies, for the format and index tests."""
    from swarmmesh.gpkg_writer import write_gpkg

    path = tmp_path / "my-theme-1.0-1.gpkg.tar"
    write_gpkg(path, "x11-themes/my-theme-1.0", size=20_000, repo="localrepo", build_id=1, seed=3,
               metadata={"BUILD_TIME": "1700000000", "USE": "gtk",
                         "RDEPEND": "gtk? ( x11-libs/gtk+ ) dev-libs/a"})
    return path


@pytest.fixture
def node(tmp_path):
    """o1, leading: the fake Orchestrator that component tests (binhost, releases, staging,
    the Packages index) give their component."""
    from tests.fakes import FakeNode

    node = FakeNode("o1", tmp_path / "o1", leader=True)
    yield node
    node.close()


@pytest.fixture
def holder(tmp_path):
    """o1: holds files and serves them over a real binhost (fetch and replication tests)."""
    from tests.fakes import FakeNode, serve_binhost

    node = FakeNode("o1", tmp_path / "o1")
    host = serve_binhost(node)
    yield node, host
    host.close()
    node.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can print node logs on failure."""
    rep = yield
    fail_a_required_skip(item, rep)
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def fail_a_required_skip(item: pytest.Item, rep: pytest.TestReport) -> None:
    """A `portage` test's skip becomes a failure when $SWARMMESH_REQUIRE_PORTAGE is 1 (issue 19:
    a silent skip hid that the real-Portage tests never ran)."""
    if not rep.skipped or hasattr(rep, "wasxfail") or item.get_closest_marker("portage") is None:
        return
    if os.environ.get(REQUIRE_PORTAGE) != "1":
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    reason = reason.removeprefix("Skipped: ")
    rep.outcome = "failed"
    rep.longrepr = (f"{item.nodeid} needs real Portage and skipped ({reason}), but {REQUIRE_PORTAGE}=1 says "
                    "it runs on this machine: fix what the reason names (or unset it where Portage cannot run)")
