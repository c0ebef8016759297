"""Saved `emerge --pretend` output, read into a plan: what to build, with what USE, after what.

The fallback to Portage's resolver (`swarmmesh.resolver`) for a client that saved
`emerge -puDN --verbose --tree --color=n @world` (`swarmmesh client --from-file F`), or a
machine where importing Portage is not possible. What each line says:

    [ebuild  N     ]  test-cat/mid-a-1.0:0/1::test [0.9:0/1::test] USE="foo -bar" CPU_FLAGS_X86="sse2" 0 KiB
     ^kind   ^flags ^^ depth (tree)  ^slot/sub ^repo   ^installed        ^USE, USE_EXPAND    ^size

Only `[ebuild` lines are builds. `[binary` will come from a binhost already, `[nomerge` is
there for the tree only, `[blocks` and `[uninstall` build nothing: all are counted, none
queued. USE markers (`*` changed, `%` new, `(...)` forced or masked, `{...}`) are dropped; a
flag is enabled unless it starts with `-`. USE_EXPAND variables become their flags
(`CPU_FLAGS_X86="sse2"` is `cpu_flags_x86_sse2`). Without `--verbose` the USE is unknown.

Edges come from `--tree` only: a line one level deeper than the one above it is a dependency
of that line (the nearest build above it, when that line is not one). The tree cannot tell
build-time from run-time dependencies, so every edge counts: safe, if a little less parallel
than the resolver's exact build-time edges. Tree output is printed in reverse merge order
(its header says so); the plan is always in merge order, dependencies first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarmmesh import gentoo
from swarmmesh.errors import BadAtomsError, InputError
from swarmmesh.plan import Plan, Wanted

_LINE = re.compile(r"\[(ebuild|binary|nomerge|blocks|uninstall)\b[^\]]*\]( *)(\S+)(.*)$")
_VAR = re.compile(r"\b([A-Z][A-Z0-9_]*)=\"([^\"]*)\"")
_SIZE = re.compile(r"\s[\d,.]+ [KMG]iB\s*$")
_MARKS = str.maketrans("", "", "()*%{}")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Line:
    """One package line of `emerge --pretend` output."""

    number: int
    kind: str  # ebuild, binary, nomerge, blocks, uninstall
    depth: int  # tree level, 0 without --tree
    name: str  # cat/pkg-1.0 (as printed; a blocker's atom for `blocks`)
    slot: str | None
    subslot: str | None
    repo: str | None
    use: tuple[str, ...] | None  # enabled flags shown, sorted; None when not --verbose

    @property
    def key(self) -> str:
        return f"{self.name}::{self.repo}" if self.repo else self.name


def parse_lines(text: str) -> list[Line]:
    """Every package line, in the order printed; other lines (headers, totals, news) are skipped."""
    if not isinstance(text, str):
        raise InputError("emerge output must be text")
    text = _ANSI.sub("", text) if "\x1b" in text else text
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        match = _LINE.match(raw.strip("\r"))
        if match:
            lines.append(_line(number, match))
    return lines


def _line(number: int, match: re.Match[str]) -> Line:
    kind, spaces, token, rest = match.groups()
    name, _, repo = token.partition("::")
    name, _, slot = name.partition(":")
    slot, _, subslot = slot.partition("/")
    shown = _VAR.findall(rest)
    verbose = bool(shown) or _SIZE.search(rest) is not None
    return Line(number, kind, max(len(spaces) - 1, 0), name, slot or None, subslot or None,
                repo or None, tuple(sorted(_flags(shown))) if verbose else None)


def _flags(shown: list[tuple[str, str]]) -> set[str]:
    enabled = set()
    for var, values in shown:
        prefix = "" if var == "USE" else var.lower() + "_"
        for raw in values.split():
            flag = raw.translate(_MARKS)
            if flag and not flag.startswith("-"):
                enabled.add(prefix + flag)
    return enabled


def parse_plan(text: str) -> Plan:
    """The builds of emerge output in merge order, with their USE and (from --tree) edges.

    Raises BadAtomsError naming each `[ebuild` line whose package Portage's parser rejects,
    and InputError when nothing is left to build."""
    lines = parse_lines(text)
    tree = "in reverse order" in text or any(line.depth for line in lines)
    builds, bad = _builds(lines)
    if bad:
        raise BadAtomsError(bad)
    if not builds:
        raise InputError("no packages to build: the emerge output has no [ebuild ...] line "
                         "(everything is installed, or comes from a binhost already)")
    edges = _tree_edges(lines, builds) if tree else {}
    order = list(reversed(builds)) if tree else list(builds)
    packages = [_wanted(builds[key], edges.get(key, ()), builds) for key in order]
    skipped: dict[str, int] = {}
    for line in lines:
        if line.kind != "ebuild":
            skipped[line.kind] = skipped.get(line.kind, 0) + 1
    return Plan(packages, skipped=skipped)


def _builds(lines: list[Line]) -> tuple[dict[str, Line], list[tuple[int, str, str]]]:
    builds: dict[str, Line] = {}
    bad = []
    for line in lines:
        if line.kind != "ebuild":
            continue
        try:
            ref = gentoo.parse_atom(f"={line.key}")
        except InputError as exc:
            bad.append((line.number, line.key, str(exc).partition(": ")[2] or str(exc)))
            continue
        builds.setdefault(ref.key, line)
    return builds, bad


def _tree_edges(lines: list[Line], builds: dict[str, Line]) -> dict[str, list[str]]:
    """Parent -> its dependencies among the builds, read off the indentation."""
    edges: dict[str, list[str]] = {}
    stack: list[Line] = []
    for line in lines:
        if line.kind in ("blocks", "uninstall"):
            continue
        del stack[line.depth:]
        parent = next((p for p in reversed(stack) if p.key in builds), None)
        if parent is not None and line.key in builds and line.key != parent.key:
            deps = edges.setdefault(parent.key, [])
            if line.key not in deps:
                deps.append(line.key)
        stack.append(line)
    return edges


def _wanted(line: Line, deps: list[str] | tuple[str, ...], builds: dict[str, Line]) -> Wanted:
    atoms = tuple(f"={builds[d].key}" for d in deps)
    return Wanted(line.name, line.repo, line.use, atoms, line.slot, line.subslot)
