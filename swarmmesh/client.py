"""`swarmmesh client`: have the swarm build a client's world, then tell its emerge where to find it.

    plan (resolver or --from-file) -> POST /build (packages, use, deps, env) -> watch the batch
    (GET /swarm) until nothing of it is needed or building -> finalize (--finalize) ->
    the binrepos.conf entry and the emerge command that installs the result

Everything here talks to the gateway through `GatewayClient` and prints nothing: the CLI
renders what `watch` reports (a `Progress` per change) and what `finish` returns.

Why the progress comes from `/swarm` and not from a batch endpoint: `/swarm` already says, per
package, its state, drone, error and (issue 14) why it waits; a client reads the packages of its
own batch from it, so the view is the same one operators see.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmmesh.errors import ClusterError, InputError, RefusedError
from swarmmesh.plan import Plan

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
_PENDING = ("needed", "delegated")


@dataclass(frozen=True)
class Progress:
    """Where a batch stands: counts, who builds what, what failed, what waits and why."""

    batch: str
    total: int
    done: int
    failed: list[tuple[str, str]]  # (key, error)
    building: list[tuple[str, str]]  # (key, drone)
    waiting: dict[str, int]  # reason -> packages ("dependency", "compatible drone", "free slot")
    elapsed: float
    eta: float | None  # seconds, from the swarm's estimate or the rate so far

    @property
    def finished(self) -> bool:
        return self.done + len(self.failed) >= self.total

    def line(self) -> str:
        """One line for a terminal: `[####....] 3/7 done, building: ..., waiting: ...`."""
        width = 20
        filled = width * self.done // self.total if self.total else width
        parts = [f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} done"]
        if self.building:
            parts.append("building " + ", ".join(f"{_short(k)} on {d}" for k, d in self.building[:4])
                         + (f" (+{len(self.building) - 4})" if len(self.building) > 4 else ""))
        if self.waiting:
            parts.append("waiting: " + ", ".join(f"{n} for a {why}" for why, n in sorted(self.waiting.items())))
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.eta is not None and not self.finished:
            parts.append(f"ETA {_duration(self.eta)}")
        return "; ".join(parts)


@dataclass
class Outcome:
    """What `finish` did: the release (if finalized) and what the client's emerge needs."""

    progress: Progress | None
    release: str | None
    binhost: str
    binrepos: str
    emerge: list[str]
    notes: list[str] = field(default_factory=list)


def default_name() -> str:
    """Who owns a batch when `--client` is not given: user@host, as the old swarm named them."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def submit(api: Any, plan: Plan, client: str) -> dict:
    """Queue the plan as one batch; the reply has `batch`, `count`, `new`."""
    if not plan.packages:
        raise InputError("nothing to build: every package is installed and up to date")
    log.info("submitting %d packages for %s", len(plan.packages), client)
    return api.submit_request(plan.request(client))


def progress(swarm: dict, batch: str, elapsed: float) -> Progress | None:
    """The batch's progress in a `/swarm` answer; None when the swarm does not know the batch."""
    mine = [p for p in swarm.get("packages") or [] if batch in (p.get("batches") or ())]
    views = [b for b in swarm.get("batches") or [] if b.get("id") == batch]
    if not mine and not views:
        return None
    total = views[0].get("count", len(mine)) if views else len(mine)
    done = sum(1 for p in mine if p.get("state") == "received")
    failed = [(_key(p), str(p.get("error") or "failed")) for p in mine if p.get("state") == "failed"]
    building = [(_key(p), str(p.get("drone") or "?")) for p in mine if p.get("state") == "delegated"]
    waiting: dict[str, int] = {}
    for p in mine:
        if p.get("state") == "needed":
            why = str(p.get("waiting") or "free slot")
            waiting[why] = waiting.get(why, 0) + 1
    eta = _eta(views[0] if views else {}, done, total - done - len(failed), elapsed)
    return Progress(batch, total, done, failed, building, waiting, elapsed, eta)


