"""Fast tests of the chaos suite's own parts: the plan, the checkers and recovery figures.

The checkers decide whether a chaos run passes, so each is shown to fail on made-up evidence
of the violation it exists for, and to pass on clean evidence.
"""

from __future__ import annotations

import hashlib
import random
import time

from tests.chaos import checks, faults
from tests.chaos import plan as p
from tests.chaos.evidence import Evidence
from tests.chaos.faults import Injector, Record, now_clock
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


INDEX = (f"VERSION: 0\n\nCPV: app-misc/a-1\nPATH: app-misc/a/a-1-1.gpkg.tar\nSIZE: 1\nMD5: m\nSHA1: {SHA1_A}\n"
         .encode())
SERVED = {"app-misc/a/a-1-1.gpkg.tar": (1, "m", SHA1_A)}
ORCHS = ("orch-1", "orch-2", "orch-3")


def pkg(key: str, state: str = "received", error: str | None = None, sha: str | None = None,
        holders: list[str] | None = None) -> dict:
    view = {"key": key, "cpv": key, "repo": None, "state": state, "drone": None, "attempts": 1, "error": error,
            "lease_deadline": None, "batches": ["b-1"]}
    return view | ({"sha256": sha, "holders": list(ORCHS) if holders is None else holders} if sha else {})


def snapshot(*pkgs: dict, count: int | None = None) -> dict:
    """A leader's /swarm view: counts and the release's count follow from the packages given."""
    pkgs = pkgs or (pkg("app-misc/a-1", sha=SHA_A),)
    counts = {s: sum(p["state"] == s for p in pkgs) for s in ("needed", "delegated", "received", "failed")}
    received = counts["received"] if count is None else count
    return {"counts": {**counts, "total": len(pkgs)}, "packages": list(pkgs), "batches": [{"id": "b-1"}],
            "releases": [{"id": "r-1", "count": received}], "terms": {"1": "orch-1", "2": "orch-2"},
            "violations": [], "leader": "orch-1"}


def evidence(**over) -> Evidence:
    """Clean evidence of a settled three-node run: every check passes on it unless `over` plants a fault."""
    snap = over.pop("snapshot", None) or snapshot()
    ev = Evidence(snapshot=snap, fingerprints=dict.fromkeys(ORCHS, "f"), settled=True, release_id="r-1",
                  logs=dict(LOGS))
    ev.stores = {n: {f"{SHA_A[:2]}/{SHA_A}": (SHA_A, SHA1_A)} for n in ORCHS}
    ev.tmp = {n: [] for n in ORCHS}
    ev.indexes, ev.gz = dict.fromkeys(ORCHS, INDEX), dict.fromkeys(ORCHS, INDEX)
    ev.serving, ev.served = dict.fromkeys(ORCHS, "r-1"), dict.fromkeys(ORCHS, SERVED)
    ev.views = {n: {**snap, "node": n} for n in ORCHS}
    for name, value in over.items():
        setattr(ev, name, value)
    return ev


def acked(*atoms: str) -> Submission:
    return Submission(p.Batch("client-a", 0.0, atoms), batch_id="b-1")


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
    verdicts = checks.run_all(evidence(), [acked("=app-misc/a-1")])
    assert {v.name: v.details for v in verdicts if v.status != checks.PASSED} == {}


def test_a_lost_acknowledged_batch_is_a_violation():
    sub = Submission(p.Batch("client-a", 0.0, ("=app-misc/gone-1",)), batch_id="b-1")
    assert status(checks.check_submissions(evidence(), [sub])) == checks.VIOLATED
    never = Submission(p.Batch("client-a", 0.0, ("=app-misc/a-1",)), attempts=3, errors=["no leader"])
    assert status(checks.check_submissions(evidence(), [never])) == checks.VIOLATED


def test_dependants_of_a_failed_package_are_told_apart_from_stuck_ones():
    pkgs = {"a": pkg("a", "failed", "boom"), "b": pkg("b", "needed"), "c": pkg("c", "needed"), "d": pkg("d", "needed")}
    assert checks.blocked(pkgs, {"b": ["a"], "c": ["b"]}) == {"b": "a", "c": "a"}
    ev = evidence(snapshot=snapshot(*pkgs.values()), deps={"b": ["a"], "c": ["b"]})
    assert checks.check_settled(ev).details == ["d: needed (drone None, attempts 1, no error)"]
    assert status(checks.check_no_silent_block(ev)) == checks.VIOLATED


def test_failed_without_reason_or_listed_twice_is_a_violation():
    ev = evidence(snapshot=snapshot(pkg("app-misc/a-1", "failed")))
    assert status(checks.check_exactly_once(ev)) == checks.VIOLATED
    index = b"VERSION: 0\n\nCPV: app-misc/a-1\n\nCPV: app-misc/a-1\n"
    assert "listed 2 times" in " ".join(checks.check_exactly_once(evidence(indexes={"orch-1": index})).details)


