"""The parts an orchestrator is made of, and the one interface its loop drives them through.

The orchestrator owns one poll loop; each component (broker, receiver, replicator, releases,
incoming watcher, binhost) overrides only what it needs of these hooks, all called on the
loop's thread.
"""

from __future__ import annotations

from typing import Any


class Component:
    def register(self, poller: Any) -> None:
        """Add own ZeroMQ sockets to the loop's poller (most components have none)."""

    def on_poll(self, ready: dict) -> None:
        """Read own sockets that the poll found ready."""

    def accepts(self, msg: Any) -> bool:
        """Whether a message that arrived on the orchestrator's ROUTER is for this component."""
        return False

    def handle(self, identity: bytes, msg: Any) -> None:
        """A ROUTER message this component accepted."""

    def on_leadership(self, term: int | None) -> None:
        """This node started leading in `term`, or (None) stopped leading."""

    def tick(self, now: float) -> None:
        """Periodic work, about every 0.1 s (`now` is monotonic)."""

    def close(self) -> None:
        """Release sockets, threads and files at shutdown."""
