from __future__ import annotations

import pytest

from swarmmesh import estimates
from swarmmesh.errors import InputError


def test_history_keeps_the_median_of_recent_normalised_builds_per_package() -> None:
    history = estimates.History()
    history.record("a/x-1", 100.0, speed=2.0)   # 200 s on a speed-1 drone
    history.record("a/x-2", 300.0, speed=1.0)
    history.record("a/x-3", 10.0, speed=1.0)
    assert history.estimate("a/x-4") == 200.0
    history.record("a/x-4", 1000.0, speed=1.0)  # the oldest of four leaves
    assert history.estimate("a/x-5::gentoo") == 300.0
    assert history.estimate("b/y-1") is None
    assert history.estimate("not a cpv") is None


def test_history_is_bounded_least_recently_built_first() -> None:
    history = estimates.History(limit=2)
    for name in ("a", "b", "a", "c"):
        history.record(f"cat/{name}-1", 1.0, 1.0)
    assert len(history) == 2
    assert history.estimate("cat/b-1") is None and history.estimate("cat/a-1") == 1.0


def test_resolve_prefers_the_client_then_history_and_leaves_the_rest_to_the_default() -> None:
    history = estimates.History()
    history.record("a/x-1", 50.0, 1.0)
    history.record("b/y-1", 70.0, 1.0)
    items = [("a/x-2", "a/x-2"), ("b/y-2::gentoo", "b/y-2"), ("c/z-1", "c/z-1")]
    resolved = estimates.resolve(items, {"a/x-2": 5.0, "d/not-in-batch-1": 9.0}, history)
    assert resolved == {"a/x-2": 5.0, "b/y-2::gentoo": 70.0}


def test_parse_client_normalises_atoms_and_rejects_bad_values() -> None:
    assert estimates.parse_client({"=a/x-1": 3}, limit=1) == {"a/x-1": 3.0}
    assert estimates.parse_client(None, limit=0) == {}
    for bad in ({"a/x-1": 0}, {"a/x-1": -1}, {"a/x-1": True}, {"a/x-1": "10"}, {"a/x-1": float("nan")},
                {"a/x-1": 1e9}, ["a/x-1"], {"a/x-1": 1, "a/y-1": 2}):
        with pytest.raises(InputError, match="estimates"):
            estimates.parse_client(bad, limit=1)
    with pytest.raises(InputError):
        estimates.parse_client({"not an atom": 1}, limit=1)


def test_drone_speed_declared_wins_then_measured_then_one() -> None:
    assert estimates.DroneSpeed().value == 1.0
    assert estimates.DroneSpeed(declared=2.0).value == 2.0
    speed = estimates.DroneSpeed()
    speed.observe(100.0, 50.0)
    assert speed.value == 2.0
    speed.observe(10.0, 10.0)       # a short build moves it little: sums, not ratios, decay
    assert speed.value == pytest.approx(90 / 50)
    speed.observe(0.0, 5.0)         # no real estimate: ignored
    assert speed.value == pytest.approx(90 / 50)
