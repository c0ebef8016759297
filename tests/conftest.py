"""Shared test helpers: one way to wait, one way to find a free port."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

import pytest

from swarmmesh import harness

T = TypeVar("T")


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can print node logs on failure."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
