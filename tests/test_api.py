"""GatewayClient against a tiny http.server stand-in: requests it sends, errors it raises."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from swarmmesh.api import GatewayClient
from swarmmesh.errors import (
    BadAtomsError,
    ClusterError,
    CommitError,
    ConfigError,
    InputError,
    NoLeaderError,
    ProtocolError,
    RefusedError,
)
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)


class FakeGateway(ThreadingHTTPServer):
    """Answers every request with `self.answer` and remembers what it was asked."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.seen: list[dict] = []

    def reply(self, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = (status, content_type, data)


class _Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"method": self.command, "path": self.path, "body": self.rfile.read(length),
                                 "type": self.headers.get("Content-Type")})
        status, content_type, data = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, *args) -> None:
        """Quiet: pytest shows failures, not access logs."""


@pytest.fixture
def server():
    srv = FakeGateway()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def client(server) -> GatewayClient:
    return GatewayClient(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5)


@pytest.mark.parametrize("url", ["https://127.0.0.1:8090", "ftp://h", "http://", "127.0.0.1:8090",
                                 "http://h:99999", "http://h:port", "http://h/?x=1", "file:///etc/passwd"])
def test_only_plain_http_urls_are_accepted(url):
    with pytest.raises(ConfigError, match="http://"):
        GatewayClient(url)


def test_requests_carry_the_right_method_path_and_body(server, client):
    server.reply(200, {"batch": "b-1", "count": 1, "new": 1})
    assert client.submit_text("app-misc/foo\n", client="my laptop") == {"batch": "b-1", "count": 1, "new": 1}
    client.submit_packages(["app-misc/foo-1"], client="ci", deps={"app-misc/foo-1": []})
    client.finalize(force=True)
    client.unblock()
    client.reset()
    client.balance()
    client.swarm()
    client.status()
    got = [(s["method"], s["path"], s["body"]) for s in server.seen]
    assert got == [
        ("POST", "/build?client=my+laptop", b"app-misc/foo\n"),
        ("POST", "/build",
         b'{"packages": ["app-misc/foo-1"], "client": "ci", "deps": {"app-misc/foo-1": []}}'),
        ("POST", "/finalize", b'{"force": true}'),
        ("POST", "/unblock", b'{"keys": null}'),
        ("POST", "/reset", b'{"confirm": true}'),
        ("POST", "/balance", b"{}"),
        ("GET", "/swarm", b""),
        ("GET", "/status", b""),
    ]
    assert server.seen[0]["type"].startswith("text/plain") and server.seen[1]["type"] == "application/json"


def test_binhost_is_the_url_without_its_newline(server, client):
    server.reply(200, b"http://127.0.0.9:8080/\n", "text/plain")
    assert client.binhost() == "http://127.0.0.9:8080/"


@pytest.mark.parametrize(("status", "body", "exc_type", "words"), [
    (400, {"error": "empty request body", "code": "invalid"}, InputError, "empty request body"),
    (413, {"error": "over the 16 MiB limit", "code": "too_large"}, InputError, "16 MiB"),
    (409, {"error": "finalize refused", "code": "refused", "needed": 2, "delegated": 1}, RefusedError,
     "needed: 2, delegated: 1"),
    (503, {"error": "no orchestrator leads", "code": "no_leader"}, NoLeaderError, "no orchestrator leads"),
    (503, {"error": "not leader", "code": "not_leader"}, NoLeaderError, "not leader"),
    (503, {"error": "not committed in time", "code": "not_committed"}, CommitError, "not committed"),
    (503, {"error": "cluster unavailable", "code": "unavailable"}, ClusterError, "cluster unavailable"),
    (504, {"error": "orch-1 did not answer", "code": "timeout"}, ClusterError, "did not answer"),
    (404, {"error": "no such endpoint", "code": "not_found"}, ClusterError, "same swarmmesh version"),
    (500, b"<html>oops</html>", ClusterError, "HTTP 500 and no JSON error"),
])
def test_error_statuses_become_the_right_exception(server, client, status, body, exc_type, words):
    server.reply(status, body)
    with pytest.raises(exc_type) as info:
        client.finalize()
    assert type(info.value) is exc_type
    assert words in str(info.value)


def test_bad_lines_become_a_bad_atoms_error(server, client):
    server.reply(400, {"error": "2 invalid lines", "code": "invalid",
                       "bad_lines": [[1, "foo bar", "not an atom"], [3, "=x", "no version"]]})
    with pytest.raises(BadAtomsError) as info:
        client.submit_text("foo bar\nok/pkg\n=x\n")
    assert info.value.bad_lines == [(1, "foo bar", "not an atom"), (3, "=x", "no version")]
    assert "line 1: 'foo bar' (not an atom)" in str(info.value)


def test_a_non_json_success_is_a_protocol_error(server, client):
    server.reply(200, b"<html>a web server</html>", "text/html")
    with pytest.raises(ProtocolError, match="not JSON"):
        client.status()


def test_connection_refused_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError) as info:
        GatewayClient(url, timeout=2).status()
    assert type(info.value) is ClusterError
    assert f"cannot reach the gateway at {url}" in str(info.value)
    assert "is `swarmmesh gateway` running? (--gateway / SWARMMESH_GATEWAY)" in str(info.value)


def test_a_gateway_that_never_answers_times_out():
    with socket.socket() as sock:               # listens (the kernel completes connects) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ClusterError, match=r"no answer within 0\.3 s; is `swarmmesh gateway` running"):
            GatewayClient(url, timeout=0.3).swarm()
