"""Fast tests of the chaos suite's own parts: the plan, the checkers and recovery figures.

The checkers decide whether a chaos run passes, so each is shown to fail on made-up evidence
of the violation it exists for, and to pass on clean evidence.
"""

from __future__ import annotations

import hashlib

from tests.chaos import checks
from tests.chaos import plan as p
from tests.chaos.evidence import Evidence
from tests.chaos.faults import Record
from tests.chaos.netns import rehost
from tests.chaos.workload import Sample, Submission, recoveries

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
SHA1_A = hashlib.sha1(b"a").hexdigest()  # noqa: S324
LOGS = {
    "orch-1": "2026-01-01T00:00:00.000 INFO     orch-1[11] swarmmesh.orchestrator: leading in term 1\n"
              f"x INFO orch-1[11] swarmmesh.artifacts: received app-misc/a-1 from drone-1 (10 bytes, sha256 "
              f"{SHA_A[:12]})\n",
    "orch-2": "2026-01-01T00:00:05.000 INFO     orch-2[12] swarmmesh.orchestrator: leading in term 2\n",
    "drone-1": f"x INFO drone-1[13] swarmmesh.drone: job app-misc/a-1 stored (sha256 {SHA_A[:12]}) after 1.00s\n",
}


def pkg(key: str, state: str = "received", error: str | None = None, sha: str | None = None) -> dict:
    view = {"key": key, "cpv": key, "repo": None, "state": state, "drone": None, "attempts": 1, "error": error,
            "lease_deadline": None, "batches": ["b-1"]}
    return view | ({"sha256": sha} if sha else {})


def evidence(**over) -> Evidence:
    snapshot = {"packages": [pkg("app-misc/a-1", sha=SHA_A)], "batches": [{"id": "b-1"}],
                "releases": [{"id": "r-1", "count": 1}], "terms": {"1": "orch-1", "2": "orch-2"}, "violations": []}
    ev = Evidence(snapshot=over.pop("snapshot", snapshot), fingerprints={"orch-1": "f", "orch-2": "f"},
                  settled=True, release_id="r-1", logs=dict(LOGS))
    ev.stores = {"orch-1": {f"{SHA_A[:2]}/{SHA_A}": (SHA_A, SHA1_A)}}
    ev.tmp = {"orch-1": []}
    ev.indexes = {"orch-1": "unreachable (refused)"}
    for name, value in over.items():
        setattr(ev, name, value)
    return ev


def status(verdict: checks.Verdict) -> str:
    return verdict.status


# --- plan ----------------------------------------------------------------------------------------


def test_plan_is_a_function_of_the_seed_and_covers_every_fault():
    one, again, other = p.make_plan(5, 1), p.make_plan(5, 1), p.make_plan(6, 1)
    assert one == again and one != other
    assert set(f.kind for f in one.faults) == set(p.KINDS)
    assert sum(f.kind == p.KILL_LEADER for f in one.faults) >= 3
    assert all(0 < f.at < one.seconds for f in one.faults)
    assert {b.client for b in one.batches} == set(p.CLIENTS)
    atoms = [a for b in one.batches for a in b.packages]
    assert len(atoms) > len(set(atoms)), "the second client repeats some packages of the first"


def test_longer_plans_have_more_faults():
    assert len(p.make_plan(1, 3).faults) > len(p.make_plan(1, 1).faults)


def test_rehost_moves_only_the_named_orchestrators():
    text = ('[node]\nname = "orch-1"\n\n[[orchestrators]]\nname = "orch-1"\nhost = "127.0.0.1"\n'
            '[[orchestrators]]\nname = "orch-2"\nhost = "127.0.0.1"\n[gateway]\nhost = "127.0.0.1"\n')
    out = rehost(text, {"orch-1": "127.0.0.2", "orch-2": "127.0.0.3"})
    assert out.count('host = "127.0.0.2"') == 1 and out.count('host = "127.0.0.3"') == 1
    assert out.endswith('[gateway]\nhost = "127.0.0.1"\n')


