from __future__ import annotations

from pathlib import Path

import pytest

from swarmmesh import emergelog
from swarmmesh.errors import InputError

LOG = """\
1000:  *** emerge --update --deep @world
1000:  >>> emerge (1 of 3) dev-qt/qtcore-5.15.2 to /
1001:  === (1 of 3) Compiling/Merging (dev-qt/qtcore-5.15.2::/var/db/repos/gentoo/dev-qt/qtcore/qtcore-5.15.2.ebuild)
1300:  ::: completed emerge (1 of 3) dev-qt/qtcore-5.15.2 to /
1300:  >>> emerge (2 of 3) app-misc/bin-1.0 to /
1301:  === (2 of 3) Merging Binary (app-misc/bin-1.0::/var/cache/binpkgs/app-misc/bin-1.0.gpkg.tar)
1310:  ::: completed emerge (2 of 3) app-misc/bin-1.0 to /
1310:  >>> emerge (3 of 3) dev-qt/qtwebengine-5.15.2 to /
 *** terminating.
2000:  *** emerge --oneshot dev-qt/qtwebengine
2000:  >>> emerge (1 of 1) dev-qt/qtwebengine-5.15.2 to /
13061:  ::: completed emerge (1 of 1) dev-qt/qtwebengine-5.15.2 to /
"""


def test_pairs_starts_with_completions_and_marks_binaries() -> None:
    merges = emergelog.parse(LOG.splitlines())
    assert [(m.cpv, m.seconds, m.run, m.binary) for m in merges] == [
        ("dev-qt/qtcore-5.15.2", 300, 1, False),
        ("app-misc/bin-1.0", 10, 1, True),
        ("dev-qt/qtwebengine-5.15.2", 11061, 2, False),  # the interrupted first start never counts
    ]


def test_interleaved_parallel_jobs_pair_by_cpv() -> None:
    lines = [
        "100:  >>> emerge (1 of 2) a/x-1 to /",
        "101:  >>> emerge (2 of 2) b/y-2 to /",
        "150:  ::: completed emerge (2 of 2) b/y-2 to /",
        "400:  ::: completed emerge (1 of 2) a/x-1 to /",
    ]
    assert [(m.cpv, m.seconds) for m in emergelog.parse(lines)] == [("b/y-2", 49), ("a/x-1", 300)]


def test_resume_renumbering_falls_back_to_the_cpv() -> None:
    lines = ["100:  >>> emerge (5 of 9) a/x-1 to /", "160:  ::: completed emerge (1 of 5) a/x-1 to /"]
    assert [m.seconds for m in emergelog.parse(lines)] == [60]


@pytest.mark.parametrize("junk", [
    "", "garbage", "1234567890123:  >>> emerge (1 of 1) a/x-1 to /", "abc:  ::: completed emerge (1 of 1) a/x-1 to /",
    "1000:  >>> emerge (1 of 1) not-a-cpv to /", "\x00\xff" * 10, "1000:  ::: completed emerge (1 of 1) a/z-1 to /",
])
def test_junk_lines_are_skipped(junk: str) -> None:
    lines = ["1000:  >>> emerge (1 of 1) a/x-1 to /", junk, "1005:  ::: completed emerge (1 of 1) a/x-1 to /"]
    assert [(m.cpv, m.seconds) for m in emergelog.parse(lines)] == [("a/x-1", 5)]


def test_invalid_cpv_and_impossible_durations_are_dropped() -> None:
    lines = ["1000000000:  >>> emerge (1 of 2) bad//x-1 to /",
             "1000000005:  ::: completed emerge (1 of 2) bad//x-1 to /",
             "1000000010:  >>> emerge (2 of 2) a/x-1 to /",
             "1000000005:  ::: completed emerge (2 of 2) a/x-1 to /"]
    assert emergelog.parse(lines) == []


def test_estimates_use_the_median_of_the_last_builds_of_any_version() -> None:
    lines = []
    for i, seconds in enumerate([1000, 10, 100, 120, 5000]):
        t = 10_000 * (i + 1)
        lines += [f"{t}:  >>> emerge (1 of 1) a/x-1.{i} to /",
                  f"{t + seconds}:  ::: completed emerge (1 of 1) a/x-1.{i} to /"]
    merges = emergelog.parse(lines)
    assert emergelog.estimates(merges, ["a/x-2.0", "b/never-1", "junk"]) == {"a/x-2.0": 120.0}


def test_binary_merges_are_no_estimate() -> None:
    assert emergelog.estimates(emergelog.parse(LOG.splitlines()), ["app-misc/bin-1.1"]) == {}


def test_read_replaces_bad_bytes_and_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "emerge.log"
    path.write_bytes(LOG.encode() + b"\xff\xfe broken\n")
    assert len(emergelog.read(path)) == 3
    with pytest.raises(InputError, match="--emerge-log"):
        emergelog.read(tmp_path / "missing.log")


def test_runs_group_merges_by_emerge_invocation() -> None:
    grouped = emergelog.runs(emergelog.parse(LOG.splitlines()))
    assert {run: len(ms) for run, ms in grouped.items()} == {1: 2, 2: 1}
