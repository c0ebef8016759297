"""The gateway against three stand-in orchestrators made of real ZeroMQ sockets.

Each stand-in is a thread with a ROUTER (answers Requests through a replaceable handler) and
a PUB (NodeInfo, and LeaderInfo while it leads, every 50 ms). The gateway runs in-process in
a thread with its own event loop; the tests talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from swarmmesh import keys, protocol
from swarmmesh.api import GatewayClient
from swarmmesh.config import GatewayConfig, NodeConfig, OrchestratorAddr, QueuePolicy, RaftTuning
from swarmmesh.errors import BadAtomsError, NoLeaderError, RefusedError
from swarmmesh.gateway import ClusterView, Gateway, choose_binhost
from swarmmesh.protocol import LeaderInfo, NodeInfo, Reply, Request
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(30)


def ok_handler(node: StandIn, req: Request) -> Reply | None:
    return Reply(req_id=req.req_id, ok=True, result={"node": node.name, "op": req.op, "counts": {"total": 7}})


class StandIn(threading.Thread):
    """A fake orchestrator: real sockets, scripted behaviour."""

    def __init__(self, ctx: zmq.Context, name: str, index: int):
        super().__init__(daemon=True, name=f"standin-{name}")
        self.name = name
        self.router = ctx.socket(zmq.ROUTER)
        self.pub = ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind("tcp://127.0.0.1:*")
        self.addr = OrchestratorAddr(
            name=name, host="127.0.0.1", raft_port=40001 + index, broker_port=self._port(self.router),
            artifacts_port=40011 + index, events_port=self._port(self.pub), binhost_port=40021 + index)
        self.term, self.leader, self.leading, self.silent = 1, None, False, False
        self.handler: Callable[[StandIn, Request], Reply | None] = ok_handler
        self.requests: list[Request] = []
        self.stopping, self.unplug = threading.Event(), threading.Event()

    @staticmethod
    def _port(sock: zmq.Socket) -> int:
        return int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])

    @property
    def binhost(self) -> str:
        return f"http://127.0.0.1:{self.addr.binhost_port}/{self.name}/"

    def lead(self, term: int) -> None:
        self.term, self.leader, self.leading = term, self.name, True

    def run(self) -> None:
        next_pub = 0.0
        try:
            while not self.stopping.is_set():
                if self.unplug.is_set() and not self.router.closed:
                    self.router.close(linger=0)
                if self.router.closed:
                    self.stopping.wait(0.01)
                elif self.router.poll(10):
                    self._answer(*self.router.recv_multipart())
                if time.monotonic() >= next_pub and not self.silent:
                    self._publish()
                    next_pub = time.monotonic() + 0.05
        finally:
            self.router.close(linger=0)
            self.pub.close(linger=0)

    def _answer(self, identity: bytes, frame: bytes) -> None:
        req = protocol.decode(frame)
        self.requests.append(req)
        reply = self.handler(self, req)
        if reply is not None:
            self.router.send_multipart([identity, protocol.encode(reply)])

    def _publish(self) -> None:
        role = "leader" if self.leading else "follower"
        node = NodeInfo(name=self.name, role=role, term=self.term, leader=self.leader, sent_at=time.time())
        self.pub.send_multipart([protocol.TOPIC_NODE, protocol.encode(node)])
        if self.leading:
            info = LeaderInfo(name=self.name, term=self.term, broker="", artifacts="", events="",
                              binhost=self.binhost, sent_at=time.time())
            self.pub.send_multipart([protocol.TOPIC_LEADER, protocol.encode(info)])


TOKEN = "t" * 32  # the stand-in gateway's one admin token, named "tester"


class GatewayThread:
    """A Gateway on its own event loop, so the test thread can use blocking HTTP."""

    def __init__(self, config: NodeConfig, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(config, host="127.0.0.1", port=0, **kwargs)
        self.run(self.gateway.start())

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 15.0, token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
        """A request with the admin token (`token=None`: without one)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.gateway.port, timeout=timeout)
        headers = dict(headers or {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, headers: dict | None = None, **kwargs) -> tuple[int, dict]:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {**({"Content-Type": "application/json"} if payload is not None else {}), **(headers or {})}
        status, head, data = self.http(method, path, body, headers, **kwargs)
        assert head["content-type"].startswith("application/json"), (status, head, data)
        return status, json.loads(data)


def make_config(addrs: list[OrchestratorAddr], tmp_path: Path) -> NodeConfig:
    return NodeConfig(path=tmp_path / "gw.toml", name="gw-test", role="gateway", data_dir=tmp_path,
                      secret="", orchestrators=tuple(addrs), gateway=GatewayConfig(tokens={"tester": TOKEN}),
                      raft=RaftTuning(),
                      queue=QueuePolicy(), drone=None)


@pytest.fixture
def nodes():
    ctx = zmq.Context()
    standins = [StandIn(ctx, f"orch-{i}", i) for i in range(3)]
    for s in standins:
        s.start()
    yield standins
    for s in standins:
        s.stopping.set()
    for s in standins:
        s.join(5)
    ctx.destroy(linger=0)  # never hang the run in zmq_ctx_term on a socket left open


@pytest.fixture
def start_gateway(nodes, tmp_path):
    started: list[GatewayThread] = []

    def start(**kwargs) -> GatewayThread:
        gw = GatewayThread(make_config([s.addr for s in nodes], tmp_path), **kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.close()


def binhost_of(gw: GatewayThread) -> str | None:
    status, _, body = gw.http("GET", "/binhost")
    return body.decode().strip() if status == 200 else None


def led_by(gw: GatewayThread, node: StandIn) -> GatewayThread:
    node.lead(node.term)
    wait_until(lambda: binhost_of(gw) == node.binhost, 5, what=f"{node.name} to lead")
    return gw


# --- the cluster view, without sockets -----------------------------------------------------

def _leader(name: str, term: int) -> LeaderInfo:
    return LeaderInfo(name=name, term=term, broker="", artifacts="", events="", binhost=f"http://{name}/")


def _node(name: str, term: int, leader: str | None) -> NodeInfo:
    return NodeInfo(name=name, role="follower", term=term, leader=leader)


def _view() -> ClusterView:
    addrs = [OrchestratorAddr(n, "127.0.0.1", 1, 2, 3, 4, 5) for n in ("a", "b", "c")]
    return ClusterView(addrs, window=2.0)


def test_view_prefers_the_highest_term_and_forgets_a_silent_leader():
    view = _view()
    view.heard(_leader("a", 3), now=10.0)
    view.heard(_leader("b", 2), now=10.5)
    assert view.leader(11.0).name == "a"
    assert choose_binhost(view, 11.0) == "http://a/"
    assert view.leader(12.2).name == "b"       # a silent for 2.2 s; b's older-term beacon still fresh
    assert view.leader(13.0) is None


def test_view_forgets_a_leader_deposed_by_a_newer_term():
    view = _view()
    view.heard(_leader("a", 3), now=10.0)
    view.heard(_node("c", 4, None), now=10.1)  # an election in progress names nobody: keep a
    assert view.leader(10.2).name == "a"
    view.heard(_node("b", 4, "b"), now=10.3)
    assert view.leader(10.4) is None
    assert view.candidates(10.4)[:2] == ["b", "c"]


def test_view_ignores_strangers_and_reports_health():
    view = _view()
    view.heard(_leader("zz", 9), now=1.0)
    view.heard(_node("b", 1, "a"), now=1.0)
    assert view.leader(1.0) is None
    assert view.candidates(1.0) == ["a", "b", "c"]
    rows = {row["name"]: row for row in view.describe(2.5)}
    assert rows["b"]["healthy"] is True and rows["b"]["last_seen"] == 1.5
    assert rows["a"] == {"name": "a", "role": None, "healthy": False, "term": None, "last_seen": None,
                         "broker": "tcp://127.0.0.1:2", "binhost": "http://127.0.0.1:5/"}
    assert view.describe(3.5)[1]["healthy"] is False


# --- leadership over real sockets ----------------------------------------------------------

def test_binhost_follows_a_new_leader_within_a_second(nodes, start_gateway):
    a, b, _ = nodes
    gw = led_by(start_gateway(), a)
    b.lead(2)                                  # a keeps publishing its stale term-1 beacon
    started = time.monotonic()
    wait_until(lambda: binhost_of(gw) == b.binhost, 1.0, what="the gateway to follow b")
    assert time.monotonic() - started < 1.0
    status, body = gw.json("GET", "/status")
    assert status == 200
    assert (body["leader"], body["term"], body["binhost"]) == ("orch-1", 2, b.binhost)
    assert body["counts"] == {"total": 7}
    assert body["gateway"]["name"] == "gw-test" and body["gateway"]["uptime"] >= 0
    assert [o["name"] for o in body["orchestrators"]] == ["orch-0", "orch-1", "orch-2"]
    wait_until(lambda: all(o["healthy"] for o in gw.json("GET", "/status")[1]["orchestrators"]), 5,
               what="every stand-in to be heard")
    assert body["orchestrators"][1]["broker"] == b.addr.broker_url


def test_a_silent_leader_is_forgotten(nodes, start_gateway):
    a = nodes[0]
    gw = led_by(start_gateway(health_window=0.5), a)
    a.silent = True
    wait_until(lambda: gw.http("GET", "/binhost")[0] == 503, 3, what="the silent leader to be forgotten")


def test_no_leader_gives_503(nodes, start_gateway):
    for node in nodes:
        node.handler = lambda n, r: Reply(req_id=r.req_id, ok=False, code="not_leader", error="no",
                                           leader=None, result={})
    gw = start_gateway(request_timeout=1.0)
    wait_until(lambda: all(o["healthy"] for o in gw.json("GET", "/status")[1]["orchestrators"]), 5,
               what="all stand-ins to be heard")
    status, body = gw.json("GET", "/binhost")
    assert status == 503 and "no orchestrator leads" in body["error"]
    started = time.monotonic()
    status, body = gw.json("POST", "/build", {"packages": ["app-misc/foo-1"]})
    assert status == 503 and body["code"] in ("not_leader", "no_leader")
    assert time.monotonic() - started < 3
    status, body = gw.json("GET", "/status")
    assert status == 200 and body["leader"] is None and body["counts"] is None


# --- forwarding ----------------------------------------------------------------------------

def test_build_json_is_forwarded_with_its_args(nodes, start_gateway):
    a = nodes[0]
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=True, result={"batch": "b-1", "count": 2, "new": 1})
    gw = led_by(start_gateway(), a)
    payload = {"packages": ["app-misc/foo-1", "dev-libs/bar-2"], "client": "laptop",
               "deps": {"app-misc/foo-1": ["dev-libs/bar-2"]}}
    status, body = gw.json("POST", "/build", payload)
    assert (status, body) == (202, {"batch": "b-1", "count": 2, "new": 1})
    req = a.requests[-1]
    assert req.op == "submit" and req.args == payload


def test_build_text_takes_the_client_from_query_or_header(nodes, start_gateway):
    a = nodes[0]
    gw = led_by(start_gateway(), a)
    text = "[ebuild  N     ] app-misc/foo-1::gentoo\n"
    assert gw.http("POST", "/build?client=ci", text.encode(), {"Content-Type": "text/plain"})[0] == 202
    assert a.requests[-1].args == {"text": text, "client": "ci"}
    assert gw.http("POST", "/build", b"app-misc/foo", {"X-Swarm-Client": "desk"})[0] == 202
    assert a.requests[-1].args == {"text": "app-misc/foo", "client": "desk"}
    assert gw.http("POST", "/build", b"app-misc/foo")[0] == 202
    assert a.requests[-1].args["client"] == "anonymous"


@pytest.mark.parametrize(("code", "result", "http_status", "extra"), [
    ("invalid", {"bad_lines": [[1, "x y", "not an atom"]]}, 400, {"bad_lines": [[1, "x y", "not an atom"]]}),
    ("refused", {"needed": 2, "delegated": 1}, 409, {"needed": 2, "delegated": 1}),
    ("not_committed", {}, 503, {}),
    ("unavailable", {}, 503, {}),
])
def test_reply_codes_map_to_http(nodes, start_gateway, code, result, http_status, extra):
    a = nodes[0]
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=False, code=code, error=f"said {code}", result=result)
    gw = led_by(start_gateway(), a)
    status, body = gw.json("POST", "/finalize", {"force": False})
    assert status == http_status
    assert body["error"] == f"said {code}" and body["code"] == code
    assert {k: body[k] for k in extra} == extra


