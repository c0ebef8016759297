"""A drone's build threads and work directories, without a drone: every build is reported
once, even a crashing one, and only directories the drone named are ever removed."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from swarmmesh.builders import BuildResult
from swarmmesh.buildpool import BuildPool, DroneJob, WorkDirs, remove


class Scripted:
    """A builder that returns `result`, or raises it when it is an exception."""

    name = "scripted"
    needs_workdir = False

    def __init__(self, result: BuildResult | Exception) -> None:
        self.result = result

    def build(self, cpv: str, repo: str | None, workdir: Path | None, cancel: threading.Event) -> BuildResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def pool():
    made = BuildPool(2, "drone-1")
    yield made
    made.close()


def job(key: str = "cat/pkg-1.0") -> DroneJob:
    return DroneJob(key, key, None, 3, None, 0.0)


def test_a_build_is_reported_with_its_result_and_marked_finished(pool):
    done: queue.SimpleQueue[tuple[DroneJob, BuildResult]] = queue.SimpleQueue()
    ok = BuildResult(ok=True, path=None, error="", seconds=0.0, data=b"pkg")
    j = job()
    pool.build(Scripted(ok), j, lambda *report: done.put(report))
    assert done.get(timeout=5) == (j, ok)
    assert j.finished is not None and j.finished.is_set()


def test_a_crashing_builder_is_reported_as_a_failed_build(pool):
    done: queue.SimpleQueue[tuple[DroneJob, BuildResult]] = queue.SimpleQueue()
    j = job()
    pool.build(Scripted(RuntimeError("boom")), j, lambda *report: done.put(report))
    got, result = done.get(timeout=5)
    assert got is j and not result.ok and result.error == "builder crashed: RuntimeError('boom')"
    assert j.finished is not None and j.finished.is_set()


def test_work_dirs_are_fresh_sanitized_and_stay_under_the_root(tmp_path):
    dirs = WorkDirs(tmp_path / "work")
    first, second = dirs.make("cat/pkg-1.0"), dirs.make("cat/pkg-1.0")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == tmp_path / "work"
    sneaky = dirs.make("../../etc/passwd")
    assert sneaky.parent == tmp_path / "work" and sneaky.name.startswith("etc_passwd-")
    assert dirs.make("///").name.startswith("job-")
    remove(first)
    remove(None)
    assert not first.exists()


def test_clear_leftovers_removes_only_directories_named_like_ours(tmp_path):
    dirs = WorkDirs(tmp_path / "work")
    dirs.clear_leftovers()  # no work dir yet: nothing to do, no error
    ours = dirs.make("cat/pkg-1.0")
    (ours / "pkgdir").mkdir()
    (tmp_path / "work" / "admin-notes").mkdir()
    (tmp_path / "work" / "notes-1.txt").write_text("a file named like a job directory")
    WorkDirs(tmp_path / "work").clear_leftovers()  # what a drone's next run does at start
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["admin-notes", "notes-1.txt"]
