"""Builders turn one CPV into one GPKG: a file inside the job's own work directory, or, for a
small simulated package, bytes held in memory.

Both builders share one small interface so a drone can run either, and tests and the demo can
run the whole cluster without Portage. A builder never raises for a failed build: failure is
an ordinary result the leader must hear about, with enough text to act on.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from swarmmesh import gentoo, gpkg_writer
from swarmmesh.errors import ConfigError, InputError

if TYPE_CHECKING:
    from swarmmesh import config as cfg

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL of a build's process group.
KILL_GRACE = 5.0
#: How often a running emerge is checked for cancel or timeout.
POLL_INTERVAL = 0.05
#: The log tail is read from at most this many final bytes, so a huge log costs nothing.
TAIL_BYTES = 256 * 1024
#: Variables of the drone's own environment that emerge may see. Portage saves the exported
#: environment into every package it builds: the drone's config path or secrets must not leak.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
SIMULATED_ARTIFACT = "artifact.gpkg.tar"
#: Simulated artifacts up to this size (one upload chunk) are made in memory, with no work dir.
MEMORY_MAX = 1 << 20

_UNSEEDED = random.Random()  # one generator for unseeded plans: seeding one per build read the OS's entropy
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Portage colours eerror lines even with --color=n
_REPO = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")


@dataclass(frozen=True)
class BuildResult:
    """One build's outcome: the GPKG produced is `path`, inside the job's work directory, or
    `data` when the builder made it in memory."""

    ok: bool
    path: Path | None
    error: str
    seconds: float
    data: bytes | None = None


class Builder(Protocol):
    name: str

    @property
    def needs_workdir(self) -> bool:
        """False when builds need no directory of their own (the drone then makes none)."""

    def build(self, cpv: str, repo: str | None, workdir: Path | None, cancel: threading.Event) -> BuildResult:
        """Build `cpv` into `workdir`; return early (not ok) once `cancel` is set."""


def check_repo(repo: str | None) -> None:
    if repo is not None and not _REPO.match(repo):
        raise InputError(f"{repo!r} is not a repository name (letters, digits, '_' and '-')")


def make_builder(drone_config: cfg.DroneConfig) -> Builder:
    """The builder a drone's config asks for."""
    if drone_config.builder == "simulated":
        return SimulatedBuilder(drone_config.simulated)
    if drone_config.builder == "emerge":
        return EmergeBuilder(drone_config.emerge)
    raise ConfigError(f"[drone] builder {drone_config.builder!r} is unknown; use \"simulated\" or \"emerge\"")


# --- simulated ---------------------------------------------------------------------------------


class SimulatedBuilder:
    """Stands in for emerge: a random duration and outcome, and a real GPKG as output, so
    everything downstream (upload, validation, index, clients) runs for real."""

    name = "simulated"

    def __init__(self, config: cfg.SimulatedBuilder) -> None:
        self.config = config

    @property
    def needs_workdir(self) -> bool:
        return self.config.artifact_size > MEMORY_MAX

    def plan(self, cpv: str) -> tuple[float, bool]:
        """(duration, fails) for a CPV; the same for every drone when a seed is set, so a
        failing package fails everywhere, as a real broken ebuild would."""
        c = self.config
        rng = random.Random(f"{c.seed}:{cpv}") if c.seed is not None else _UNSEEDED
        return rng.uniform(c.min_seconds, c.max_seconds), rng.random() < c.failure_rate

    def build(self, cpv: str, repo: str | None, workdir: Path | None, cancel: threading.Event) -> BuildResult:
        """Into `workdir` when one is given, else in memory."""
        start = time.monotonic()
        duration, fails = self.plan(cpv)
        if (duration > 0 and cancel.wait(duration)) or cancel.is_set():
            return _result(start, error="cancelled")
        if fails:
            return _result(start, error=f"simulated failure of {cpv}")
        size, repo, seed = self.config.artifact_size, repo or "gentoo", self.config.seed or 0
        try:
            if workdir is None:
                return _result(start, data=gpkg_writer.gpkg_bytes(cpv, size=size, repo=repo, seed=seed))
            gpkg_writer.write_gpkg(workdir / SIMULATED_ARTIFACT, cpv, size=size, repo=repo, seed=seed)
        except (OSError, InputError) as exc:
            return _result(start, error=f"simulated build of {cpv} could not write its GPKG: {exc}")
        return _result(start, path=workdir / SIMULATED_ARTIFACT)


def _result(start: float, path: Path | None = None, error: str = "", data: bytes | None = None) -> BuildResult:
    return BuildResult(ok=path is not None or data is not None, path=path, error=error,
                       seconds=time.monotonic() - start, data=data)


