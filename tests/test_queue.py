"""Tests for the pure build-queue state machine (swarmmesh.queue)."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from swarmmesh import commands, filereg, queue
from swarmmesh.queue import DELEGATED, FAILED, NEEDED, RECEIVED, STATES, BuildQueue

RESULT = {"sha256": "ab" * 32, "size": 4096, "path": "cat/pkg-1.0.gpkg.tar"}


def items(*keys: str) -> list[tuple[str, str, str | None]]:
    return [(key, key, None) for key in keys]


@pytest.fixture
def q() -> BuildQueue:
    return BuildQueue()


def delegate(q: BuildQueue, key: str, drone: str = "d1", term: int | None = None, now: float = 0.0) -> dict:
    """Delegate in the current term (or ``term``) with a one-minute lease."""
    return q.delegate(key, drone, max(q.max_term, 1) if term is None else term, now, now + 60.0)


def drain(q: BuildQueue, drone: str = "d1") -> list[str]:
    """Build everything dispatchable, one at a time, and return the build order."""
    order = []
    while keys := q.dispatchable(1):
        assert delegate(q, keys[0], drone)["ok"]
        assert q.complete(keys[0], drone, 1, RESULT, 1.0)["ok"]
        order.append(keys[0])
    return order


# ---------------------------------------------------------------- submit


def test_submit_counts_and_dispatch_order_is_submission_order(q):
    result = q.submit("b1", "alice", items("c", "a", "b"), None, 5.0)
    assert result == {"ok": True, "code": "ok", "batch": "b1", "count": 3, "new": 3, "duplicate": False}
    assert q.counts() == {NEEDED: 3, DELEGATED: 0, RECEIVED: 0, FAILED: 0, "total": 3}
    assert q.dispatchable(10) == ["c", "a", "b"]
    assert q.dispatchable(2) == ["c", "a"]
    assert q.dispatchable(10, exclude={"a"}) == ["c", "b"]
    assert q.dispatchable(0) == []


def test_submit_is_idempotent_on_batch_id(q):
    first = q.submit("b1", "alice", items("a", "b"), None, 1.0)
    before = q.fingerprint()
    again = q.submit("b1", "alice", items("a", "b", "c"), None, 2.0)
    assert again["ok"] and again["duplicate"] and again["code"] == "duplicate"
    assert (again["count"], again["new"]) == (first["count"], first["new"])
    assert q.fingerprint() == before
    assert q.get("c") is None


def test_same_cpv_in_two_batches_is_built_once(q):
    q.submit("b1", "alice", items("a", "b"), None, 1.0)
    second = q.submit("b2", "bob", items("b", "c"), None, 2.0)
    assert (second["count"], second["new"]) == (2, 1)
    assert q.counts()["total"] == 3
    assert q.get("b").batches == ["b1", "b2"]
    assert drain(q) == ["a", "b", "c"]
    assert q.batch_progress("b2")["counts"][RECEIVED] == 2
    assert q.batch_progress("nope") is None


def test_get_returns_a_copy(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    q.get("a").batches.append("evil")
    assert q.get("a").batches == ["b1"]


def test_peek_is_the_live_record(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    live = q.peek("a")
    assert live == q.get("a") and q.peek("zz") is None
    q.delegate("a", "d1", 1, 2.0, 12.0)
    assert live.drone == "d1"  # no copy: it follows the queue


# ----------------------------------------------------------- dependencies


def test_dependant_waits_until_its_dependency_is_received(q):
    q.submit("b1", "alice", items("lib", "app"), {"app": ["lib"]}, 1.0)
    assert q.dispatchable(10) == ["lib"]
    assert q.delegate("app", "d1", 1, 1.0, 9.0)["code"] == "waiting"
    assert delegate(q, "lib")["ok"]
    assert q.dispatchable(10) == []
    q.complete("lib", "d1", 1, RESULT, 2.0)
    assert q.dispatchable(10) == ["app"]


def test_dependency_on_unknown_or_received_key_is_ignored_or_met(q):
    q.submit("b1", "alice", items("lib"), None, 1.0)
    drain(q)
    q.submit("b2", "alice", items("app"), {"app": ["lib", "not/queued-1", "app"]}, 2.0)
    assert q.get("app").deps == ["lib"]
    assert q.dispatchable(10) == ["app"]


def test_dependencies_of_an_already_queued_package_are_fixed(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    q.submit("b2", "alice", items("b", "a"), {"a": ["b"]}, 2.0)
    assert q.get("a").deps == []
    assert q.dispatchable(10) == ["a", "b"]


def test_dependants_out_of_submission_order_wait_for_later_dependencies(q):
    q.submit("b1", "alice", items("app", "lib"), {"app": ["lib"]}, 1.0)
    assert drain(q) == ["lib", "app"]


@pytest.mark.parametrize(
    "deps",
    [
        {"a": ["b"], "b": ["a"]},
        {"a": ["c"], "b": ["a"], "c": ["b"]},
        {"a": ["b", "c"], "b": ["c", "a"], "c": ["a", "b"]},
    ],
)
def test_dependency_cycle_does_not_deadlock(q, deps):
    q.submit("b1", "alice", items("a", "b", "c"), deps, 1.0)
    assert q.dispatchable(10)[0] == "a"
    assert sorted(drain(q)) == ["a", "b", "c"]
    assert q.counts()[RECEIVED] == 3


# --------------------------------------------------------------- delegate


def test_delegate_records_the_lease_and_counts_an_attempt(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    assert q.delegate("a", "d1", 3, 10.0, 70.0) == {"ok": True, "code": "ok", "attempts": 1}
    pkg = q.get("a")
    assert (pkg.state, pkg.drone, pkg.term, pkg.delegated_at, pkg.lease_deadline) == (
        DELEGATED,
        "d1",
        3,
        10.0,
        70.0,
    )
    assert q.delegated_to("d1") == ["a"]
    assert q.counts()[DELEGATED] == 1


def test_delegate_refusals(q):
    q.submit("b1", "alice", items("a", "b"), {"b": ["a"]}, 1.0)
    q.note_leader(5, "o1")
    assert q.delegate("a", "d1", 4, 1.0, 9.0)["code"] == "stale"
    assert q.delegate("zzz", "d1", 5, 1.0, 9.0)["code"] == "unknown"
    assert q.delegate("b", "d1", 5, 1.0, 9.0)["code"] == "waiting"
    assert q.delegate("a", "d1", 5, 1.0, 9.0)["ok"]
    refused = q.delegate("a", "d2", 5, 1.0, 9.0)
    assert (refused["ok"], refused["code"], refused["state"]) == (False, "not_needed", DELEGATED)
    assert q.get("a").attempts == 1


def test_delegate_refused_to_a_grounded_drone(q):
    q.submit("b1", "alice", items("a", "b"), None, 1.0)
    delegate(q, "a", "bad")
    assert q.fail("a", "bad", 1, "boom", 2.0, 3, 1)["grounded"]
    assert q.delegate("b", "bad", 1, 3.0, 9.0)["code"] == "grounded"
    assert q.delegate("b", "good", 1, 3.0, 9.0)["ok"]


# ---------------------------------------------------------- fail, retries


def test_fail_retries_until_max_attempts_then_fails(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    delegate(q, "a", "d1")
    first = q.fail("a", "d1", 1, "compile error", 2.0, 2, 99)
    assert (first["ok"], first["state"], first["grounded"]) == (True, NEEDED, False)
    retry = q.get("a")
    assert (retry.attempts, retry.failed_on, retry.error) == (1, ["d1"], "compile error")
    assert q.dispatchable(1) == ["a"]
    delegate(q, "a", "d2")
    assert q.fail("a", "d2", 1, "again", 3.0, 2, 99)["state"] == FAILED
    final = q.get("a")
    assert (final.attempts, final.failed_on, final.error) == (2, ["d1", "d2"], "again")
    assert q.dispatchable(1) == []
    assert q.counts()[FAILED] == 1


def test_fail_refusals(q):
    q.submit("b1", "alice", items("a"), None, 1.0)
    assert q.fail("zzz", "d1", 1, "x", 1.0, 3, 3)["code"] == "unknown"
    assert q.fail("a", "d1", 1, "x", 1.0, 3, 3)["code"] == "not_delegated"
    delegate(q, "a", "d1")
    stale = q.fail("a", "d2", 1, "x", 1.0, 3, 3)
    assert (stale["ok"], stale["code"]) == (False, "stale")
    assert q.get("a").state == DELEGATED
    assert q.drone_streak("d2") == 0


def test_grounding_after_consecutive_failures_and_unblock(q):
    q.submit("b1", "alice", items("a", "b", "c", "d"), None, 1.0)
    for key in ("a", "b"):
        delegate(q, key, "d1")
        assert not q.fail(key, "d1", 1, "x", 2.0, 3, 3)["grounded"]
    delegate(q, "c", "d1")
    q.complete("c", "d1", 1, RESULT, 3.0)
    assert q.drone_streak("d1") == 0
    for key in ("a", "b", "d"):
        delegate(q, key, "d1")
        grounded = q.fail(key, "d1", 1, "x", 4.0, 3, 3)["grounded"]
    assert grounded and q.grounded() == ["d1"]
    assert q.unblock(["d1"], 5.0)["ungrounded"] == ["d1"]
    assert q.grounded() == [] and q.drone_streak("d1") == 0


def test_unblock_everything_resets_failed_packages_and_drones(q):
    q.submit("b1", "alice", items("a", "b"), None, 1.0)
    delegate(q, "a", "d1")
    q.fail("a", "d1", 1, "x", 2.0, 1, 1)
    result = q.unblock(None, 3.0)
    assert (result["unblocked"], result["ungrounded"], result["unknown"]) == (["a"], ["d1"], [])
    pkg = q.get("a")
    assert (pkg.state, pkg.attempts, pkg.failed_on) == (NEEDED, 0, [])
    assert q.dispatchable(10) == ["a", "b"]


def test_unblock_named_keys_reports_unknown_ones(q):
    q.submit("b1", "alice", items("a", "b"), None, 1.0)
    for key in ("a", "b"):
        delegate(q, key, "d1")
        q.fail(key, "d1", 1, "x", 2.0, 1, 99)
    result = q.unblock(["b", "ghost"], 3.0)
    assert (result["unblocked"], result["unknown"]) == (["b"], ["ghost"])
    assert q.get("a").state == FAILED and q.get("b").state == NEEDED


# ------------------------------------------------------- leases, requeue


def test_lease_expiry_with_an_injected_clock_and_renew(q):
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    q.delegate("a", "d1", 1, 0.0, 10.0)
    q.delegate("b", "d2", 1, 0.0, 10.0)
    assert q.expire(9.0)["requeued"] == []
    assert q.renew("d1", 1, 20.0)["renewed"] == ["a"]
    assert q.renew("d1", 1, 12.0)["renewed"] == ["a"]
    assert q.get("a").lease_deadline == 20.0
    assert q.expire(15.0)["requeued"] == ["b"]
    pkg = q.get("b")
    assert (pkg.state, pkg.attempts, pkg.error, pkg.lease_deadline) == (NEEDED, 0, "lease expired", None)
    assert q.expire(21.0)["requeued"] == ["a"]
    assert q.counts()[NEEDED] == 2


def test_renew_only_named_keys_and_refuses_stale_terms(q):
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    q.delegate("a", "d1", 2, 0.0, 10.0)
    q.delegate("b", "d1", 2, 0.0, 10.0)
    assert q.renew("d1", 2, 30.0, ["b", "ghost"])["renewed"] == ["b"]
    assert q.get("a").lease_deadline == 10.0
    assert q.renew("d1", 1, 50.0)["code"] == "stale"
    assert q.renew("nobody", 2, 50.0)["renewed"] == []


def test_requeue_refunds_the_attempt_and_skips_other_states(q):
    q.submit("b1", "alice", items("a", "b", "c"), None, 0.0)
    delegate(q, "a")
    delegate(q, "c")
    result = q.requeue(["c", "b", "a", "ghost"], "balance", 1.0)
    assert result["requeued"] == ["c", "a"]
    assert [q.get(k).attempts for k in "abc"] == [0, 0, 0]
    assert q.get("a").error == "balance" and q.get("b").error is None
    assert q.dispatchable(10) == ["a", "b", "c"]


def test_release_drone_requeues_its_packages_in_seq_order(q):
    q.submit("b1", "alice", items("a", "b", "c"), None, 0.0)
    for key, drone in (("c", "d1"), ("a", "d1"), ("b", "d2")):
        delegate(q, key, drone)
    assert q.delegated_to("d1") == ["a", "c"]
    assert q.release_drone("d1", "drone gone", 1.0)["requeued"] == ["a", "c"]
    assert q.delegated_to("d1") == [] and q.delegated_to("d2") == ["b"]


# --------------------------------------------------------------- complete


def test_complete_stores_the_result_and_resets_the_error(q):
    q.submit("b1", "alice", items("a"), None, 0.0)
    delegate(q, "a")
    q.fail("a", "d1", 1, "x", 1.0, 3, 3)
    delegate(q, "a", "d2")
    assert q.complete("a", "d2", 1, RESULT, 2.0) == {"ok": True, "code": "ok", "state": RECEIVED}
    pkg = q.get("a")
    assert (pkg.state, pkg.result, pkg.error, pkg.attempts) == (RECEIVED, RESULT, None, 2)
    assert q.delegated_to("d2") == []


def test_metadata_of_a_result_stays_out_of_the_replicated_state(q, monkeypatch):
    monkeypatch.setattr(filereg, "FRESH_META_LIMIT", 2)
    q.submit("b1", "alice", items("a", "b", "c"), None, 0.0)
    plain = pickle.loads(pickle.dumps(q))
    metas = {}
    for key in ("a", "b", "c"):
        delegate(q, key)
        delegate(plain, key)
        result = {**RESULT, "sha256": key * 64}
        metas[key] = {"CATEGORY": "cat", "PF": f"{key}-1"}
        q.complete(key, "d1", 1, {**result, "metadata": metas[key]}, 2.0)
        plain.complete(key, "d1", 1, result, 2.0)
    assert q.get("c").result == {**RESULT, "sha256": "c" * 64}  # stored without it
    assert q.fingerprint() == plain.fingerprint()  # so nodes that lack it still agree
    assert [q.fresh_metadata(k * 64) for k in "abc"] == [None, metas["b"], metas["c"]]  # the newest only
    assert pickle.loads(pickle.dumps(q)).fresh_metadata("c" * 64) is None  # local: not in snapshots


def test_complete_from_another_drone_is_stale(q):
    q.submit("b1", "alice", items("a"), None, 0.0)
    delegate(q, "a", "d1")
    assert q.complete("a", "d2", 1, RESULT, 1.0) == {"ok": False, "code": "stale", "drone": "d1"}
    assert q.get("a").state == DELEGATED


def test_complete_after_the_lease_lapsed_is_accepted(q):
    q.submit("b1", "alice", items("a"), None, 0.0)
    q.delegate("a", "d1", 1, 0.0, 5.0)
    q.expire(6.0)
    assert q.complete("a", "d1", 1, RESULT, 7.0)["ok"]
    assert q.get("a").state == RECEIVED and q.get("a").attempts == 0
    assert q.dispatchable(10) == []


def test_complete_with_an_older_term_is_accepted_from_the_owner(q):
    q.submit("b1", "alice", items("a"), None, 0.0)
    delegate(q, "a", "d1", term=1)
    q.note_leader(2, "o2")
    assert q.complete("a", "d1", 1, RESULT, 1.0)["ok"]


def test_complete_duplicate_unknown_and_failed(q):
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    assert q.complete("zzz", "d1", 1, RESULT, 1.0)["code"] == "unknown"
    drain(q)
    before = q.fingerprint()
    dup = q.complete("a", "d9", 1, {"sha256": "other"}, 2.0)
    assert (dup["ok"], dup["code"]) == (True, "duplicate")
    assert q.fingerprint() == before
    q.submit("b2", "alice", items("c"), None, 0.0)
    delegate(q, "c")
    q.fail("c", "d1", 1, "x", 1.0, 1, 9)
    assert q.complete("c", "d1", 1, RESULT, 3.0)["ok"]
    assert q.get("c").state == RECEIVED


# ------------------------------------------------------- finalize, reset


def test_finalize_refused_while_work_is_pending_unless_forced(q):
    q.submit("b1", "alice", items("a", "b", "c"), None, 0.0)
    delegate(q, "b")
    q.complete("b", "d1", 1, RESULT, 1.0)
    delegate(q, "c")
    assert q.finalize("r1", 2.0, False) == {"ok": False, "code": "refused", "needed": 1, "delegated": 1}
    assert q.releases == []
    assert q.finalize("r1", 2.0, True) == {
        "ok": True,
        "code": "ok",
        "release": "r1",
        "count": 1,
        "duplicate": False,
    }
    assert q.finalize("r1", 3.0, True)["duplicate"]
    assert [(r.id, r.keys, r.forced) for r in q.releases] == [("r1", ["b"], True)]


def test_finalize_lists_received_keys_in_seq_order(q):
    q.submit("b1", "alice", items("x", "y"), {"x": ["y"]}, 0.0)
    drain(q)
    assert q.finalize("r1", 1.0, False)["count"] == 2
    assert q.releases[0].keys == ["x", "y"]
    assert not q.releases[0].forced


def test_reset_forgets_the_queue_but_keeps_releases_and_terms(q):
    q.note_leader(3, "o1")
    q.submit("b1", "alice", items("a"), None, 0.0)
    drain(q)
    q.finalize("r1", 1.0, False)
    assert q.reset()["ok"]
    assert q.counts()["total"] == 0 and q.batch_progress("b1") is None
    assert [r.id for r in q.releases] == ["r1"] and q.max_term == 3
    assert q.delegate("a", "d1", 2, 0.0, 1.0)["code"] == "stale"


# ------------------------------------------------- artifacts, releases


def result_for(key: str, node: str = "o1") -> dict:
    return {"sha256": f"sha-{key}", "size": 4096, "md5": "m", "sha1": "s", "path": f"cat/{key}.gpkg.tar",
            "build_id": 1, "holders": [node], "signer": "F1NGERPR1NT"}


def test_complete_registers_holders_and_hold_unhold_track_them(q):
    q.submit("b1", "alice", items("a"), None, 0.0)
    delegate(q, "a")
    q.complete("a", "d1", 1, result_for("a"), 1.0)
    assert q.holders("sha-a") == ["o1"]
    assert q.hold("sha-a", "o2")["holders"] == ["o1", "o2"]
    assert q.hold("sha-a", "o2")["duplicate"]
    assert q.hold("sha-unknown", "o2")["code"] == "unknown" and q.holders("sha-unknown") == []
    assert q.unhold("sha-a", "o1")["holders"] == ["o2"]
    assert q.unhold("sha-a", "o1")["duplicate"]
    assert q.artifacts() == {"sha-a": {"key": "a", "size": 4096, "holders": ["o2"]}}
    assert q.snapshot()["packages"][0]["holders"] == ["o2"]


def test_finalize_records_files_batches_and_increasing_stamps(q):
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    delegate(q, "a")
    q.complete("a", "d1", 1, result_for("a"), 1.0)
    q.finalize("r1", 100.9, True)
    rel = q.newest_release()
    assert rel.files == [{"key": "a", "cpv": "a", **{k: result_for("a")[k] for k in
                         ("sha256", "size", "md5", "sha1", "path", "build_id", "signer")}}]  # who signed it too
    assert (rel.stamp, rel.batches) == (100, [])
    delegate(q, "b")
    q.complete("b", "d1", 1, result_for("b"), 2.0)
    assert q.unreleased_batches() == ["b1"]
    q.finalize("r2", 100.2, False)  # a clock that went backwards still gets a newer stamp
    assert q.newest_release().stamp == 101 and q.newest_release().batches == ["b1"]
    assert q.unreleased_batches() == []


def test_rollback_republishes_an_old_release_with_a_new_stamp(q):
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    for key in ("a", "b"):
        delegate(q, key)
        q.complete(key, "d1", 1, result_for(key), 1.0)
        q.finalize(f"r-{key}", 50.0, True)
    assert q.rollback("nope", "r3", 60.0)["code"] == "unknown"
    done = q.rollback("r-a", "r3", 60.0)
    assert (done["ok"], done["source"], done["count"]) == (True, "r-a", 1)
    assert q.rollback("r-a", "r3", 61.0)["duplicate"]
    rel = q.newest_release()
    assert (rel.id, rel.keys, rel.source, rel.stamp) == ("r3", ["a"], "r-a", 60)
    assert [v["stamp"] for v in q.release_views()] == [50, 51, 60]
    q.reset()  # releases keep their files, and the files their holders
    assert q.artifacts() == {"sha-a": {"key": None, "size": 4096, "holders": ["o1"]}}


def test_lose_requeues_the_package_and_blocks_its_dependants(q):
    q.submit("b1", "alice", items("a", "b", "c"), {"b": ["a"], "c": ["a"]}, 0.0)
    delegate(q, "a")
    q.complete("a", "d1", 1, result_for("a"), 1.0)
    delegate(q, "b")
    assert q.lose("a", "sha-other", "gone", 2.0)["code"] == "not_received"
    assert q.lose("zz", "sha-a", "gone", 2.0)["code"] == "unknown"
    assert q.lose("a", "sha-a", "artifact lost", 2.0) == {"ok": True, "code": "ok", "state": NEEDED}
    pkg = q.get("a")
    assert (pkg.state, pkg.result, pkg.error, pkg.attempts) == (NEEDED, None, "artifact lost", 0)
    assert q.dispatchable(10) == ["a"]  # c waits for a again; b keeps building
    q.complete("b", "d1", 1, result_for("b"), 3.0)
    assert q.dispatchable(10) == ["a"]
    delegate(q, "a", "d2")
    assert q.complete("a", "d2", 1, result_for("a", "o2"), 4.0)["ok"]
    assert q.dispatchable(10) == ["c"]
    assert q.holders("sha-a") == ["o1", "o2"]


def receive_all(q: BuildQueue, *keys: str) -> None:
    q.submit(f"b-{keys[0]}", "alice", items(*keys), None, 0.0)
    for key in keys:
        delegate(q, key)
        q.complete(key, "d1", 1, result_for(key), 1.0)


def test_change_feed_lists_each_changed_file_once_with_its_record(q):
    start = q.files_version
    receive_all(q, "a", "b")
    q.hold("sha-a", "o2")
    pos, changed = q.changed_files(start)
    assert changed == ["sha-a", "sha-b"] and pos == q.files_version
    assert q.changed_files(pos) == (pos, [])
    q.hold("sha-a", "o2")  # a duplicate changes nothing
    q.unhold("sha-b", "o1")
    pos, changed = q.changed_files(pos)
    assert changed == ["sha-b"]
    assert {sha: q.artifact(sha) for sha in ("sha-a", "sha-b")} == q.artifacts()
    assert q.artifact("sha-b") == {"key": "b", "size": 4096, "holders": []} and q.artifact("sha-x") is None
    assert q.received("sha-a") == [q.received()[0]] and q.received("sha-x") == []
    fields = (*queue.FILE_FIELDS, "signer")
    assert q.received()[0] == (1, {"key": "a", "cpv": "a", **{k: result_for("a")[k] for k in fields}})
    q.lose("a", "sha-a", "gone", 2.0)
    assert q.changed_files(pos)[1] == ["sha-a"] and q.artifact("sha-a") is None
    assert [f["key"] for _, f in q.received()] == ["b"]


def test_a_release_logs_only_the_files_it_alone_keeps_wanted(q):
    receive_all(q, "a", "b")
    pos = q.files_version
    q.finalize("r1", 10.0, True)  # every file of it is wanted already: no change
    assert q.changed_files(pos) == (pos, []) and q.newest_release_id() == "r1"
    q.lose("a", "sha-a", "gone", 2.0)
    pos = q.files_version
    assert q.artifact("sha-a") == {"key": None, "size": 4096, "holders": ["o1"]}  # the release still needs it
    q.submit("b2", "alice", items("c"), None, 3.0)
    delegate(q, "c")
    q.complete("c", "d1", 1, result_for("c"), 4.0)
    q.finalize("r2", 11.0, True)  # b and c: a is wanted no more
    assert q.changed_files(pos)[1] == ["sha-c", "sha-a"] and q.artifact("sha-a") is None
    pos = q.files_version
    q.rollback("r1", "r3", 12.0)
    assert q.changed_files(pos)[1] == ["sha-a"] and q.artifact("sha-a")["key"] is None


def test_change_feed_says_rescan_after_reset_restore_or_when_too_old(q, monkeypatch):
    receive_all(q, "a")
    before_reset = q.files_version
    q.reset()
    assert q.changed_files(before_reset)[1] is None
    assert q.changed_files(q.files_version) == (q.files_version, [])
    receive_all(q, "b")
    behind, now = q.files_version - 1, q.files_version
    copy = pickle.loads(pickle.dumps(q))
    assert copy.changed_files(behind)[1] is None  # the restored feed starts empty
    assert copy.changed_files(now) == (now, [])  # equal positions: nothing changed
    assert copy.artifacts() == q.artifacts() and copy.artifact("sha-b") == q.artifact("sha-b")
    assert q.changed_files(now + 1)[1] is None and q.changed_files(-1)[1] is None
    monkeypatch.setattr(filereg, "FEED_LIMIT", 2)
    for _ in range(3):
        q.hold("sha-b", "o2")
        q.unhold("sha-b", "o2")
    assert q.changed_files(now)[1] is None
    assert q.changed_files(q.files_version - 2)[1] == ["sha-b"]


# ------------------------------------------------------------- leaders


def test_note_leader_detects_two_leaders_in_one_term(q):
    assert q.note_leader(1, "o1")["ok"]
    assert q.note_leader(1, "o1")["ok"]
    assert q.note_leader(2, "o2")["ok"] and q.violations == []
    clash = q.note_leader(2, "o3")
    assert (clash["ok"], clash["code"], clash["leader"]) == (False, "violation", "o2")
    assert len(q.violations) == 1 and "o3" in q.violations[0]
    assert q.max_term == 2


# ---------------------------------------------------- views, persistence


def test_snapshot_is_json_ready(q):
    q.note_leader(1, "o1")
    q.submit("b1", "alice", items("a", "b"), None, 0.0)
    delegate(q, "a")
    snap = json.loads(json.dumps(q.snapshot()))
    assert snap["counts"] == q.counts()
    assert [p["key"] for p in snap["packages"]] == ["a", "b"]
    assert snap["packages"][0]["state"] == DELEGATED and snap["packages"][0]["drone"] == "d1"
    assert snap["batches"][0]["counts"][DELEGATED] == 1
    assert snap["terms"] == {"1": "o1"}
    assert len(q.snapshot(limit=1)["packages"]) == 1


def test_pickled_queue_keeps_working(q):
    q.submit("b1", "alice", items("a", "b", "c"), {"c": ["a"]}, 0.0)
    delegate(q, "a")
    copy = pickle.loads(pickle.dumps(q))
    assert copy.fingerprint() == q.fingerprint()
    copy.complete("a", "d1", 1, RESULT, 1.0)
    assert copy.dispatchable(10) == ["b", "c"]
    assert q.dispatchable(10) == ["b"]


# ------------------------------------------------------ property testing

KEYS = ["a", "b", "c", "d", "e"]
DRONES = ["d1", "d2", "d3"]
MAX_ATTEMPTS, GROUND_AFTER = 2, 2  # small, so histories reach the limits

keys_st = st.sampled_from(KEYS)
drones_st = st.sampled_from(DRONES)
terms_st = st.integers(0, 4)
maybe_term_st = st.none() | terms_st  # None: the current term, as a live leader would send
deps_st = st.dictionaries(keys_st, st.lists(keys_st, max_size=3), max_size=4)


class QueueMachine(RuleBasedStateMachine):
    """Random command sequences; every step must keep the queue's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.q = BuildQueue()
        self.log: list[tuple[str, tuple]] = []
        self.now = 0.0
        self.seen, self.files, self.received = -1, {}, {}  # what a follower of the change feed knows

    def apply(self, name: str, *args: object) -> dict:
        self.log.append((name, args))
        result = self.q.apply(commands.decode(name, args))  # as every node applies a log entry
        assert isinstance(result["ok"], bool) and isinstance(result["code"], str)
        return result

    def owned(self, pick: int) -> tuple[str, str] | None:
        """A delegated key and its drone, so completions and failures often hit a real job."""
        running = [(k, d) for d in DRONES for k in self.q.delegated_to(d)]
        return running[pick % len(running)] if running else None

    def term(self, term: int | None) -> int:
        return self.q.max_term if term is None else term

    @initialize(keys=st.permutations(KEYS), deps=deps_st)
    def first_batch(self, keys, deps):
        self.apply("submit", "b0", "client", items(*keys), deps, self.now)

    @rule(batch=st.sampled_from(["b1", "b2", "b3"]), keys=st.lists(keys_st, max_size=4), deps=deps_st)
    def submit(self, batch, keys, deps):
        self.apply("submit", batch, "client", items(*keys), deps, self.now)

    @rule(key=keys_st, drone=drones_st, term=maybe_term_st, lease=st.floats(0, 20))
    def delegate(self, key, drone, term, lease):
        grounded = drone in self.q.grounded()
        result = self.apply("delegate", key, drone, self.term(term), self.now, self.now + lease)
        assert not (grounded and result["ok"]), "a grounded drone got a job"

    @rule(drone=drones_st, n=st.integers(1, 3), lease=st.floats(0, 20))
    def delegate_next(self, drone, n, lease):
        grounded = drone in self.q.grounded()
        for key in self.q.dispatchable(n):
            result = self.apply("delegate", key, drone, self.q.max_term, self.now, self.now + lease)
            assert result["ok"] != grounded, result

    @rule(drone=drones_st, term=maybe_term_st, lease=st.floats(0, 20), keys=st.none() | st.lists(keys_st))
    def renew(self, drone, term, lease, keys):
        before = {key: self.q.get(key).lease_deadline for key in self.q.delegated_to(drone)}
        self.apply("renew", drone, self.term(term), self.now + lease, keys)
        assert all(self.q.get(key).lease_deadline >= deadline for key, deadline in before.items())

    @rule(key=keys_st, drone=drones_st, term=terms_st)
    def complete(self, key, drone, term):
        self.apply("complete", key, drone, term, {"sha256": key}, self.now)

    @rule(pick=st.integers(0, 9), term=maybe_term_st)
    def complete_running(self, pick, term):
        if job := self.owned(pick):
            self.apply("complete", *job, self.term(term), {"sha256": job[0]}, self.now)

    @rule(key=keys_st, drone=drones_st, term=terms_st)
    def fail(self, key, drone, term):
        self.apply("fail", key, drone, term, "boom", self.now, MAX_ATTEMPTS, GROUND_AFTER)

    @rule(pick=st.integers(0, 9), term=maybe_term_st)
    def fail_running(self, pick, term):
        if job := self.owned(pick):
            self.apply("fail", *job, self.term(term), "boom", self.now, MAX_ATTEMPTS, GROUND_AFTER)

    @rule(keys=st.lists(keys_st, max_size=3))
    def requeue(self, keys):
        self.apply("requeue", keys, "balance", self.now)

    @rule(step=st.floats(0, 10))
    def expire(self, step):
        self.now += step
        self.apply("expire", self.now)

    @rule(drone=drones_st)
    def release_drone(self, drone):
        self.apply("release_drone", drone, "gone", self.now)

    @rule(keys=st.none() | st.lists(st.sampled_from(KEYS + DRONES + ["ghost"]), max_size=3))
    def unblock(self, keys):
        self.apply("unblock", keys, self.now)

    @rule(release=st.sampled_from(["r1", "r2", "r3"]), force=st.booleans())
    def finalize(self, release, force):
        self.apply("finalize", release, self.now, force)

    @rule(source=st.sampled_from(["r1", "r2", "r3"]), release=st.sampled_from(["r4", "r5"]))
    def rollback(self, source, release):
        self.apply("rollback", source, release, self.now)

    @rule(key=keys_st, node=st.sampled_from(["o1", "o2"]), drop=st.booleans())
    def hold(self, key, node, drop):
        self.apply("unhold" if drop else "hold", key, node)

    @rule(key=keys_st, pick=st.booleans())
    def lose(self, key, pick):
        self.apply("lose", key, key if pick else "other", "lost", self.now)

    @rule(dice=st.integers(0, 15))
    def reset(self, dice):
        if dice == 0:  # rare, or it would wipe most of the interesting histories
            self.apply("reset")

    @rule(term=terms_st, leader=st.sampled_from(["o1", "o2"]))
    def note_leader(self, term, leader):
        self.apply("note_leader", term, leader)

    def packages(self) -> dict:
        return {key: pkg for key in KEYS if (pkg := self.q.get(key)) is not None}

    @invariant()
    def states_and_counts_agree(self):
        pkgs = self.packages()
        recount = {state: sum(p.state == state for p in pkgs.values()) for state in STATES}
        assert self.q.counts() == {**recount, "total": len(pkgs)}
        assert sum(recount.values()) == len(pkgs)
        for pkg in pkgs.values():
            assert 0 <= pkg.attempts <= MAX_ATTEMPTS
            assert (pkg.lease_deadline is not None) == (pkg.state == DELEGATED)
            assert (pkg.result is not None) == (pkg.state == RECEIVED)
            assert pkg.error is None or pkg.state != RECEIVED

    @invariant()
    def batch_progress_matches_a_recount(self):
        recount: dict[str, dict[str, int]] = {}
        for pkg in self.packages().values():
            for batch in pkg.batches:
                recount.setdefault(batch, dict.fromkeys(STATES, 0))[pkg.state] += 1
        for batch in ["b0", "b1", "b2", "b3"]:
            progress = self.q.batch_progress(batch)
            if progress is None:
                assert batch not in recount
            else:
                assert progress["counts"] == recount.get(batch, dict.fromkeys(STATES, 0))

    @invariant()
    def delegations_are_indexed_by_drone(self):
        pkgs = self.packages()
        for drone in DRONES:
            mine = [k for k, p in pkgs.items() if p.state == DELEGATED and p.drone == drone]
            assert self.q.delegated_to(drone) == sorted(mine, key=lambda k: pkgs[k].seq)

    @invariant()
    def dispatchable_matches_brute_force(self):
        pkgs = self.packages()
        ready = sorted(
            (p.seq, k)
            for k, p in pkgs.items()
            if p.state == NEEDED and all(pkgs[d].state == RECEIVED for d in p.deps)
        )
        expected = [k for _, k in ready]
        assert self.q.dispatchable(100) == expected
        assert self.q.dispatchable(2, exclude=set(expected[:1])) == expected[1:3]

    @invariant()
    def dependency_graph_is_acyclic(self):
        pkgs, done = self.packages(), set()
        for start in pkgs:
            path, stack = set(), [(start, iter(pkgs[start].deps))]
            path.add(start)
            while stack:
                key, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    path.discard(key)
                    done.add(key)
                elif child not in done:
                    assert child not in path, f"cycle through {child}"
                    path.add(child)
                    stack.append((child, iter(pkgs[child].deps)))

    @invariant()
    def releases_have_increasing_stamps_and_files_for_keys(self):
        releases = self.q.releases
        assert all(a.stamp < b.stamp for a, b in zip(releases, releases[1:], strict=False))
        assert all([f["key"] for f in r.files] == r.keys for r in releases)
        for sha, info in self.q.artifacts().items():
            assert info["holders"] == self.q.holders(sha)
            assert len(set(info["holders"])) == len(info["holders"])

    @invariant()
    def following_the_change_feed_gives_what_a_rescan_gives(self):
        self.seen, changed = self.q.changed_files(self.seen)
        if changed is None:
            self.files = self.q.artifacts()
            self.received = {f["key"]: (seq, f) for seq, f in self.q.received()}
        for sha in changed or ():
            self.files.pop(sha, None)
            self.received = {k: v for k, v in self.received.items() if v[1]["sha256"] != sha}
            if (record := self.q.artifact(sha)) is not None:
                self.files[sha] = record
            self.received.update((f["key"], (seq, f)) for seq, f in self.q.received(sha))
        assert self.files == self.q.artifacts()
        assert sorted(self.received.values()) == self.q.received()

    @invariant()
    def pickling_and_replay_reach_the_same_state(self):
        copy = pickle.loads(pickle.dumps(self.q))
        assert copy.fingerprint() == self.q.fingerprint()
        assert copy.dispatchable(100) == self.q.dispatchable(100)
        fresh = BuildQueue()
        for name, args in self.log:
            getattr(fresh, name)(*args)
        assert fresh.fingerprint() == self.q.fingerprint()


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_queue_state_machine = QueueMachine.TestCase


