"""The drone against stand-in leaders made of real sockets (ROUTER + PULL + PUB on loopback).

The drone is driven with `step()` from the test thread, interleaved with the stand-ins'
non-blocking reads, so every wait is bounded by a deadline and no test sleeps."""

from __future__ import annotations

import hashlib
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from swarmmesh import buildpool, gpkg, keys, protocol, transport
from swarmmesh import drone as drone_mod
from swarmmesh.builders import SIMULATED_ARTIFACT
from swarmmesh.config import (
    DroneConfig,
    GatewayConfig,
    NodeConfig,
    OrchestratorAddr,
    QueuePolicy,
    RaftTuning,
    SimulatedBuilder,
)
from swarmmesh.drone import Drone
from swarmmesh.protocol import (
    Ack,
    Busy,
    Bye,
    Cancel,
    Heartbeat,
    Hello,
    Job,
    JobFailed,
    LeaderInfo,
    NotLeader,
    Rejected,
    Stored,
    Trailer,
    Welcome,
)
from swarmmesh.uploader import Uploader
from tests.conftest import free_port

KEY = "cat/pkg-1.0"
NAME = "drone-1"


class StandIn:
    """Just enough of a leader: reads what the drone sends, answers what a test tells it to."""

    def __init__(self, ctx: zmq.Context, name: str) -> None:
        self.addr = OrchestratorAddr(name=name, host="127.0.0.1", raft_port=free_port(),
                                     broker_port=free_port(), artifacts_port=free_port(),
                                     events_port=free_port(), binhost_port=free_port())
        self.name = name
        self.router = transport.router(ctx, self.addr.broker_url)
        self.pull = transport.pull(ctx, self.addr.artifacts_url)
        self.pub = transport.pub(ctx, self.addr.events_url)
        self.inbox: list[tuple[bytes, protocol.Message]] = []
        self.parts: dict[str, list[protocol.Chunk]] = {}
        self.uploads: list[tuple[bytes, Trailer]] = []

    def poll(self, kind: type, where: Callable[[Any], bool] = lambda m: True) -> Any:
        """The first unread message of `kind` (matching `where`), or None; never blocks."""
        while True:
            try:
                identity, frame = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.inbox.append((identity, protocol.decode(frame)))
        for item in self.inbox:
            if isinstance(item[1], kind) and where(item[1]):
                self.inbox.remove(item)
                assert item[0] == NAME.encode()
                return item[1]
        return None

    def upload(self) -> tuple[bytes, Trailer] | None:
        """The next complete upload (all chunk data, trailer), or None."""
        while True:
            try:
                msg = protocol.decode(self.pull.recv(zmq.NOBLOCK), protocol.MAX_CHUNK_FRAME)
            except zmq.Again:
                break
            if isinstance(msg, protocol.Chunk):
                self.parts.setdefault(msg.upload, []).append(msg)
            else:
                chunks = self.parts.pop(msg.upload, [])
                assert [c.seq for c in chunks] == list(range(len(chunks)))
                self.uploads.append((b"".join(c.data for c in chunks), msg))
        return self.uploads.pop(0) if self.uploads else None

    def send(self, msg: protocol.Message) -> None:
        self.router.send_multipart([NAME.encode(), protocol.encode(msg)])

    def welcome(self, term: int, **kw: Any) -> None:
        self.send(Welcome(leader=self.name, term=term, artifacts=self.addr.artifacts_url, **kw))

    def announce(self, term: int) -> None:
        a = self.addr
        self.pub.send_multipart([protocol.TOPIC_LEADER, protocol.encode(LeaderInfo(
            name=self.name, term=term, broker=a.broker_url, artifacts=a.artifacts_url, events=a.events_url,
            binhost=a.binhost_url))])

    def close(self) -> None:
        for sock in (self.router, self.pull, self.pub):
            sock.close(0)




@pytest.fixture
def leaders(ctx):
    pair = StandIn(ctx, "orch-1"), StandIn(ctx, "orch-2")
    yield pair
    for s in pair:
        s.close()


@pytest.fixture
def threads():
    """Drones running on their own thread: stopped and joined before their sockets close."""
    started: list[tuple[Drone, threading.Thread]] = []
    yield started
    for d, thread in started:
        d.stop(graceful=False)
        thread.join(10)


