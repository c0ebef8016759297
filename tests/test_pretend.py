"""Tests for swarmmesh.pretend: `emerge --pretend` output read into a plan.

The fixtures are real emerge output: `../shared/fixtures` (default verbosity and --quiet) and
`tests/data/pretend/world-tree.txt`, written by a gentoo-prefix consumer whose world is top,
greeter and flavour with `flavour spicy -mild` (`emerge -puDN --verbose --tree --color=n @world`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmmesh.errors import BadAtomsError, InputError
from swarmmesh.pretend import parse_lines, parse_plan

FIXTURES = Path(__file__).parents[2] / "shared" / "fixtures"
TREE = Path(__file__).parent / "data" / "pretend" / "world-tree.txt"

WORLD = [
    "sys-libs/zlib-1.3.1-r1", "dev-libs/openssl-3.3.2", "dev-python/trove-classifiers-2024.10.21.16",
    "app-misc/screen-4.9.1-r1", "dev-lang/python-3.12.7_p1", "sys-kernel/gentoo-sources-6.6.58",
    "media-libs/libpng-1.6.43", "kde-frameworks/kconfig-6.22.0", "x11-themes/my-theme-1.0",
]


def _by_cpv(text: str) -> dict:
    return {w.cpv: w for w in parse_plan(text).packages}


def test_world_fixture_builds_in_merge_order_with_repos_slots_and_use() -> None:
    plan = parse_plan((FIXTURES / "emerge-pretend-world.txt").read_text())
    assert [w.cpv for w in plan.packages] == WORLD
    got = {w.cpv: w for w in plan.packages}
    assert got["x11-themes/my-theme-1.0"].repo == "localrepo"
    assert (got["sys-libs/zlib-1.3.1-r1"].slot, got["sys-libs/zlib-1.3.1-r1"].subslot) == ("0", "1")
    assert (got["dev-lang/python-3.12.7_p1"].slot, got["dev-lang/python-3.12.7_p1"].subslot) == ("3.12", None)
    assert got["kde-frameworks/kconfig-6.22.0"].subslot == "6.22.0"
    assert got["dev-libs/openssl-3.3.2"].use == ("asm", "cpu_flags_x86_sse2", "quic")
    assert got["dev-python/trove-classifiers-2024.10.21.16"].use == ("python_targets_python3_12",)
    assert got["x11-themes/my-theme-1.0"].use == ()  # verbose, no IUSE: known to be empty
    assert plan.skipped == {"binary": 1, "nomerge": 1, "blocks": 1}
    assert all(not w.deps for w in plan.packages)  # no --tree: no edges


def test_quiet_output_has_packages_but_no_use() -> None:
    plan = parse_plan((FIXTURES / "emerge-pretend-quiet.txt").read_text())
    assert [w.cpv for w in plan.packages] == [c for c in WORLD[:6] if "python-3" not in c]
    assert all(w.use is None and w.repo is None for w in plan.packages)
    assert plan.request("me") == {"packages": [w.atom for w in plan.packages], "client": "me"}


def test_tree_output_reversed_into_merge_order_with_edges() -> None:
    plan = parse_plan(TREE.read_text())
    order = [w.cpv.split("/")[1] for w in plan.packages]
    assert sorted(order) == ["base-1.0", "flavour-1.0", "greeter-1.0", "libgreet-1.0", "mid-a-1.0",
                             "mid-b-1.0", "top-1.0"]
    got = {w.cpv.split("/")[1]: w for w in plan.packages}
    for pkg, deps in {"top-1.0": ("mid-a-1.0", "mid-b-1.0"), "greeter-1.0": ("libgreet-1.0",),
                      "mid-a-1.0": ("base-1.0",)}.items():
        assert sorted(got[pkg].deps) == sorted(f"=test-cat/{d}::test" for d in deps)
        assert all(order.index(d) < order.index(pkg) for d in deps)  # dependencies first
    assert got["flavour-1.0"].use == ("spicy",)
    assert plan.skipped == {"nomerge": 2}


def test_tree_edge_through_a_package_that_is_not_built() -> None:
    text = """These are the packages that would be merged, in reverse order:
[ebuild     U  ] app/a-2::g [1::g]  0 KiB
[nomerge       ]  lib/installed-1::g
[ebuild  N     ]   lib/new-3::g  0 KiB
[binary  N     ]  lib/bin-1::g  0 KiB
"""
    got = _by_cpv(text)
    assert got["app/a-2"].deps == ("=lib/new-3::g",)
    assert list(got) == ["lib/new-3", "app/a-2"]


def test_use_markers_forced_masked_changed_and_new_flags() -> None:
    line = ('[ebuild   R    ] cat/p-1::g  USE="a* -b% (c) (-d) -e* {f} g%*" PYTHON_TARGETS="(-python3_11) '
            'python3_12*" 10 KiB')
    assert _by_cpv(line)["cat/p-1"].use == ("a", "c", "f", "g", "python_targets_python3_12")


def test_blockers_uninstall_and_binary_lines_build_nothing() -> None:
    text = """[blocks B      ] <sys-apps/man-pages-5.11 ("<sys-apps/man-pages-5.11" is blocking x/y-1)
[uninstall     ] sys-apps/old-1::gentoo
[binary     U  ] app-editors/vim-core-9.1::gentoo [9.0::gentoo] 0 KiB
[ebuild  N     ] cat/p-1::gentoo  0 KiB
"""
    plan = parse_plan(text)
    assert [w.cpv for w in plan.packages] == ["cat/p-1"]
    assert plan.skipped == {"blocks": 1, "uninstall": 1, "binary": 1}
    assert [(x.kind, x.name) for x in parse_lines(text)][:2] == [
        ("blocks", "<sys-apps/man-pages-5.11"), ("uninstall", "sys-apps/old-1")]


def test_colour_codes_are_ignored() -> None:
    text = "\x1b[32m[ebuild  N     ]\x1b[0m \x1b[32mcat/p-1\x1b[0m::gentoo  USE=\"\x1b[31ma\x1b[0m\" 0 KiB"
    assert _by_cpv(text)["cat/p-1"].use == ("a",)


def test_a_bad_package_line_rejects_the_whole_output() -> None:
    with pytest.raises(BadAtomsError) as err:
        parse_plan("[ebuild  N     ] cat/p-1::g  0 KiB\n[ebuild  N     ] not-an-atom  0 KiB\n")
    assert [n for n, _text, _why in err.value.bad_lines] == [2]


def test_nothing_to_build_says_so() -> None:
    with pytest.raises(InputError, match="no \\[ebuild"):
        parse_plan("[binary  N     ] cat/p-1::g  0 KiB\nTotal: 1 package\n")


def test_duplicate_lines_queue_one_package() -> None:
    text = "[ebuild  N     ] cat/p-1::g  0 KiB\n[ebuild  N     ] cat/p-1::g  0 KiB\n"
    assert len(parse_plan(text).packages) == 1
