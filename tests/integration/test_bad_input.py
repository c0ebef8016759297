"""Bad input against a real cluster: clear errors, nothing queued, nobody crashes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from swarmmesh.errors import BadAtomsError, InputError
from tests.integration.conftest import swarmmesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _post(url: str, body: bytes, ctype: str = "text/plain") -> tuple[int, dict]:
    req = urllib.request.Request(url + "/build", data=body, method="POST", headers={"Content-Type": ctype})
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
    status, data = _post(cluster.gateway_url, body)
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
    got, data = _post(cluster.gateway_url, body, ctype)
    assert got == status
    assert needle.lower() in data["error"].lower()
    assert _total(cluster) == 0


def test_fifty_megabyte_body_is_refused(cluster):
    body = b"=app-misc/big-1.0\n" * (50 * 1024 * 1024 // 18)
    try:
        status, data = _post(cluster.gateway_url, body)
    except (ConnectionError, urllib.error.URLError):
        status, data = 413, {"error": "connection closed while sending"}  # refused mid-upload
    assert status == 413, data
    assert _total(cluster) == 0
    assert cluster.api.status()["leader"]  # still serving


def test_cli_reports_bad_lines_and_exit_2(cluster, tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("=app-misc/fine-1.0\n=app-misc/broken-\n")
    proc = swarmmesh("submit", str(bad), "--gateway", cluster.gateway_url)
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