def test_a_failed_dependency_fails_its_dependants_and_unblock_revives_them():
    q = BuildQueue()
    q.submit("b", "c", [("a/x-1", "a/x-1", None), ("a/y-1", "a/y-1", None), ("a/z-1", "a/z-1", None)],
             {"a/y-1": ["a/x-1"], "a/z-1": ["a/y-1"]}, 0.0)
    q.delegate("a/x-1", "d1", 1, 0.0, 10.0)
    q.fail("a/x-1", "d1", 1, "boom", 1.0, 1, 5)
    assert [q.get(k).state for k in ("a/x-1", "a/y-1", "a/z-1")] == ["failed"] * 3
    assert q.get("a/y-1").error == "dependency a/x-1 failed"
    assert q.get("a/z-1").error == "dependency a/y-1 failed"
    assert q.dispatchable(10) == []

    q.unblock(["a/x-1"], 2.0)
    assert [q.get(k).state for k in ("a/x-1", "a/y-1", "a/z-1")] == ["needed"] * 3
    assert q.dispatchable(10) == ["a/x-1"]  # dependants still wait for x to be received
    q.delegate("a/x-1", "d2", 1, 3.0, 10.0)
    q.complete("a/x-1", "d2", 1, {"sha256": "0" * 64}, 4.0)
    assert q.dispatchable(10) == ["a/y-1"]