def test_two_leaders_in_one_term_or_a_log_the_state_contradicts():
    both = {**LOGS, "orch-2": LOGS["orch-2"] + "y INFO orch-2[12] swarmmesh.orchestrator: leading in term 1\n"}
    assert "term 1: orch-1, orch-2" in checks.check_one_leader_per_term(evidence(logs=both)).details[0]
    wrong = evidence(snapshot={**snapshot(), "terms": {"1": "orch-2", "2": "orch-2"}})
    assert status(checks.check_one_leader_per_term(wrong)) == checks.VIOLATED
    replicated = evidence(snapshot={**snapshot(), "violations": ["term 3: two"]})
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
    bare = snapshot(pkg("app-misc/a-1"))
    assert status(checks.check_store(evidence(snapshot=bare))) == checks.PASSED
    two = {"orch-1": {f"{SHA_A[:2]}/{SHA_A}": (SHA_A, ""), f"{SHA_B[:2]}/{SHA_B}": (SHA_B, "")}}
    assert status(checks.check_store(evidence(snapshot=bare, stores=two))) == checks.VIOLATED


def test_release_index_differing_or_wrong_files():
    differ = evidence(indexes={**evidence().indexes, "orch-2": b"VERSION: 0\n"})
    assert "differ" in " ".join(checks.check_release_index(differ).details)
    bad = evidence(served={**evidence().served, "orch-1": {"app-misc/a/a-1-1.gpkg.tar": (2, "m", "")}})
    assert status(checks.check_release_index(bad)) == checks.VIOLATED
    missing = evidence(served={**evidence().served, "orch-3": {"app-misc/a/a-1-1.gpkg.tar": "HTTP 404"}})
    assert "orch-3 app-misc/a/a-1-1.gpkg.tar" in " ".join(checks.check_release_index(missing).details)


# --- issue 19: each check fails on the fault it exists for -----------------------------------------


def test_a_binhost_that_serves_nothing_is_a_violation_and_membership_still_runs():
    """The mutation of issue 19: every binhost 404s Packages and Packages.gz."""
    nothing = evidence(indexes=dict.fromkeys(ORCHS, "HTTP 404"), gz=dict.fromkeys(ORCHS, "HTTP 404"), served={})
    index = checks.check_release_index(nothing)
    assert index.status == checks.VIOLATED and "orch-1 serves no Packages (HTTP 404)" in index.details
    membership = checks.check_exactly_once(nothing)
    assert membership.status == checks.VIOLATED and "membership cannot be checked" in membership.details[0]
    assert any(v.status == checks.VIOLATED for v in checks.run_all(nothing, [acked("=app-misc/a-1")]))
    one = evidence(indexes={**evidence().indexes, "orch-2": "unreachable (refused)"})
    assert status(checks.check_release_index(one)) == checks.VIOLATED


def test_a_binhost_serving_another_release_or_no_packages_gz_is_a_violation():
    old = evidence(serving={**evidence().serving, "orch-3": "r-0"})
    assert checks.check_release_index(old).details == ["orch-3 serves release r-0, not the final r-1"]
    no_gz = evidence(gz={**evidence().gz, "orch-2": "HTTP 404"})
    assert checks.check_release_index(no_gz).details == ["orch-2: Packages.gz HTTP 404"]
    stale_gz = evidence(gz={**evidence().gz, "orch-2": b"VERSION: 0\n"})
    assert checks.check_release_index(stale_gz).details == ["orch-2: Packages.gz differs from Packages"]
    assert status(checks.check_release_index(evidence(release_id=None))) == checks.VIOLATED


def test_a_holder_missing_or_corrupting_a_file_is_a_violation():
    stores = evidence().stores
    lost = evidence(stores={**stores, "orch-2": {}})
    assert checks.check_replication(lost).details == [
        f"app-misc/a-1: the state lists orch-2 as a holder of {SHA_A[:12]}, but orch-2 does not have it"]
    bad = evidence(stores={**stores, "orch-3": {f"{SHA_A[:2]}/{SHA_A}": (SHA_B, "")}})
    assert "orch-3 holds a copy hashing to" in checks.check_replication(bad).details[0]
    assert status(checks.check_store(lost)) == checks.PASSED  # "stored somewhere" could not see it


def test_an_artifact_on_a_minority_is_a_violation():
    one = evidence(snapshot=snapshot(pkg("app-misc/a-1", sha=SHA_A, holders=["orch-1"])),
                   stores={"orch-1": evidence().stores["orch-1"], "orch-2": {}, "orch-3": {}})
    details = checks.check_replication(one).details
    assert any("fewer than a majority of 2" in d for d in details)
    assert any("intact on 1 of 3 orchestrators" in d for d in details)
    blind = evidence(snapshot=snapshot(pkg("app-misc/a-1")))
    assert "this check is blind" in checks.check_replication(blind).details[0]


