"""Duration estimates: the swarm's own build history, a client's, and each drone's speed.

Why here and not in the replicated queue: history grows with every build, and the Raft state
should hold only live work. What scheduling must agree on is decided once, when a batch is
submitted: the leader resolves each package's estimate (the client's emerge.log first, it
built exactly this machine's configuration; else this swarm's history; else none, and
schedule.DEFAULT_ESTIMATE applies) and commits it with the batch, so a new leader schedules
the same. History itself is a bounded per-node record.

Estimates are seconds on a drone of speed 1.0. A drone's speed is what it declares (the
simulated builder's `speed`), else what its builds show: the moving average of estimate
over measured time, counted only for packages whose estimate came from real history.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from swarmmesh import gentoo
from swarmmesh.errors import InputError

log = logging.getLogger(__name__)

#: Packages whose history a node keeps (least recently built forgotten first).
HISTORY_LIMIT = 8192
#: Builds per package the estimate looks at (the median of the most recent ones).
RECENT = 3
#: Estimates above this are refused as input (a week: longer is a broken log, not a build).
MAX_ESTIMATE = 7 * 86400.0
#: How much of a drone's measured speed each older build keeps per newer one.
SPEED_DECAY = 0.8
SPEED_RANGE = (1e-3, 1e3)


def package_of(cpv: str) -> str | None:
    """category/package of a CPV (the key history is kept by), None if it is not a CPV."""
    try:
        category, pn, _pf = gentoo.cpv_parts(cpv.partition("::")[0])
    except InputError:
        return None
    return f"{category}/{pn}"


class History:
    """This node's record of normalised build seconds (measured seconds x drone speed) per
    category/package, bounded to HISTORY_LIMIT packages."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self._seconds: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seconds)

    def record(self, cpv: str, seconds: float, speed: float) -> None:
        package = package_of(cpv)
        if package is None or not 0 <= seconds <= MAX_ESTIMATE:
            return
        past = self._seconds.pop(package, ())
        self._seconds[package] = (*past, seconds * speed)[-RECENT:]
        if len(self._seconds) > self.limit:
            self._seconds.popitem(last=False)

    def estimate(self, cpv: str) -> float | None:
        package = package_of(cpv)
        past = self._seconds.get(package) if package else None
        return float(statistics.median(past)) if past else None


def resolve(items: Iterable[tuple[str, str]], client: Mapping[str, float], history: History) -> dict[str, float]:
    """key -> estimate for each (key, cpv) of a batch that has one: the client's, else this
    swarm's history. Packages with neither are left out (the default applies); so is a
    client estimate for a package not in the batch."""
    out: dict[str, float] = {}
    for key, cpv in items:
        seconds = client.get(key, client.get(cpv))
        if seconds is None:
            seconds = history.estimate(cpv)
        if seconds is not None:
            out[key] = round(float(seconds), 3)
    return out


def parse_client(raw: Any, limit: int) -> dict[str, float]:
    """Validate the "estimates" of a submission: {atom: seconds}, at most `limit` entries.
    Keys are normalised to queue keys by Portage's parser; values are seconds in (0, a week]."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > limit:
        raise InputError(f'"estimates" must map at most {limit} package atoms (one per package '
                         'submitted) to build seconds, e.g. {"dev-qt/qtwebengine-5.15.2": 11061}')
    out: dict[str, float] = {}
    for atom, seconds in raw.items():
        if not isinstance(atom, str) or isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                or not 0 < seconds <= MAX_ESTIMATE or math.isnan(seconds):
            raise InputError(f'"estimates": {atom!r}: {seconds!r} is not a number of seconds between 0 and '
                             f"{MAX_ESTIMATE:.0f}; send the package's past build time in seconds")
        out[gentoo.parse_atom(atom).key] = float(seconds)
    return out


class DroneSpeed:
    """A drone's speed: declared (> 0) wins; else measured; else 1.0.

    Measured as a decaying ratio of sums (estimated over measured seconds), so long builds,
    the ones that decide a batch's end, weigh most."""

    def __init__(self, declared: float = 0.0) -> None:
        self.declared = declared if declared > 0 else None
        self._estimated = self._took = 0.0

    @property
    def measured(self) -> float | None:
        if self._took <= 0:
            return None
        low, high = SPEED_RANGE
        return min(max(self._estimated / self._took, low), high)

    @property
    def value(self) -> float:
        return self.declared or self.measured or 1.0

    def observe(self, estimate: float, took: float) -> None:
        """A build with a real estimate (not the default) took `took` seconds here."""
        if estimate <= 0 or took <= 0:
            return
        self._estimated = SPEED_DECAY * self._estimated + estimate
        self._took = SPEED_DECAY * self._took + took
