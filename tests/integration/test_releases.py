"""Issue 4 end to end: replicated artifacts, atomic releases, binhosts that Portage installs from.

Real processes (3 orchestrators, drones, gateway) started through the CLI; clients are plain
HTTP, the swarmmesh CLI, and in the last test a real Portage in a gentoo-prefix consumer.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from portage.getbinpkg import PackageIndex

from tests.conftest import wait_until
from tests.integration.conftest import swarmmesh

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

FAST = {"min_seconds": 0.05, "max_seconds": 0.2, "artifact_size": 20_000}
GENTOO_PREFIX = Path(__file__).resolve().parents[3] / "shared" / "gentoo-prefix" / "gentoo-prefix"
VENV_BIN = Path(sys.executable).parent  # where pip put emerge, next to this interpreter
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> bytes:
    with _OPENER.open(url, timeout=10) as resp:
        return resp.read()


def binhost(c, name: str) -> str:
    return c.configs[name].me().binhost_url


def serving(c, name: str) -> str | None:
    return c.ask(name, "releases", timeout=2)["serving"]


def all_serve(c, names: list[str], release: str) -> bool:
    return all(serving(c, n) == release for n in names)


def index(data: bytes) -> PackageIndex:
    idx = PackageIndex(translated_keys=(("repository", "REPO"), ("_mtime_", "MTIME")))
    idx.read(io.StringIO(data.decode()))
    return idx


def check_downloads(url: str, data: bytes) -> int:
    """Every PATH of this Packages downloads from `url` with the SIZE, MD5 and SHA1 it lists."""
    packages = index(data).packages
    for pkg in packages:
        body = http_get(url + pkg["PATH"])
        assert (len(body), hashlib.md5(body).hexdigest(), hashlib.sha1(body).hexdigest()) == (
            int(pkg["SIZE"]), pkg["MD5"], pkg["SHA1"]), f"{pkg['PATH']} from {url}"
    return len(packages)


def wait_received(c, count: int, timeout: float = 30) -> list[dict]:
    def done():
        packages = c.api.swarm()["packages"]
        ok = [p for p in packages if p["state"] == "received" and len(p.get("holders", [])) == 3]
        return packages if len(ok) == count else None

    return wait_until(done, timeout, what=f"{count} packages received and held by all 3")


class Poller(threading.Thread):
    """A client that keeps reading Packages and downloading everything it lists."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.seen, self.errors = url, threading.Event(), {}, []

    def run(self) -> None:
        while not self.stop.is_set():
            data = http_get(self.url + "Packages")
            if data not in self.seen:
                try:
                    self.seen[data] = check_downloads(self.url, data)
                except (AssertionError, OSError) as exc:
                    self.errors.append(repr(exc))