def test_a_late_valid_build_of_a_failed_dependency_revives_its_dependants():
    q = BuildQueue()
    q.submit("b", "c", [("a/x-1", "a/x-1", None), ("a/y-1", "a/y-1", None)], {"a/y-1": ["a/x-1"]}, 0.0)
    q.delegate("a/x-1", "d1", 1, 0.0, 10.0)
    q.fail("a/x-1", "d1", 1, "boom", 1.0, 1, 5)
    assert q.get("a/y-1").state == "failed"
    q.complete("a/x-1", "d1", 1, {"sha256": "0" * 64}, 2.0)
    assert q.get("a/y-1").state == "needed" and q.dispatchable(10) == ["a/y-1"]


def test_a_package_submitted_after_its_dependency_failed_fails_at_once():
    q = BuildQueue()
    q.submit("b1", "c", [("a/x-1", "a/x-1", None)], None, 0.0)
    q.delegate("a/x-1", "d1", 1, 0.0, 10.0)
    q.fail("a/x-1", "d1", 1, "boom", 1.0, 1, 5)
    q.submit("b2", "c", [("a/x-1", "a/x-1", None), ("a/y-1", "a/y-1", None)], {"a/y-1": ["a/x-1"]}, 2.0)
    assert (q.get("a/y-1").state, q.get("a/y-1").error) == ("failed", "dependency a/x-1 failed")
    q.unblock(["a/x-1"], 3.0)
    assert q.get("a/y-1").state == "needed"
