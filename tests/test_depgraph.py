"""The dependency graph alone: edges, cycles dropped, readiness, failures handed back."""

from __future__ import annotations

import pickle

from swarmmesh.depgraph import DepGraph
from swarmmesh.queue import BuildQueue
from swarmmesh.records import FAILED, RECEIVED, Package


def _graph(*keys: str) -> tuple[DepGraph, list[Package]]:
    packages = {k: Package(k, f"cat/{k}-1", None, seq) for seq, k in enumerate(keys, 1)}
    return DepGraph(packages), list(packages.values())


def test_a_forward_edge_that_closes_a_cycle_is_dropped_and_ready_keys_come_in_seq_order() -> None:
    graph, added = _graph("a", "b", "c")
    graph.link(added, {"a": ["b"], "b": ["a"], "c": ["a"]}, lambda p, d: None)
    # b -> a points back (a came first) and stays; a -> b points forward and would close a cycle
    assert [p.deps for p in added] == [[], ["a"], ["a"]]
    assert graph.dispatchable(10) == ["a"] and graph.unmet_of("b") == 1 and graph.unmet_of("c") == 1
    assert graph.dispatchable(10) == ["a"]  # a query never changes the heap


def test_a_received_dependency_releases_what_waited_only_for_it() -> None:
    graph, (a, b, c) = _graph("a", "b", "c")
    graph.link([a, b, c], {"c": ["a", "b"]}, lambda p, d: None)
    a.state = RECEIVED
    graph.release_dependants("a")
    assert graph.unmet_of("c") == 1 and not graph.is_ready("c")
    b.state = RECEIVED
    graph.release_dependants("b")
    graph.prune()
    assert graph.dispatchable(10) == ["c"] and graph.waiting_on("a") == []


def test_a_package_whose_dependency_already_failed_is_handed_to_fail() -> None:
    graph, (a, b) = _graph("a", "b")
    a.state = FAILED
    failed: list[tuple[str, str]] = []
    graph.link([b], {"b": ["a"]}, lambda p, d: failed.append((p.key, d)))
    assert failed == [("b", "a")] and graph.waiting_on("a") == ["b"]


def test_the_graph_pickles_with_the_queue_and_shares_its_packages() -> None:
    q = BuildQueue()
    q.submit("b1", "c", [("a", "cat/a-1", None), ("b", "cat/b-1", None)], {"b": ["a"]}, 0.0)
    restored = pickle.loads(pickle.dumps(q))
    assert restored.graph.packages is restored._packages
    assert restored.dispatchable(10) == ["a"] and restored.fingerprint() == q.fingerprint()