def test_the_release_count_is_checked_against_the_submissions():
    """The snapshot agrees with itself (one received, a release of one, one entry served), but a
    client's acknowledged package is neither in the release nor failed."""
    subs = [acked("=app-misc/a-1", "=app-misc/b-1")]
    short = checks.check_release_count(evidence(), subs)
    assert short.status == checks.VIOLATED
    assert any("app-misc/b-1 was submitted and acknowledged" in d for d in short.details)
    assert any("the clients submitted 2 that did not fail" in d for d in short.details)
    failed = snapshot(pkg("app-misc/a-1", sha=SHA_A), pkg("app-misc/b-1", "failed", "boom"))
    assert status(checks.check_release_count(evidence(snapshot=failed), subs)) == checks.PASSED
    assert status(checks.check_release_count(evidence(), [acked("=app-misc/z-1")])) == checks.VIOLATED  # unasked
    overcount = evidence(snapshot=snapshot(count=2))
    assert "counts 2 packages" in " ".join(checks.check_release_count(overcount, [acked("=app-misc/a-1")]).details)


def test_a_follower_with_other_received_builds_is_a_violation():
    """Same fingerprint, different applied state: only the views tell."""
    other = snapshot(pkg("app-misc/a-1", sha=SHA_B))
    ev = evidence(views={**evidence().views, "orch-3": other})
    assert status(checks.check_converged(ev)) == checks.PASSED
    details = checks.check_views_agree(ev).details
    assert f"orch-3 has app-misc/a-1 received (sha256 {SHA_B[:12]}), the leader orch-1 does not" in details
    assert f"orch-3 lacks app-misc/a-1 received (sha256 {SHA_A[:12]}) that the leader orch-1 has" in details
    behind = evidence(views={**evidence().views, "orch-2": snapshot(pkg("app-misc/a-1", "delegated"))})
    assert "orch-2 counts" in checks.check_views_agree(behind).details[0]
    silent = evidence(views={**evidence().views, "orch-2": "no answer (timeout)"})
    assert checks.check_views_agree(silent).details == ["orch-2: no answer (timeout)"]
    assert status(checks.check_views_agree(evidence(views={}))) == checks.VIOLATED  # blind


def test_a_drone_leaking_job_directories_after_restarts_fails_the_run():
    leak = evidence(drone_dirs={"drone-1": {"app-misc_a-1-3": False}}, orphans={"drone-1": {"app-misc_a-1-3"}})
    assert status(checks.check_orphans(leak)) == checks.VIOLATED
    assert "drone-1: work/app-misc_a-1-3 (app-misc/a-1)" in checks.check_orphans(leak).details[0]
    cleared = evidence(drone_dirs={"drone-1": {}}, orphans={"drone-1": {"app-misc_a-1-3"}})
    assert status(checks.check_orphans(cleared)) == checks.PASSED


def test_drone_deleting_before_commit_or_holding_after_is_a_violation():
    needed = evidence(snapshot=snapshot(pkg("app-misc/a-1", "needed")))
    assert status(checks.check_drones_deleted_after_commit(needed)) == checks.VIOLATED
    assert status(checks.check_drones_deleted_after_commit(evidence())) == checks.PASSED
    holds = evidence(drone_dirs={"drone-1": {"app-misc_a-1-3": True}})
    assert "although it logged it stored" in checks.check_drones_hold_nothing(holds).details[0]
    orphan = evidence(drone_dirs={"drone-1": {"app-misc_a-1-3": True}}, orphans={"drone-1": {"app-misc_a-1-3"}})
    assert status(checks.check_drones_hold_nothing(orphan)) == checks.PASSED
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


# --- faults --------------------------------------------------------------------------------------------


class StubCluster:
    """Just enough of LocalCluster for the injector's bookkeeping: no process is signalled."""

    orchestrators, drones = ["orch-1", "orch-2", "orch-3"], []

    def pid(self, name: str) -> None:
        return None

    def node_leader(self, candidates: list[str]) -> str | None:
        return candidates[0] if candidates else None

    def ask(self, name: str, op: str, timeout: float) -> dict:
        return {"term": 3, "counts": {"received": 0, "failed": 0, "needed": 1, "delegated": 0}}


class StubTopology:
    def __init__(self) -> None:
        self.started: list[str] = []

    def up(self, c, name: str, timeout: float) -> None:
        self.started.append(name)


def injector() -> Injector:
    inj = Injector(StubCluster(), StubTopology(), now_clock(time.monotonic()), random.Random(1))
    inj.down.add("orch-3")
    return inj


def test_a_power_loss_waits_for_every_orchestrator_to_be_up():
    inj = injector()
    inj._later(Record(p.KILL_LEADER, 0.0, hold=0.2), "restart", "orch-3")  # orch-3 comes back in 0.2 s
    rec = inj.inject(p.Fault(0.0, p.POWER_LOSS, 1.0))
    assert inj.topo.started == ["orch-3"]
    assert (rec.kind, rec.target, rec.skipped) == (p.POWER_LOSS, "all orchestrators: orch-1, orch-2, orch-3", "")


def test_a_power_loss_with_one_orchestrator_still_down_is_recorded_as_partial(monkeypatch):
    monkeypatch.setattr(faults, "POWER_WAIT", 0.1)
    rec = injector().inject(p.Fault(0.0, p.POWER_LOSS, 1.0))
    assert rec.kind == p.PARTIAL_POWER_LOSS
    assert rec.target == "2 of 3 orchestrators: orch-1, orch-2 (orch-3 already down)"