# --- queue checks ------------------------------------------------------------------------------


def test_clean_evidence_passes_every_check():
    sub = Submission(p.Batch("client-a", 0.0, ("=app-misc/a-1",)), batch_id="b-1")
    verdicts = checks.run_all(evidence(), [sub])
    assert {v.name: v.status for v in verdicts if v.status != checks.PASSED} == {
        checks.check_release_index(evidence()).name: checks.UNAVAILABLE}


def test_a_lost_acknowledged_batch_is_a_violation():
    sub = Submission(p.Batch("client-a", 0.0, ("=app-misc/gone-1",)), batch_id="b-1")
    assert status(checks.check_submissions(evidence(), [sub])) == checks.VIOLATED
    never = Submission(p.Batch("client-a", 0.0, ("=app-misc/a-1",)), attempts=3, errors=["no leader"])
    assert status(checks.check_submissions(evidence(), [never])) == checks.VIOLATED


def test_dependants_of_a_failed_package_are_told_apart_from_stuck_ones():
    pkgs = {"a": pkg("a", "failed", "boom"), "b": pkg("b", "needed"), "c": pkg("c", "needed"), "d": pkg("d", "needed")}
    assert checks.blocked(pkgs, {"b": ["a"], "c": ["b"]}) == {"b": "a", "c": "a"}
    ev = evidence(snapshot={**evidence().snapshot, "packages": list(pkgs.values())}, deps={"b": ["a"], "c": ["b"]})
    assert checks.check_settled(ev).details == ["d: needed (drone None, attempts 1, no error)"]
    assert status(checks.check_no_silent_block(ev)) == checks.VIOLATED


def test_failed_without_reason_or_listed_twice_is_a_violation():
    ev = evidence(snapshot={**evidence().snapshot, "packages": [pkg("app-misc/a-1", "failed")]})
    assert status(checks.check_exactly_once(ev)) == checks.VIOLATED
    index = b"VERSION: 0\n\nCPV: app-misc/a-1\n\nCPV: app-misc/a-1\n"
    assert "listed 2 times" in " ".join(checks.check_exactly_once(evidence(indexes={"orch-1": index})).details)


def test_two_leaders_in_one_term_or_a_log_the_state_contradicts():
    both = {**LOGS, "orch-2": LOGS["orch-2"] + "y INFO orch-2[12] swarmmesh.orchestrator: leading in term 1\n"}
    assert "term 1: orch-1, orch-2" in checks.check_one_leader_per_term(evidence(logs=both)).details[0]
    wrong = evidence(snapshot={**evidence().snapshot, "terms": {"1": "orch-2", "2": "orch-2"}})
    assert status(checks.check_one_leader_per_term(wrong)) == checks.VIOLATED
    replicated = evidence(snapshot={**evidence().snapshot, "violations": ["term 3: two"]})
    assert status(checks.check_one_leader_per_term(replicated)) == checks.VIOLATED
    assert status(checks.check_one_leader_per_term(evidence(logs={}))) == checks.VIOLATED  # blind


def test_diverged_nodes_are_a_violation():
    assert status(checks.check_converged(evidence(fingerprints={"orch-1": "f", "orch-2": "g"}))) == checks.VIOLATED


# --- files -----------------------------------------------------------------------------------------


def test_stray_corrupt_and_tmp_files_are_violations():
    stray = evidence(stores={"orch-1": {f"{SHA_A[:2]}/{SHA_A}": (SHA_A, SHA1_A), f"{SHA_B[:2]}/{SHA_B}": (SHA_B, "")}})
    assert "is not the artifact" in checks.check_store(stray).details[0]
    corrupt = evidence(stores={"orch-1": {f"{SHA_A[:2]}/{SHA_A}": (SHA_B, "")}})
    assert "corrupt" in checks.check_store(corrupt).details[0]
    assert status(checks.check_store(evidence(tmp={"orch-1": ["tmp/x.part"]}))) == checks.VIOLATED
    assert status(checks.check_store(evidence(stores={"orch-1": {}}))) == checks.VIOLATED  # received, stored nowhere