def test_replication_releases_rollback_and_a_lost_file(make_cluster):
    c = make_cluster(orchestrators=3, drones=2, builder_overrides=FAST,
                     cluster_overrides={"scrub_interval": 0.5})  # the corrupt copy below is found in time
    leader = c.leader(timeout=20)
    followers = [n for n in c.orchestrators if n != leader]
    c.api.submit_packages([f"=app-misc/p{i}-1.0" for i in range(6)], client="itest")
    packages = wait_received(c, 6)

    # finalize: every orchestrator builds the same release, byte for byte
    out = swarmmesh("finalize", "--gateway", c.gateway_url, "--token", c.token)
    assert out.returncode == 0, out.stderr.decode()
    first = c.api.releases()["current"]
    wait_until(lambda: all_serve(c, c.orchestrators, first), 15, what="all three to serve the release")
    indexes = {http_get(binhost(c, n) + "Packages") for n in c.orchestrators}
    assert len(indexes) == 1
    old = indexes.pop()
    assert check_downloads(binhost(c, followers[0]), old) == 6
    wait_until(lambda: c.api.binhost() == binhost(c, leader), 5, what="/binhost: the leader, serving it too")
    listing = swarmmesh("releases", "--gateway", c.gateway_url, "--token", c.token)
    assert listing.returncode == 0 and f"* {first}" in listing.stdout.decode()

    # corrupt a follower's stored file (and so its release's hard link): found and fetched again
    victim, sha = followers[0], packages[0]["sha256"]
    stored = Path(c.configs[victim].data_dir) / "store" / sha[:2] / sha
    spoiled = bytearray(stored.read_bytes())
    spoiled[len(spoiled) // 2] ^= 0xFF
    stored.write_bytes(bytes(spoiled))

    # a second release while clients read: each sees the old or the new index, whole
    c.api.submit_packages([f"=app-misc/q{i}-1.0" for i in range(4)], client="itest")
    wait_received(c, 10)
    pollers = [Poller(binhost(c, n)) for n in (leader, followers[1])]
    for p in pollers:
        p.start()
    wait_until(lambda: all(p.seen for p in pollers), 10, what="the pollers to read the old index")
    second = c.api.finalize()["release"]
    wait_until(lambda: all_serve(c, c.orchestrators, second), 15, what="the second release everywhere")
    new = http_get(binhost(c, leader) + "Packages")
    wait_until(lambda: all(new in p.seen for p in pollers), 10, what="the pollers to read the new index")
    for p in pollers:
        p.stop.set()
        p.join(10)
        assert p.errors == [] and set(p.seen) == {old, new} and p.seen[new] == 10

    wait_until(lambda: hashlib.sha256(stored.read_bytes()).hexdigest() == sha, 20, what="the corrupt copy replaced")
    assert check_downloads(binhost(c, victim), http_get(binhost(c, victim) + "Packages")) == 10
    assert "dropped (sha256 mismatch" in (c.dir / "logs" / f"{victim}.log").read_text()

    # rollback: the first release's files, published as a newer release
    out = swarmmesh("rollback", first, "--gateway", c.gateway_url, "--token", c.token)
    assert out.returncode == 0, out.stderr.decode()
    third = c.api.releases()["current"]
    wait_until(lambda: all_serve(c, c.orchestrators, third), 15, what="the rollback release everywhere")
    back = index(http_get(binhost(c, followers[1]) + "Packages"))
    assert back.packages == index(old).packages
    assert int(back.header["TIMESTAMP"]) > int(index(new).header["TIMESTAMP"])
    assert swarmmesh("rollback", "r-nope", "--gateway", c.gateway_url, "--token", c.token).returncode == 2

    # SIGKILL the leader right after a completion, and lose the survivors' copies too
    c.api.submit_packages(["=app-misc/late-1.0"], client="itest")
    late = wait_until(lambda: next((p for p in c.api.swarm()["packages"]
                                    if p["key"] == "app-misc/late-1.0" and p["state"] == "received"), None),
                      20, what="the late package", interval=0.005)
    copies = [Path(c.configs[name].data_dir) / "store" / late["sha256"][:2] / late["sha256"] for name in followers]
    # a fetch still on its way when the copies are deleted would bring one back: let both land first
    wait_until(lambda: all(p.exists() for p in copies), 10, what="both followers to fetch the late package")
    c.kill(leader)
    for copy in copies:
        copy.unlink()
    new_leader = c.leader(exclude=leader, timeout=15)
    wait_until(lambda: "artifact lost" in (c.dir / "logs" / f"{new_leader}.log").read_text(), 30,
               what="the new leader to declare the file lost")
    def rebuilt() -> bool:
        pkg = next(p for p in c.api.swarm()["packages"] if p["key"] == "app-misc/late-1.0")
        return pkg["state"] == "received" and len(pkg["holders"]) >= 2 and pkg["sha256"] != late["sha256"]

    wait_until(rebuilt, 30, what="the lost package to be built and replicated again")
    last = c.api.finalize(force=True)["release"]
    wait_until(lambda: all_serve(c, followers, last), 15, what="the survivors to serve the last release")
    final = http_get(binhost(c, new_leader) + "Packages")
    assert b"CPV: app-misc/late-1.0" in final and check_downloads(binhost(c, new_leader), final) == 11


# --- real Portage ------------------------------------------------------------------------------

def prefix(*args: str, env: dict | None = None, timeout: float = 120) -> str:
    run_env = {**os.environ, "PORTAGE_BIN": str(VENV_BIN)}
    out = subprocess.run([str(GENTOO_PREFIX), *args], capture_output=True, text=True, timeout=timeout,
                         env={**run_env, **(env or {})}, check=False)
    assert out.returncode == 0, f"gentoo-prefix {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def install(consumer: Path, url: str, atom: str) -> None:
    prefix("consumer", str(consumer), url)
    prefix("run", str(consumer), "emerge", "--getbinpkg", "--usepkgonly", "--oneshot", "--quiet", atom)


@pytest.mark.portage
def test_portage_installs_from_the_binhost_before_and_after_a_leader_dies(make_cluster, tmp_path):
    builder = tmp_path / "builder"
    prefix("builder", str(builder))
    emerge = {"builder": "emerge", "slots": 1, "emerge": {
        "command_prefix": [str(GENTOO_PREFIX), "run", str(builder)], "emerge": "emerge",
        "env": {"PORTAGE_BIN": str(VENV_BIN)}, "timeout_seconds": 120.0}}
    c = make_cluster(orchestrators=3, drones=1, start=False, builder_overrides=emerge)
    c.up(*c.orchestrators, "gateway")
    leader = c.leader(timeout=20)

    # an old-style drone: hello built by hand, then rsynced into the leader's staging/incoming/
    # (a temp name, then a rename, as rsync does); no swarmmesh drone runs yet
    prefix("run", str(builder), "emerge", "--buildpkg", "--oneshot", "--quiet", "=test-cat/hello-1.0",
           env={"PKGDIR": str(tmp_path / "oldpkgs")})
    built = next((tmp_path / "oldpkgs").rglob("hello-1.0-*.gpkg.tar"))
    c.api.submit_packages(["=test-cat/hello-1.0"], client="oldstyle")
    incoming = Path(c.configs[leader].data_dir) / "staging" / "incoming" / "test-cat" / "hello"
    incoming.mkdir(parents=True)
    shutil.copy(built, incoming / ".hello.gpkg.tar.XyZ")
    os.replace(incoming / ".hello.gpkg.tar.XyZ", incoming / built.name)
    wait_received(c, 1, timeout=20)
    assert "from incoming test-cat/hello/" in (c.dir / "logs" / f"{leader}.log").read_text()

    # a drone on the emerge builder builds libgreet, then greeter (which needs it installed)
    c.up("drone-1")
    c.api.submit_packages(["=test-cat/libgreet-1.0", "=test-cat/greeter-1.0"], client="itest",
                          deps={"=test-cat/greeter-1.0": ["=test-cat/libgreet-1.0"]})
    wait_received(c, 3, timeout=90)
    release = c.api.finalize()["release"]
    wait_until(lambda: all_serve(c, c.orchestrators, release), 20, what="the release everywhere")
    url = binhost(c, leader)
    wait_until(lambda: c.api.binhost() == url, 5, what="/binhost to name the leader, which serves the release")
    install(tmp_path / "consumer1", url, "=test-cat/greeter-1.0")
    assert (tmp_path / "consumer1" / "usr" / "share" / "greeter").is_dir()
    assert (tmp_path / "consumer1" / "usr" / "share" / "libgreet").is_dir()

    c.kill(leader)
    c.leader(exclude=leader, timeout=15)
    wait_until(lambda: c.api.binhost() not in (url, None), 10, what="/binhost to name a survivor")
    install(tmp_path / "consumer2", c.api.binhost(), "=test-cat/greeter-1.0")
    assert (tmp_path / "consumer2" / "usr" / "share" / "greeter").is_dir()
    prefix("run", str(tmp_path / "consumer2"), "emerge", "--getbinpkg", "--usepkgonly", "--oneshot", "--quiet",
           "=test-cat/hello-1.0")
    assert (tmp_path / "consumer2" / "usr" / "share" / "hello").is_dir()

    # the staging feed (what drones use as PORTAGE_BINHOST) is a binhost Portage reads too
    install(tmp_path / "consumer3", c.api.binhost() + "staging/", "=test-cat/hello-1.0")
    assert (tmp_path / "consumer3" / "usr" / "share" / "hello").is_dir()
