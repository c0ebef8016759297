"""Tests for swarmmesh.client: a batch's progress from /swarm, the wait, finalize, binrepos.conf.

The gateway is a small stand-in (its answers are shaped like the real /swarm); the whole path
against a real cluster is in tests/integration/test_client.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmmesh import client
from swarmmesh.errors import ClusterError, InputError, RefusedError
from swarmmesh.plan import Plan, Wanted


def _pkg(key: str, state: str, batch: str = "b-1", **extra: object) -> dict:
    return {"key": key, "cpv": key.partition("::")[0], "state": state, "batches": [batch], **extra}


def _swarm(*packages: dict, count: int | None = None) -> dict:
    return {"packages": list(packages),
            "batches": [{"id": "b-1", "count": count if count is not None else len(packages)}]}


def test_progress_counts_building_failed_and_waiting_reasons() -> None:
    swarm = _swarm(_pkg("a/x-1", "received"), _pkg("a/y-1", "delegated", drone="d1"),
                   _pkg("a/z-1", "needed", waiting="dependency"), _pkg("a/w-1", "needed", waiting="compatible drone"),
                   _pkg("a/v-1", "failed", error="boom"), _pkg("o/other-1", "needed", batch="b-2"), count=5)
    got = client.progress(swarm, "b-1", elapsed=10.0)
    assert got is not None
    assert (got.total, got.done, got.failed, got.building) == (5, 1, [("a/v-1", "boom")], [("a/y-1", "d1")])
    assert got.waiting == {"dependency": 1, "compatible drone": 1}
    assert got.eta == pytest.approx(30.0)  # 10 s per package so far, 3 left
    line = got.line()
    assert "1/5 done" in line and "a/y-1 on d1" in line and "1 for a compatible drone" in line
    assert "1 failed" in line and "ETA 30s" in line
    assert not got.finished


def test_progress_of_an_unknown_batch_is_none() -> None:
    assert client.progress(_swarm(_pkg("a/x-1", "needed")), "b-9", 0.0) is None


def test_swarm_estimate_wins_over_the_rate() -> None:
    swarm = _swarm(_pkg("a/x-1", "needed"))
    swarm["batches"][0]["eta"] = 42
    assert client.progress(swarm, "b-1", 1.0).eta == 42.0  # type: ignore[union-attr]


class Gateway:
    """Answers /swarm from a script of snapshots; finalize refuses `refusals` times."""

    def __init__(self, swarms: list[dict], refusals: int = 0) -> None:
        self.swarms, self.refusals, self.requests = swarms, refusals, []

    def swarm(self) -> dict:
        return self.swarms.pop(0) if len(self.swarms) > 1 else self.swarms[0]

    def finalize(self) -> dict:
        if self.refusals:
            self.refusals -= 1
            raise RefusedError("finalize refused: 1 package(s) still needed")
        return {"release": "r-1", "count": 3}

    def submit_request(self, body: dict) -> dict:
        self.requests.append(body)
        return {"batch": "b-1", "count": len(body["packages"]), "new": len(body["packages"])}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_watch_reports_each_change_once_and_returns_when_done() -> None:
    api = Gateway([_swarm(_pkg("a/x-1", "needed"), _pkg("a/y-1", "needed")),
                   _swarm(_pkg("a/x-1", "needed"), _pkg("a/y-1", "needed")),
                   _swarm(_pkg("a/x-1", "delegated", drone="d"), _pkg("a/y-1", "needed")),
                   _swarm(_pkg("a/x-1", "received"), _pkg("a/y-1", "failed", error="e"))])
    seen: list[client.Progress] = []
    clock = Clock()
    done = client.watch(api, "b-1", seen.append, clock=clock, sleep=clock.sleep)
    assert [p.done for p in seen] == [0, 0, 1] and done.finished
    assert done.failed == [("a/y-1", "e")]


def test_watch_gives_up_after_the_timeout_and_on_an_unknown_batch() -> None:
    clock = Clock()
    with pytest.raises(ClusterError, match="not done after 3 s"):
        client.watch(Gateway([_swarm(_pkg("a/x-1", "needed"))]), "b-1", lambda p: None,
                     timeout=3, clock=clock, sleep=clock.sleep)
    with pytest.raises(ClusterError, match="does not know batch"):
        client.watch(Gateway([{"packages": [], "batches": []}]), "b-1", lambda p: None)


def test_finalize_waits_while_other_work_is_pending_then_gives_up() -> None:
    clock = Clock()
    assert client.finalize(Gateway([], refusals=2), timeout=10, clock=clock, sleep=clock.sleep) == "r-1"
    with pytest.raises(RefusedError):
        client.finalize(Gateway([], refusals=99), timeout=3, clock=clock, sleep=clock.sleep)


class Binhosts:
    """The gateway's /binhost choice, and what each binhost's /release says, over time."""

    def __init__(self, answers: list[dict | None]) -> None:
        self.answers, self.asked = answers, []

    def binhost(self) -> str:
        return "http://127.0.0.1:1/"

    def release(self, url: str) -> dict | None:
        self.asked.append(url)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_served_at_waits_until_the_binhost_serves_the_release_or_a_newer_one() -> None:
    clock = Clock()
    hosts = Binhosts([None, {"serving": None, "newest": "r-1"}, {"serving": "r-1", "newest": "r-1"}])
    assert client.served_at(hosts, "r-1", timeout=10, ask=hosts.release, clock=clock, sleep=clock.sleep) \
        == "http://127.0.0.1:1/"
    assert len(hosts.asked) == 3
    newer = Binhosts([{"serving": "r-2", "newest": "r-2"}])
    assert client.served_at(newer, "r-1", timeout=10, ask=newer.release, clock=clock, sleep=clock.sleep)
    stale = Binhosts([{"serving": "r-0", "newest": "r-1"}])
    with pytest.raises(ClusterError, match="release r-1 is not served by http://127.0.0.1:1/ after 3 s"):
        client.served_at(stale, "r-1", timeout=3, ask=stale.release, clock=clock, sleep=clock.sleep)


def test_submit_sends_use_deps_and_env_and_refuses_an_empty_plan() -> None:
    api = Gateway([])
    plan = Plan([Wanted("a/x-1", "g", ("b",)), Wanted("a/y-1", "g", (), ("=a/x-1::g",))],
                env={"chost": "x86_64-pc-linux-gnu"})
    assert client.submit(api, plan, "me")["count"] == 2
    assert api.requests == [{"packages": ["=a/x-1::g", "=a/y-1::g"], "client": "me",
                             "deps": {"=a/y-1::g": ["=a/x-1::g"]},
                             "use": {"=a/x-1::g": ["b"], "=a/y-1::g": []},
                             "env": {"chost": "x86_64-pc-linux-gnu"}}]
    with pytest.raises(InputError, match="nothing to build"):
        client.submit(api, Plan([]), "me")


def test_binrepos_entry_and_emerge_command(tmp_path: Path) -> None:
    entry = client.binrepos_entry("http://127.0.0.1:7104/")
    assert entry == "[swarmmesh]\npriority = 10\nsync-uri = http://127.0.0.1:7104/\n"
    target = tmp_path / "etc" / "binrepos.conf" / "swarmmesh.conf"
    client.write_binrepos(target, entry)
    assert target.read_text() == entry
    assert list(target.parent.iterdir()) == [target]  # no temp file left behind
    assert client.emerge_command(["@world"]) == ["emerge", "--update", "--deep", "--newuse", "--getbinpkg",
                                                  "@world"]
    assert client.emerge_command(["=a/x-1"]) == ["emerge", "--getbinpkg", "=a/x-1"]
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot write"):
        client.write_binrepos(tmp_path / "file" / "x.conf", entry)