def test_not_leader_reply_redirects_to_the_hinted_node(nodes, start_gateway):
    a, b, c = nodes
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=False, code="not_leader", error="ask b", leader=b.name,
                                       result={})
    gw = led_by(start_gateway(), a)
    status, body = gw.json("GET", "/swarm")
    assert status == 200 and body["node"] == b.name and body["op"] == "swarm"
    assert [len(n.requests) for n in nodes] == [1, 1, 0]


def test_a_leader_that_never_answers_times_out_without_retrying_elsewhere(nodes, start_gateway):
    a = nodes[0]
    a.handler = lambda n, r: None
    gw = led_by(start_gateway(request_timeout=1.0), a)
    started = time.monotonic()
    status, body = gw.json("POST", "/build", {"packages": ["app-misc/foo-1"]})
    assert status == 504 and "did not answer" in body["error"]
    assert time.monotonic() - started < 3
    assert [len(n.requests) for n in nodes] == [1, 0, 0]   # it may still commit: never sent twice


def test_an_unreachable_leader_is_skipped_at_once(nodes, start_gateway):
    a, b, _ = nodes
    gw = led_by(start_gateway(request_timeout=3.0), a)
    a.unplug.set()                             # its PUB still says it leads; its ROUTER is gone
    wait_until(lambda: a.router.closed, 5, what="a's ROUTER to close")
    started = time.monotonic()
    status, body = gw.json("GET", "/swarm")
    assert status == 200 and body["node"] == b.name
    assert time.monotonic() - started < 1.0 and a.requests == []