@pytest.fixture
def make_drone(tmp_path, leaders, threads):
    made: list[Drone] = []

    def make(slots: int = 2, lease: float = 1.0, beat: float = 0.2, **sim: Any) -> Drone:
        sim_config = SimulatedBuilder(**{"min_seconds": 0.0, "max_seconds": 0.0, "seed": 1, **sim})
        config = NodeConfig(
            path=tmp_path / "drone.toml", name=NAME, role="drone", data_dir=tmp_path, secret="",
            orchestrators=tuple(s.addr for s in leaders), gateway=GatewayConfig(), raft=RaftTuning(),
            queue=QueuePolicy(lease_seconds=lease, heartbeat_seconds=beat),
            drone=DroneConfig(cores=4, slots=slots, work_dir=tmp_path / "work", simulated=sim_config))
        made.append(Drone(config))
        return made[-1]

    yield make
    for d in made:
        d.close()


def drive(drone: Drone, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Step the drone until `predicate` (which may read the stand-ins) is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        drone.step(0.01)
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what or predicate}")


def join(drone: Drone, leader: StandIn, term: int = 3) -> Hello:
    hello = drive(drone, lambda: leader.poll(Hello), what="a hello")
    leader.welcome(term)
    drive(drone, lambda: drone.welcomed, what="the welcome")
    return hello


def job(key: str = KEY, term: int = 3, cpv: str | None = None) -> Job:
    return Job(key=key, cpv=cpv or key, term=term, attempt=1)


def test_hello_welcome_heartbeat(make_drone, leaders):
    a, _ = leaders
    d = make_drone()
    hello = join(d, a)
    assert (hello.drone, hello.cores, hello.slots, hello.builder) == (NAME, 4, 2, "simulated")
    assert (hello.running, hello.uploads) == ([], [])
    beat = drive(d, lambda: a.poll(Heartbeat), what="a heartbeat")
    assert (beat.drone, beat.running) == (NAME, [])


def test_job_is_uploaded_and_deleted_only_after_stored(make_drone, leaders, tmp_path):
    a, _ = leaders
    d = make_drone(artifact_size=int(2.5 * protocol.CHUNK_SIZE))
    join(d, a)
    a.send(job())
    data, trailer = drive(d, a.upload, what="the upload")
    assert (trailer.drone, trailer.key, trailer.term) == (NAME, KEY, 3)
    assert (trailer.size, trailer.chunks) == (len(data), 3)
    assert trailer.sha256 == hashlib.sha256(data).hexdigest()
    (tmp_path / "got.gpkg.tar").write_bytes(data)
    assert gpkg.inspect_gpkg(tmp_path / "got.gpkg.tar", expect_cpv=KEY).sha256 == trailer.sha256
    artifact = d.jobs[KEY].path
    assert artifact is not None and artifact.read_bytes() == data
    beat = drive(d, lambda: a.poll(Heartbeat, lambda m: m.running), what="a heartbeat listing the upload")
    assert beat.running == [[KEY, 3]]
    assert artifact.exists()  # still not stored: the file stays
    a.send(Stored(key=KEY, sha256=trailer.sha256))
    drive(d, lambda: KEY not in d.jobs, what="the job to settle")
    assert not artifact.exists() and list((tmp_path / "work").iterdir()) == []


def test_rejected_upload_is_sent_again_then_reported_failed(make_drone, leaders, monkeypatch):
    monkeypatch.setattr(drone_mod, "MAX_UPLOAD_RETRIES", 1)
    a, _ = leaders
    d = make_drone()
    join(d, a)
    a.send(job())
    _, first = drive(d, a.upload, what="the upload")
    a.send(Rejected(key=KEY, reason="sha256 mismatch", retry=True))
    _, second = drive(d, a.upload, what="the upload again")
    assert second.upload != first.upload and second.sha256 == first.sha256
    a.send(Rejected(key=KEY, reason="sha256 mismatch", retry=True))
    failed = drive(d, lambda: a.poll(JobFailed), what="the failure report")
    assert (failed.key, failed.term) == (KEY, 3) and "sha256 mismatch" in failed.error
    a.send(Ack(key=KEY, kind="failed"))
    drive(d, lambda: not d.jobs, what="the job to settle")


def test_rejected_for_good_deletes_the_artifact(make_drone, leaders):
    a, _ = leaders
    d = make_drone(artifact_size=2 * protocol.CHUNK_SIZE)  # too big for memory: a file in a work dir
    join(d, a)
    a.send(job())
    drive(d, a.upload, what="the upload")
    workdir = d.jobs[KEY].workdir
    a.send(Rejected(key=KEY, reason="not a GPKG", retry=False))
    drive(d, lambda: not d.jobs, what="the job to settle")
    assert workdir is not None and not workdir.exists()


