"""Rendering gateway answers as text, without a cluster."""

from __future__ import annotations

from swarmmesh import views


def test_health_needs_a_leader_and_a_majority() -> None:
    nodes = [{"healthy": True}, {"healthy": False}, {"healthy": False}]
    assert views.health({"leader": None, "orchestrators": nodes})[0] is False
    ok, line = views.health({"leader": "orch-1", "term": 4, "orchestrators": nodes})
    assert not ok and "only 1 of 3" in line and "majority (2)" in line
    nodes[1]["healthy"] = True
    assert views.health({"leader": "orch-1", "term": 4, "orchestrators": nodes}) == \
        (True, "ok: leader orch-1 (term 4), 2/3 healthy")


def test_age_takes_epoch_times_and_ages() -> None:
    assert views.age(None, 100.0) == "never"
    assert views.age(2_000_000_000.0, 2_000_000_003.5) == "3.5s ago"
    assert views.age(1.25, 0.0) == "1.2s ago"
    assert views.age("soon", 0.0) == "soon"


def test_swarm_lines_from_a_list_or_a_mapping_fold_errors() -> None:
    entry = {"state": "failed", "drone": "d1", "attempts": 2, "error": "boom\n  at line 3"}
    as_list = views.swarm_lines({"counts": None, "packages": [{"cpv": "a/b-1", **entry}]})
    as_map = views.swarm_lines({"counts": None, "packages": {"a/b-1": entry}})
    assert as_list == as_map
    assert as_list[0] == "packages: unknown (no leader)"
    assert as_list[1].split() == ["failed", "a/b-1", "drone", "d1", "attempts", "2", "error", "boom", "at", "line", "3"]


def test_release_and_result_lines() -> None:
    assert views.release_lines({"releases": []}) == ["no releases yet (swarmmesh finalize makes one)"]
    rows = views.release_lines({"current": "r2", "releases": [
        {"id": "r1", "created_at": 0, "count": 3}, {"id": "r2", "created_at": 0, "count": 4, "source": "r1"}]})
    assert rows[0].startswith("  r1") and rows[1].startswith("* r2") and rows[1].endswith("rollback to r1")
    assert views.result_lines("balance", {"message": "moved", "moved": 2}) == ["balance: moved", "  moved: 2"]
    assert views.result_lines("reset", "ok") == ["reset: ok"]