def test_operator_endpoints_forward_their_args(nodes, start_gateway):
    a = nodes[0]
    gw = led_by(start_gateway(), a)
    assert gw.json("POST", "/finalize", {"force": True})[0] == 200
    assert gw.http("POST", "/finalize")[0] == 200
    assert gw.json("POST", "/unblock", {"keys": ["app-misc/foo-1"]})[0] == 200
    assert gw.http("POST", "/balance")[0] == 200
    status, body = gw.json("POST", "/reset", {})
    assert status == 400 and "confirm" in body["error"]
    assert gw.json("POST", "/reset", {"confirm": True})[0] == 200
    assert [(r.op, r.args) for r in a.requests] == [
        ("finalize", {"force": True}), ("finalize", {"force": False}),
        ("unblock", {"keys": ["app-misc/foo-1"]}), ("balance", {}), ("reset", {"confirm": True})]


MUTATIONS = [("/build", {"packages": ["app-misc/foo-1"]}, "submit"), ("/finalize", {}, "finalize"),
             ("/balance", {}, "balance"), ("/unblock", {}, "unblock"), ("/reset", {"confirm": True}, "reset"),
             ("/rollback", {"release": "r-1"}, "rollback")]


@pytest.mark.parametrize(("path", "payload", "op"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_every_mutating_endpoint_needs_a_valid_token(nodes, start_gateway, path, payload, op, caplog):
    """No token: 401; a wrong one: 403; both with a JSON reason and nothing forwarded. The
    right one goes through, and the log names the token."""
    a = nodes[0]
    gw = led_by(start_gateway(), a)
    status, body = gw.json("POST", path, payload, token=None)
    assert status == 401 and body["code"] == "unauthorized" and "Authorization: Bearer" in body["error"]
    status, body = gw.json("POST", path, payload, token="w" * 32)
    assert status == 403 and body["code"] == "forbidden" and "[gateway.tokens]" in body["error"]
    status, body = gw.json("POST", path, payload, headers={"Authorization": "Basic dXNlcjpwdw=="}, token=None)
    assert status == 401
    assert a.requests == []
    with caplog.at_level(logging.INFO, logger="swarmmesh.tokens"):
        status, _ = gw.json("POST", path, payload)
    assert status in (200, 202) and [r.op for r in a.requests] == [op]
    assert f"POST {path} by token 'tester'" in caplog.text


def test_reads_are_open_unless_closed_in_the_config(nodes, tmp_path):
    closed = make_config([s.addr for s in nodes], tmp_path)
    closed = dataclasses.replace(closed, gateway=dataclasses.replace(closed.gateway, open_reads=False))
    gw = GatewayThread(closed)
    try:
        assert gw.http("GET", "/status", token=None)[0] == 401
        assert gw.http("GET", "/swarm", token="w" * 32)[0] == 403
        assert gw.http("GET", "/status")[0] == 200
    finally:
        gw.close()


def test_post_build_is_rate_limited_per_client(nodes, tmp_path):
    a = nodes[0]
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=True, result={"batch": "b-1", "count": 1, "new": 1})
    config = make_config([s.addr for s in nodes], tmp_path)
    config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, build_rate=6.0))
    gw = led_by(GatewayThread(config), a)
    try:
        answers = [gw.json("POST", "/build", {"packages": ["app-misc/foo-1"]}) for _ in range(6)]
        assert [status for status, _ in answers] == [202] * 5 + [429]  # a burst of 5, then 6 a minute
        assert answers[-1][1]["code"] == "rate_limited" and "retry in" in answers[-1][1]["error"]
        assert gw.json("POST", "/finalize", {})[0] == 200  # other endpoints are not limited
    finally:
        gw.close()


