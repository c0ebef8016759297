"""Tests for swarmmesh.gentoo: atoms, submission bodies, binhost paths.

Portage itself is the referee wherever it can run here: atoms go through portage.dep.Atom. Index
entries (and a real `emerge --buildpkg` + `emaint binhost --fix` agreeing with them) are tested in
test_pkgindex.py; the GPKG file format in test_gpkg.py and test_gpkg_writer.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmmesh.errors import BadAtomsError, InputError
from swarmmesh.gentoo import (
    PackageRef,
    cpv_parts,
    gpkg_relpath,
    parse_atom,
    parse_package_list,
    parse_packages,
)

SHARED = Path(__file__).parents[2] / "shared"
FIXTURES = SHARED / "fixtures"

WORLD = [
    "sys-libs/zlib-1.3.1-r1", "dev-libs/openssl-3.3.2", "dev-python/trove-classifiers-2024.10.21.16",
    "app-misc/screen-4.9.1-r1", "dev-lang/python-3.12.7_p1", "sys-kernel/gentoo-sources-6.6.58",
    "media-libs/libpng-1.6.43", "kde-frameworks/kconfig-6.22.0", "x11-themes/my-theme-1.0",
]

# --------------------------------------------------------------------------------------------- atoms


@pytest.mark.parametrize(
    ("text", "cpv", "repo"),
    [
        ("cat/pkg-1.0", "cat/pkg-1.0", None),
        ("=cat/pkg-1.0", "cat/pkg-1.0", None),
        ("=cat/pkg-1.0-r1::localrepo", "cat/pkg-1.0-r1", "localrepo"),
        ("cat/pkg-1.0::gentoo", "cat/pkg-1.0", "gentoo"),
        ("cat/pkg-1.0:0", "cat/pkg-1.0", None),
        ("=dev-lang/python-3.12.7_p1:3.12/3.12::gentoo", "dev-lang/python-3.12.7_p1", "gentoo"),
        ("  =app-misc/screen-4.9.1-r1  ", "app-misc/screen-4.9.1-r1", None),
        ("sys-kernel/gentoo-sources-6.6.58:6.6.58::gentoo", "sys-kernel/gentoo-sources-6.6.58", "gentoo"),
        ("dev-python/trove-classifiers-2024.10.21.16", "dev-python/trove-classifiers-2024.10.21.16", None),
        ("=x11-libs/gtk+-3.24.41:3", "x11-libs/gtk+-3.24.41", None),
    ],
)
def test_accepted_atoms(text: str, cpv: str, repo: str | None) -> None:
    assert parse_atom(text) == PackageRef(cpv, repo)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("cat/pkg", "no version"),
        ("=cat/pkg", "not a valid package atom"),
        (">=cat/pkg-1", "version range"),
        ("<cat/pkg-2.0", "version range"),
        ("~cat/pkg-1.0", "version range"),
        ("=cat/pkg-1*", "wildcard"),
        ("!cat/pkg", "blocker"),
        ("!!cat/pkg-1.0", "blocker"),
        ("=cat/pkg-1.0[ssl]", "USE dependencies"),
        ("cat/pkg-1.0 cat/other-2", "whitespace"),
        ("cat/pkg-1.0\tx", "whitespace"),
        ("pkg-1.0", "no category"),
        ("@world", "package set"),
        ("=cat/pkg-1.0::", "not a valid package atom"),
        ("=cat/../pkg-1.0", "not a valid package atom"),
        ("=cat/pkg-1.0::../x", "not a valid package atom"),
        ("=cät/pkg-1.0", "not a valid package atom"),
        ("cat/pkg-1.0.ebuild", "not a valid package atom"),
        ("c/" + "p" * 600 + "-1", "longer than"),
    ],
)
def test_rejected_atoms(text: str, reason: str) -> None:
    with pytest.raises(InputError, match="expected one exact version") as info:
        parse_atom(text)
    assert reason in str(info.value)


def test_parse_atom_rejects_non_strings() -> None:
    with pytest.raises(InputError, match="not a string"):
        parse_atom(42)  # type: ignore[arg-type]


def test_package_ref_properties() -> None:
    ref = parse_atom("=x11-themes/my-theme-1.0-r2::localrepo")
    assert (ref.category, ref.pn, ref.pf) == ("x11-themes", "my-theme", "my-theme-1.0-r2")
    assert ref.key == "x11-themes/my-theme-1.0-r2::localrepo"
    assert PackageRef("a/b-1", None).key == "a/b-1"
    assert parse_atom(ref.key) == ref  # queue keys parse back to the same package


CATEGORY = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,6})?", fullmatch=True)
PN = st.from_regex(r"[a-z][a-z0-9_+]{0,8}", fullmatch=True)
VERSION = st.from_regex(
    r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}[a-z]?(_(alpha|beta|pre|rc|p)[0-9]{0,2})?(-r[0-9]{1,2})?", fullmatch=True
)
REPO = st.none() | st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(CATEGORY, PN, VERSION, st.sampled_from(["", "="]), st.sampled_from(["", ":0", ":3/3.1"]), REPO)
def test_valid_atoms_round_trip(cat: str, pn: str, ver: str, op: str, slot: str, repo: str | None) -> None:
    ref = parse_atom(f"{op}{cat}/{pn}-{ver}{slot}" + (f"::{repo}" if repo else ""))
    assert ref == PackageRef(f"{cat}/{pn}-{ver}", repo)
    assert (ref.category, ref.pn, ref.pf) == (cat, pn, f"{pn}-{ver}")
    assert gpkg_relpath(ref, 7) == f"{cat}/{pn}/{pn}-{ver}-7.gpkg.tar"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_package_or_an_input_error(text: str) -> None:
    try:
        ref = parse_atom(text)
    except InputError:
        return
    parts = gpkg_relpath(ref).split("/")
    assert len(parts) == 3 and ".." not in parts and all(parts)


@pytest.mark.parametrize("bad", ["../x-1.0", "cat/../x-1.0", "a/b/c-1.0", "cat/foo", "=cat/foo-1.0",
                                 "cat/foo-1.0::gentoo", "", "cat/foo-1.0 x"])
def test_cpv_parts_refuses_what_is_not_a_bare_cpv(bad):
    with pytest.raises(InputError):
        cpv_parts(bad)


def test_cpv_parts():
    assert cpv_parts("app-misc/foo-bar-1.2.3-r1") == ("app-misc", "foo-bar", "foo-bar-1.2.3-r1")


_ODD_CPVS = ["cat/pkg-1.0\n", "cat/pkg-1.0 ", "cat/pkg-1.0:0", "cat/pkg-1.0::r", "cat/../x-1", "cat/pkg-1.0/x",
             "=cat/pkg-1.0", "cat/-pkg-1", "cat/pkg-01.0", "cat/pkg-1.0-r0", "cat.x/pkg-1", "-cat/pkg-1",
             "cat/pkg-1.0-r1-r2", "cat/pkg-r1-1.0", "cat//pkg-1", "/pkg-1", "cat/pkg-1.0-", "cat/pkg-1.0\x00",
             "cat/pk\u00e9-1", "cat/pkg-1.0_pre20260101", "cat/pkg-1e", "cat/pkg-1.0*", "cat/pkg-1.0[x]"]


def _bare_by_atom(text: str) -> tuple[str, str, str] | None:
    try:
        ref = parse_atom(text)
    except InputError:
        return None
    return (ref.category, ref.pn, ref.pf) if ref.cpv == text and ref.repo is None else None


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(_ODD_CPVS),
                 st.text(alphabet="ab-_+.019r/:*=~<>@! \n", max_size=14),
                 st.builds(lambda t: "cat/" + t, st.text(alphabet="ab-_+.019r/:*@ \n", max_size=12))))
def test_cpv_parts_accepts_exactly_the_bare_cpvs_an_atom_does(text: str) -> None:
    """cpv_parts stands in for Portage's Atom where only a bare CPV will do (it is cheaper)."""
    try:
        parts = cpv_parts(text)
    except InputError:
        parts = None
    assert parts == _bare_by_atom(text)


