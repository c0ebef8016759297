"""The gateway's JSON answers as text for a terminal: what `status`, `swarm`, `releases` and
the mutating commands print.

Apart from cli.py so that the command definitions stay declarations (cli imports this module
inside the commands, keeping `--help` free of working modules), and so that the rendering is
plain functions from a dict to lines, tested without a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

COUNT_KEYS = ("needed", "delegated", "received", "failed")


def one_line(text: str) -> str:
    """Any text (an error, a build log's first lines) folded onto one line."""
    return " ".join(text.split())


def age(last_seen: Any, now: float) -> str:
    """Render `last_seen` (an epoch time or an age in seconds) as an age."""
    if last_seen is None:
        return "never"
    if not isinstance(last_seen, int | float):
        return str(last_seen)
    seconds = now - last_seen if last_seen > 1e9 else last_seen
    return f"{max(seconds, 0.0):.1f}s ago"


def health(status: dict) -> tuple[bool, str]:
    """Whether the cluster can serve (a leader and a healthy majority), said in one line."""
    nodes = status.get("orchestrators") or []
    healthy = sum(1 for node in nodes if node.get("healthy"))
    if status.get("leader") is None:
        return False, f"unhealthy: no leader is known ({healthy} of {len(nodes)} orchestrators healthy)"
    if healthy * 2 <= len(nodes):
        return False, (f"unhealthy: only {healthy} of {len(nodes)} orchestrators are healthy; "
                       f"a majority ({len(nodes) // 2 + 1}) is needed")
    return True, f"ok: leader {status['leader']} (term {status.get('term')}), {healthy}/{len(nodes)} healthy"


def status_lines(status: dict, now: float) -> list[str]:
    """`swarmmesh status`: the leader, the binhost, each orchestrator, the counts."""
    nodes = status.get("orchestrators") or []
    lines = [f"leader:  {status.get('leader') or '(none)'}  (term {status.get('term')})",
             f"binhost: {status.get('binhost') or '(none)'}",
             f"orchestrators ({len(nodes)}):"]
    for node in nodes:
        state = "healthy" if node.get("healthy") else "UNHEALTHY"
        lines.append(f"  {node.get('name', '?'):<16} {node.get('role') or '?':<10} {state:<10} "
                     f"last seen {age(node.get('last_seen'), now)}")
    return [*lines, counts_line(status.get("counts"))]


def counts_line(counts: dict | None) -> str:
    if counts is None:
        return "packages: unknown (no leader)"
    parts = [f"{key} {counts.get(key, 0)}" for key in (*COUNT_KEYS, "total")]
    return f"packages: {', '.join(parts)}"


def result_lines(title: str, result: Any) -> list[str]:
    """A gateway reply whose exact keys this CLI does not need to know."""
    if not isinstance(result, dict):
        return [f"{title}: {result}"]
    return [f"{title}: {result.get('message', 'done')}",
            *(f"  {key}: {value}" for key, value in result.items() if key != "message")]


def release_lines(data: dict) -> list[str]:
    """`swarmmesh releases`: oldest first, `*` marks the current one."""
    rows = data.get("releases") or []
    if not rows:
        return ["no releases yet (swarmmesh finalize makes one)"]
    lines = []
    for rel in rows:
        mark = "*" if rel.get("id") == data.get("current") else " "
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rel.get("created_at") or 0))
        note = f"  rollback to {rel['source']}" if rel.get("source") else ("  forced" if rel.get("forced") else "")
        lines.append(f"{mark} {rel.get('id', '?'):<28} {when} UTC  {rel.get('count', 0):>6} packages{note}")
    return lines


def swarm_lines(data: dict) -> list[str]:
    """`swarmmesh swarm`: the counts, then one line per package."""
    lines = [counts_line(data.get("counts"))]
    for key, entry in _packages(data):
        error = one_line(str(entry.get("error") or "-"))
        lines.append(f"  {entry.get('state', '?'):<10} {key:<40} drone {entry.get('drone') or '-':<16} "
                     f"attempts {entry.get('attempts', 0)}  error {error}")
    return lines


def _packages(data: dict) -> Iterable[tuple[str, dict]]:
    """The queue's packages as (key, entry), whether the gateway sent a list or a mapping."""
    packages = data.get("packages") or []
    if isinstance(packages, dict):
        return packages.items()
    return ((str(p.get("cpv") or p.get("key") or "?"), p) for p in packages)
