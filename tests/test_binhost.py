"""The binhost HTTP server: current release, staging feed, store, and nothing else."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.client
import json
import os
from pathlib import Path

import pytest

from swarmmesh import binhost, gentoo, peerauth, staging
from swarmmesh.binhost import Binhost
from swarmmesh.config import OrchestratorAddr
from swarmmesh.errors import ConfigError
from swarmmesh.gateway import ClusterView, choose_binhost
from swarmmesh.protocol import LeaderInfo, NodeInfo
from tests.fakes import publish, receive, serve_binhost, store_gpkg

PEER_KEY = peerauth.peer_key("s" * 16)  # the fake node's cluster secret (tests/fakes.py)


@pytest.fixture
def served(node):
    host = serve_binhost(node)
    yield node, host
    host.close()


def get(host: Binhost, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A GET as a peer would send it (signed; the binhost's other paths ignore the header)."""
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        signed = {peerauth.HEADER: peerauth.sign(PEER_KEY, "GET", path)}
        conn.request("GET", path, headers={**signed, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_serves_the_current_release_with_ranges_and_if_modified_since(served):
    node, host = served
    assert get(host, "/Packages")[0] == 404  # no release yet
    info = store_gpkg(node, "app-misc/a-1.0")
    publish(node, "r-1", 1_700_000_000, [info])
    status, headers, body = get(host, "/Packages")
    assert status == 200 and b"CPV: app-misc/a-1.0" in body and b"TIMESTAMP: 1700000000" in body
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp() == 1_700_000_000
    since = email.utils.formatdate(1_700_000_000, usegmt=True)
    assert get(host, "/Packages", {"If-Modified-Since": since})[0] == 304
    assert gzip.decompress(get(host, "/Packages.gz")[2]) == body
    path = "/" + gentoo.gpkg_relpath(info.cpv, 1)
    status, _, whole = get(host, path)
    assert status == 200 and hashlib.sha256(whole).hexdigest() == info.sha256
    status, headers, part = get(host, path, {"Range": "bytes=100-199"})
    assert status == 206 and part == whole[100:200] and headers["Content-Range"].startswith("bytes 100-199/")


def test_a_package_of_the_previous_release_is_still_served_after_the_swap(served):
    node, host = served
    old, new = store_gpkg(node, "app-misc/old-1.0"), store_gpkg(node, "app-misc/new-1.0")
    publish(node, "r-1", 100, [old])
    publish(node, "r-2", 200, [new])
    assert b"app-misc/old-1.0" not in get(host, "/Packages")[2]
    assert get(host, "/" + gentoo.gpkg_relpath(old.cpv, 1))[0] == 200
    assert get(host, "/app-misc/ghost/ghost-1.0-1.gpkg.tar")[0] == 404


@pytest.mark.parametrize("path", [
    "/../store", "/%2e%2e/raft.journal", "/releases/r-1/Packages", "/current/Packages", "/raft.journal",
    "/store/notasha", "/store/../raft.journal", "/entries", "/app-misc/a/..%2f..%2fraft.journal",
    "/staging/../raft.journal", "/app-misc/a/a-1.0-1.txt", "/a/b/c/d.gpkg.tar",
])
def test_nothing_but_release_files_is_reachable(served, path):
    node, host = served
    publish(node, "r-1", 100, [store_gpkg(node, "app-misc/a-1.0")])
    (Path(node.config.data_dir) / "raft.journal").write_text("secret")
    status, _, body = get(host, path)
    assert status in (400, 404) and b"secret" not in body


def test_a_symlink_planted_in_a_release_is_not_followed(served, tmp_path):
    node, host = served
    folder = publish(node, "r-1", 100, [store_gpkg(node, "app-misc/a-1.0")])
    (tmp_path / "outside.txt").write_text("secret")
    (folder / "app-misc" / "a" / "evil-1.0-1.gpkg.tar").symlink_to(tmp_path / "outside.txt")
    assert get(host, "/app-misc/a/evil-1.0-1.gpkg.tar")[0] == 404


def test_staging_feed_store_and_release_endpoints(served):
    node, host = served
    info = store_gpkg(node, "app-misc/s-1.0")
    path = gentoo.gpkg_relpath(info.cpv, 1)
    node.releases.staging = staging.Feed(b"staging index\n", {path: info.sha256})
    assert get(host, "/staging/Packages")[2] == b"staging index\n"
    status, _, body = get(host, "/staging/" + path)
    assert status == 200 and hashlib.sha256(body).hexdigest() == info.sha256
    assert get(host, "/staging/app-misc/x/x-1.0-1.gpkg.tar")[0] == 404
    status, _, body = get(host, f"/store/{info.sha256}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == info.sha256
    assert get(host, "/store/" + "0" * 64)[0] == 404
    receive(node, info)
    node.queue.finalize("r-9", 5000.0, False)
    publish(node, "r-9", 5000, [info])
    assert json.loads(get(host, "/release")[2]) == {
        "node": "o1", "serving": "r-9", "serving_stamp": 5000, "newest": "r-9", "newest_stamp": 5000}


def post(host: Binhost, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={peerauth.HEADER: peerauth.sign(PEER_KEY, "POST", path, body)})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_bundle_carries_many_store_files_in_one_reply(served, monkeypatch):
    node, host = served
    small = [store_gpkg(node, f"app-misc/b{i}-1.0", seed=i) for i in range(3)]
    big = store_gpkg(node, "app-misc/big-1.0", size=40_000)
    monkeypatch.setattr(binhost, "BUNDLE_FILE_MAX", 20_000)
    missing = "f" * 64
    asked = [small[0].sha256, missing, big.sha256, *(i.sha256 for i in small[1:])]
    status, body = post(host, "/store", "\n".join(asked).encode())
    assert status == 200
    got, rest = [], memoryview(body)
    while rest:
        line, _, tail = bytes(rest[:100]).partition(b"\n")
        sha, size = line.decode().split()
        rest = rest[len(line) + 1:]
        data = bytes(rest[:max(int(size), 0)])
        rest = rest[max(int(size), 0):]
        got.append((sha, int(size), hashlib.sha256(data).hexdigest() if data else None))
    assert got == [(small[0].sha256, small[0].size, small[0].sha256), (missing, -1, None), (big.sha256, -1, None),
                   *((i.sha256, i.size, i.sha256) for i in small[1:])]


def test_a_bundle_serves_a_recent_upload_from_memory(served):
    node, host = served
    data = b"recent upload bytes" * 100
    sha = hashlib.sha256(data).hexdigest()
    node.storage.store.recent.put(sha, data)  # not on disk: only memory can answer
    status, body = post(host, "/store", sha.encode())
    assert status == 200 and body == f"{sha} {len(data)}\n".encode() + data


@pytest.mark.parametrize("body", [b"", b"../../etc/passwd", ("a" * 64 + "\n") * 257])
def test_a_bundle_request_names_1_to_256_sha256s(served, body):
    _node, host = served
    status, text = post(host, "/store", body if isinstance(body, bytes) else body.encode())
    assert status == 400 and b"sha256" in text


def test_a_taken_port_is_a_config_error(served):
    node, host = served
    with pytest.raises(ConfigError, match="cannot listen"):
        serve_binhost(node, port=host.port)
    assert os.path.isdir(node.config.data_dir)


# --- the gateway's choice (gateway.choose_binhost) --------------------------------------------

def _view() -> ClusterView:
    view = ClusterView([OrchestratorAddr(n, "127.0.0.1", 1, 2, 3, 4, port) for n, port in
                        (("a", 5001), ("b", 5002), ("c", 5003))], window=2.0)
    view.heard(LeaderInfo(name="a", term=2, broker="", artifacts="", events="", binhost="http://a/"), 10.0)
    for name in "abc":
        view.heard(NodeInfo(name=name, role="x", term=2, leader="a"), 10.0)
    return view


def _serves(view, name: str, serving: int, newest: int, now: float = 10.0) -> None:
    view.binhost_heard(name, {"serving_stamp": serving, "newest_stamp": newest}, now)


def test_binhost_choice_prefers_the_leader_among_those_serving_the_newest_release():
    view = _view()
    assert choose_binhost(view, 10.5) == "http://a/"  # nothing released yet: the leader
    _serves(view, "a", 100, 200)  # the leader is still building release 200
    _serves(view, "b", 200, 200)
    _serves(view, "c", 200, 200)
    assert choose_binhost(view, 10.5) == "http://127.0.0.1:5002/"
    _serves(view, "a", 200, 200, now=10.2)
    assert choose_binhost(view, 10.5) == "http://a/"
    view.binhost_heard("zz", {"serving_stamp": 999, "newest_stamp": 999}, 10.0)  # a stranger
    view.binhost_heard("b", {"serving_stamp": "999", "newest_stamp": 1}, 10.3)  # malformed: ignored
    assert choose_binhost(view, 10.5) == "http://a/"


def test_binhost_choice_skips_silent_nodes_and_serves_without_a_leader():
    view = _view()
    _serves(view, "a", 200, 200)
    _serves(view, "c", 200, 200, now=11.5)
    view.heard(NodeInfo(name="c", role="candidate", term=3, leader=None), 11.5)
    # a fell silent (leader beacon and binhost answers older than the 2 s window): c still serves
    assert choose_binhost(view, 12.5) == "http://127.0.0.1:5003/"
    assert choose_binhost(view, 14.0) is None


def _raw(host: Binhost, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_store_answers_only_requests_signed_with_the_cluster_secret_and_releases_stay_open(served):
    node, host = served
    info = store_gpkg(node, "app-misc/p-1.0")
    publish(node, "r-1", 100, [info])
    path = f"/store/{info.sha256}"
    other = peerauth.peer_key("another cluster's secret")
    assert _raw(host, "GET", path) == 403  # no signature
    assert _raw(host, "GET", path, headers={peerauth.HEADER: peerauth.sign(other, "GET", path)}) == 403
    assert _raw(host, "GET", path, headers={peerauth.HEADER: "junk"}) == 403
    stale = peerauth.sign(PEER_KEY, "GET", path, now=1_000_000)  # replayed long after
    assert _raw(host, "GET", path, headers={peerauth.HEADER: stale}) == 403
    for_another = peerauth.sign(PEER_KEY, "GET", "/store/" + "0" * 64)  # signed for another path
    assert _raw(host, "GET", path, headers={peerauth.HEADER: for_another}) == 403
    body = info.sha256.encode()
    assert _raw(host, "POST", "/store", body) == 403
    wrong_body = {peerauth.HEADER: peerauth.sign(PEER_KEY, "POST", "/store", b"0" * 64)}
    assert _raw(host, "POST", "/store", body, headers=wrong_body) == 403
    assert get(host, path)[0] == 200 and post(host, "/store", body)[0] == 200  # signed: served
    assert _raw(host, "GET", "/Packages") == 200  # plain emerge needs no key
