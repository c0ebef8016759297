"""Orchestrator.step: one pass of the loop at a time the caller gives, on a real one-node
orchestrator (its own Raft, sockets and parts) in this process."""

from __future__ import annotations

import pytest
import zmq

from swarmmesh import cluster, keys, protocol, transport
from swarmmesh.config import load_config
from swarmmesh.orchestrator import EVENT_PERIOD, Orchestrator
from tests.conftest import wait_until

T0, WALL0 = 5_000.0, 1_700_000_000.0


def _admin(config) -> transport.Curve:
    """The key pair `cluster init` made for the admin, as the CLI's admin would use it."""
    return keys.load_curve(config.path.parent / "keys", "admin", config.orchestrators)


@pytest.fixture
def stepped(tmp_path):
    """A one-node orchestrator whose clocks are the test's, leading, and a SUB on its events."""
    paths = cluster.init_cluster(tmp_path, orchestrators=1, drones=0, base_port=0)
    config = load_config(paths[0])
    node = Orchestrator(config, clock=lambda: T0, wall=lambda: WALL0)
    ctx = transport.context(_admin(config))  # CURVE: the events go to authorized keys only
    sub = transport.sub(ctx, [config.me().events_url], [protocol.TOPIC_NODE])
    clock = [T0]

    def leading() -> bool:
        clock[0] += EVENT_PERIOD  # an event every step, until the subscription is through
        node.step(clock[0], WALL0)
        return node.is_leader() and sub.poll(0) != 0

    try:
        wait_until(leading, 20, what="the one node to lead and its events to arrive")
        while sub.poll(100):  # events already on their way (CURVE adds a little latency)
            sub.recv_multipart()
        yield node, sub, clock[0]
    finally:
        sub.close()
        ctx.term()
        node.close()


def _node_infos(sub: zmq.Socket) -> list[protocol.NodeInfo]:
    found = []
    while sub.poll(200):
        _topic, payload = sub.recv_multipart()
        found.append(protocol.decode(payload))
    return found


def test_events_follow_the_time_each_step_is_given(stepped):
    node, sub, now = stepped
    node.step(now + EVENT_PERIOD, wall=WALL0 + 42)
    assert [(i.name, i.role, i.sent_at) for i in _node_infos(sub)] == [("orch-1", "leader", WALL0 + 42)]
    node.step(now + EVENT_PERIOD + 0.1, wall=WALL0 + 43)  # before the next period: nothing
    assert _node_infos(sub) == []
    node.step(now + 2 * EVENT_PERIOD, wall=WALL0 + 44)
    assert [i.sent_at for i in _node_infos(sub)] == [WALL0 + 44]


def test_a_step_answers_what_arrived_and_stamps_commits_with_its_wall_time(stepped):
    node, _sub, now = stepped
    ctx = transport.context(_admin(node.config))
    client = transport.dealer(ctx, node.me.broker_url)
    try:
        client.send(protocol.encode(protocol.Request(op="submit", req_id="r1", args={
            "packages": ["=app-misc/a-1.0"], "client": "t"})))
        replies: list[protocol.Message] = []

        def answered() -> bool:
            node.step(now, wall=WALL0 + 7)
            if client.poll(0):
                replies.append(protocol.decode(client.recv()))
            return bool(replies)

        wait_until(answered, 10, what="the submit to be committed and answered")
        assert isinstance(replies[0], protocol.Reply) and replies[0].ok, replies[0]
        batches = node.read(lambda q: q.snapshot()["batches"])
        assert [b["submitted_at"] for b in batches] == [WALL0 + 7]
    finally:
        client.close(0)
        ctx.term()
