"""The replicated commands: one frozen value per change to the build queue.

A part that changes the queue builds one of these and hands it to `Orchestrator.commit`;
every orchestrator applies it with `BuildQueue.apply`. What each argument means is then
written once, here, instead of at every call site as a string and a row of positionals.

The wire and journal format is the one the string-named calls had, and must stay so: a
command travels as its `NAME` plus its fields as positional arguments, in field order
(`args()`), through the PySyncObj ``@replicated`` method of that name, or inside an `update`
entry as ``[(NAME, [args...])]``; `decode` turns those back into a command. PySyncObj numbers
the methods by their sorted names, so journals written by earlier versions replay unchanged
and nodes of the two versions agree. Hence: never rename a command, never reorder, add or
remove a field (an older node would apply the wrong arguments); a new command is a new class.
Field names are the parameter names of the `BuildQueue` method of the same name (a test
checks both).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

#: A submitted package: (key, cpv, repo or None).
Item = tuple[str, str, "str | None"]


@dataclass(frozen=True)
class Command:
    """One change to the queue; subclasses set `NAME`, the @replicated method it travels by."""

    NAME: ClassVar[str]

    def args(self) -> tuple:
        """The positional arguments on the wire, in field order (not copied: see `fields`)."""
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class NoteLeader(Command):
    """`leader` claims `term`: a node leads only once its own claim has applied."""

    NAME: ClassVar[str] = "note_leader"
    term: int
    leader: str


@dataclass(frozen=True)
class Submit(Command):
    """Queue a batch; `deps` maps a key to the keys it needs (None: no edges known)."""

    NAME: ClassVar[str] = "submit"
    batch_id: str
    client: str
    items: list[Item]
    deps: dict[str, list[str]] | None
    now: float


@dataclass(frozen=True)
class Delegate(Command):
    """Hand `key` to `drone` if it is still needed (a timed-out call may commit late)."""

    NAME: ClassVar[str] = "delegate"
    key: str
    drone: str
    term: int
    now: float
    lease_deadline: float


@dataclass(frozen=True)
class Renew(Command):
    """Extend `drone`'s leases (`keys` None: all it holds)."""

    NAME: ClassVar[str] = "renew"
    drone: str
    term: int
    lease_deadline: float
    keys: list[str] | None = None


@dataclass(frozen=True)
class Complete(Command):
    """`drone` built `key`; `result` describes the stored file (sha256, size, holders...)."""

    NAME: ClassVar[str] = "complete"
    key: str
    drone: str
    term: int
    result: dict
    now: float


@dataclass(frozen=True)
class Fail(Command):
    """`drone` failed to build `key`; the policy travels with it so every node decides alike."""

    NAME: ClassVar[str] = "fail"
    key: str
    drone: str
    term: int
    error: str
    now: float
    max_attempts: int
    ground_after: int


@dataclass(frozen=True)
class Requeue(Command):
    """Put delegated packages back to needed without charging an attempt."""

    NAME: ClassVar[str] = "requeue"
    keys: list[str]
    reason: str
    now: float


@dataclass(frozen=True)
class Expire(Command):
    """Requeue every lease that ended before `now`."""

    NAME: ClassVar[str] = "expire"
    now: float


@dataclass(frozen=True)
class ReleaseDrone(Command):
    """Requeue everything `drone` holds (it vanished, or balance moves its work)."""

    NAME: ClassVar[str] = "release_drone"
    drone: str
    reason: str
    now: float


@dataclass(frozen=True)
class Unblock(Command):
    """Fresh attempts for failed packages and a clean slate for grounded drones (`keys` None: all)."""

    NAME: ClassVar[str] = "unblock"
    keys: list[str] | None
    now: float


@dataclass(frozen=True)
class Finalize(Command):
    """Record release `release_id` of every received package (`force`: even with work pending)."""

    NAME: ClassVar[str] = "finalize"
    release_id: str
    now: float
    force: bool


@dataclass(frozen=True)
class Reset(Command):
    """Forget the queue, keeping releases and terms."""

    NAME: ClassVar[str] = "reset"


@dataclass(frozen=True)
class Rollback(Command):
    """Publish release `target`'s files again as the new release `release_id`."""

    NAME: ClassVar[str] = "rollback"
    target: str
    release_id: str
    now: float


@dataclass(frozen=True)
class Hold(Command):
    """Orchestrator `node` stores the file `sha256`."""

    NAME: ClassVar[str] = "hold"
    sha256: str
    node: str


@dataclass(frozen=True)
class Unhold(Command):
    """Orchestrator `node` no longer has the file `sha256` (deleted or corrupt)."""

    NAME: ClassVar[str] = "unhold"
    sha256: str
    node: str


@dataclass(frozen=True)
class Lose(Command):
    """Build received `key` again: nobody holds its file `sha256` any more."""

    NAME: ClassVar[str] = "lose"
    key: str
    sha256: str
    reason: str
    now: float


#: Every command by its wire name.
BY_NAME: dict[str, type[Command]] = {cls.NAME: cls for cls in (
    NoteLeader, Submit, Delegate, Renew, Complete, Fail, Requeue, Expire, ReleaseDrone, Unblock,
    Finalize, Reset, Rollback, Hold, Unhold, Lose)}


def encode(cmd: Command) -> tuple[str, list]:
    """The ``(name, [args...])`` pair an `update` entry carries."""
    return cmd.NAME, list(cmd.args())


def decode(name: str, args: Any) -> Command | None:
    """The command a journal entry or an `update` pair names; None if `name` is no command.
    Arguments of the wrong number raise TypeError, as the string-named call did."""
    cls = BY_NAME.get(name)
    return None if cls is None else cls(*args)