def watch(api: Any, batch: str, on_change: Callable[[Progress], None], *, timeout: float | None = None,
          poll: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Progress:
    """Poll until nothing of the batch is needed or building; report each change."""
    start, last = clock(), None
    while True:
        now = clock()
        current = progress(api.swarm(), batch, now - start)
        if current is None:
            raise ClusterError(f"the swarm does not know batch {batch} (was the queue reset?)")
        shown = (current.done, current.failed, current.building, current.waiting)
        if shown != last:
            on_change(current)
            last = shown
        if current.finished:
            return current
        if timeout is not None and now - start > timeout:
            raise ClusterError(f"batch {batch} is not done after {timeout:g} s ({current.line()}); "
                               "`swarmmesh swarm` shows what it waits for")
        sleep(poll)


def finalize(api: Any, *, timeout: float, poll: float = POLL_SECONDS,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Release what is built. Another client's batch still building makes finalize refuse:
    wait for it (bounded), since the release would otherwise miss nothing of ours but fail."""
    deadline = clock() + timeout
    while True:
        try:
            return str(api.finalize()["release"])
        except RefusedError:
            if clock() > deadline:
                raise
            sleep(poll)


def served_at(api: Any, release_id: str, *, timeout: float, poll: float = POLL_SECONDS,
              ask: Callable[[str], dict | None] | None = None,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """The binhost URL for binrepos.conf, once that binhost serves `release_id` (or a newer one).

    A committed finalize is not yet a served release: each orchestrator swaps `current` only
    after it holds and has verified every file, so an emerge started at once could read the
    previous index, or none. Waiting here is what lets the client say "then run emerge"."""
    from swarmmesh.api import binhost_release

    ask = ask or binhost_release
    deadline = clock() + timeout
    while True:
        url = api.binhost()
        seen = ask(url) or {}
        if seen.get("serving") == release_id or (seen.get("newest") not in (None, release_id)
                                                 and seen.get("serving") == seen.get("newest")):
            return url
        if clock() > deadline:
            raise ClusterError(f"release {release_id} is not served by {url} after {timeout:g} s (it serves "
                               f"{seen.get('serving')}); check `swarmmesh status` and the orchestrators' logs")
        sleep(poll)


def plan(targets: tuple[str, ...], saved: str | None) -> tuple[Plan, list[str]]:
    """What to build, and the targets the client's emerge is then told: saved emerge output
    (`--from-file`, already read), else Portage's resolver on TARGETS (`world` is @world)."""
    if saved is not None:
        if targets:
            raise InputError("give either TARGETS or --from-file, not both")
        from swarmmesh.pretend import parse_plan
        from swarmmesh.resolver import local_env

        parsed = parse_plan(saved)
        parsed.env = local_env()
        return parsed, ["@world"]
    if not targets:
        raise InputError("name what to build: `swarmmesh client world`, atoms, or --from-file FILE")
    from swarmmesh.resolver import WORLD, resolve

    wanted = [WORLD if t in ("world", WORLD) else t for t in targets]
    return resolve(wanted), wanted


def binrepos_entry(binhost: str, name: str = "swarmmesh") -> str:
    """The binrepos.conf section that points a client's Portage at the swarm."""
    return f"[{name}]\npriority = 10\nsync-uri = {binhost}\n"


def emerge_command(targets: list[str]) -> list[str]:
    """What the client runs next: its own emerge, taking the swarm's binaries."""
    if targets == ["@world"]:
        return ["emerge", "--update", "--deep", "--newuse", "--getbinpkg", "@world"]
    return ["emerge", "--getbinpkg", *targets]


def write_binrepos(path: Path, entry: str) -> None:
    """Write the entry atomically (a temp file renamed over PATH): Portage never reads half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".swarmmesh-", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            out.write(entry)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}; check the path and its permissions") from None


def _key(p: dict) -> str:
    return str(p.get("key") or p.get("cpv") or "?")


def _short(key: str) -> str:
    return key.partition("::")[0].partition("#")[0]


def _eta(view: dict, done: int, left: int, elapsed: float) -> float | None:
    """The swarm's estimate when it gives one (issue 17), else the rate so far."""
    given = view.get("eta")
    if isinstance(given, int | float):
        return float(given)
    if done == 0 or left <= 0:
        return None
    return elapsed / done * left


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
