"""Issue 3 end to end: real orchestrators, gateway and drones (processes started through the CLI).

Each drone logs one line per job ("job KEY <outcome> after Ns"); the tests read those lines
to prove what was built where. A test process speaking the protocol with its own ZeroMQ
sockets plays the misbehaving drone."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from swarmmesh import gpkg, gpkg_writer, protocol, transport
from swarmmesh.protocol import Cancel, Chunk, Heartbeat, Hello, Job, JobFailed, Rejected, Trailer, Welcome
from tests.conftest import wait_until
from tests.integration.conftest import swarmmesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENDING = re.compile(r"swarmmesh\.drone: job (\S+) (.+?) after [0-9.]+s")
RECEIVED = re.compile(r"swarmmesh\.artifacts: received (\S+) from (\S+) ")
PREFIX_TOOL = Path(__file__).resolve().parents[3] / "shared" / "gentoo-prefix" / "gentoo-prefix"
PORTAGE_BIN = Path(sys.executable).parent


def endings(c, drone: str) -> list[tuple[str, str]]:
    """(key, outcome) of every job the drone finished, from its log."""
    path = c.dir / "logs" / f"{drone}.log"
    return ENDING.findall(path.read_text(errors="replace")) if path.exists() else []


def log_of(c, node: str) -> str:
    return (c.dir / "logs" / f"{node}.log").read_text(errors="replace")


def counts(c) -> dict:
    return c.api.status()["counts"]


def packages(c) -> dict[str, dict]:
    return {p["key"]: p for p in c.api.swarm()["packages"]}


def check_stored_files(c, leader: str, pkgs: dict[str, dict]) -> None:
    """Every received package's file is in the leader's store and is a valid GPKG of its CPV."""
    store = c.configs[leader].data_dir / "store"
    for key, pkg in pkgs.items():
        path = store / pkg["sha256"][:2] / pkg["sha256"]
        info = gpkg.inspect_gpkg(path, expect_cpv=pkg["cpv"])
        assert (info.cpv, info.sha256) == (pkg["cpv"], pkg["sha256"]), key


# --- 200 packages, a drone and two leaders killed ----------------------------------------------


@pytest.mark.timeout(150)
def test_two_hundred_packages_survive_a_drone_kill_and_two_leader_kills(make_cluster):
    c = make_cluster(drones=3, builder_overrides={"min_seconds": 0.05, "max_seconds": 0.3},
                     queue_overrides={"lease_seconds": 3})
    c.leader(timeout=20)
    body = "\n".join(f"=app-misc/pkg{i}-1.{i}" for i in range(200)).encode()
    sub = swarmmesh("submit", "-", "--client", "itest", "--gateway", c.gateway_url, "--token", c.token, input=body)
    assert sub.returncode == 0, sub.stderr.decode()

    wait_until(lambda: counts(c)["received"] >= 30, 30, what="30 packages received")
    c.kill("drone-3")
    held = wait_until(lambda: [k for k, p in packages(c).items()
                               if p["state"] == "delegated" and p["drone"] == "drone-3"], 5,
                      what="the jobs the killed drone held")
    for target in (80, 140):  # two leader kills; the first comes back before the second
        wait_until(lambda t=target: counts(c)["received"] >= t, 60, what=f"{target} packages received")
        leader = c.leader()
        c.kill(leader)
        c.leader(exclude=leader, timeout=15)
        c.up(leader)

    wait_until(lambda: counts(c)["received"] == 200, 60, what="all 200 packages received")
    final = packages(c)
    assert len(final) == 200 and {p["state"] for p in final.values()} == {"received"}
    leader = c.leader()
    wait_until(lambda: check_stored_files(c, leader, final) or True, 15, what="every file in the leader's store")

    # The killed drone's jobs were built again by the live drones.
    live = ("drone-1", "drone-2")
    rebuilt = [k for k in held if final[k]["drone"] in live]
    assert rebuilt, f"none of {held} was rebuilt by a live drone"

    # Received exactly once: every orchestrator that led logged each key from one drone only.
    senders = collections.defaultdict(set)
    for orch in c.orchestrators:
        for key, drone in RECEIVED.findall(log_of(c, orch)):
            senders[key].add(drone)
    assert set(senders) == set(final)
    assert {k: d for k, d in senders.items() if d != {final[k]["drone"]}} == {}

    # Each key was built once by the live drones, and every job a live drone ran was stored.
    stored = collections.Counter()
    for drone in live:
        for key, outcome in endings(c, drone):
            assert outcome.startswith("stored"), f"{drone}: job {key} {outcome}"
            stored[key] += 1
    twice = [k for k, n in stored.items() if n > 1]
    assert twice == [], f"built twice by live drones: {twice}"
    assert [k for k in final if k not in stored and final[k]["drone"] != "drone-3"] == []
    assert not [k for k in stored if k in {key for key, _ in endings(c, "drone-3")}]


# --- a misbehaving drone ----------------------------------------------------------------------


class BadDrone:
    """Speaks the drone protocol with its own sockets, so it can say anything."""

    NAME = "bad-drone"

    def __init__(self, c, leader: str) -> None:
        me = c.configs[leader].me()
        self.ctx = transport.context(c.add_key(self.NAME))  # an authorized drone that misbehaves
        self.dealer = transport.dealer(self.ctx, me.broker_url, identity=self.NAME.encode())
        self.push = transport.push(self.ctx, me.artifacts_url)
        self.inbox: list[protocol.Message] = []
        self.held: list[str] = []  # what its heartbeats claim, so its leases stay renewed
        self._beat_at = 0.0

    def send(self, msg: protocol.Message) -> None:
        self.dealer.send(protocol.encode(msg))

    def expect(self, kind: type, key: str | None = None, timeout: float = 10.0) -> protocol.Message:
        """The next message of `kind` (for `key`); heartbeats keep the session alive meanwhile."""

        def found() -> protocol.Message | None:
            while self.dealer.poll(20):
                self.inbox.append(protocol.decode(self.dealer.recv()))
            if time.monotonic() >= self._beat_at:
                self._beat_at = time.monotonic() + 0.5
                self.send(Heartbeat(drone=self.NAME, running=[[k, 0] for k in self.held]))
            for msg in self.inbox:
                if isinstance(msg, kind) and (key is None or getattr(msg, "key", None) == key):
                    self.inbox.remove(msg)
                    return msg
            return None

        return wait_until(found, timeout, interval=0.05, what=f"a {kind.__name__} for {key}")

    def upload(self, key: str, data: bytes, *, sha256: str | None = None, skip: int | None = None) -> None:
        """Chunks then a trailer; `skip` leaves out one chunk, `sha256` lies about the digest."""
        pieces = [data[i:i + 2048] for i in range(0, len(data), 2048)]
        upload_id = hashlib.sha256(os.urandom(8)).hexdigest()[:32]
        for seq, piece in enumerate(pieces):
            if seq != skip:
                self.push.send(protocol.encode(Chunk(upload=upload_id, seq=seq, data=piece)))
        self.push.send(protocol.encode(Trailer(upload=upload_id, drone=self.NAME, key=key, term=0, size=len(data),
                                               sha256=sha256 or hashlib.sha256(data).hexdigest(),
                                               chunks=len(pieces))))

    def close(self) -> None:
        self.ctx.destroy(linger=0)  # closes the dealer and the push socket too


@pytest.fixture
def bad_cluster(make_cluster):
    c = make_cluster(drones=1, start=False, queue_overrides={"lease_seconds": 2},
                     builder_overrides={"min_seconds": 0.01, "max_seconds": 0.05})
    c.up(*c.orchestrators, "gateway")
    return c


def gpkg_bytes(tmp_path: Path, cpv: str) -> bytes:
    path = tmp_path / "upload.gpkg.tar"
    gpkg_writer.write_gpkg(path, cpv, size=2048)
    return path.read_bytes()


@pytest.mark.timeout(120)
def test_bad_drone_input_is_rejected_logged_and_the_broker_keeps_serving(bad_cluster, tmp_path):
    c = bad_cluster
    leader = c.leader(timeout=20)
    bad = BadDrone(c, leader)
    try:
        bad.send(Hello(drone=bad.NAME, cores=1, slots=4, builder="simulated"))
        assert isinstance(bad.expect(Welcome), Welcome)
        cpvs = [f"app-misc/bad{i}-1.0" for i in range(5)]
        c.api.submit_packages([f"={cpv}" for cpv in cpvs], client="itest")
        given = [bad.expect(Job).key for _ in range(4)]
        assert given == cpvs[:4]
        bad.held = list(given)
        spare = cpvs[4]  # queued, never given to the bad drone (its 4 slots are full)

        # a failure report and an upload for a job it was not given
        bad.send(JobFailed(drone=bad.NAME, key=spare, term=0, error="made up"))
        assert bad.expect(Cancel, spare).reason == "not delegated to you"
        assert (packages(c)[spare]["state"], packages(c)[spare]["attempts"]) == ("needed", 0)  # nothing charged
        bad.upload(spare, gpkg_bytes(tmp_path, spare))
        assert bad.expect(Rejected, spare).retry is False
        # a wrong sha256, a missing chunk: sent again, nothing charged
        bad.upload(given[0], gpkg_bytes(tmp_path, given[0]), sha256="0" * 64)
        assert bad.expect(Rejected, given[0]).retry is True
        bad.upload(given[1], gpkg_bytes(tmp_path, given[1]), skip=1)
        assert bad.expect(Rejected, given[1]).retry is True
        # a file under 1 KiB: not a package, the attempt is charged and the package retried
        bad.upload(given[2], os.urandom(600))
        assert bad.expect(Rejected, given[2]).retry is False
        # frames that are not messages
        bad.dealer.send(msgpack.packb({"v": 1, "t": "bogus", "x": 1}))
        bad.dealer.send(b"\xc1\xc1 not msgpack")
        bad.dealer.send_multipart([b"two", b"frames"])
        bad.dealer.send(msgpack.packb({"v": 1, "t": "hello", "drone": bad.NAME, "cores": "many", "slots": 1,
                                       "builder": "x"}))
        bad.push.send(b"\x00garbage on the artifact socket")
        bad.push.send(protocol.encode(Hello(drone=bad.NAME, cores=1, slots=1, builder="x")))

        lines = {
            "failure report of app-misc/bad4-1.0 from bad-drone rejected: the job is not delegated to it",
            "upload of app-misc/bad4-1.0 from bad-drone rejected: not delegated to bad-drone",
            "upload of app-misc/bad0-1.0 from bad-drone incomplete: transfer: sha256 mismatch",
            "upload of app-misc/bad1-1.0 from bad-drone incomplete: transfer: chunk 2 arrived where 1 was expected",
            "artifact for app-misc/bad2-1.0 from bad-drone rejected: artifact of 600 bytes is too small",
            "rejected a frame from b'bad-drone': unknown message type",
            "rejected a frame from b'bad-drone': undecodable frame",
            "dropped a message of 3 frames",
            "rejected a frame from b'bad-drone': field 'cores' of 'hello' has the wrong type",
            "rejected an artifact frame: undecodable frame",
            "unexpected 'hello' message on the artifact socket",
        }
        wait_until(lambda: all(line in log_of(c, leader) for line in lines), 10,
                   what="a log line for each rejection: " + "; ".join(
                       line for line in lines if line not in log_of(c, leader)))
        small = packages(c)[given[2]]  # charged one attempt, then needed (and maybe given out again)
        assert "invalid artifact" in small["error"] and small["state"] in ("needed", "delegated")
    finally:
        bad.close()  # it goes silent: its lease lapses and its jobs go back to needed

    # The broker still serves: a real drone builds everything, the bad drone's jobs included.
    c.up("drone-1")
    wait_until(lambda: counts(c)["received"] == 5, 30, what="the real drone to build all five")
    final = packages(c)
    assert {p["drone"] for p in final.values()} == {"drone-1"}
    assert sorted(k for k, o in endings(c, "drone-1") if o.startswith("stored")) == sorted(cpvs)
    wait_until(lambda: check_stored_files(c, leader, final) or True, 10, what="the files in the leader's store")
    assert "drone bad-drone silent" in log_of(c, leader)


# --- the emerge builder, for real ----------------------------------------------------------------


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    missing = [t for t in ("bash", "zstd", "bzip2", "curl") if shutil.which(t) is None]
    missing += [str(p) for p in (PREFIX_TOOL, PORTAGE_BIN / "emerge") if not p.exists()]
    if missing:
        pytest.skip(f"gentoo-prefix cannot run here: missing {', '.join(missing)}")
    root = tmp_path_factory.mktemp("prefix") / "builder"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(PORTAGE_BIN)}
    done = subprocess.run([str(PREFIX_TOOL), "builder", str(root)], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    if done.returncode != 0:
        pytest.skip(f"gentoo-prefix builder failed: {done.stderr.strip()[-500:]}")
    return root


@pytest.mark.portage
@pytest.mark.timeout(300)
def test_emerge_drone_builds_real_packages_and_a_broken_one_fails_with_its_log(make_cluster, prefix):
    emerge = {"command_prefix": [str(PREFIX_TOOL), "run", str(prefix)], "env": {"PORTAGE_BIN": str(PORTAGE_BIN)},
              "timeout_seconds": 240.0, "log_tail_lines": 30}
    c = make_cluster(drones=1, builder_overrides={"builder": "emerge", "slots": 1, "emerge": emerge},
                     queue_overrides={"max_attempts": 1, "lease_seconds": 5})
    c.leader(timeout=20)
    want = ["test-cat/libgreet-1.0", "test-cat/hello-1.0", "test-cat/broken-1.0"]
    c.api.submit_packages([f"={cpv}" for cpv in want], client="itest")

    def settled() -> dict | None:
        pkgs = packages(c)
        return pkgs if all(p["state"] in ("received", "failed") for p in pkgs.values()) else None

    pkgs = wait_until(settled, 240, interval=0.5, what="the three emerge builds to settle")
    assert [pkgs[k]["state"] for k in want] == ["received", "received", "failed"]
    leader = c.leader()
    wait_until(lambda: check_stored_files(c, leader, {k: pkgs[k] for k in want[:2]}) or True, 10,
               what="both GPKGs in the leader's store")
    error = pkgs["test-cat/broken-1.0"]["error"]
    assert error.startswith("emerge exited with 1\n") and "this package never builds" in error
    assert [o.split(" ")[0] for _, o in endings(c, "drone-1")] == ["stored", "stored", "failed"]


# --- 10,000 random frames at a live broker and artifacts socket -------------------------------


def _random_frame(rng: random.Random) -> bytes:
    """Garbage, truncated messages, and real message types with fields of the wrong types."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    sample = protocol.encode(rng.choice([
        Hello(drone=BadDrone.NAME, cores=1, slots=1, builder="simulated"),
        Heartbeat(drone=BadDrone.NAME, running=[]),
        JobFailed(drone=BadDrone.NAME, key="app-misc/x-1.0", term=0, error="e"),
        Chunk(upload="ab12cd34", seq=0, data=b"x" * 64),
        Trailer(upload="ab12cd34", drone=BadDrone.NAME, key="app-misc/x-1.0", term=0, size=64,
                sha256="0" * 64, chunks=1)]))
    if kind == 1:
        return sample[:rng.randrange(len(sample))]
    body = msgpack.unpackb(sample)
    junk = [None, -1, 2**63, "", "../../x", b"\x00", [1, [2]], {"a": {}}, 1.5, True]
    for name in rng.sample(sorted(body), rng.randrange(1, len(body) + 1)):
        if name != "t" or kind == 3:
            body[name] = rng.choice(junk)
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.timeout(150)
def test_ten_thousand_random_frames_at_the_broker_and_artifacts_socket_then_a_build_completes(bad_cluster):
    c = bad_cluster
    leader = c.leader(timeout=20)
    bad = BadDrone(c, leader)  # an authorized key: outsiders do not even get a handshake
    rng = random.Random(13)
    try:
        for _ in range(5000):
            bad.dealer.send(_random_frame(rng))
            bad.push.send(_random_frame(rng))
        # the broker answered what it could and dropped the rest; it still serves everyone
        assert c.ask(leader, "status")["role"] == "leader"
    finally:
        bad.close()
    c.up("drone-1")
    c.api.submit_packages(["=app-misc/after-1.0", "=app-misc/after-2.0"], client="itest")
    wait_until(lambda: counts(c)["received"] == 2, 30, what="a normal build after the fuzzing")
    assert all(c.pid(name) is not None for name in c.orchestrators)
    assert "Traceback" not in "".join(log_of(c, name) for name in c.orchestrators)