def test_the_api_client_understands_the_gateway(nodes, start_gateway):
    a = nodes[0]
    gw = led_by(start_gateway(request_timeout=1.0, health_window=0.5), a)
    client = GatewayClient(gw.gateway.url, timeout=10, token=TOKEN)
    assert client.binhost() == a.binhost
    assert client.status()["leader"] == a.name
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=False, code="invalid", error="1 invalid line(s)",
                                   result={"bad_lines": [[2, "foo bar", "not an atom"]]})
    with pytest.raises(BadAtomsError) as info:
        client.submit_text("app-misc/foo\nfoo bar\n")
    assert info.value.bad_lines == [(2, "foo bar", "not an atom")]
    a.handler = lambda n, r: Reply(req_id=r.req_id, ok=False, code="refused", error="finalize refused",
                                   result={"needed": 3, "delegated": 0})
    with pytest.raises(RefusedError, match="needed: 3, delegated: 0"):
        client.finalize()
    a.leading = False
    wait_until(lambda: binhost_of(gw) is None, 5, what="the leader to be forgotten")
    with pytest.raises(NoLeaderError, match="no orchestrator leads"):
        client.binhost()


# --- the HTTP edge -------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    (b"\xff\xfeapp-misc/foo", {}, 400, "not valid UTF-8"),
    (b"", {}, 400, "empty request body"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "malformed JSON"),
    (b"[1, 2]", {"Content-Type": "application/json"}, 400, "must be an object"),
    (b'{"packages": "app-misc/foo"}', {"Content-Type": "application/json"}, 400, "non-empty list"),
    (b"a" * (17 * 1024 * 1024), {}, 413, "16 MiB"),
])
def test_bad_bodies_never_reach_the_cluster(nodes, start_gateway, body, headers, status, words):
    gw = led_by(start_gateway(), nodes[0])
    got, head, data = gw.http("POST", "/build", body, headers)
    assert got == status and head["content-type"].startswith("application/json")
    assert words in json.loads(data)["error"]
    assert nodes[0].requests == []