def test_small_artifact_is_built_and_uploaded_from_memory(make_drone, leaders, tmp_path):
    a, _ = leaders
    d = make_drone(slots=1)
    join(d, a)
    for i in range(3):  # one pool thread serves one job after another
        a.send(job(key=f"cat/pkg{i}-1.0"))
        data, trailer = drive(d, a.upload, what=f"upload {i}")
        assert d.jobs[trailer.key].workdir is None and d.jobs[trailer.key].path is None
        (tmp_path / "got.gpkg.tar").write_bytes(data)
        assert gpkg.inspect_gpkg(tmp_path / "got.gpkg.tar", expect_cpv=trailer.key).sha256 == trailer.sha256
        a.send(Stored(key=trailer.key, sha256=trailer.sha256))
        drive(d, lambda k=trailer.key: k not in d.jobs, what=f"job {i} to settle")
    assert not (tmp_path / "work").exists()  # no work dir made or removed for it


def test_one_chunk_artifact_skips_the_upload_thread_unless_the_leader_holds_uploads_back(
        make_drone, leaders, monkeypatch):
    a, _ = leaders
    submitted: list[str] = []
    submit = Uploader.submit
    monkeypatch.setattr(Uploader, "submit", lambda self, task: (submitted.append(task.key), submit(self, task)))
    d = make_drone(slots=1)
    join(d, a)
    a.send(job(key="cat/quick-1.0"))
    data, trailer = drive(d, a.upload, what="the upload")
    assert trailer.key == "cat/quick-1.0" and len(data) == trailer.size and submitted == []

    send_multipart = zmq.Socket.send_multipart

    def held_back(sock, frames, flags=0, **kw):  # the leader's PULL stopped reading: HWM reached
        if sock.type == zmq.PUSH and flags & zmq.NOBLOCK:
            raise zmq.Again()
        return send_multipart(sock, frames, flags, **kw)

    monkeypatch.setattr(zmq.Socket, "send_multipart", held_back)
    a.send(job(key="cat/held-1.0"))
    _data, trailer = drive(d, a.upload, what="the upload, from the upload thread")
    assert trailer.key == "cat/held-1.0" and submitted == ["cat/held-1.0"]
    quick = d.uploader._quick
    assert quick is not None and not quick.closed
    d._lose_leader()  # its socket to this leader closes with the leader, not at the next upload
    assert quick.closed and d.uploader._quick is None


def test_failure_is_sent_again_to_the_next_leader_until_acked(make_drone, leaders):
    a, b = leaders
    d = make_drone(failure_rate=1.0)
    join(d, a)
    a.send(job())
    failed = drive(d, lambda: a.poll(JobFailed), what="the failure at the first leader")
    assert failed.error == f"simulated failure of {KEY}"
    hello = drive(d, lambda: b.announce(4) or b.poll(Hello), what="a hello to the new leader")
    assert (hello.running, hello.uploads) == ([], [])
    assert KEY in d.jobs
    b.welcome(4)
    again = drive(d, lambda: b.poll(JobFailed), what="the failure sent to the new leader")
    assert (again.key, again.term, again.error) == (KEY, 3, failed.error)
    b.send(Ack(key=KEY, kind="failed"))
    drive(d, lambda: not d.jobs, what="the failure to settle")


def test_pending_upload_is_redone_to_the_next_leader_with_the_adopted_term(make_drone, leaders):
    a, b = leaders
    d = make_drone()
    join(d, a)
    a.send(job())
    _, first = drive(d, a.upload, what="the upload to the first leader")
    hello = drive(d, lambda: b.announce(4) or b.poll(Hello), what="a hello to the new leader")
    assert (hello.running, hello.uploads) == ([], [[KEY, 3]])
    b.welcome(4, adopt=[[KEY, 4]])
    _, again = drive(d, b.upload, what="the upload to the new leader")
    assert (again.key, again.term, again.sha256) == (KEY, 4, first.sha256)
    assert again.upload != first.upload
    b.send(Stored(key=KEY, sha256=again.sha256))
    drive(d, lambda: not d.jobs, what="the job to settle")


