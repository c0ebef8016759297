"""Releases alone: stamps strictly increase, the newest is handed out as a copy."""

from __future__ import annotations

from swarmmesh.records import Release
from swarmmesh.releaselog import ReleaseLog, files_by_sha


def test_stamps_strictly_increase_even_when_the_clock_does_not() -> None:
    log = ReleaseLog()
    for rid, at in (("r1", 100.0), ("r2", 100.0), ("r3", 50.0), ("r4", 500.0)):
        log.add(Release(rid, at, [], False))
    assert [r.stamp for r in log] == [100, 101, 102, 500]
    assert log.newest_id() == "r4" and log.get("r2") is not None and log.get("rx") is None


def test_newest_copy_is_a_copy_and_views_and_files() -> None:
    log = ReleaseLog()
    assert log.newest_copy() is None and log.newest_id() is None and log.views() == []
    files = [{"sha256": "s1", "size": 3}, {"sha256": "s1", "size": 9}, {"sha256": None}]
    log.add(Release("r1", 1.0, ["k"], True, files, batches=["b1"]))
    copy = log.newest_copy()
    assert copy is not None
    copy.files[0]["size"] = 0
    copy.keys.append("x")
    assert log.newest() is not None and log.newest().files[0]["size"] == 3 and log.newest().keys == ["k"]
    assert log.views() == [{"id": "r1", "created_at": 1.0, "count": 1, "forced": True, "stamp": 1, "source": None}]
    assert log.covered_batches() == {"b1"} and files_by_sha(log.newest()) == {"s1": 3}