def test_gpkg_relpath() -> None:
    assert gpkg_relpath("test-cat/hello-1.0") == "test-cat/hello/hello-1.0-1.gpkg.tar"
    assert gpkg_relpath(PackageRef("a/b-2-r1", "repo"), 3) == "a/b/b-2-r1-3.gpkg.tar"
    for bad_cpv, build_id in [("=a/b-1", 1), ("a/b-1::r", 1), ("../x-1", 1), ("a/b-1", 0), ("a/b-1", "1")]:
        with pytest.raises(InputError):
            gpkg_relpath(bad_cpv, build_id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- bodies


def test_world_fixture_gives_the_nine_builds_in_order() -> None:
    refs = parse_package_list((FIXTURES / "emerge-pretend-world.txt").read_text())
    assert [r.cpv for r in refs] == WORLD
    assert [r.repo for r in refs] == ["gentoo"] * 8 + ["localrepo"]


def test_quiet_fixture_has_no_repositories() -> None:
    refs = parse_package_list((FIXTURES / "emerge-pretend-quiet.txt").read_text())
    assert refs == [PackageRef(cpv, None) for cpv in WORLD[:4] + ["sys-kernel/gentoo-sources-6.6.58"]]


def test_colored_pretend_output_is_understood() -> None:
    body = "\x1b[32m[ebuild  N     ]\x1b[0m \x1b[32;01mcat/pkg-1.0\x1b[0m::gentoo\r\n[binary   ] a/b-1\r\n"
    assert parse_package_list(body) == [PackageRef("cat/pkg-1.0", "gentoo")]


def test_atom_list_with_comments_several_per_line_and_duplicates() -> None:
    body = "# my list\n\ncat/a-1.0  =cat/b-2::gentoo # comment\n=cat/a-1.0\ncat/b-2::gentoo\ncat/b-2\n"
    assert [r.key for r in parse_package_list(body)] == ["cat/a-1.0", "cat/b-2::gentoo", "cat/b-2"]


def test_every_bad_line_is_reported_and_nothing_returned() -> None:
    body = "cat/ok-1.0\n>=cat/bad-1\n\n# fine\ncat/nover\ncat/ok-2.0 =cat/w-1* !cat/x\ncat/ok-3\n"
    with pytest.raises(BadAtomsError) as info:
        parse_package_list(body)
    lines = info.value.bad_lines
    assert [n for n, _text, _why in lines] == [2, 5, 6]
    assert lines[0][1] == ">=cat/bad-1" and "range" in lines[0][2]
    assert "wildcard" in lines[2][2] and "blocker" in lines[2][2] and "'!cat/x'" in lines[2][2]
    assert "3 invalid line(s)" in str(info.value)


def test_bad_ebuild_line_in_pretend_output() -> None:
    body = "[ebuild  N     ] cat/ok-1.0::gentoo\n[ebuild  N     ] not-an-atom\n[ebuild  N     ]\n"
    with pytest.raises(BadAtomsError) as info:
        parse_package_list(body)
    assert [n for n, _t, _w in info.value.bad_lines] == [2, 3]


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("", "names no package"),
        ("\n  \n# only a comment\n", "names no package"),
        ("[binary     U  ] app-editors/vim-core-9.1.0794::gentoo\n[nomerge ] a/b-1\n", "no [ebuild"),
    ],
)
def test_empty_submissions(body: str, what: str) -> None:
    with pytest.raises(InputError, match="no packages") as info:
        parse_package_list(body)
    assert not isinstance(info.value, BadAtomsError)
    assert what in str(info.value)


def test_parse_packages_json_list() -> None:
    refs = parse_packages(["=cat/a-1.0::gentoo", " cat/b-2 ", "cat/a-1.0::gentoo"])
    assert refs == [PackageRef("cat/a-1.0", "gentoo"), PackageRef("cat/b-2", None)]


def test_parse_packages_reports_non_strings_and_bad_atoms() -> None:
    with pytest.raises(BadAtomsError) as info:
        parse_packages(["cat/a-1.0", 42, None, "cat/b", ["x"]])
    bad = [(n, text) for n, text, _why in info.value.bad_lines]
    assert bad == [(2, "42"), (3, "None"), (4, "cat/b"), (5, "['x']")]
    assert "not a string" in info.value.bad_lines[0][2]


def test_parse_package_list_needs_text() -> None:
    with pytest.raises(InputError, match="must be text"):
        parse_package_list(b"cat/a-1.0")  # type: ignore[arg-type]


@pytest.mark.parametrize("items", [[], "cat/a-1.0", {"packages": []}, None])
def test_parse_packages_needs_a_non_empty_list(items: object) -> None:
    with pytest.raises(InputError):
        parse_packages(items)  # type: ignore[arg-type]