def test_unanswered_upload_and_failure_are_sent_again(make_drone, leaders, monkeypatch):
    monkeypatch.setattr(drone_mod, "ANSWER_TIMEOUT", 0.2)
    a, _ = leaders
    d = make_drone()
    join(d, a)
    a.send(job())
    _, first = drive(d, a.upload, what="the upload")
    _, second = drive(d, a.upload, what="the upload, sent again")
    assert (second.key, second.sha256) == (KEY, first.sha256) and second.upload != first.upload
    d.builder.config = SimulatedBuilder(min_seconds=0.0, max_seconds=0.0, failure_rate=1.0, seed=1)
    a.send(job(key="cat/bad-1.0"))
    for _ in range(2):
        drive(d, lambda: a.poll(JobFailed, lambda m: m.key == "cat/bad-1.0"), what="the failure, twice")


def test_cancel_stops_the_build_and_deletes_its_files(make_drone, leaders):
    a, _ = leaders
    d = make_drone(min_seconds=60.0, max_seconds=60.0, artifact_size=2 * protocol.CHUNK_SIZE)
    join(d, a)
    a.send(job())
    drive(d, lambda: KEY in d.jobs, what="the build to start")
    build = d.jobs[KEY]
    a.send(Cancel(key=KEY, reason="balance"))
    drive(d, lambda: not d.jobs and not d.dying, what="the build to stop")
    assert build.finished is not None and build.finished.is_set()
    assert build.workdir is not None and not build.workdir.exists()


def test_leader_change_rehello_lists_the_running_job(make_drone, leaders):
    a, b = leaders
    d = make_drone(min_seconds=60.0, max_seconds=60.0)
    join(d, a)
    a.send(job())
    drive(d, lambda: KEY in d.jobs, what="the build to start")
    hello = drive(d, lambda: b.announce(5) or b.poll(Hello), what="a hello to the new leader")
    assert (hello.running, hello.uploads) == ([[KEY, 3]], [])
    b.welcome(5, adopt=[[KEY, 5]])
    beat = drive(d, lambda: b.poll(Heartbeat, lambda m: m.running), what="a heartbeat to the new leader")
    assert beat.running == [[KEY, 5]]
    a.announce(3)  # an old leader's stale announcement changes nothing
    drive(d, lambda: b.poll(Heartbeat), what="another heartbeat")
    assert a.poll(Hello) is None


def test_welcome_drop_cancels_a_job_the_new_leader_gave_away(make_drone, leaders):
    a, b = leaders
    d = make_drone(min_seconds=60.0, max_seconds=60.0)
    join(d, a)
    a.send(job())
    drive(d, lambda: KEY in d.jobs, what="the build to start")
    drive(d, lambda: b.announce(5) or b.poll(Hello), what="a hello to the new leader")
    b.welcome(5, drop=[KEY])
    drive(d, lambda: not d.jobs and not d.dying, what="the dropped build to stop")


def test_not_leader_sends_the_drone_to_the_leader(make_drone, leaders):
    a, b = leaders
    d = make_drone()
    drive(d, lambda: a.poll(Hello), what="a hello to the first orchestrator")
    a.send(NotLeader(leader=b.name, broker=b.addr.broker_url))
    drive(d, lambda: b.poll(Hello), what="a hello to the leader")


def test_silent_leader_is_lost_and_greeted_again(make_drone, leaders):
    a, _ = leaders
    d = make_drone()
    join(d, a)
    drive(d, lambda: not d.welcomed, timeout=3, what="the leader to count as lost")
    drive(d, lambda: a.poll(Hello), what="a new hello")


def test_no_free_slot_and_bad_frames(make_drone, leaders):
    a, _ = leaders
    d = make_drone(slots=1, min_seconds=60.0, max_seconds=60.0)
    join(d, a)
    a.router.send_multipart([NAME.encode(), b"\xc1 not msgpack"])
    a.send(job())
    queued = [f"cat/queued{i}-1.0" for i in range(drone_mod.QUEUE_PER_SLOT)]
    for key in queued:  # the slot builds: these wait
        a.send(job(key=key))
    a.send(job(key="cat/other-1.0"))
    busy = drive(d, lambda: a.poll(Busy), what="the refusal")
    assert busy.key == "cat/other-1.0"  # a capacity refusal, not a build failure
    assert [d.jobs[key].state for key in queued] == [buildpool.QUEUED] * len(queued)
    a.send(Cancel(key=KEY))
    drive(d, lambda: d.jobs[queued[0]].state == buildpool.BUILDING, what="the oldest queued job to start")
    for key in queued:
        a.send(Cancel(key=key))
    drive(d, lambda: not d.jobs and not d.dying, what="the builds to stop")
    a.send(job(key="evil", cpv="../../etc/passwd-1.0"))
    failed = drive(d, lambda: a.poll(JobFailed), what="the bad CPV report")
    assert failed.key == "evil" and "cannot start the build" in failed.error
    assert not any(p.name.startswith("..") for p in d.work_dir.rglob("*"))  # (no work dir at all is fine)


