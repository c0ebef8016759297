"""Group commit: when the commands an orchestrator has queued leave as one Raft log entry.

Every log entry costs each node a round of messages (the entry to every follower, their
answers, the commit index after it), so under load one entry should carry many commands; when
idle, a command should leave at once. The rules, in order:

- an urgent command (a delegation, a result, a leadership claim) leaves at the end of the loop
  pass if none of our entries is in flight, else when it lands or MAX_HOLD after it was queued;
- under load (the last entry carried BUSY_ENTRY commands or more), an entry also leaves no
  sooner than MIN_GAP after the one before it: each entry costs the cluster a few ms of CPU
  whatever it carries, so fewer, fuller entries leave more CPU for the work itself. A quiet
  cluster sends small entries, which never wait for the gap;
- a lazy command (`hold`, `unhold`: bookkeeping no client or drone waits for) waits up to
  LAZY_HOLD for company, and leaves early with the first urgent one;
- an entry never carries more than MAX_BATCH commands.

Pure and clock-injected, so the rules are unit-tested without Raft.
"""

from __future__ import annotations

from typing import Generic, TypeVar

MAX_BATCH = 500  # commands per log entry: bounds one entry's size and apply time
MAX_HOLD = 0.015  # seconds an urgent command may wait for the entry before it to commit (under load only)
LAZY_HOLD = 0.05  # seconds a lazy command may wait for others
MIN_GAP = 0.02  # seconds between two entries under load...
BUSY_ENTRY = 8  # ...which is when the last entry carried this many commands or more

T = TypeVar("T")


class Outbox(Generic[T]):
    """The commands queued since the last entry left, and how many of our entries are in flight."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._since: float | None = None  # when the oldest queued command was queued
        self._urgent_since: float | None = None  # ... the oldest urgent one
        self.in_flight = 0
        self._last_left = 0.0  # when the last entry left...
        self._last_size = 0  # ...and how many commands it carried

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float, *, lazy: bool = False) -> None:
        if self._since is None:
            self._since = now
        if not lazy and self._urgent_since is None:
            self._urgent_since = now
        self._items.append(item)

    def due(self) -> float | None:
        """When the queued commands should leave (None: nothing queued). The loop sleeps until
        then at most, instead of waking every millisecond to ask."""
        if self._since is None:
            return None
        if len(self._items) >= MAX_BATCH:
            return self._since
        if self._urgent_since is None:
            return self._since + LAZY_HOLD
        due = self._urgent_since if self.in_flight == 0 else self._urgent_since + MAX_HOLD
        if self._last_size >= BUSY_ENTRY:
            due = max(due, self._last_left + MIN_GAP)
        return due

    def take(self, now: float) -> list[list[T]]:
        """The batches to commit now, each counted in flight until `landed()`; [] if not due."""
        due = self.due()
        if due is None or now < due:
            return []
        items, self._items = self._items, []
        self._since = self._urgent_since = None
        self._last_left, self._last_size = now, len(items)
        batches = [items[i:i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        self.in_flight += len(batches)
        return batches

    def landed(self) -> None:
        """One of our entries committed or failed: the next one need not wait for it."""
        self.in_flight -= 1
