"""The file registry on its own: holders, the index by sha256, the change feed, and the
reader every component follows it with (the queue's use of it is in test_queue)."""

from __future__ import annotations

import pickle

from swarmmesh import filereg
from swarmmesh.filereg import FeedReader, FileRegistry


def test_holders_are_tracked_only_for_registered_files():
    reg = FileRegistry()
    assert reg.hold("sha-a", "o1") is None  # unknown file
    reg.register({"sha256": "sha-a", "holders": ["o1", "o1", 7]})
    reg.register({"sha256": None, "holders": ["o1"]})  # no file: nothing tracked
    assert reg.holders == {"sha-a": ["o1"]}
    assert reg.hold("sha-a", "o2") == ("ok", ["o1", "o2"])
    assert reg.hold("sha-a", "o2") == ("duplicate", ["o1", "o2"])
    assert reg.unhold("sha-a", "o1") == ["o2"] and reg.unhold("sha-a", "o1") is None
    assert reg.holders_of("sha-a") == ["o2"] and reg.holders_of("sha-x") == []


def test_the_feed_lists_each_change_once_in_order_of_first_change():
    reg = FileRegistry()
    reg.register({"sha256": "sha-a"})
    start = reg.version
    reg.index("k1", "sha-b")  # indexing alone logs nothing: the queue logs the receipt
    reg.changed("sha-b")
    reg.hold("sha-a", "o1")
    reg.changed("sha-b")
    assert reg.changed_since(start) == (3, ["sha-b", "sha-a"])
    reg.unindex("k1", "sha-b")
    assert reg.keys_of("sha-b") == [] and reg.changed_since(3) == (4, ["sha-b"])
    assert reg.changed_since(5)[1] is None and reg.changed_since(-1)[1] is None


def test_a_pickle_keeps_holders_and_position_but_not_the_local_bookkeeping():
    reg = FileRegistry()
    reg.register({"sha256": "sha-a", "holders": ["o1"]})
    reg.index("k1", "sha-a")
    reg.changed("sha-a")
    reg.keep_fresh_meta("sha-a", {"SLOT": "0"})
    reg.want_release({"sha-r": 10})
    copy = pickle.loads(pickle.dumps(reg))
    assert (copy.holders, copy.version) == (reg.holders, reg.version) == ({"sha-a": ["o1"]}, 2)
    assert copy.keys_of("sha-a") == [] and copy.newest_files == {} and copy.fresh_meta("sha-a") is None
    assert copy.changed_since(1)[1] is None and copy.changed_since(2) == (2, [])
    assert reg.fresh_meta("sha-a") == {"SLOT": "0"}


def test_a_release_logs_only_what_it_alone_keeps_wanted():
    reg = FileRegistry()
    reg.index("k1", "sha-a")
    reg.want_release({"sha-a": 1, "sha-b": 2})
    assert reg.changed_since(0) == (1, ["sha-b"])  # sha-a is wanted by its package anyway
    reg.want_release({"sha-b": 3, "sha-c": 4})
    assert reg.changed_since(1) == (3, ["sha-b", "sha-c"])  # sha-b's size changed


def test_a_jump_makes_every_reader_rescan(monkeypatch):
    reg = FileRegistry()
    reg.index("k1", "sha-a")
    reg.jump()
    assert reg.keys_of("sha-a") == [] and reg.changed_since(0)[1] is None
    assert reg.changed_since(reg.version) == (1, [])
    monkeypatch.setattr(filereg, "FEED_LIMIT", 2)
    for _ in range(5):
        reg.changed("sha-a")
    assert reg.changed_since(1)[1] is None and reg.changed_since(4) == (6, ["sha-a"])


class _Queue:
    def __init__(self, reg: FileRegistry) -> None:
        self.changed_files = reg.changed_since


def test_a_reader_starts_with_a_rescan_and_rescans_every_so_often():
    reg = FileRegistry()
    reader, periodic = FeedReader(), FeedReader(every=30.0)
    assert reader.look(_Queue(reg)) == (0, None)
    reader.seen = 0
    reg.changed("sha-a")
    assert reader.look(_Queue(reg)) == (1, ["sha-a"])
    periodic.seen = 1
    periodic.tick(0.0)
    assert periodic.seen == -1
    periodic.seen = 1
    periodic.tick(29.0)
    assert periodic.seen == 1
    periodic.tick(30.0)
    assert periodic.seen == -1