def test_a_queued_job_starts_when_a_slot_frees_and_is_announced_and_renewed(make_drone, leaders):
    a, b = leaders
    d = make_drone(slots=1, min_seconds=60.0, max_seconds=60.0)
    assert join(d, a).queue == drone_mod.QUEUE_PER_SLOT
    a.send(job())
    a.send(job(key="cat/next-1.0"))
    beat = drive(d, lambda: a.poll(Heartbeat, lambda m: len(m.running) == 2), what="a beat renewing both")
    assert beat.running == [[KEY, 3], ["cat/next-1.0", 3]]
    d.step(0.01)
    assert [j.state for j in d.jobs.values()] == [buildpool.BUILDING, buildpool.QUEUED]
    b.announce(4)  # a new leader: the queued job is announced with the running one, to be adopted
    hello = drive(d, lambda: b.poll(Hello), what="a hello to the new leader")
    assert hello.running == [[KEY, 3], ["cat/next-1.0", 3]] and hello.uploads == []
    b.welcome(4, drop=["cat/next-1.0"])  # ...or dropped, like a running one
    drive(d, lambda: "cat/next-1.0" not in d.jobs, what="the drop")
    assert not d._queued and d.jobs[KEY].state == buildpool.BUILDING
    b.send(job(key="cat/third-1.0", term=4))
    drive(d, lambda: "cat/third-1.0" in d.jobs, what="a queued job again")
    b.send(protocol.Unqueue(reason="balance"))  # what `balance` sends: queued jobs go back now
    busy = drive(d, lambda: b.poll(Busy), what="the hand-back")
    assert (busy.key, busy.term) == ("cat/third-1.0", 4) and list(d.jobs) == [KEY]


def test_a_job_queued_too_long_or_at_stop_goes_back_unstarted(make_drone, leaders, monkeypatch):
    a, _ = leaders
    monkeypatch.setattr(drone_mod, "QUEUE_WAIT", 0.3)
    d = make_drone(slots=1, beat=1.0, min_seconds=60.0, max_seconds=60.0)  # the stand-in stays "heard"
    join(d, a)
    a.send(job())
    a.send(job(key="cat/stuck-1.0"))
    busy = drive(d, lambda: a.poll(Busy), what="the hand-back")
    assert (busy.key, busy.term) == ("cat/stuck-1.0", 3) and "cat/stuck-1.0" not in d.jobs
    a.send(job(key="cat/late-1.0"))
    drive(d, lambda: "cat/late-1.0" in d.jobs, what="the second queued job")
    monkeypatch.setattr(drone_mod, "HANDBACK_WAIT", 0.1)
    d.shutdown()  # the queued job goes back at once; the build within a lease (1 s here)
    assert a.poll(Busy).key == "cat/late-1.0"
    assert a.poll(Bye).hand_back == [KEY] and not d.jobs


def run_in_thread(threads: list, d: Drone, once: bool = False) -> threading.Thread:
    thread = threading.Thread(target=d.run, kwargs={"once": once}, daemon=True)
    thread.start()
    threads.append((d, thread))
    return thread


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(0.005)  # polling a socket from the test thread; the drone runs on its own
    return value


# The stand-in does not heartbeat while the drone runs on its own thread: a long heartbeat
# period keeps the drone from counting it lost.

def test_run_once_prints_ready_and_returns_after_one_job(make_drone, leaders, threads, capsys):
    a, _ = leaders
    d = make_drone(beat=5.0)
    thread = run_in_thread(threads, d, once=True)
    wait_for(lambda: a.poll(Hello), what="a hello")
    a.welcome(3)
    a.send(job())
    _, trailer = wait_for(a.upload, what="the upload")
    a.send(Stored(key=KEY, sha256=trailer.sha256))
    bye = wait_for(lambda: a.poll(Bye), what="the goodbye")
    assert bye.hand_back == []
    thread.join(5)
    assert not thread.is_alive()
    assert f"swarmmesh drone {NAME} ready\n" in capsys.readouterr().out


