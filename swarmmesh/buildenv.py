"""A machine's build environment, read from Portage: what a client builds for, what a drone can build.

The client sends its environment with each submission (`env` in `POST /build`); a drone sends
its own in its hello. Both come from the same reading of `portage.settings`, so the two sides
describe themselves in the same words:

    chost, arch, profile        from the profile (profile: its path inside a repository's profiles/)
    cflags, cxxflags, ldflags   make.conf; a `-march=native` is replaced by the CPU it means
                                (`gcc -march=native -Q --help=target`), because a drone building
                                with `native` would build for its own CPU, not the client's
    march                       the -march the flags select ("" when they select none)
    isa_level                   the x86-64 micro-architecture level (1-4) code built with those
                                flags needs; for a drone, the level its CPU runs; 0 = unknown
    cpu_flags                   every CPU_FLAGS_* variable (USE_EXPAND) that is set
    repos                       repository name -> revision (git HEAD, or metadata/timestamp.chk)

Why the ISA level and not the march name: a drone is compatible when its CPU can *run* what it
builds (Portage's packages run its own tools during the build), and levels compare; names do
not. gcc answers for any -march through its predefined macros; without gcc only the
`x86-64[-vN]` names are known.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MARCH = re.compile(r"(?<!\S)-march=(\S+)")
_GCC_TIMEOUT = 10.0
#: x86-64 levels by gcc's predefined macros (psABI: each level needs every feature listed)
_LEVEL_MACROS = (
    (4, ("__AVX512F__", "__AVX512BW__", "__AVX512CD__", "__AVX512DQ__", "__AVX512VL__")),
    (3, ("__AVX2__", "__BMI2__", "__FMA__", "__MOVBE__", "__F16C__")),
    (2, ("__SSE4_2__", "__POPCNT__", "__SSSE3__")),
)
#: the same levels by /proc/cpuinfo flags (what a CPU runs)
_LEVEL_CPU = (
    (4, ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
    (3, ("avx2", "bmi2", "fma", "movbe", "f16c", "abm", "xsave")),
    (2, ("sse4_2", "popcnt", "ssse3", "cx16", "lahf_lm")),
)
_NAMED = {"x86-64": 1, "x86-64-v2": 2, "x86-64-v3": 3, "x86-64-v4": 4}


def client_env(settings: Any) -> dict[str, Any] | None:
    """The `env` of a submission, or None when Portage has no usable profile here."""
    base = _base(settings)
    if base is None:
        return None
    gcc = shutil.which("gcc")
    flags = {name.lower(): str(settings.get(name) or "") for name in ("CFLAGS", "CXXFLAGS", "LDFLAGS")}
    march = march_of(flags["cflags"])
    if march == "native":
        march = resolve_native(gcc) or "native"
        flags = {name: _MARCH.sub(f"-march={march}", value) for name, value in flags.items()}
    level = isa_level(march, gcc) if base["arch"] == "amd64" else 0
    return {**base, **flags, "march": march, "isa_level": level,
            "cpu_flags": cpu_flags(settings), "repos": repo_revisions(settings)}


def drone_env(settings: Any) -> dict[str, Any] | None:
    """The `env` of a drone's hello: what it builds for, with what, on which CPU level."""
    base = _base(settings)
    if base is None:
        return None
    level = cpu_isa_level(Path("/proc/cpuinfo")) if base["arch"] == "amd64" else 0
    return {**base, "compiler": compiler(shutil.which("gcc")), "isa_level": level}


def _base(settings: Any) -> dict[str, Any] | None:
    chost, arch = settings.get("CHOST"), settings.get("ARCH")
    if not chost or not arch:
        log.info("Portage names no CHOST/ARCH here (no profile?): no build environment to send")
        return None
    return {"chost": str(chost), "arch": str(arch), "profile": profile_name(settings)}


def profile_name(settings: Any) -> str:
    """The profile as `eselect profile` names it (default/linux/amd64/23.0), else its path."""
    path = getattr(settings, "profile_path", None)
    if not path:
        return ""
    real = os.path.realpath(path)
    for repo in getattr(settings, "repositories", ()):
        profiles = os.path.join(os.path.realpath(repo.location), "profiles") + os.sep
        if real.startswith(profiles):
            return real[len(profiles):]
    return real


def march_of(cflags: str) -> str:
    """The last -march in the flags (gcc's rule: the last one wins), "" when none."""
    found = _MARCH.findall(cflags or "")
    return found[-1] if found else ""


def resolve_native(gcc: str | None) -> str | None:
    """What `-march=native` means on this CPU, as gcc reports it."""
    out = _gcc(gcc, ["-march=native", "-Q", "--help=target"])
    for line in (out or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "-march=":
            return parts[1]
    return None


def isa_level(march: str, gcc: str | None) -> int:
    """The x86-64 level code built with -march=`march` needs (1 without -march; 0 unknown)."""
    if not march:
        return 1
    if march in _NAMED:
        return _NAMED[march]
    out = _gcc(gcc, [f"-march={march}", "-dM", "-E", "-x", "c", os.devnull])
    if out is None:
        return 0
    macros = {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}
    return next((level for level, need in _LEVEL_MACROS if all(m in macros for m in need)), 1)


def cpu_isa_level(cpuinfo: Path) -> int:
    """The x86-64 level this CPU runs, from its /proc/cpuinfo flags (0 when unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return 0
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    if not flags:
        return 0
    return next((level for level, need in _LEVEL_CPU if all(f in flags for f in need)), 1)


def compiler(gcc: str | None) -> str:
    """`gcc-14.2.1` (what `gcc -dumpfullversion` says), "" without gcc."""
    out = _gcc(gcc, ["-dumpfullversion"])
    return f"gcc-{out.strip()}" if out and out.strip() else ""


def cpu_flags(settings: Any) -> dict[str, str]:
    names = str(settings.get("USE_EXPAND") or "").split()
    found = {name: " ".join(sorted(str(settings.get(name) or "").split()))
             for name in names if name.startswith("CPU_FLAGS_")}
    return {name: value for name, value in sorted(found.items()) if value}


def repo_revisions(settings: Any) -> dict[str, str]:
    """Repository name -> its revision: git HEAD, else metadata/timestamp.chk, else ""."""
    return {repo.name: _revision(Path(repo.location)) for repo in getattr(settings, "repositories", ())}


def _revision(location: Path) -> str:
    git = location / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            if ".." in ref or ref.startswith("/"):
                return ""
            return (git / ref).read_text().strip()
        return head
    except OSError:
        pass
    try:
        return (location / "metadata" / "timestamp.chk").read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


def _gcc(gcc: str | None, args: list[str]) -> str | None:
    if gcc is None:
        return None
    try:
        done = subprocess.run([gcc, *args], capture_output=True, text=True, timeout=_GCC_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("gcc %s failed: %s", " ".join(args), exc)
        return None
    return done.stdout if done.returncode == 0 else None