def test_stray_detection_falls_back_to_the_received_log_lines():
    bare = {**evidence().snapshot, "packages": [pkg("app-misc/a-1")]}
    assert status(checks.check_store(evidence(snapshot=bare))) == checks.PASSED
    two = {"orch-1": {f"{SHA_A[:2]}/{SHA_A}": (SHA_A, ""), f"{SHA_B[:2]}/{SHA_B}": (SHA_B, "")}}
    assert status(checks.check_store(evidence(snapshot=bare, stores=two))) == checks.VIOLATED


def test_release_index_unavailable_differing_or_wrong_files():
    assert status(checks.check_release_index(evidence())) == checks.UNAVAILABLE
    index = f"VERSION: 0\n\nCPV: app-misc/a-1\nPATH: app-misc/a/a-1-1.gpkg.tar\nSIZE: 1\nMD5: m\nSHA1: {SHA1_A}\n"
    good = {"app-misc/a/a-1-1.gpkg.tar": (1, "m", SHA1_A)}
    ok = evidence(indexes={"orch-1": index.encode(), "orch-2": index.encode()}, served={"orch-1": good, "orch-2": good})
    assert status(checks.check_release_index(ok)) == checks.PASSED
    differ = evidence(indexes={"orch-1": index.encode(), "orch-2": b"VERSION: 0\n"}, served={"orch-1": good})
    assert "differ" in " ".join(checks.check_release_index(differ).details)
    bad = evidence(indexes={"orch-1": index.encode()}, served={"orch-1": {"app-misc/a/a-1-1.gpkg.tar": (2, "m", "")}})
    assert status(checks.check_release_index(bad)) == checks.VIOLATED


def test_drone_deleting_before_commit_or_holding_after_is_a_violation():
    needed = evidence(snapshot={**evidence().snapshot, "packages": [pkg("app-misc/a-1", "needed")]})
    assert status(checks.check_drones_deleted_after_commit(needed)) == checks.VIOLATED
    assert status(checks.check_drones_deleted_after_commit(evidence())) == checks.PASSED
    holds = evidence(drone_dirs={"drone-1": {"app-misc_a-1-3": True}})
    assert "although it logged it stored" in checks.check_drones_hold_nothing(holds).details[0]
    orphan = evidence(drone_dirs={"drone-1": {"app-misc_a-1-3": True}}, orphans={"drone-1": {"app-misc_a-1-3"}})
    assert status(checks.check_drones_hold_nothing(orphan)) == checks.PASSED
    assert status(checks.check_orphans(orphan)) == checks.WARNING
    assert status(checks.check_drones_hold_nothing(evidence(settled=False, drone_dirs=holds.drone_dirs))) == "skipped"


# --- recovery ----------------------------------------------------------------------------------------


def test_recovery_is_leader_loss_to_the_first_new_result_of_a_newer_term():
    rec = Record(p.KILL_LEADER, planned=10.0, at=10.0, target="orch-1", term=3, baseline=5, pending=4)
    samples = [Sample(9.9, "orch-1", 3, 5, 4), Sample(10.5, None, 0, -1, -1), Sample(11.0, "orch-2", 4, 5, 4),
               Sample(12.0, "orch-2", 4, 6, 3)]
    (got,) = recoveries([rec], samples)
    assert (round(got.to_leader, 2), round(got.to_progress, 2), got.idle, got.overlapped) == (1.0, 2.0, False, False)
    idle = Record(p.POWER_LOSS, planned=0, at=0.0, term=3, baseline=5, pending=0)
    assert recoveries([idle], samples)[0].idle
