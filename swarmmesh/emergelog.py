"""Past build times from a client's own emerge.log, the way `qlop`/`genlop -p` read them.

Why: a world update is dominated by a few long builds, and the machine that asks for them has
usually built every one of them before. Its /var/log/emerge.log says how long each took, so
the swarm can start the long ones first and say when the batch will be done.

A build shows in the log as a pair of lines with the same "(x of y) CPV":

    1700000000:  >>> emerge (3 of 54) dev-qt/qtwebengine-5.15.2 to /
    1700011061:  ::: completed emerge (3 of 54) dev-qt/qtwebengine-5.15.2 to /

The rules, in order:

1. A line that is not ``<epoch>: <text>`` is skipped (junk, a truncated last line, another
   tool's output pasted in); bytes that are not UTF-8 are replaced, never fatal.
2. A start is keyed by (CPV, x, y); a completion closes the open start with the same key, or
   else the latest open start of the same CPV (parallel emerges interleave their lines, and a
   ``--resume`` renumbers them). A completion with no open start is ignored.
3. A second start of an open key replaces the first: that build failed or was interrupted.
4. A merge with a ``Merging Binary`` line between its two lines installed a binary package:
   its time says nothing about a build, so it is kept but marked ``binary``.
5. Durations below zero (a clock stepped back) or over MAX_SECONDS are dropped.
6. Each ``*** emerge`` line starts a new run (``Merge.run``): a bench replays whole runs.

An estimate for a CPV is the median of the last three source builds of the same
category/package (any version): recent versions build like the next one, and a median shrugs
off the odd ccache-warm or swapping run.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from swarmmesh import gentoo
from swarmmesh.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/var/log/emerge.log")
#: A "build" longer than a week is a log artefact (a start whose failure was never logged).
MAX_SECONDS = 7 * 86400
#: How many of a package's most recent builds its estimate looks at.
RECENT = 3

_LINE = re.compile(r"(\d{1,12}):\s+(.*)")
_START = re.compile(r">>> emerge \((\d+) of (\d+)\) (\S+) to \S+")
_DONE = re.compile(r"::: completed emerge \((\d+) of (\d+)\) (\S+) to \S+")
_BINARY = re.compile(r"=== \((\d+) of (\d+)\) Merging Binary \(([^:\s]+)::")
_RUN = re.compile(r"\*\*\* emerge ")


@dataclass(frozen=True)
class Merge:
    """One completed merge: a source build unless `binary`."""

    cpv: str
    start: int
    end: int
    run: int
    binary: bool = False

    @property
    def seconds(self) -> int:
        return self.end - self.start


@dataclass
class _Open:
    start: int
    run: int
    binary: bool = False


class _Pairing:
    """The parser's state: open starts, completed merges and the current run number."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, str], _Open] = {}
        self.merges: list[Merge] = []
        self.run = 0

    def feed(self, stamp: int, text: str) -> None:
        if _RUN.match(text):
            self.run += 1
        elif m := _START.match(text):
            self.open[(m[3], m[1], m[2])] = _Open(stamp, self.run)
        elif m := _BINARY.match(text):
            opened = self.open.get((m[3], m[1], m[2]))
            if opened is not None:
                opened.binary = True
        elif m := _DONE.match(text):
            self._close(m[3], (m[3], m[1], m[2]), stamp)

    def _close(self, cpv: str, key: tuple[str, str, str], stamp: int) -> None:
        opened = self.open.pop(key, None)
        if opened is None:
            same = [k for k in self.open if k[0] == cpv]
            if not same:
                return
            opened = self.open.pop(max(same, key=lambda k: self.open[k].start))
        if 0 <= stamp - opened.start <= MAX_SECONDS and _is_cpv(cpv):
            self.merges.append(Merge(cpv, opened.start, stamp, opened.run, opened.binary))


def parse(lines: Iterable[str]) -> list[Merge]:
    """Every completed merge in the log, in order of completion (see the module rules)."""
    pairing = _Pairing()
    for line in lines:
        m = _LINE.match(line.strip())
        if m is not None:
            pairing.feed(int(m[1]), m[2])
    return pairing.merges


def read(path: Path | str = DEFAULT_PATH) -> list[Merge]:
    """Parse the emerge.log at `path`; an unreadable file is an InputError saying so."""
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as fh:
            return parse(fh)
    except OSError as exc:
        raise InputError(f"cannot read the emerge log {path}: {exc.strerror}; "
                         "pass --emerge-log PATH, or check its permissions (emerge.log is root's)") from None


def history(merges: Iterable[Merge]) -> dict[str, list[int]]:
    """category/package -> seconds of its source builds, oldest first."""
    out: dict[str, list[int]] = {}
    for merge in merges:
        if not merge.binary:
            out.setdefault(_cp(merge.cpv), []).append(merge.seconds)
    return out


def estimates(merges: Iterable[Merge], cpvs: Iterable[str]) -> dict[str, float]:
    """Estimated build seconds of each CPV that has history (see the module docstring);
    packages never built here are left out, so the swarm's own history or default applies."""
    past = history(merges)
    out: dict[str, float] = {}
    for cpv in cpvs:
        seconds = past.get(_cp(cpv)) if _is_cpv(cpv) else None
        if seconds:
            out[cpv] = float(statistics.median(seconds[-RECENT:]))
    return out


def runs(merges: Iterable[Merge]) -> dict[int, list[Merge]]:
    """Merges grouped by the emerge run they belong to, in order."""
    out: dict[int, list[Merge]] = {}
    for merge in merges:
        out.setdefault(merge.run, []).append(merge)
    return out


def _cp(cpv: str) -> str:
    category, pn, _pf = gentoo.cpv_parts(cpv)
    return f"{category}/{pn}"


def _is_cpv(cpv: str) -> bool:
    try:
        gentoo.cpv_parts(cpv)
    except InputError:
        return False
    return True
