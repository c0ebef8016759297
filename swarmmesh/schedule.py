"""Critical-path-first scheduling, in pure functions: priorities, placement and the forecast
behind every ETA.

Why: a world update is dominated by a few long builds. Started late, one of them decides when
the whole batch ends; started first, on the fastest drone, it hides every short build behind
it. The rules:

1. **Rank.** A package's rank is its own estimated seconds plus the largest rank among the
   packages that wait on it: the longest chain of estimated work it holds up (HEFT's "upward
   rank"). Among independent packages that is simply the longest first.
2. **Order.** Ready packages leave by ``order_key = submitted_at - rank`` (then by submission
   sequence): within a batch the highest rank goes first; across batches a package can be
   overtaken only by packages submitted less than (their rank - its rank) seconds after it,
   so nothing waits forever behind newer work. A dependency always outranks what waits on it
   (estimates are at least MIN_ESTIMATE) and was submitted no later, so the order is also a
   dependency order.
3. **Placement.** The package at the head goes to the fastest drone with room (speeds compared
   in SPEED_STEP classes, so drones of one kind tie and the freest one wins). When a faster
   drone that is busy now would still finish it clearly sooner (see `place`), the package
   waits for that drone and the next one is placed instead.
4. **Forecast.** The ETA replays rules 2 and 3 on the drones connected now: builds running end
   at their estimate (never before now), then each waiting package, in order, starts on the
   slot that finishes it first once its dependencies are forecast done.

Estimates are seconds on a drone of speed 1.0; a drone of speed s builds in seconds / s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

#: Seconds assumed for a package with no history anywhere (a typical small package).
DEFAULT_ESTIMATE = 60.0
#: Floor of every estimate: a zero would tie a dependency with what waits on it.
MIN_ESTIMATE = 0.001
#: Speeds within this factor of each other count as equal when choosing a drone.
SPEED_STEP = 1.25
#: A package waits for a busy faster drone only if that finishes it sooner by more than this
#: share of the time on the best free drone, plus HOLD_SECONDS (noise in the estimates).
HOLD_SHARE = 0.1
HOLD_SECONDS = 0.5


def estimate_of(seconds: float | None) -> float:
    """The estimate used for scheduling: the default when unknown (0 or None), never below the floor."""
    return DEFAULT_ESTIMATE if not seconds else max(float(seconds), MIN_ESTIMATE)


def order_key(submitted_at: float, rank: float) -> float:
    return submitted_at - rank


# --- rank ------------------------------------------------------------------------------

def ranks(keys: Iterable[str], estimate: Callable[[str], float], dependants: Callable[[str], Iterable[str]],
          known: Mapping[str, float]) -> dict[str, float]:
    """Ranks of `keys` and of every package waiting on them that `known` lacks (rule 1).

    Iterative (a chain of 10,000 packages must not hit the recursion limit); the graph is
    acyclic (the queue drops edges that would close a cycle)."""
    out: dict[str, float] = {}
    for root in keys:
        if root in out:
            continue
        stack: list[tuple[str, bool]] = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in out:
                continue
            below = [d for d in dependants(key) if d not in out and d not in known]
            if below and not expanded:
                stack.append((key, True))
                stack.extend((d, False) for d in below)
                continue
            chain = max((out.get(d, known.get(d, 0.0)) for d in dependants(key)), default=0.0)
            out[key] = estimate(key) + chain
    return out


def raise_ranks(start: Iterable[str], rank: Callable[[str], float], estimate: Callable[[str], float],
                dependencies: Callable[[str], Iterable[str]],
                dependants: Callable[[str], Iterable[str]]) -> dict[str, float]:
    """New ranks of the packages that `start` (just ranked) waits on, transitively, where a
    longer chain now waits on them. Ranks only grow when packages are added, so each package
    is raised at most once per path and the walk ends."""
    raised: dict[str, float] = {}

    def current(key: str) -> float:
        return raised.get(key, rank(key))

    todo = list(start)
    while todo:
        key = todo.pop()
        for dep in dependencies(key):
            chain = max((current(d) for d in dependants(dep)), default=0.0)
            new = estimate(dep) + chain
            if new > current(dep):
                raised[dep] = new
                todo.append(dep)
    return raised


# --- placement -------------------------------------------------------------------------

@dataclass(frozen=True)
class Lane:
    """One drone as placement sees it: `room` jobs it can take now; `free_at` is when its
    first busy slot is expected to free (only read when room is 0)."""

    name: str
    speed: float
    room: int
    free_at: float = 0.0
    rank: tuple = ()  # tie-breakers after speed, largest first (free slots, room, cores...)


def speed_class(speed: float) -> int:
    return round(math.log(max(speed, 1e-6)) / math.log(SPEED_STEP))


def place(seconds: float, lanes: Iterable[Lane], now: float, avoid: Iterable[str] = ()) -> str | None:
    """The drone for a package of `seconds` (rule 3), or None: no room anywhere, or it is
    better off waiting for a faster drone that is busy. `avoid`: drones it failed on,
    used only if no other has room."""
    lanes = list(lanes)
    free = [lane for lane in lanes if lane.room > 0]
    if not free:
        return None
    avoided = set(avoid)
    pool = [lane for lane in free if lane.name not in avoided] or free
    best = max(pool, key=lambda lane: (speed_class(lane.speed), lane.rank, lane.name))
    here = seconds / best.speed
    faster = [lane for lane in lanes if lane.room <= 0 and speed_class(lane.speed) > speed_class(best.speed)]
    if faster:
        there = min(max(lane.free_at - now, 0.0) + seconds / lane.speed for lane in faster)
        if there + HOLD_SECONDS + HOLD_SHARE * here < here:
            return None
    return best.name


# --- forecast ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Running:
    key: str
    drone: str
    ends_at: float  # expected end, on the same clock as `now`


@dataclass(frozen=True)
class Waiting:
    key: str
    seconds: float  # estimate at speed 1.0
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capacity:
    drone: str
    speed: float
    slots: int


def forecast(running: Iterable[Running], waiting: Iterable[Waiting], drones: Iterable[Capacity],
             now: float) -> dict[str, float]:
    """Expected end of every running and waiting package (rule 4); `waiting` comes in
    dispatch order. With no drone connected nothing waiting can be forecast: those keys are
    left out."""
    ends: dict[str, float] = {}
    slots: list[tuple[float, float]] = []  # (free_at, speed), one per slot
    by_drone: dict[str, list[int]] = {}
    for cap in drones:
        for _ in range(max(cap.slots, 1)):
            by_drone.setdefault(cap.drone, []).append(len(slots))
            slots.append((now, cap.speed))
    _occupy(running, slots, by_drone, ends, now)
    if not slots:
        return ends
    for work in waiting:
        ready = max((ends.get(d, now) for d in work.deps), default=now)
        best, finish = _earliest(slots, work.seconds, ready)
        slots[best] = (finish, slots[best][1])
        ends[work.key] = finish
    return ends


def _occupy(running: Iterable[Running], slots: list[tuple[float, float]], by_drone: dict[str, list[int]],
            ends: dict[str, float], now: float) -> None:
    """Running builds hold their drone's slots until they are expected to end."""
    for job in running:
        end = max(job.ends_at, now)
        ends[job.key] = end
        mine = by_drone.get(job.drone)
        if mine:
            i = min(mine, key=lambda s: slots[s][0])
            slots[i] = (max(slots[i][0], end), slots[i][1])


def _earliest(slots: list[tuple[float, float]], seconds: float, ready: float) -> tuple[int, float]:
    best, finish = 0, math.inf
    for i, (free_at, speed) in enumerate(slots):
        end = max(free_at, ready) + seconds / speed
        if end < finish:
            best, finish = i, end
    return best, finish


def lower_bound(seconds: Iterable[float], speeds: Iterable[float]) -> float:
    """The makespan no schedule of independent builds beats: the longest build on the fastest
    drone, or all the work spread over the total speed, whichever is larger."""
    work, speeds = list(seconds), list(speeds)
    if not work or not speeds:
        return 0.0
    return max(max(work) / max(speeds), sum(work) / sum(speeds))


def merge_ends(ends: Mapping[str, float], keys: Iterable[str]) -> float | None:
    """When the last of `keys` is expected to end (None if any of them cannot be forecast)."""
    latest = 0.0
    for key in keys:
        end = ends.get(key)
        if end is None:
            return None
        latest = max(latest, end)
    return latest