def test_graceful_stop_hands_back_running_builds_and_keeps_unstored_artifacts(make_drone, leaders,
                                                                             threads, monkeypatch):
    monkeypatch.setattr(drone_mod, "STOP_DRAIN_SECONDS", 0.5)
    a, _ = leaders
    d = make_drone(lease=0.5, beat=5.0, min_seconds=0.0, max_seconds=60.0, seed=None)
    d.builder.plan = lambda cpv: (60.0 if "slow" in cpv else 0.0, False)  # type: ignore[method-assign]
    thread = run_in_thread(threads, d)
    wait_for(lambda: a.poll(Hello), what="a hello")
    a.welcome(3)
    a.send(job())
    a.send(job(key="cat/slow-1.0"))
    wait_for(a.upload, what="the fast job's upload")
    d.stop()
    bye = wait_for(lambda: a.poll(Bye), what="the hand-back")
    assert bye.hand_back == ["cat/slow-1.0"]
    a.send(Ack(key="cat/slow-1.0", kind="handback"))
    last = wait_for(lambda: a.poll(Bye), what="the last goodbye")
    assert last.hand_back == [KEY]  # never stored: handed back, and its file kept
    thread.join(10)
    assert not thread.is_alive()
    assert [p.name for p in Path(d.work_dir).rglob("*.gpkg.tar")] == [SIMULATED_ARTIFACT]


def test_start_clears_job_directories_a_killed_run_left(make_drone, leaders, threads):
    a, _ = leaders
    d = make_drone(artifact_size=2 * protocol.CHUNK_SIZE)
    left = [d.work_dir / "cat_pkg-1.0-7", d.work_dir / "cat_other-2-12"]
    for path in left:
        (path / "pkgdir").mkdir(parents=True)
        (path / SIMULATED_ARTIFACT).write_bytes(b"half")
    (d.work_dir / "admin-notes").mkdir()  # not named like a job directory: kept
    thread = run_in_thread(threads, d)
    wait_for(lambda: a.poll(Hello), what="a hello")
    d.stop(graceful=False)
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(p.name for p in d.work_dir.iterdir()) == ["admin-notes"]


def drone_toml(tmp_path: Path, leader: StandIn) -> Path:
    a = leader.addr
    path = tmp_path / "drone.toml"
    path.write_text(f"""
[node]
name = "{NAME}"
role = "drone"
data_dir = "{tmp_path / 'data'}"
[[orchestrators]]
name = "{a.name}"
host = "127.0.0.1"
raft_port = {a.raft_port}
broker_port = {a.broker_port}
artifacts_port = {a.artifacts_port}
events_port = {a.events_port}
binhost_port = {a.binhost_port}
[queue]
heartbeat_seconds = 5.0
lease_seconds = 10.0
[drone]
cores = 2
slots = 1
builder = "simulated"
""")
    return path


@pytest.fixture
def curve_leader(tmp_path):
    """A stand-in leader whose sockets are CURVE servers with orch-1's key, and the drone's
    key pair beside it in tmp_path/keys, as `swarmmesh cluster init` lays them out."""
    keys.keygen(NAME, tmp_path / "keys")
    _public, secret = keys.keygen("orch-1", tmp_path / "keys", role="orchestrator")
    own, secret_key = keys.read_cert(secret)
    ctx = transport.context(transport.Curve(public=own.public.encode(), secret=(secret_key or "").encode()))
    leader = StandIn(ctx, "orch-1")
    yield leader
    leader.close()
    ctx.destroy(linger=0)


def test_drone_process_is_ready_then_stops_on_sigterm(curve_leader, tmp_path):
    a = curve_leader
    argv = [sys.executable, "-m", "swarmmesh", "drone", "--config", str(drone_toml(tmp_path, a))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=20), "the drone printed no readiness line within 20 s"
        assert proc.stdout.readline() == f"swarmmesh drone {NAME} ready\n"
        wait_for(lambda: a.poll(Hello), timeout=10, what="a hello from the drone process")
        a.welcome(3)
        proc.send_signal(signal.SIGTERM)
        bye = wait_for(lambda: a.poll(Bye), timeout=10, what="the goodbye")
        assert bye.hand_back == []
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate(timeout=10)
