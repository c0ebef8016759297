"""The broker's dispatch policy, leases, retries and grounding, with an injected clock.

The broker runs against the fake orchestrator of tests/fakes.py in its deferred mode: commits
are applied to a real BuildQueue only when the test calls `flush()` (as Raft would, later),
and sent messages are recorded. Time is a number the test moves; nothing sleeps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from swarmmesh import broker as broker_mod
from swarmmesh import protocol
from swarmmesh.broker import Broker
from swarmmesh.commands import Complete
from swarmmesh.config import GatewayConfig, NodeConfig, OrchestratorAddr, QueuePolicy, RaftTuning
from swarmmesh.protocol import Ack, Busy, Bye, Cancel, Heartbeat, Hello, Job, JobFailed, NotLeader, Stored, Welcome
from swarmmesh.queue import DELEGATED, FAILED, NEEDED, RECEIVED
from tests.fakes import FakeNode

TERM = 4
WALL0 = 1_000_000.0
RESULT = {"sha256": "ab" * 32, "size": 4096, "path": "x"}


def _addr(i: int) -> OrchestratorAddr:
    return OrchestratorAddr(name=f"orch-{i}", host="127.0.0.1", raft_port=7100 + 10 * i,
                            broker_port=7101 + 10 * i, artifacts_port=7102 + 10 * i,
                            events_port=7103 + 10 * i, binhost_port=7104 + 10 * i)


def _config(policy: QueuePolicy) -> NodeConfig:
    return NodeConfig(path=Path("orch-1.toml"), name="orch-1", role="orchestrator", data_dir=Path("."),
                      secret="s" * 16, orchestrators=(_addr(1), _addr(2)), gateway=GatewayConfig(),
                      raft=RaftTuning(), queue=policy, drone=None)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(clock, tmp_path):
    made: list[FakeNode] = []

    def make(**policy: Any) -> tuple[Broker, FakeNode]:
        config = _config(QueuePolicy(**{"lease_seconds": 3.0, "heartbeat_seconds": 1.0, **policy}))
        node = FakeNode("orch-1", tmp_path / f"n{len(made)}", deferred=True, config=config)
        node.raft_leader = "orch-1"
        made.append(node)
        broker = Broker(node, config, clock=clock.mono, wall=clock.wall)
        broker.on_leadership(TERM)
        return broker, node

    yield make
    for node in made:
        node.close()


def submit(node: FakeNode, *keys: str, deps: dict | None = None) -> None:
    node.queue.submit(f"b{len(node.commits)}-{keys[0]}", "test", [(k, k, None) for k in keys], deps, 0.0)


def hello(broker: Broker, node: FakeNode, name: str, slots: int = 1, cores: int = 4, **kw: Any) -> None:
    broker.handle(name.encode(), Hello(drone=name, cores=cores, slots=slots, builder="simulated", **kw))
    node.flush()


def jobs(node: FakeNode, to: str | None = None) -> list[str]:
    return [j.key for j in node.take(Job, to)]


def state(node: FakeNode, key: str) -> tuple[str, str | None]:
    pkg = node.queue.get(key)
    return pkg.state, pkg.drone


def complete(broker: Broker, node: FakeNode, key: str, drone: str) -> None:
    """What the receiver does for a valid upload: commit, then settle the slot."""
    node.commit(Complete(key, drone, TERM, RESULT, 0.0))
    node.flush()
    broker.settle(drone, key)
    node.flush()


# --- dispatch policy -----------------------------------------------------------------------


def test_a_job_goes_out_only_after_its_delegation_is_committed(make):
    broker, node = make()
    submit(node, "cat/a-1")
    broker.handle(b"d1", Hello(drone="d1", cores=2, slots=1, builder="simulated"))
    assert isinstance(node.take(Welcome, "d1")[0], Welcome)
    assert node.take(Job) == [] and [c for c, _, _ in node.pending] == ["delegate"]
    node.flush()
    [job] = node.take(Job, "d1")
    assert (job.key, job.cpv, job.term, job.attempt) == ("cat/a-1", "cat/a-1", TERM, 1)
    assert state(node, "cat/a-1") == (DELEGATED, "d1")


def test_most_free_slots_first_then_most_cores(make):
    broker, node = make()
    hello(broker, node, "small", slots=1, cores=64)
    hello(broker, node, "wide", slots=3, cores=2)
    hello(broker, node, "big", slots=1, cores=128)
    submit(node, *[f"cat/p{i}-1" for i in range(5)])
    broker.tick(100.0)
    node.flush()
    # wide has 3 free slots, then 2; then all have one free slot and cores decide
    assert jobs(node, "wide") == ["cat/p0-1", "cat/p1-1", "cat/p4-1"]
    assert jobs(node, "big") == ["cat/p2-1"]
    assert jobs(node, "small") == ["cat/p3-1"]


def test_submission_order_is_the_dispatch_order_and_a_full_drone_gets_nothing(make):
    broker, node = make()
    submit(node, "cat/c-1", "cat/a-1", "cat/b-1")
    hello(broker, node, "d1", slots=2)
    assert jobs(node) == ["cat/c-1", "cat/a-1"]
    broker.tick(100.0)
    node.flush()
    assert jobs(node) == []  # both slots busy: push, never queue at the drone
    complete(broker, node, "cat/c-1", "d1")
    assert jobs(node, "d1") == ["cat/b-1"]


def test_a_drone_with_short_builds_also_fills_its_queue_and_long_builds_stop_that(make, clock):
    broker, node = make()
    submit(node, *[f"cat/p{i}-1" for i in range(12)])
    hello(broker, node, "d1", slots=2, queue=2)
    assert jobs(node) == ["cat/p0-1", "cat/p1-1"]  # no build measured yet: free slots only
    clock.t += 0.2  # a short build
    complete(broker, node, "cat/p0-1", "d1")
    assert jobs(node, "d1") == ["cat/p2-1", "cat/p3-1", "cat/p4-1"]  # its free slot and its queue
    assert broker.drones["d1"].room == 0
    for key in ("cat/p1-1", "cat/p2-1", "cat/p3-1"):  # builds that took long
        clock.t += 3.0
        complete(broker, node, key, "d1")
    assert broker.drones["d1"].build_seconds > broker_mod.PREFETCH_BELOW
    assert jobs(node, "d1") == ["cat/p5-1"]  # while the average was still short
    assert broker.drones["d1"].running == {"cat/p4-1", "cat/p5-1"}  # as many as it has slots
    clock.t += 3.0
    complete(broker, node, "cat/p4-1", "d1")
    assert jobs(node, "d1") == ["cat/p6-1"] and broker.drones["d1"].room == 0  # slots only now


def test_the_queue_a_drone_gets_holds_about_a_window_of_its_builds(make, clock):
    broker, node = make()
    submit(node, *[f"cat/p{i}-1" for i in range(60)])
    hello(broker, node, "d1", slots=4, queue=16)
    assert len(jobs(node, "d1")) == 4
    clock.t += 0.5  # builds of 0.5 s: 4 slots build 2 jobs in PREFETCH_WINDOW (0.25 s)
    complete(broker, node, "cat/p0-1", "d1")
    assert len(jobs(node, "d1")) == 1 + 2  # the free slot, and two to queue
    session = broker.drones["d1"]
    for _ in range(20):  # then builds that take no time at all: the average falls, the queue grows
        complete(broker, node, sorted(session.running, key=lambda k: int(k[5:-2]))[0], "d1")
    assert session.build_seconds < 0.25 / 16 and session.room == 0
    assert len(session.running) == 4 + 16  # the slots and the whole queue it announced


def test_a_free_slot_wins_over_room_in_a_queue(make, clock):
    broker, node = make()
    submit(node, "cat/a-1", "cat/b-1")
    hello(broker, node, "fast", slots=1, cores=128, queue=4)
    clock.t += 0.1
    complete(broker, node, jobs(node, "fast")[0], "fast")
    assert jobs(node, "fast") == ["cat/b-1"]
    submit(node, "cat/c-1", "cat/d-1")
    hello(broker, node, "idle", slots=1, cores=1)
    assert jobs(node, "idle") == ["cat/c-1"]  # a free slot, though fast has more cores and room
    broker.tick(clock.t)
    node.flush()
    assert jobs(node, "fast") == ["cat/d-1"]  # then the queue of the drone whose builds are short


def test_dependencies_gate_dispatch_until_received(make):
    broker, node = make()
    submit(node, "cat/app-1", "cat/lib-1", "cat/other-1", deps={"cat/app-1": ["cat/lib-1"]})
    hello(broker, node, "d1", slots=3)
    assert jobs(node) == ["cat/lib-1", "cat/other-1"]
    complete(broker, node, "cat/other-1", "d1")
    assert jobs(node) == []  # a free slot, but app still waits for lib
    complete(broker, node, "cat/lib-1", "d1")
    assert jobs(node, "d1") == ["cat/app-1"]


def test_a_retry_prefers_another_drone_and_the_last_attempt_fails_the_package(make):
    broker, node = make(max_attempts=2)
    submit(node, "cat/x-1")
    hello(broker, node, "d1", cores=64)
    hello(broker, node, "d2", cores=2)
    assert jobs(node, "d1") == ["cat/x-1"]  # more cores
    broker.handle(b"d1", JobFailed(drone="d1", key="cat/x-1", term=TERM, error="boom\nlast line"))
    node.flush()
    assert [a.kind for a in node.take(Ack, "d1")] == ["failed"]
    broker.tick(100.0)
    node.flush()
    assert jobs(node, "d2") == ["cat/x-1"]  # d1 is free and bigger, but it failed this one
    broker.handle(b"d2", JobFailed(drone="d2", key="cat/x-1", term=TERM, error="boom again"))
    node.flush()
    pkg = node.queue.get("cat/x-1")
    assert (pkg.state, pkg.attempts, pkg.error) == (FAILED, 2, "boom again")
    broker.tick(100.0)
    node.flush()
    assert jobs(node) == []


def test_a_drone_that_keeps_failing_is_grounded_until_unblocked(make, caplog):
    broker, node = make(ground_after=2, max_attempts=5)
    submit(node, "cat/a-1", "cat/b-1", "cat/c-1")
    hello(broker, node, "d1", slots=1)
    with caplog.at_level(logging.WARNING, logger="swarmmesh.broker"):
        for _ in range(2):
            [key] = jobs(node, "d1")
            broker.handle(b"d1", JobFailed(drone="d1", key=key, term=TERM, error="bad drone"))
            node.flush()
            broker.tick(100.0)
            node.flush()
    assert "d1 grounded" in caplog.text
    assert node.queue.grounded() == ["d1"] and jobs(node) == []
    node.queue.unblock(["d1"], 0.0)
    broker.tick(100.0)
    node.flush()
    assert len(jobs(node, "d1")) == 1


# --- leases -----------------------------------------------------------------------------------


def test_a_silent_drone_loses_its_jobs_after_the_lease(make, clock):
    broker, node = make()
    submit(node, "cat/a-1", "cat/b-1")
    clock.t += 3.5  # past the grace a new leader gives drones to say hello
    hello(broker, node, "d1", slots=2)
    assert len(jobs(node)) == 2
    clock.t += 2.9
    broker.tick(clock.t)
    node.flush()
    assert "d1" in broker.drones and state(node, "cat/a-1") == (DELEGATED, "d1")
    clock.t += 1.1  # silent for more than a lease, and the next check is due
    broker.tick(clock.t)
    node.flush()
    assert "d1" not in broker.drones
    assert [state(node, k)[0] for k in ("cat/a-1", "cat/b-1")] == [NEEDED, NEEDED]
    assert node.queue.get("cat/a-1").attempts == 0  # not the build's fault


def test_heartbeats_renew_exactly_the_jobs_the_drone_mentions(make, clock):
    broker, node = make(lease_seconds=2.6)
    submit(node, "cat/kept-1", "cat/lost-1")
    clock.t += 3.5
    hello(broker, node, "d1", slots=2)
    assert jobs(node) == ["cat/kept-1", "cat/lost-1"]

    def beat() -> None:  # the drone never got "lost" (say, the Job was dropped on the way)
        clock.t += 1.0
        broker.handle(b"d1", Heartbeat(drone="d1", running=[["cat/kept-1", TERM]]))
        broker.tick(clock.t)
        node.flush()

    beat()
    beat()
    assert state(node, "cat/lost-1") == (DELEGATED, "d1")
    beat()  # 3 s after the delegation: past its 2.6 s lease
    assert state(node, "cat/kept-1") == (DELEGATED, "d1")
    pkg = node.queue.get("cat/lost-1")
    assert (pkg.state, pkg.attempts, pkg.error) == (NEEDED, 0, "lease expired")
    beat()
    assert jobs(node, "d1") == ["cat/lost-1"]  # its slot was freed, so it is sent again


def test_a_new_leader_gives_drones_a_lease_of_grace_before_anything_expires(make, clock):
    broker, node = make()
    submit(node, "cat/a-1")
    node.queue.delegate("cat/a-1", "d1", TERM - 1, clock.wall(), clock.wall() + 1.0)
    clock.t += 2.0  # the lease is over, but this leader has only just taken over
    broker.tick(clock.t)
    node.flush()
    assert state(node, "cat/a-1") == (DELEGATED, "d1")
    clock.t += 1.5  # the grace (one lease, 3 s) is over
    broker.tick(clock.t)
    node.flush()
    assert state(node, "cat/a-1")[0] == NEEDED


# --- reconciliation --------------------------------------------------------------------------


def test_rehello_adopts_what_it_holds_drops_the_rest_and_resends_what_it_never_got(make, clock):
    broker, node = make()
    q = node.queue
    submit(node, "cat/running-1", "cat/unsent-1", "cat/theirs-1", "cat/done-1", "cat/other-done-1")
    for key, drone in (("cat/running-1", "d1"), ("cat/unsent-1", "d1"), ("cat/theirs-1", "d2"),
                       ("cat/done-1", "d1"), ("cat/other-done-1", "d2")):
        q.delegate(key, drone, TERM - 1, 0.0, 1e12)
    q.complete("cat/done-1", "d1", TERM - 1, RESULT, 0.0)
    q.complete("cat/other-done-1", "d2", TERM - 1, RESULT, 0.0)
    hello(broker, node, "d1", slots=4, running=[["cat/running-1", 3], ["cat/theirs-1", 3]],
          uploads=[["cat/done-1", 3], ["cat/other-done-1", 3]])
    [welcome] = node.take(Welcome, "d1")
    assert welcome.adopt == [["cat/running-1", TERM - 1]]
    assert sorted(welcome.drop) == ["cat/other-done-1", "cat/theirs-1"]
    assert [s.key for s in node.take(Stored, "d1")] == ["cat/done-1"]
    assert jobs(node, "d1") == ["cat/unsent-1"]
    assert broker.drones["d1"].running == {"cat/running-1", "cat/unsent-1"}
    assert [c[1:] for c in node.commits if c[0] == "renew"] == [("d1", TERM, clock.wall() + 3.0, ["cat/running-1"])]


def test_a_failure_report_for_a_job_not_given_is_rejected_and_not_counted(make, caplog):
    broker, node = make()
    submit(node, "cat/x-1")
    hello(broker, node, "d1")
    hello(broker, node, "d2")
    [holder] = [d for d in ("d1", "d2") if jobs(node, d)]
    other = "d2" if holder == "d1" else "d1"
    with caplog.at_level(logging.WARNING, logger="swarmmesh.broker"):
        broker.handle(other.encode(), JobFailed(drone=other, key="cat/x-1", term=TERM, error="lies"))
        broker.handle(other.encode(), JobFailed(drone=other, key="cat/nope-1", term=TERM, error="lies"))
    assert [c.key for c in node.take(Cancel, other)] == ["cat/x-1", "cat/nope-1"]
    assert "not delegated to it" in caplog.text
    assert node.pending == [] and state(node, "cat/x-1") == (DELEGATED, holder)
    assert node.queue.drone_streak(other) == 0


def test_messages_whose_sender_is_not_the_drone_they_name_are_dropped(make, caplog):
    broker, node = make()
    submit(node, "cat/x-1")
    hello(broker, node, "d1")
    node.sent.clear()
    with caplog.at_level(logging.WARNING, logger="swarmmesh.broker"):
        broker.handle(b"impostor", Bye(drone="d1", hand_back=["cat/x-1"]))
        broker.handle(b"impostor", JobFailed(drone="d1", key="cat/x-1", term=TERM, error="x"))
    assert "claiming to be drone 'd1'" in caplog.text
    assert node.pending == [] and node.sent == [] and state(node, "cat/x-1") == (DELEGATED, "d1")


def test_an_unknown_drone_is_asked_to_say_hello_and_a_follower_names_the_leader(make):
    broker, node = make()
    broker.handle(b"d9", Heartbeat(drone="d9", running=[]))
    [nl] = node.take(NotLeader, "d9")
    assert (nl.leader, nl.broker) == ("orch-1", _addr(1).broker_url)
    broker.on_leadership(None)
    node.raft_leader = "orch-2"
    broker.handle(b"d9", Hello(drone="d9", cores=1, slots=1, builder="simulated"))
    [nl] = node.take(NotLeader, "d9")
    assert (nl.leader, nl.broker) == ("orch-2", _addr(2).broker_url)
    assert "d9" not in broker.drones


def test_bye_hands_jobs_back_without_charging_an_attempt(make):
    broker, node = make()
    submit(node, "cat/a-1")
    hello(broker, node, "d1")
    assert jobs(node) == ["cat/a-1"]
    broker.handle(b"d1", Bye(drone="d1", hand_back=["cat/a-1", "cat/not-mine-1"]))
    node.flush()
    assert sorted(a.key for a in node.take(Ack, "d1")) == ["cat/a-1", "cat/not-mine-1"]
    pkg = node.queue.get("cat/a-1")
    assert (pkg.state, pkg.attempts) == (NEEDED, 0) and "d1" not in broker.drones


def test_balance_reclaims_leases_of_drones_without_a_session(make):
    broker, node = make()
    submit(node, "cat/a-1", "cat/b-1")
    node.queue.delegate("cat/a-1", "gone", TERM, 0.0, 1e12)
    hello(broker, node, "d1")
    assert jobs(node) == ["cat/b-1"]
    replies: list[dict] = []
    broker.balance(replies.append)
    node.flush()
    assert replies == [{"requeued": ["cat/a-1"], "drones": ["d1"], "unqueued": [], "error": None}]
    assert state(node, "cat/a-1")[0] == NEEDED and state(node, "cat/b-1")[0] == DELEGATED


def test_balance_asks_drones_that_queue_to_hand_back_unstarted_jobs(make, clock):
    broker, node = make()
    submit(node, "cat/a-1", "cat/b-1")
    hello(broker, node, "fast", slots=1, queue=1)
    hello(broker, node, "plain", slots=1)
    hello(broker, node, "idle", slots=1, queue=1)
    node.take(Job)
    replies: list[dict] = []
    broker.balance(replies.append)
    assert replies == [{"requeued": [], "drones": ["fast", "idle", "plain"], "unqueued": ["fast"], "error": None}]
    [unqueue] = node.take(protocol.Unqueue, "fast")  # plain cannot queue, idle holds nothing
    assert unqueue.reason == "balance" and node.take(protocol.Unqueue) == []


def test_a_delegation_committed_after_a_rehello_still_reaches_the_drone(make):
    broker, node = make()
    submit(node, "cat/a-1")
    broker.handle(b"d1", Hello(drone="d1", cores=1, slots=1, builder="simulated"))
    # the drone says hello again before the first delegation is committed
    broker.handle(b"d1", Hello(drone="d1", cores=1, slots=1, builder="simulated"))
    node.flush()
    assert jobs(node, "d1") == ["cat/a-1"]
    assert state(node, "cat/a-1") == (DELEGATED, "d1")
    complete(broker, node, "cat/a-1", "d1")
    assert state(node, "cat/a-1")[0] == RECEIVED


def test_a_busy_drone_gets_its_job_requeued_without_an_attempt_charged(make, clock):
    broker, node = make()
    submit(node, "cat/a-1")
    hello(broker, node, "d1")
    assert jobs(node) == ["cat/a-1"]
    broker.handle(b"d1", Busy(drone="d1", key="cat/a-1", term=TERM))
    node.flush()
    pkg = node.queue.get("cat/a-1")
    assert (pkg.state, pkg.attempts, pkg.failed_on) == (NEEDED, 0, [])
    broker.dispatch()
    node.flush()
    assert jobs(node) == []  # the drone rests for a heartbeat
    clock.t += 1.5
    broker.dispatch()
    node.flush()
    assert jobs(node) == ["cat/a-1"]


def test_a_submission_s_new_packages_are_delegated_in_the_same_entry(make):
    broker, node = make()
    hello(broker, node, "d1", slots=2)
    hello(broker, node, "d2", slots=1)
    submit(node, "cat/old-1")  # already queued: left to the ordinary dispatch
    node.pending.append(("submit", ("b9", "test", [(k, k, None) for k in ("cat/old-1", "cat/a-1", "cat/b-1",
                                                                          "cat/c-1", "cat/d-1")],
                                    {"cat/b-1": ["cat/a-1"]}, 0.0), None))
    broker.dispatch_new(["cat/old-1", "cat/a-1", "cat/b-1", "cat/c-1", "cat/d-1"], {"cat/b-1": ["cat/a-1"]})
    assert [(c, a[0]) for c, a, _ in node.pending] == [
        ("submit", "b9"), ("delegate", "cat/a-1"), ("delegate", "cat/c-1"), ("delegate", "cat/d-1")]
    node.flush()  # one entry: the submit applies first, so the delegations are valid
    assert sorted(jobs(node)) == ["cat/a-1", "cat/c-1", "cat/d-1"]
    assert state(node, "cat/b-1")[0] == "needed" and state(node, "cat/old-1")[0] == "needed"


def test_a_refused_submission_only_fails_its_guessed_delegations(make):
    broker, node = make()
    hello(broker, node, "d1")
    broker.dispatch_new(["cat/a-1"], None)  # its submit never applies
    node.flush()
    assert jobs(node) == [] and broker.drones["d1"].free == 1
    submit(node, "cat/a-1")
    broker.dispatch()
    node.flush()
    assert jobs(node) == ["cat/a-1"]
