"""Collect the final state of every node, once the run has settled, for the checkers.

Everything the invariants are judged on is gathered here (state over the control API, node
logs, the files on disk, what each binhost serves), so checks.py stays pure and its verdicts
can be tested on made-up evidence.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from swarmmesh.errors import ClusterError
from swarmmesh.harness import LocalCluster, index_entries
from tests.chaos.faults import Injector, has_artifact, job_dirs

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Evidence:
    snapshot: dict
    fingerprints: dict[str, str | None]
    settled: bool
    release_id: str | None
    deps: dict[str, list[str]] = field(default_factory=dict)        # key -> keys it depends on (planned)
    logs: dict[str, str] = field(default_factory=dict)
    stores: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # orch -> file -> (sha256, sha1)
    tmp: dict[str, list[str]] = field(default_factory=dict)       # orch -> files in store/tmp/
    drone_dirs: dict[str, dict[str, bool]] = field(default_factory=dict)  # drone -> job dir -> has artifact
    orphans: dict[str, set[str]] = field(default_factory=dict)    # drone -> dirs left by killed processes
    indexes: dict[str, bytes | str] = field(default_factory=dict)  # orch -> Packages, or why not
    served: dict[str, dict[str, tuple[int, str, str] | str]] = field(default_factory=dict)
    gz: dict[str, bytes | str] = field(default_factory=dict)       # orch -> Packages.gz unpacked, or why not
    serving: dict[str, str | None] = field(default_factory=dict)   # orch -> release its binhost says it serves
    views: dict[str, dict | str] = field(default_factory=dict)     # orch -> its own /swarm view, or why none

    @property
    def orchestrators(self) -> list[str]:
        return sorted(set(self.stores) | set(self.indexes) | set(self.views))


def fingerprints(c: LocalCluster) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in c.orchestrators:
        try:
            out[name] = c.ask(name, "status", timeout=2.0)["fingerprint"]
        except ClusterError:
            out[name] = None
    return out


def view(c: LocalCluster, name: str) -> dict | str:
    """The queue as this orchestrator itself applied it (any node answers `view`)."""
    try:
        return c.ask(name, "view", timeout=10.0)
    except ClusterError as exc:
        return f"no answer ({exc})"


def gather(c: LocalCluster, inj: Injector, snapshot: dict, settled: bool, release_id: str | None,
           deps: dict[str, list[str]]) -> Evidence:
    ev = Evidence(snapshot, fingerprints(c), settled, release_id, deps)
    for path in sorted((c.dir / "logs").glob("*.log")):
        ev.logs[path.stem] = path.read_text(errors="replace")
    for name in c.orchestrators:
        ev.views[name] = view(c, name)
        ev.stores[name], ev.tmp[name] = _store_files(c.configs[name].data_dir / "store")
        base = c.configs[name].me().binhost_url
        ev.indexes[name], ev.gz[name], ev.serving[name] = fetch(base + "Packages"), fetch_gz(base), serving(base)
    for drone in c.drones:
        work = inj.work_dir(drone)
        ev.drone_dirs[drone] = {d: has_artifact(work / d) for d in sorted(job_dirs(work))}
    ev.orphans = {d: set(dirs) for d, dirs in inj.orphans.items()}
    for name, index in ev.indexes.items():
        if isinstance(index, bytes):
            ev.served[name] = _served(c.configs[name].me().binhost_url, index)
    return ev


def _store_files(store: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """({file: (sha256, sha1) of its content} outside tmp/, [files in tmp/]), relative to the store."""
    files, tmp = {}, []
    for root, _, names in os.walk(store):
        rel = Path(root).relative_to(store)
        for name in names:
            if rel.parts[:1] == ("tmp",):
                tmp.append(str(rel / name))
            else:
                files[str(rel / name)] = _digests(Path(root) / name)
    return files, sorted(tmp)


def _digests(path: Path) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()  # noqa: S324 - Packages lists SHA1
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha256.update(chunk)
                sha1.update(chunk)
    except OSError as exc:
        return f"unreadable: {exc}", ""
    return sha256.hexdigest(), sha1.hexdigest()


def fetch(url: str) -> bytes | str:
    """The body of a 200 answer, or a short reason why there is none."""
    try:
        with _OPENER.open(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - our own binhost URL
            return resp.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable ({getattr(exc, 'reason', exc)})"


def fetch_gz(base: str) -> bytes | str:
    """Packages.gz unpacked (clients read it first), or why there is none."""
    body = fetch(base + "Packages.gz")
    if isinstance(body, str):
        return body
    try:
        return gzip.decompress(body)
    except (OSError, EOFError) as exc:
        return f"not gzip ({exc})"


def serving(base: str) -> str | None:
    """The release id a binhost says it serves (`GET /release`); a reason in brackets if none."""
    body = fetch(base + "release")
    if isinstance(body, str):
        return f"<{body}>"
    try:
        got = json.loads(body).get("serving")
    except (ValueError, AttributeError) as exc:
        return f"<bad /release answer: {exc}>"
    return got if isinstance(got, str) or got is None else f"<bad /release answer: {got!r}>"


def _served(base: str, index: bytes) -> dict[str, tuple[int, str, str] | str]:
    """(size, md5, sha1) of every file the index lists, as this binhost serves it."""
    out: dict[str, tuple[int, str, str] | str] = {}
    for entry in index_entries(index):
        path = entry.get("PATH") or f"{entry.get('CPV', '?')}.gpkg.tar"
        body = fetch(base + path)
        out[path] = body if isinstance(body, str) else (len(body), hashlib.md5(body).hexdigest(),  # noqa: S324
                                                         hashlib.sha1(body).hexdigest())  # noqa: S324
    return out
