"""The group-commit rules, with an injected clock."""

from __future__ import annotations

from swarmmesh.groupcommit import BUSY_ENTRY, LAZY_HOLD, MAX_BATCH, MAX_HOLD, MIN_GAP, Outbox


def test_idle_an_urgent_command_leaves_at_once():
    box: Outbox[str] = Outbox()
    assert box.due() is None and box.take(0.0) == []
    box.add("delegate", 10.0)
    assert box.due() == 10.0
    assert box.take(10.0) == [["delegate"]]
    assert box.in_flight == 1 and len(box) == 0 and box.due() is None


def test_while_in_flight_urgent_commands_wait_for_the_landing_or_max_hold():
    box: Outbox[str] = Outbox()
    box.add("a", 0.0)
    box.take(0.0)
    box.add("b", 1.0)
    box.add("c", 1.001)
    assert box.due() == 1.0 + MAX_HOLD
    assert box.take(1.0 + MAX_HOLD / 2) == []
    box.landed()
    assert box.in_flight == 0 and box.take(1.002) == [["b", "c"]]
    box.add("d", 2.0)
    assert box.take(2.0 + MAX_HOLD / 2) == [] and box.take(2.0 + MAX_HOLD) == [["d"]]
    assert box.in_flight == 2  # nothing landed: the hold bounds the wait


def test_lazy_commands_wait_for_company_and_leave_with_an_urgent_one():
    box: Outbox[str] = Outbox()
    box.add("hold 1", 0.0, lazy=True)
    box.add("hold 2", 0.01, lazy=True)
    assert box.due() == LAZY_HOLD
    assert box.take(LAZY_HOLD - 0.001) == []
    assert box.take(LAZY_HOLD) == [["hold 1", "hold 2"]]
    box.landed()
    box.add("hold 3", 1.0, lazy=True)
    box.add("claim", 1.01)
    assert box.due() == 1.01 and box.take(1.01) == [["hold 3", "claim"]]


def test_a_full_batch_leaves_at_once_and_big_queues_split():
    box: Outbox[int] = Outbox()
    box.add(-1, 0.0)
    box.take(0.0)  # one in flight
    for i in range(2 * MAX_BATCH + 3):
        box.add(i, 5.0, lazy=True)
    assert box.due() == 5.0
    batches = box.take(5.0)
    assert [len(b) for b in batches] == [MAX_BATCH, MAX_BATCH, 3]
    assert [x for b in batches for x in b] == list(range(2 * MAX_BATCH + 3))
    assert box.in_flight == 4


def test_under_load_entries_leave_at_least_min_gap_apart():
    box: Outbox[int] = Outbox()
    for i in range(BUSY_ENTRY):
        box.add(i, 0.0)
    assert box.take(0.0) == [list(range(BUSY_ENTRY))]  # the first full entry leaves at once
    box.landed()
    box.add(100, 0.005)
    assert box.due() == MIN_GAP and box.take(MIN_GAP - 0.001) == []  # nothing in flight, but busy
    assert box.take(MIN_GAP) == [[100]]
    box.landed()
    box.add(101, MIN_GAP + 0.001)  # the last entry was small: a quiet cluster waits for no gap
    assert box.due() == MIN_GAP + 0.001


def test_the_gap_also_bounds_the_hold_behind_an_entry_in_flight():
    box: Outbox[int] = Outbox()
    for i in range(BUSY_ENTRY):
        box.add(i, 1.0)
    box.take(1.0)
    box.add(100, 1.0)
    assert box.due() == 1.0 + max(MAX_HOLD, MIN_GAP)
    for i in range(MAX_BATCH):  # a full batch does not wait for anything
        box.add(i, 1.001, lazy=True)
    assert box.due() == 1.0
