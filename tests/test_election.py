"""The PySyncObj shell: three in-process members commit, replicate and elect."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pytest

from swarmmesh.cluster import init_cluster
from swarmmesh.commands import Delegate, NoteLeader, Submit
from swarmmesh.config import load_config
from swarmmesh.election import Election, raft_conf
from swarmmesh.errors import ConfigError
from swarmmesh.harness import FAST_RAFT
from tests.conftest import wait_until
from tests.data import make_replay

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def members(tmp_path):
    init_cluster(tmp_path, orchestrators=3, drones=0, base_port=0, raft_overrides=FAST_RAFT)
    made = [Election(load_config(tmp_path / f"orch-{i}.toml")) for i in (1, 2, 3)]
    yield made
    for m in made:
        m.close()


def _leader(members):
    leaders = [m for m in members if m.raft_is_leader()]
    return leaders[0] if len(leaders) == 1 else None


def test_commit_replicates_and_reports_through_callback(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    done = threading.Event()
    results = []

    def cb(result, err):
        results.append((result, err))
        done.set()

    leader.commit(Submit("b-1", "test", [("a/b-1", "a/b-1", None)], None, 1.0), done=cb)
    assert done.wait(10)
    assert results[0][1] is None and results[0][0]["count"] == 1
    wait_until(lambda: all(m.read(lambda q: q.counts()["total"]) == 1 for m in members), 10,
               what="every member to apply")
    assert len({m.read(lambda q: q.fingerprint()) for m in members}) == 1


def test_leadership_needs_an_applied_claim(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    assert not leader.is_leader()  # Raft says leader, but no claim is committed yet
    claimed = threading.Event()
    leader.commit(NoteLeader(leader.term, leader.name), done=lambda r, e: claimed.set())
    assert claimed.wait(10)
    assert leader.is_leader()
    assert all(not m.is_leader() for m in members if m is not leader)
    wait_until(lambda: all(m.leader_name() == leader.name for m in members), 10, what="everyone to agree")


def test_a_short_secret_is_refused(tmp_path):
    init_cluster(tmp_path, orchestrators=1, drones=0, base_port=0)
    config = load_config(tmp_path / "orch-1.toml")
    with pytest.raises(ConfigError, match="secret"):
        raft_conf(dataclasses.replace(config, secret="short"))


def test_the_fingerprint_is_recomputed_only_after_a_change(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    calls = []
    queue = leader.state.queue
    original = queue.fingerprint
    queue.fingerprint = lambda: calls.append(1) or original()  # count the hashes
    first = leader.fingerprint()
    assert leader.fingerprint() == first and len(calls) == 1
    done = threading.Event()
    leader.commit(Submit("b-2", "test", [("a/c-1", "a/c-1", None)], None, 1.0), done=lambda r, e: done.set())
    assert done.wait(10)
    assert leader.fingerprint() != first and len(calls) == 2
    assert leader.fingerprint() == original()


def test_a_batch_is_one_entry_applied_in_order_with_a_result_per_command(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    listed = []
    for m in members:  # counts commands applied through a batch entry, on every member
        m.state._apply_listed = lambda name, args, m=m, inner=m.state._apply_listed: (
            listed.append((m.name, name)) or inner(name, args))
    results: dict[str, tuple] = {}
    done = threading.Event()

    def note(name):
        def cb(result, err):
            results[name] = (result, err)
            if len(results) == 3:
                done.set()
        return cb

    leader.commit_many([
        (Submit("b-3", "test", [("a/d-1", "a/d-1", None)], None, 1.0), note("submit")),
        (Delegate("a/d-1", "drone-1", 1, 2.0, 60.0), note("delegate")),  # sees the submit before it
        (Delegate("a/nope-1", "drone-1", 1, 2.0, 60.0), note("unknown")),
    ])
    assert done.wait(10)
    assert results["submit"][0]["count"] == 1 and results["delegate"][0]["ok"]
    assert results["unknown"][0]["ok"] is False and all(err is None for _r, err in results.values())
    wait_until(lambda: all(m.read(lambda q: q.get("a/d-1") and q.get("a/d-1").state) == "delegated"
                           for m in members), 10, what="every member to apply the batch")
    wait_until(lambda: len(listed) == 9, 10, what="three batched commands applied on each member")
    assert sorted({name for _m, name in listed}) == ["delegate", "submit"]


def test_a_batch_naming_a_non_command_is_refused_per_entry(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    got = []
    done = threading.Event()
    # an entry as a newer version might write it: only the wire format can name a non-command
    leader.state.update([("fingerprint", []), ("reset", [])], callback=lambda r, e: (got.extend(r), done.set()))
    assert done.wait(10)
    assert got[0] == {"ok": False, "code": "unknown_command"} and got[1]["ok"]


def test_a_claim_landing_in_a_later_term_is_stale_not_a_second_leader(members):
    leader = wait_until(lambda: _leader(members), 15, what="a Raft leader")
    wait_until(lambda: leader.won_term() == leader.term, 5, what="the won term to be known")
    assert all(m.won_term() is None for m in members if m is not leader)
    got = []
    done = threading.Event()
    old = leader.term - 1  # as if queued in an earlier term and forwarded to this leader
    leader.commit(NoteLeader(old, "orch-x"), done=lambda r, e: (got.append(r), done.set()))
    assert done.wait(10)
    assert got == [{"ok": False, "code": "stale_claim", "term": old}]
    assert all(m.read(lambda q: (q.leader_of(old), q.violations)) == (None, []) for m in members)


def test_a_member_with_another_secret_never_joins(tmp_path):
    """Raft traffic is sealed with the cluster secret: a node keyed differently cannot read it."""
    init_cluster(tmp_path, orchestrators=3, drones=0, base_port=0, raft_overrides=FAST_RAFT)
    configs = [load_config(tmp_path / f"orch-{i}.toml") for i in (1, 2, 3)]
    configs[2] = dataclasses.replace(configs[2], secret="another cluster's secret, 32+ chars")
    made = [Election(c) for c in configs]
    try:
        leader = wait_until(lambda: _leader(made[:2]), 15, what="a leader among the two that share the secret")
        done = threading.Event()
        leader.commit(Submit("b-1", "test", [("a/b-1", "a/b-1", None)], None, 1.0), done=lambda r, e: done.set())
        assert done.wait(10)
        wait_until(lambda: all(m.read(lambda q: q.counts()["total"]) == 1 for m in made[:2]), 10,
                   what="both to apply")
        assert made[2].read(lambda q: q.counts()["total"]) == 0
        assert made[2].leader_name() is None and not made[2].raft_is_leader()
    finally:
        for m in made:
            m.close()


REPLAY = Path(__file__).parent / "data" / "replay"


@pytest.mark.parametrize("kind", ["dump", "journal"])
def test_a_data_directory_written_by_an_earlier_version_replays_to_the_same_state(tmp_path, kind):
    """tests/data/replay was written at commit 8b484ee by tests/data/make_replay.py: `dump` is
    a snapshot plus the journal's tail, `journal` the whole history. Both must replay here to
    the state that version reached, indexes included (a snapshot pickles the queue)."""
    expected = json.loads((REPLAY / "expected.json").read_text())
    init_cluster(tmp_path, orchestrators=1, drones=0, base_port=0, raft_overrides=FAST_RAFT)
    config = load_config(tmp_path / "orch-1.toml")
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    for file in (REPLAY / kind).iterdir():
        shutil.copy(file, Path(config.data_dir) / file.name)
    member = Election(config)
    try:
        wait_until(lambda: member.fingerprint() == expected["fingerprint"], 15, what="the replay to finish")
        observed = json.loads(json.dumps(member.read(make_replay.observe)))
    finally:
        member.close()
    assert observed == {k: v for k, v in expected.items() if k != "results"}