def test_unknown_route_and_wrong_method_answer_json(start_gateway):
    gw = start_gateway()
    status, body = gw.json("GET", "/nope")
    assert status == 404 and "/status" in body["error"]
    status, head, data = gw.http("GET", "/build")
    assert status == 405 and head["allow"] == "POST" and "not allowed" in json.loads(data)["error"]


def test_an_internal_error_is_a_500_and_the_gateway_keeps_serving(nodes, start_gateway):
    gw = led_by(start_gateway(), nodes[0])

    async def boom(*args, **kwargs):
        raise RuntimeError("bug")

    real, gw.gateway.forwarder.call = gw.gateway.forwarder.call, boom
    status, body = gw.json("GET", "/swarm")
    assert status == 500 and "internal" in body["error"]
    gw.gateway.forwarder.call = real
    assert gw.json("GET", "/swarm")[0] == 200


# --- the process ---------------------------------------------------------------------------

def test_run_gateway_prints_its_readiness_line_and_stops_on_sigterm(tmp_path):
    port = free_port()
    entries = "".join(
        f'[[orchestrators]]\nname = "o{i}"\nhost = "127.0.0.1"\nraft_port = {41000 + 10 * i}\n'
        f"broker_port = {41001 + 10 * i}\nartifacts_port = {41002 + 10 * i}\nevents_port = {41003 + 10 * i}\n"
        f"binhost_port = {41004 + 10 * i}\n" for i in range(3))
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[node]\nname = "gw-1"\nrole = "gateway"\n[gateway]\nport = {port}\n{entries}')
    for name in ("gw-1", "o0", "o1", "o2"):  # its key pair and the orchestrators' public keys
        keys.keygen(name, tmp_path / "keys")
    code = ("import sys; from swarmmesh.config import load_config; from swarmmesh.gateway import run_gateway;"
            " run_gateway(load_config(sys.argv[1]))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code, str(conf)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no readiness line within 15 s"
        assert proc.stdout.readline().decode() == "swarmmesh gateway gw-1 ready\n"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/binhost")
        assert conn.getresponse().status == 503
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
