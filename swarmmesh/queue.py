"""The build queue: a pure, deterministic state machine that every orchestrator replicates.

election.py forwards PySyncObj ``@replicated`` calls here, so each node applies the same
commands in the same order and must reach the same state: no I/O, no clock (the leader passes
``now`` and its Raft ``term``), no randomness, no iteration over sets. Expected refusals come
back as result dicts (``{"ok": False, "code": ...}``), never as exceptions, because results
cross threads as values. Everything is plain data so PySyncObj can pickle it into snapshots.

    needed ──delegate──▶ delegated ──complete──▶ received
      ▲                    │    │
      └─ requeue, expire, ─┘    └─ fail (last attempt) ──▶ failed ──unblock──▶ needed
         release_drone, fail (attempts left)

Result codes: ok, duplicate (idempotent repeat, still ok), unknown, stale (older term, or the
package belongs to another drone), not_needed, waiting (dependencies not received), grounded,
not_delegated, not_received (lose of a package that was rebuilt meanwhile), refused (finalize
with work pending), violation (two leaders in one term).

Its parts, plain data that pickles with it: the dependency graph (depgraph.py: edges, readiness,
no cycles), the file registry (filereg.py: which orchestrator holds which file, by sha256, and
the change feed the store keepers follow), the releases (releaselog.py: immutable, stamped), and
the records they share (records.py). ``lose`` puts a received package whose file nobody holds
back to needed.

Not thread-safe: the caller serialises commands and queries (one lock or one thread).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from itertools import islice
from typing import Any

from swarmmesh import records
from swarmmesh.commands import Command
from swarmmesh.depgraph import DepGraph
from swarmmesh.filereg import FileRegistry
from swarmmesh.records import DELEGATED, FAILED, NEEDED, RECEIVED, STATES, Batch, Package, Release
from swarmmesh.records import FILE_FIELDS as FILE_FIELDS  # noqa: PLC0414 - still queue's to its users
from swarmmesh.releaselog import ReleaseLog, files_by_sha

log = logging.getLogger(__name__)

def _ok(code: str = "ok", **extra: Any) -> dict:
    return {"ok": True, "code": code, **extra}


def _no(code: str, **extra: Any) -> dict:
    return {"ok": False, "code": code, **extra}


class BuildQueue:
    """The queue plus indexes that keep dispatch and counting cheap at 20k packages."""

    def __init__(self) -> None:
        self.release_log = ReleaseLog()
        self.files = FileRegistry()  # holders, the index by sha256, the change feed
        self._terms: dict[int, str] = {}
        self._max_term = 0
        self.violations: list[str] = []
        self._clear()
        self._derive()

    def __setstate__(self, state: dict) -> None:
        """A restored queue (snapshot, full dump) rebuilds its indexes (filereg.py says why its
        feed starts empty). Snapshots written before the file registry was a part of its own
        hold its fields as the queue's: `_holders` and `files_version`."""
        if "release_log" not in state:  # written before releases were a part of their own
            state["release_log"] = ReleaseLog(state.pop("_releases"))
        if "graph" not in state:  # written before the dependency graph was a part of its own
            state["graph"] = DepGraph(state["_packages"], state.pop("_unmet"), state.pop("_rdeps"),
                                      state.pop("_ready"), state.pop("_heaped"))
        if "files" not in state:
            state["files"] = FileRegistry(state.pop("_holders"), state.pop("files_version"))
        vars(self).update(state)
        self._derive()

    @property
    def files_version(self) -> int:
        """Position of the change feed: moves whenever a file's record changes."""
        return self.files.version

    def _derive(self) -> None:
        self.files.restart()
        for pkg in self._packages.values():
            if pkg.state == RECEIVED:
                self._index_file(pkg)
        self.files.newest_files = files_by_sha(self.release_log.newest())

    def _clear(self) -> None:
        self._packages: dict[str, Package] = {}  # insertion order == seq order
        self._batches: dict[str, Batch] = {}
        self._batch_counts: dict[str, dict[str, int]] = {}  # batch id -> state -> packages
        self._seq = 0
        self._counts = dict.fromkeys(STATES, 0)
        self.graph = DepGraph(self._packages)  # edges still unmet, and the ready heap
        self._by_drone: dict[str, dict[str, None]] = {}  # drone -> delegated keys (ordered set)
        self._streak: dict[str, int] = {}  # drone -> consecutive failures (only if > 0)
        self._grounded: set[str] = set()

    # ----------------------------------------------------------------- commands

    def apply(self, cmd: Command) -> dict:
        """A replicated command (commands.py) is the method of its name, with its fields as the
        arguments, named and ordered as that method's parameters (test_queue checks it)."""
        return getattr(self, cmd.NAME)(*cmd.args())

    def submit(self, batch_id: str, client: str, items: list[tuple[str, str, str | None]],
               deps: dict[str, list[str]] | None, now: float) -> dict:
        """Queue a batch; a key already queued is listed in the batch but built only once."""
        old = self._batches.get(batch_id)
        if old is not None:
            return _ok("duplicate", batch=batch_id, count=len(old.keys), new=old.new, duplicate=True)
        added = [self._add(key, cpv, repo) for key, cpv, repo in items if key not in self._packages]
        keys = list(dict.fromkeys(key for key, _, _ in items))
        self.graph.link(added, deps or {}, self._fail_on_dependency)
        self._join_batch(batch_id, keys)
        self._batches[batch_id] = Batch(batch_id, client, keys, now, new=len(added))
        return _ok(batch=batch_id, count=len(keys), new=len(added), duplicate=False)

    def delegate(self, key: str, drone: str, term: int, now: float, lease_deadline: float) -> dict:
        """Conditional on purpose: a timed-out call may commit late, so re-check everything."""
        if term < self._max_term:
            return _no("stale", max_term=self._max_term)
        self._max_term = term
        pkg = self._packages.get(key)
        if pkg is None:
            return _no("unknown")
        refusal = self._delegate_refusal(pkg, drone)
        if refusal is not None:
            return refusal
        pkg.attempts += 1
        pkg.drone, pkg.term, pkg.delegated_at, pkg.lease_deadline = drone, term, now, lease_deadline
        self._set_state(pkg, DELEGATED)
        self._by_drone.setdefault(drone, {})[key] = None
        self.graph.prune()
        return _ok(attempts=pkg.attempts)

    def _delegate_refusal(self, pkg: Package, drone: str) -> dict | None:
        if drone in self._grounded:
            return _no("grounded")
        if pkg.state != NEEDED:
            return _no("not_needed", state=pkg.state)
        if self.graph.unmet_of(pkg.key):
            return _no("waiting", unmet=self.graph.unmet_of(pkg.key))
        return None

    def renew(self, drone: str, term: int, lease_deadline: float, keys: list[str] | None = None) -> dict:
        """Extend leases on a heartbeat; never shorten one (a late, older renewal is harmless)."""
        if term < self._max_term:
            return _no("stale", max_term=self._max_term)
        self._see(term)
        mine = self._by_drone.get(drone, {})
        chosen = mine if keys is None else [k for k in dict.fromkeys(keys) if k in mine]
        renewed = self._by_seq(chosen)
        for key in renewed:
            pkg = self._packages[key]
            pkg.lease_deadline = max(pkg.lease_deadline or lease_deadline, lease_deadline)
        return _ok(renewed=renewed)

    def complete(self, key: str, drone: str, term: int, result: dict, now: float) -> dict:
        """Reconcile a finished build: a valid artifact is taken unless another drone owns the job.

        Accepted when delegated to this drone (any term), when needed (its lease lapsed and
        nobody else has it) and when failed (a valid build beats a recorded failure).
        """
        self._see(term)
        pkg = self._packages.get(key)
        if pkg is None:
            return _no("unknown")
        if pkg.state == RECEIVED:
            return _ok("duplicate", state=RECEIVED, duplicate=True)
        if pkg.state == DELEGATED and pkg.drone != drone:
            return _no("stale", drone=pkg.drone)
        self._leave_delegation(pkg)
        pkg.drone, pkg.result, pkg.error = drone, {k: v for k, v in result.items() if k != "metadata"}, None
        self.files.keep_fresh_meta(pkg.result.get("sha256"), result.get("metadata"))
        self._set_state(pkg, RECEIVED)
        self.graph.forget_unmet(pkg)
        self.files.register(pkg.result)
        if (sha := self._index_file(pkg)) is not None:
            self.files.changed(sha)
        self._streak.pop(drone, None)
        self._revive_dependants(key)
        self.graph.release_dependants(key)
        self.graph.prune()
        return _ok(state=RECEIVED)

    def fail(  # noqa: PLR0917 -- positional on the wire: commands.Fail
        self, key: str, drone: str, term: int, error: str, now: float, max_attempts: int, ground_after: int
    ) -> dict:
        """Count a failed build: retry while attempts remain, and ground a drone that keeps failing."""
        self._see(term)
        pkg = self._packages.get(key)
        if pkg is None:
            return _no("unknown")
        if pkg.state != DELEGATED:
            return _no("not_delegated", state=pkg.state)
        if pkg.drone != drone:
            return _no("stale", drone=pkg.drone)
        self._leave_delegation(pkg)
        pkg.error = error
        if drone not in pkg.failed_on:
            pkg.failed_on.append(drone)
        self._set_state(pkg, FAILED if pkg.attempts >= max_attempts else NEEDED)
        self.graph.push_if_ready(pkg)
        if pkg.state == FAILED:
            self._fail_dependants(key)
        grounded = self._strike(drone, ground_after)
        return _ok(state=pkg.state, attempts=pkg.attempts, grounded=grounded)

    def requeue(self, keys: list[str], reason: str, now: float) -> dict:
        """Put delegated packages back without charging an attempt: the build did not fail."""
        requeued = [key for key in dict.fromkeys(keys) if self._requeue_one(key, reason)]
        return _ok(requeued=requeued)

    def expire(self, now: float) -> dict:
        """Requeue every lease that ended before ``now`` (O(delegated), not O(queue))."""
        due = [k for keys in self._by_drone.values() for k in keys if self._lease_over(k, now)]
        return self.requeue(self._by_seq(due), "lease expired", now)

    def release_drone(self, drone: str, reason: str, now: float) -> dict:
        """Requeue everything a vanished (or rebalanced) drone holds."""
        return self.requeue(self._by_seq(self._by_drone.get(drone, {})), reason, now)

    def unblock(self, keys: list[str] | None, now: float) -> dict:
        """Give failed packages fresh attempts and grounded drones a clean slate."""
        if keys is None:
            targets = [p.key for p in self._packages.values() if p.state == FAILED]
            drones, unknown = sorted(self._grounded), []
        else:
            wanted = list(dict.fromkeys(keys))
            targets = [k for k in wanted if k in self._packages]
            drones = [k for k in wanted if k in self._grounded or k in self._streak]
            unknown = [k for k in wanted if k not in self._packages and k not in drones]
        unblocked = [key for key in targets if self._unblock_one(key)]
        for drone in drones:
            self._grounded.discard(drone)
            self._streak.pop(drone, None)
        return _ok(unblocked=unblocked, ungrounded=drones, unknown=unknown)

    def finalize(self, release_id: str, now: float, force: bool) -> dict:
        """Record an immutable release of every received package; refuse while work is pending."""
        old = self.release_log.get(release_id)
        if old is not None:
            return _ok("duplicate", release=release_id, count=len(old.keys), duplicate=True)
        needed, delegated = self._counts[NEEDED], self._counts[DELEGATED]
        if (needed or delegated) and not force:
            return _no("refused", needed=needed, delegated=delegated)
        received = [p for p in self._packages.values() if p.state == RECEIVED]
        done = [b for b, counts in self._batch_counts.items() if counts[NEEDED] == counts[DELEGATED] == 0]
        files = [records.file_of(p) for p in received]
        self._add_release(Release(release_id, now, [p.key for p in received], bool(force), files, batches=done))
        return _ok(release=release_id, count=len(received), duplicate=False)

    def rollback(self, target: str, release_id: str, now: float) -> dict:
        """Publish `target`'s files again as the new release `release_id` (see the docstring)."""
        old = self.release_log.get(release_id)
        if old is not None:
            return _ok("duplicate", release=release_id, source=old.source, count=len(old.keys), duplicate=True)
        src = self.release_log.get(target)
        if src is None:
            return _no("unknown", release=target)
        files = [dict(f) for f in src.files]
        self._add_release(Release(release_id, now, list(src.keys), src.forced, files, source=target))
        return _ok(release=release_id, source=target, count=len(src.keys), duplicate=False)

    def hold(self, sha256: str, node: str) -> dict:
        """`node` stores the file; only files that some package or release refers to are tracked."""
        held = self.files.hold(sha256, node)
        if held is None:
            return _no("unknown")
        code, holders = held
        return _ok(code, holders=holders, duplicate=True) if code == "duplicate" else _ok(holders=holders)

    def unhold(self, sha256: str, node: str) -> dict:
        """`node` lost the file (deleted or corrupt): peers must not fetch it from there."""
        holders = self.files.unhold(sha256, node)
        if holders is None:
            return _ok("duplicate", duplicate=True)
        return _ok(holders=holders)

    def lose(self, key: str, sha256: str, reason: str, now: float) -> dict:
        """A received package whose file no live orchestrator holds is built again.

        Conditional on the sha256: a late commit must not undo a newer build of the package."""
        pkg = self._packages.get(key)
        if pkg is None:
            return _no("unknown")
        if pkg.state != RECEIVED or (pkg.result or {}).get("sha256") != sha256:
            return _no("not_received", state=pkg.state)
        self._unindex_file(pkg)
        pkg.result, pkg.error, pkg.drone, pkg.attempts = None, reason, None, 0
        self._set_state(pkg, NEEDED)
        self.graph.count_unmet(pkg, self._fail_on_dependency)
        self.graph.block_dependants(key)
        self.graph.push_if_ready(pkg)
        return _ok(state=NEEDED)

    def reset(self) -> dict:
        """Forget the queue but keep releases (they are on disk) and terms (fencing must hold)."""
        self._clear()
        self.files.jump()
        return _ok()

    def note_leader(self, term: int, leader: str) -> dict:
        """Record who led each term; two leaders in one term breaks Raft's safety promise."""
        self._see(term)
        known = self._terms.setdefault(term, leader)
        if known == leader:
            return _ok(term=term, leader=leader)
        message = f"term {term}: {leader!r} committed as leader but {known!r} already led this term"
        self.violations.append(message)
        log.error("safety violation: %s", message)
        return _no("violation", term=term, leader=known)

    # ------------------------------------------------------------------ queries

    def counts(self) -> dict[str, int]:
        """Maintained incrementally, so /status stays O(1) on a 20k queue."""
        return {**self._counts, "total": len(self._packages)}

    def get(self, key: str) -> Package | None:
        """A copy, so a caller cannot change replicated state behind Raft's back."""
        pkg = self._packages.get(key)
        if pkg is None:
            return None
        result = None if pkg.result is None else dict(pkg.result)
        return replace(pkg, result=result, batches=list(pkg.batches), deps=list(pkg.deps),
                       failed_on=list(pkg.failed_on))

    def peek(self, key: str) -> Package | None:
        """The live record, without the copy `get` makes (asked several times per package
        dispatched): only for reading, inside `Election.read`, never to keep or change."""
        return self._packages.get(key)

    def dispatchable(self, limit: int, exclude: Iterable[str] = frozenset()) -> list[str]:
        """The next ready keys in seq order, without changing replicated state."""
        return self.graph.dispatchable(limit, exclude)

    def delegated_to(self, drone: str) -> list[str]:
        return self._by_seq(self._by_drone.get(drone, {}))

    def grounded(self) -> list[str]:
        return sorted(self._grounded)

    def drone_streak(self, drone: str) -> int:
        return self._streak.get(drone, 0)

    @property
    def releases(self) -> list[Release]:
        return list(self.release_log)

    def newest_release(self) -> Release | None:
        """The release clients should see (a copy): the last one committed."""
        return self.release_log.newest_copy()

    def release_views(self) -> list[dict]:
        return self.release_log.views()

    def holders(self, sha256: str) -> list[str]:
        return self.files.holders_of(sha256)

    def artifacts(self) -> dict[str, dict]:
        """Every file each orchestrator should store, by sha256: the received packages' (with
        their key) and the newest release's; each with its size and current holders.

        Computed from the packages themselves, not from the registry's index by sha256 that `artifact`
        uses: garbage collection and full rescans rely on it, so it must not inherit a bug of
        the incremental bookkeeping (tests compare the two)."""
        wanted: dict[str, dict] = {}
        for pkg in self._packages.values():
            result = (pkg.result or {}) if pkg.state == RECEIVED else {}
            sha = result.get("sha256")
            if isinstance(sha, str):
                wanted[sha] = {"key": pkg.key, "size": result.get("size"), "holders": self.holders(sha)}
        newest = self.release_log.newest()
        for f in newest.files if newest else ():
            if isinstance(f.get("sha256"), str) and f["sha256"] not in wanted:
                wanted[f["sha256"]] = {"key": None, "size": f.get("size"), "holders": self.holders(f["sha256"])}
        return wanted

    def artifact(self, sha256: str) -> dict | None:
        """What `artifacts()` says of one file (None: no node needs to store it)."""
        keys = self.files.keys_of(sha256)
        if keys:
            pkg = max((self._packages[k] for k in keys), key=lambda p: p.seq)  # as artifacts(): the last wins
            return {"key": pkg.key, "size": (pkg.result or {}).get("size"), "holders": self.holders(sha256)}
        if sha256 in self.files.newest_files:
            return {"key": None, "size": self.files.newest_files[sha256], "holders": self.holders(sha256)}
        return None

    def changed_files(self, since: int) -> tuple[int, list[str] | None]:
        """(position, the files whose record changed after position `since`, each once, in order
        of their first change). None instead of the list: `since` is older than the feed keeps,
        from before a reset or restore, or from another queue; rescan everything."""
        return self.files.changed_since(since)

    def received(self, sha256: str | None = None) -> list[tuple[int, dict]]:
        """(seq, release file record) of the received packages in seq order, or of those whose file
        is `sha256`: the staging feed lists them, following `changed_files`."""
        if sha256 is None:
            return [(p.seq, records.file_of(p)) for p in self._packages.values() if p.state == RECEIVED]
        return [(p.seq, records.file_of(p)) for p in (self._packages[k] for k in self.files.keys_of(sha256))]

    def newest_release_id(self) -> str | None:
        """Cheap to poll, unlike `newest_release` (which copies every file record)."""
        return self.release_log.newest_id()

    def unreleased_batches(self) -> list[str]:
        """Complete batches with received packages that no release covers yet (auto_finalize)."""
        covered = self.release_log.covered_batches()
        return [b for b, c in self._batch_counts.items()
                if b not in covered and c[NEEDED] == c[DELEGATED] == 0 and c[RECEIVED] > 0]

    @property
    def max_term(self) -> int:
        return self._max_term

    def batch_progress(self, batch_id: str) -> dict | None:
        batch = self._batches.get(batch_id)
        return None if batch is None else self._batch_view(batch)

    def snapshot(self, limit: int | None = None) -> dict:
        """The JSON-ready view behind GET /swarm: packages in seq order, at most ``limit``."""
        packages = islice(self._packages.values(), limit)
        return {
            "counts": self.counts(),
            "packages": [self._package_view(p) for p in packages],
            "batches": [self._batch_view(b) for b in self._batches.values()],
            "grounded": self.grounded(),
            "releases": self.release_log.views(),
            "terms": {str(term): leader for term, leader in sorted(self._terms.items())},
            "max_term": self._max_term,
            "violations": list(self.violations),
        }

    def leader_of(self, term: int) -> str | None:
        """Who committed `note_leader` for `term` (a node leads only once its claim applied)."""
        return self._terms.get(term)

    def lease_overdue(self, now: float) -> bool:
        """Whether expire(now) would requeue anything: lets the leader skip a useless commit."""
        return any(self._lease_over(k, now) for keys in self._by_drone.values() for k in keys)

    def fresh_metadata(self, sha256: str) -> dict | None:
        """The GPKG metadata the leader's validation read from a newly received file, if still
        kept: a node indexing its copy then need not parse it again (the log also gives the
        file's size and digests). None: parse the file (restarts, old entries)."""
        return self.files.fresh_meta(sha256)

    def delegated_elsewhere(self, live: Iterable[str]) -> list[str]:
        """Delegated packages held by drones not in `live`, in seq order (for balance)."""
        alive = set(live)
        return self._by_seq(k for d, keys in self._by_drone.items() if d not in alive for k in keys)

    def fingerprint(self) -> str:
        """Equal logical states give equal hashes on every node; indexes are left out."""
        state = {
            "packages": [vars(p) for p in self._packages.values()],
            "batches": [vars(b) for b in self._batches.values()],
            "releases": [vars(r) for r in self.release_log],
            "holders": sorted(self.files.holders.items()),
            "grounded": sorted(self._grounded),
            "streaks": sorted(self._streak.items()),
            "terms": sorted(self._terms.items()),
            "max_term": self._max_term,
            "violations": self.violations,
        }
        blob = json.dumps(state, sort_keys=True, separators=(",", ":"), default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()

    # ---------------------------------------------------------------- internals

    def _add(self, key: str, cpv: str, repo: str | None) -> Package:
        self._seq += 1
        pkg = self._packages[key] = Package(key, cpv, repo, self._seq)
        self._counts[NEEDED] += 1
        return pkg

    def _join_batch(self, batch_id: str, keys: list[str]) -> None:
        counts = self._batch_counts[batch_id] = dict.fromkeys(STATES, 0)
        for key in keys:
            pkg = self._packages[key]
            pkg.batches.append(batch_id)
            counts[pkg.state] += 1

    def _add_release(self, rel: Release) -> None:
        self.release_log.add(rel)
        self.files.want_release(files_by_sha(rel))

    def _index_file(self, pkg: Package) -> str | None:
        return self.files.index(pkg.key, (pkg.result or {}).get("sha256"))

    def _unindex_file(self, pkg: Package) -> None:
        self.files.unindex(pkg.key, (pkg.result or {}).get("sha256"))

    def _set_state(self, pkg: Package, state: str) -> None:
        for counts in (self._counts, *(self._batch_counts[b] for b in pkg.batches)):
            counts[pkg.state] -= 1
            counts[state] += 1
        pkg.state = state

    def _leave_delegation(self, pkg: Package) -> None:
        if pkg.state != DELEGATED:
            return
        assert pkg.drone is not None  # delegate() sets the drone with the state
        held = self._by_drone[pkg.drone]
        del held[pkg.key]
        if not held:
            del self._by_drone[pkg.drone]
        pkg.lease_deadline = None

    def _requeue_one(self, key: str, reason: str) -> bool:
        pkg = self._packages.get(key)
        if pkg is None or pkg.state != DELEGATED:
            return False
        self._leave_delegation(pkg)
        pkg.attempts = max(0, pkg.attempts - 1)
        pkg.error = reason
        self._set_state(pkg, NEEDED)
        self.graph.push_if_ready(pkg)
        return True

    def _unblock_one(self, key: str) -> bool:
        pkg = self._packages[key]
        if pkg.state != FAILED:
            return False
        pkg.attempts, pkg.failed_on = 0, []
        self._set_state(pkg, NEEDED)
        self.graph.push_if_ready(pkg)
        self._revive_dependants(key)
        return True

    def _fail_on_dependency(self, pkg: Package, dep: str) -> None:
        """`pkg` was submitted (or lost its file) after its dependency `dep` had failed."""
        pkg.error = records.dependency_failed(dep)
        self._set_state(pkg, FAILED)
        self._fail_dependants(pkg.key)

    def _fail_dependants(self, key: str) -> None:
        """A package that cannot be built takes down what waits for it, with the reason, so
        nothing sits needed forever behind a failure (and finalize can say why)."""
        for dependant in self.graph.waiting_on(key):
            pkg = self._packages[dependant]
            if pkg.state == NEEDED:
                pkg.error = records.dependency_failed(key)
                self._set_state(pkg, FAILED)
                self._fail_dependants(dependant)

    def _revive_dependants(self, key: str) -> None:
        """Undo `_fail_dependants` when `key` gets another chance (unblocked or built)."""
        for dependant in self.graph.waiting_on(key):
            pkg = self._packages[dependant]
            if pkg.state == FAILED and pkg.error == records.dependency_failed(key):
                pkg.error = None
                self._set_state(pkg, NEEDED)
                self.graph.push_if_ready(pkg)
                self._revive_dependants(dependant)

    def _strike(self, drone: str, ground_after: int) -> bool:
        streak = self._streak[drone] = self._streak.get(drone, 0) + 1
        if ground_after > 0 and streak >= ground_after and drone not in self._grounded:
            self._grounded.add(drone)
            log.warning("drone %s grounded after %d consecutive failures", drone, streak)
        return drone in self._grounded

    def _lease_over(self, key: str, now: float) -> bool:
        deadline = self._packages[key].lease_deadline
        return deadline is not None and deadline < now

    def _see(self, term: int) -> None:
        self._max_term = max(self._max_term, term)

    def _by_seq(self, keys: Iterable[str]) -> list[str]:
        return sorted(keys, key=lambda k: self._packages[k].seq)

    def _package_view(self, p: Package) -> dict:
        fields = ("key", "cpv", "repo", "state", "drone", "attempts", "error", "lease_deadline")
        view = {**{name: getattr(p, name) for name in fields}, "batches": list(p.batches)}
        sha = (p.result or {}).get("sha256")
        if isinstance(sha, str):
            view.update(sha256=sha, holders=self.holders(sha))
        return view

    def _batch_view(self, b: Batch) -> dict:
        return {"id": b.id, "client": b.client, "count": len(b.keys), "submitted_at": b.submitted_at,
                "counts": dict(self._batch_counts[b.id])}
