"""The build queue's dependency graph: which packages still wait for which, and which are ready.

A part of `BuildQueue` (queue.py), kept apart because it is the one piece with an algorithm of
its own: edges are fixed when a package first enters the queue, a forward edge that would close
a cycle is dropped (so the graph is acyclic and can never deadlock), and readiness is kept
incrementally (a count of unmet dependencies per package, and a heap of ready keys in
submission order) so dispatch never scans the queue. Plain data that pickles with the queue;
it shares the queue's package records and changes only its own indexes: state changes (a
package failing with its dependency) go back to the queue through the `fail` callable.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from swarmmesh.records import FAILED, NEEDED, RECEIVED, Package

#: What the queue does with a package whose dependency has already failed: fail it too.
Fail = Callable[[Package, str], None]


class DepGraph:
    """Unmet dependencies per package and the ready heap, over the queue's package records."""

    def __init__(self, packages: dict[str, Package], unmet: dict[str, int] | None = None,
                 rdeps: dict[str, list[str]] | None = None, ready: list[tuple[int, str]] | None = None,
                 heaped: set[str] | None = None) -> None:
        self.packages = packages  # the queue's own dict, shared
        self.unmet = unmet if unmet is not None else {}  # key -> dependencies not yet received (> 0)
        self.rdeps = rdeps if rdeps is not None else {}  # dependency -> dependants still waiting on it
        self.ready = ready if ready is not None else []  # heap of (seq, key); stale entries pruned lazily
        self.heaped = heaped if heaped is not None else set()  # keys with an entry in `ready`

    def unmet_of(self, key: str) -> int:
        return self.unmet.get(key, 0)

    def waiting_on(self, key: str) -> list[str]:
        """The dependants that still count `key` as unmet (a copy: callers change states)."""
        return list(self.rdeps.get(key, ()))

    def link(self, added: list[Package], deps: dict[str, list[str]], fail: Fail) -> None:
        """Attach dependency edges of new packages, dropping forward edges that close a cycle."""
        forward, packages = [], self.packages
        for pkg in added:
            for dep in dict.fromkeys(deps.get(pkg.key, ())):
                target = packages.get(dep)
                if target is None or target is pkg:
                    continue
                if target.seq < pkg.seq:
                    pkg.deps.append(dep)
                else:
                    forward.append((pkg, target))
        for pkg, target in forward:
            if not self._reaches(target.key, pkg.key):
                pkg.deps.append(target.key)
        for pkg in added:
            self.count_unmet(pkg, fail)
            self.push_if_ready(pkg)

    def _reaches(self, start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            key = stack.pop()
            if key == goal:
                return True
            if key not in seen:
                seen.add(key)
                stack.extend(self.packages[key].deps)
        return False

    def count_unmet(self, pkg: Package, fail: Fail) -> None:
        """Count what `pkg` still waits for; one of them already failed: `fail` it (if needed)."""
        unmet = [dep for dep in pkg.deps if self.packages[dep].state != RECEIVED]
        for dep in unmet:
            self.rdeps.setdefault(dep, []).append(pkg.key)
        if unmet:
            self.unmet[pkg.key] = len(unmet)
        failed = [dep for dep in unmet if self.packages[dep].state == FAILED]
        if failed and pkg.state == NEEDED:  # submitted after its dependency had already failed
            fail(pkg, failed[0])

    def forget_unmet(self, pkg: Package) -> None:
        """A package received while it still counted unmet dependencies (possible only after a
        `lose`) stops waiting for them."""
        if self.unmet.pop(pkg.key, None) is None:
            return
        for dep in pkg.deps:
            waiting = self.rdeps.get(dep)
            if waiting and pkg.key in waiting:
                waiting.remove(pkg.key)
                if not waiting:
                    del self.rdeps[dep]

    def block_dependants(self, key: str) -> None:
        """`key` is no longer received: every dependant not yet received waits for it again."""
        waiting = [p.key for p in self.packages.values() if key in p.deps and p.state != RECEIVED]
        for dependant in waiting:
            self.unmet[dependant] = self.unmet.get(dependant, 0) + 1
        if waiting:
            self.rdeps.setdefault(key, []).extend(waiting)

    def release_dependants(self, key: str) -> None:
        """`key` was received: what waited only for it becomes ready."""
        for dependant in self.rdeps.pop(key, ()):
            left = self.unmet[dependant] - 1
            if left:
                self.unmet[dependant] = left
            else:
                del self.unmet[dependant]
                self.push_if_ready(self.packages[dependant])

    def is_ready(self, key: str) -> bool:
        pkg = self.packages.get(key)
        return pkg is not None and pkg.state == NEEDED and key not in self.unmet

    def push_if_ready(self, pkg: Package) -> None:
        if pkg.key not in self.heaped and self.is_ready(pkg.key):
            heapq.heappush(self.ready, (pkg.seq, pkg.key))
            self.heaped.add(pkg.key)

    def prune(self) -> None:
        """Drop stale entries from the top of the ready heap so the next walk starts clean."""
        while self.ready and not self.is_ready(self.ready[0][1]):
            _, key = heapq.heappop(self.ready)
            self.heaped.discard(key)

    def dispatchable(self, limit: int, exclude: Iterable[str] = frozenset()) -> list[str]:
        """The next ready keys in seq order, walking the heap without mutating it.

        Walks the heap as a tree (a second, small heap holds the frontier), so the cost is
        O((limit + skipped) log) and a query never reorders replicated state.
        """
        heap = self.ready
        out: list[str] = []
        frontier = [(heap[0], 0)] if heap and limit > 0 else []
        while frontier and len(out) < limit:
            (_, key), i = heapq.heappop(frontier)
            if key not in exclude and self.is_ready(key):
                out.append(key)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return out