# --- emerge --------------------------------------------------------------------------------------


class EmergeBuilder:
    """`emerge --buildpkg` of one exact version, in its own PKGDIR and process group, so the
    GPKG is found without guessing and a cancel kills every process the build started."""

    name = "emerge"
    needs_workdir = True

    def __init__(self, config: cfg.EmergeBuilder) -> None:
        self.config = config

    def argv(self, cpv: str, repo: str | None) -> list[str]:
        atom = f"={cpv}" + (f"::{repo}" if repo else "")
        return [*self.config.command_prefix, self.config.emerge, "--buildpkg", "--oneshot",
                "--quiet-build=y", "--color=n", atom]

    def env(self, pkgdir: Path) -> dict[str, str]:
        base = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        return {**base, **self.config.env, "PKGDIR": str(pkgdir)}

    def build(self, cpv: str, repo: str | None, workdir: Path | None, cancel: threading.Event) -> BuildResult:
        start = time.monotonic()
        try:
            gentoo.cpv_parts(cpv)  # a CPV comes from the network: refuse what is not one
            check_repo(repo)
        except InputError as exc:
            return _result(start, error=str(exc))
        if workdir is None:
            return _result(start, error="the emerge builder was given no work directory (a drone bug)")
        if cancel.is_set():
            return _result(start, error="cancelled")
        pkgdir, log_path = workdir / "pkgdir", workdir / "build.log"
        try:
            pkgdir.mkdir(parents=True, exist_ok=True)
            status = self._run(self.argv(cpv, repo), self.env(pkgdir), workdir, log_path, cancel)
        except OSError as exc:
            return _result(start, error=f"cannot run {self.config.emerge!r}: {exc}; check [drone.emerge]")
        return self._outcome(status, cpv, pkgdir, log_path, start)

    def _run(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path,
             cancel: threading.Event) -> int | str:
        """The exit status, or "cancelled" / "timeout" after killing the process group."""
        log.debug("running %s", argv)
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd, start_new_session=True)
        try:
            return _supervise(proc, cancel, time.monotonic() + self.config.timeout_seconds)
        except BaseException:
            kill_group(proc)  # never leave a build running behind a crashed or interrupted drone
            raise

    def _outcome(self, status: int | str, cpv: str, pkgdir: Path, log_path: Path,
                 start: float) -> BuildResult:
        if status == "cancelled":
            return _result(start, error="cancelled")
        tail = log_tail(log_path, self.config.log_tail_lines)
        if status == "timeout":
            return _result(start, error=f"emerge timed out after {self.config.timeout_seconds:g} s{tail}")
        if status != 0:
            return _result(start, error=f"emerge exited with {status}{tail}")
        found = find_gpkg(pkgdir, cpv)
        if found is None:
            return _result(start, error=f"emerge succeeded but produced no GPKG for {cpv}")
        return _result(start, path=found)


def _supervise(proc: subprocess.Popen, cancel: threading.Event, deadline: float) -> int | str:
    while True:
        try:
            return proc.wait(POLL_INTERVAL)
        except subprocess.TimeoutExpired:
            pass
        if cancel.is_set() or time.monotonic() > deadline:
            kill_group(proc)
            return "cancelled" if cancel.is_set() else "timeout"


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the build's whole process group, SIGKILL it if it lingers; reap the leader."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def log_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a build log, as text to append to an error ("" if none)."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            text = _ANSI.sub("", f.read().decode("utf-8", "replace"))
        kept = deque(text.splitlines(), maxlen=lines)
    except OSError:
        return ""
    return "\n" + "\n".join(kept) if kept else ""


def find_gpkg(pkgdir: Path, cpv: str) -> Path | None:
    """The GPKG emerge wrote for exactly `cpv`: `cat/pn/pf-BUILDID.gpkg.tar` (the newest build
    id) or `cat/pf.gpkg.tar`. Names are matched whole, never by prefix: `foo-1.2` must not
    pick up `foo-1.2.3`."""
    category, pn, pf = gentoo.cpv_parts(cpv)
    instance = re.compile(re.escape(pf) + r"-([1-9][0-9]*)\.gpkg\.tar\Z")
    found: list[tuple[int, Path]] = []
    folder = pkgdir / category / pn
    for entry in (os.scandir(folder) if folder.is_dir() else ()):
        match = instance.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    if found:
        return max(found)[1]
    single = pkgdir / category / f"{pf}.gpkg.tar"
    return single if single.is_file() else None
