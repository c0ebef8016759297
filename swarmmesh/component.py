"""The parts an orchestrator is made of: what they may ask of it (`Node`), and the hooks its
loop drives them through (`Component`).

The orchestrator owns one poll loop; each component (control, broker, receiver, replicator,
releases, incoming watcher, binhost) overrides only what it needs of these hooks, all called
on the loop's thread. A part knows its orchestrator only as a `Node`: its name and term,
whether it leads, the replicated state to read, commits, replies on the ROUTER, the loop
to post work to, and the time of the loop's pass (a part reads no clock of its own: what it
does in a pass happens at that pass's time, and tests choose it). Everything else a part
uses (its configuration, node storage, the one function of another part it calls) is handed
to it at construction, so `Orchestrator.__init__` is the whole wiring diagram and tests give
a part one fake node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from swarmmesh import protocol
    from swarmmesh.commands import Command
    from swarmmesh.queue import BuildQueue

T = TypeVar("T")
#: `then(result, error)`: how a commit's outcome comes back, on the loop's thread.
Then = Callable[[Any, "str | None"], None]


class Node(Protocol):
    """What a part may ask of its orchestrator, and no more."""

    @property
    def name(self) -> str: ...

    @property
    def term(self) -> int:
        """The current Raft term."""
        ...

    def is_leader(self) -> bool:
        """Leading, with this node's claim to the term committed."""
        ...

    def leader_name(self) -> str | None: ...

    def role(self) -> str:
        """"leader", "follower" or "candidate", as status replies and events show it."""
        ...

    def read(self, fn: Callable[[BuildQueue], T]) -> T:
        """Run `fn` on the replicated queue under its lock (a consistent view)."""
        ...

    def indexes(self) -> tuple[int, int]:
        """(commit index, applied index) of the Raft log."""
        ...

    def commit(self, cmd: Command, then: Then | None = None, lazy: bool = False) -> None:
        """Replicate `cmd` (commands.py); `then(result, error)` runs later on the loop's thread."""
        ...

    def send(self, identity: bytes, msg: protocol.Message) -> bool:
        """Send on the orchestrator's ROUTER (drones, clients); False if it could not."""
        ...

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop's thread (worker threads must not touch sockets)."""
        ...

    def now(self) -> float:
        """Monotonic time of the loop's current pass (what `tick` was or will be given)."""
        ...

    def wall(self) -> float:
        """Wall-clock time (epoch seconds) of the loop's current pass: what replicated commands
        are stamped with, and what file times compare with."""
        ...


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
