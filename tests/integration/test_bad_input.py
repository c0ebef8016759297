"""Bad input against a real cluster: clear errors, nothing queued, nobody crashes."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from swarmmesh.errors import BadAtomsError, InputError
from tests.integration.conftest import swarmmesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
log = logging.getLogger(__name__)


def _post(c, body: bytes, ctype: str = "text/plain") -> tuple[int, dict]:
    req = urllib.request.Request(c.gateway_url + "/build", data=body, method="POST",
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {c.token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from swarmmesh.harness import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("bad") / "cluster", orchestrators=3, drones=0)
    c.up()
    c.leader(timeout=20)
    yield c
    c.down()


def _total(c) -> int:
    return c.api.status()["counts"]["total"]


def test_invalid_atoms_rejected_whole(cluster):
    body = b"=app-misc/good-1.0\nnot an atom\n>=app-misc/range-1\n=app-misc/also-good-2.0\n"
    status, data = _post(cluster, body)
    assert status == 400
    assert [line[0] for line in data["bad_lines"]] == [2, 3]
    with pytest.raises(BadAtomsError):
        cluster.api.submit_packages(["=app-misc/ok-1.0", "app-misc/unversioned"])
    assert _total(cluster) == 0


@pytest.mark.parametrize(("body", "ctype", "status", "needle"), [
    (b"", "text/plain", 400, "empty"),
    (b"\xff\xfe=app-misc/x-1.0\n", "text/plain", 400, "UTF-8"),
    (b"{not json", "application/json", 400, "JSON"),
    (b'{"packages": [1, 2]}', "application/json", 400, ""),
])
def test_malformed_bodies(cluster, body, ctype, status, needle):
    got, data = _post(cluster, body, ctype)
    assert got == status
    assert needle.lower() in data["error"].lower()
    assert _total(cluster) == 0


class Dropped(AssertionError):
    """The gateway closed the connection without an HTTP answer (what a 413 must not look like)."""


def _upload(c, head: bytes, chunks: Iterator[bytes]) -> tuple[int, dict]:
    """POST /build over a raw socket: the headers, then body chunks until the gateway answers
    (it may refuse before the body ends), then that answer. Raises Dropped if none comes, so a
    refused body (413) is told apart from a dropped connection, which urllib cannot do."""
    host, port = urllib.parse.urlsplit(c.gateway_url).hostname, urllib.parse.urlsplit(c.gateway_url).port
    head += f"Authorization: Bearer {c.token}\r\n".encode()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\n" + head + b"\r\n")
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the body ended
            try:
                sock.sendall(chunk)
            except OSError as exc:  # refused mid-body: the answer must still be readable
                log.info("upload stopped: %s", exc)
                break
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                raise Dropped(f"the gateway closed the connection after {len(data)} bytes of answer")
            data += got
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            got = sock.recv(65536)
            if not got:
                raise Dropped(f"the gateway closed the connection {length - len(body)} bytes into its answer")
            body += got
    except ConnectionError as exc:
        raise Dropped(f"the connection was reset instead of answered: {exc}") from None
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _fifty_megabytes(chunk: bytes = b"=app-misc/big-1.0\n" * 4096) -> Iterator[bytes]:
    for _ in range(50 * 1024 * 1024 // len(chunk)):
        yield chunk


def test_a_declared_fifty_megabyte_body_is_refused_with_413(cluster):
    length = 50 * 1024 * 1024 // 18 * 18
    status, data = _upload(cluster, f"Content-Length: {length}\r\n".encode(), _fifty_megabytes())
    assert (status, data["code"]) == (413, "too_large"), data
    assert "16 MiB limit" in data["error"]
    assert _total(cluster) == 0
    assert cluster.api.status()["leader"]  # still serving


def test_a_chunked_body_over_the_limit_is_refused_with_413(cluster):
    """No Content-Length to refuse early: the limit holds while the body is read."""
    chunked = (b"%x\r\n%s\r\n" % (len(c), c) for c in _fifty_megabytes())
    status, data = _upload(cluster, b"Transfer-Encoding: chunked\r\n", chunked)
    assert (status, data["code"]) == (413, "too_large"), data
    assert _total(cluster) == 0


def test_cli_reports_bad_lines_and_exit_2(cluster, tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("=app-misc/fine-1.0\n=app-misc/broken-\n")
    proc = swarmmesh("submit", str(bad), "--gateway", cluster.gateway_url, "--token", cluster.token)
    assert proc.returncode == 2
    assert "line 2" in proc.stderr.decode()
    assert _total(cluster) == 0
    with pytest.raises(InputError):
        cluster.api.submit_text("")


def test_emerge_pretend_output_is_accepted_in_order(cluster):
    fixture = (__import__("pathlib").Path(__file__).parents[3] / "shared" / "fixtures" / "emerge-pretend-world.txt")
    if not fixture.exists():
        pytest.skip(f"fixture {fixture} not found")
    res = cluster.api.submit_text(fixture.read_text(), client="pretend")
    assert res["count"] == 9
    keys = [p["key"] for p in cluster.api.swarm()["packages"]]
    assert keys[0].startswith("sys-libs/zlib-1.3.1-r1") and keys[-1] == "x11-themes/my-theme-1.0::localrepo"
    cluster.api.reset()
    assert _total(cluster) == 0
