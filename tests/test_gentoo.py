"""Tests for swarmmesh.gentoo: atoms, submission bodies, GPKG writing/validation, index entries.

Portage itself is the referee wherever it can run here: portage.gpkg must read what we write,
inspect_gpkg must accept what portage.gpkg writes, and (slow, optional) a real
`emerge --buildpkg` + `emaint binhost --fix` in a gentoo-prefix must agree with our index entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmmesh import gentoo
from swarmmesh.errors import ArtifactError, BadAtomsError, InputError
from swarmmesh.gentoo import (
    PackageRef,
    gpkg_relpath,
    inspect_gpkg,
    packages_index_entry,
    parse_atom,
    parse_package_list,
    parse_packages,
    write_gpkg,
)

SHARED = Path(__file__).parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
PREFIX_TOOL = SHARED / "gentoo-prefix" / "gentoo-prefix"
VENV_BIN = Path(__file__).parents[1] / ".venv" / "bin"

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


# --------------------------------------------------------------------------------------------- GPKG


@pytest.fixture
def gpkg(tmp_path: Path) -> Path:
    path = tmp_path / "my-theme-1.0-1.gpkg.tar"
    write_gpkg(path, "x11-themes/my-theme-1.0", size=20_000, repo="localrepo", build_id=1, seed=3,
               metadata={"BUILD_TIME": "1700000000", "USE": "gtk",
                         "RDEPEND": "gtk? ( x11-libs/gtk+ ) dev-libs/a"})
    return path


def test_round_trip(gpkg: Path) -> None:
    info = inspect_gpkg(gpkg, expect_cpv="x11-themes/my-theme-1.0")
    data = gpkg.read_bytes()
    assert (info.cpv, info.build_id, info.size) == ("x11-themes/my-theme-1.0", 1, len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.md5, info.sha1) == (hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest())
    meta = info.metadata
    for key in ("CATEGORY", "PF", "SLOT", "EAPI", "USE", "KEYWORDS", "DEFINED_PHASES", "repository",
                "BUILD_ID", "BUILD_TIME", "SIZE", "DEPEND", "RDEPEND", "CHOST"):
        assert key in meta, key
    assert (meta["PF"], meta["repository"], meta["BUILD_TIME"]) == ("my-theme-1.0", "localrepo", "1700000000")
    image = _image_files(gpkg)
    assert list(image) == ["image/usr/share/my-theme/my-theme-1.0.bin"]
    assert int(meta["SIZE"]) == len(next(iter(image.values())))


def test_layout_is_glep78(gpkg: Path) -> None:
    with tarfile.open(gpkg) as tar:
        names = tar.getnames()
    assert names == [f"my-theme-1.0-1/{n}" for n in ("gpkg-1", "metadata.tar.gz", "image.tar.gz", "Manifest")]


@pytest.mark.parametrize("size", [2048, 4096, 50_000, 1 << 20])
def test_size_is_about_what_was_asked(tmp_path: Path, size: int) -> None:
    path = tmp_path / "p.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", size=size)
    actual = path.stat().st_size
    assert actual <= max(size, 6 * 1024) + 1024
    assert actual >= size - 1024 - size // 100
    assert inspect_gpkg(path).size == actual


def test_same_seed_same_image_other_seed_other_image(tmp_path: Path) -> None:
    images = []
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        write_gpkg(tmp_path / name, "cat/pkg-1.0", size=8000, seed=seed, metadata={"BUILD_TIME": "1"})
        images.append(_image_files(tmp_path / name))
    assert images[0] == images[1] != images[2]
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_gpkg(tmp_path / "x.gpkg.tar", "cat/pkg-1.0")
    with pytest.raises(InputError):
        write_gpkg(tmp_path / "y.gpkg.tar", "cat/pkg-1.0", metadata={"../evil": "x"})
    with pytest.raises(InputError, match="build id"):
        write_gpkg(tmp_path / "z.gpkg.tar", "cat/pkg-1.0", build_id=0)
    assert sorted(os.listdir(tmp_path)) == ["x.gpkg.tar"]


def test_inspect_rejects_another_package(gpkg: Path) -> None:
    with pytest.raises(ArtifactError, match="x11-themes/other-1.0 was expected"):
        inspect_gpkg(gpkg, expect_cpv="x11-themes/other-1.0")


def test_inspect_rejects_a_flipped_byte_in_the_image(gpkg: Path) -> None:
    with tarfile.open(gpkg) as tar:
        offset = tar.getmember("my-theme-1.0-1/image.tar.gz").offset_data + 2000
    data = bytearray(gpkg.read_bytes())
    data[offset] ^= 0x01
    gpkg.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"image\.tar\.gz does not match its Manifest"):
        inspect_gpkg(gpkg)


def test_inspect_rejects_junk_tiny_empty_and_missing_files(tmp_path: Path) -> None:
    cases = {"junk": os.urandom(8192), "tiny": b"x" * 1000, "zeros": bytes(8192)}
    expected = {"junk": "not a readable", "tiny": "too small", "zeros": "empty archive"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ArtifactError, match=expected[name]):
            inspect_gpkg(tmp_path / name)
    with pytest.raises(ArtifactError, match="cannot read"):
        inspect_gpkg(tmp_path / "missing")


def test_inspect_rejects_a_truncated_file(gpkg: Path) -> None:
    gpkg.write_bytes(gpkg.read_bytes()[:12_000])
    with pytest.raises(ArtifactError, match="not a readable GPKG tar"):
        inspect_gpkg(gpkg)


def _tampered(members: list[tuple[str, bytes]], name: str, data: bytes) -> list[tuple[str, bytes]]:
    return [(n, data if n == name else d) for n, d in members]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: [m[1], m[0], *m[2:]], "first member"),
        (lambda m: [*m, ("my-theme-1.0-1/../evil", b"x")], r"'\.\.' path"),
        (lambda m: [*m, ("/etc/evil", b"x")], "absolute"),
        (lambda m: [*m, ("other-1.0/x", b"x")], "single top directory"),
        (lambda m: [*m, ("my-theme-1.0-1/extra.txt", b"x")], "not a GPKG member name"),
        (lambda m: [*m, m[2]], "duplicate"),
        (lambda m: m[:3], "exactly one Manifest"),
        (lambda m: [m[0], m[2], m[3]], "exactly one metadata.tar"),
        (lambda m: [*m[:3], ("my-theme-1.0-1/image.tar.xz", b"x"), m[3]], "exactly one image.tar"),
        (lambda m: _tampered(m, m[3][0], m[3][1] + b"DATA ghost 1 SHA512 00\n"), "Manifest lists"),
        (lambda m: _tampered(m, m[3][0], b"junk line\n"), "malformed Manifest"),
        (lambda m: [("x/" + n.partition("/")[2], d) for n, d in m], "top directory 'x' does not belong"),
    ],
)
def test_inspect_rejects_bad_structure(gpkg: Path, change, reason: str) -> None:
    _rewrite(gpkg, change(_members(gpkg)))
    with pytest.raises(ArtifactError, match=reason):
        inspect_gpkg(gpkg)


def test_inspect_rejects_links_in_the_outer_tar(gpkg: Path) -> None:
    members = _members(gpkg)
    _rewrite(gpkg, members, extra=tarfile.TarInfo("my-theme-1.0-1/image.tar.gz.sig"), link="/etc/shadow")
    with pytest.raises(ArtifactError, match="not a regular file"):
        inspect_gpkg(gpkg)


@pytest.mark.parametrize(
    ("override", "reason"), [({"CATEGORY": ""}, "no CATEGORY"), ({"BUILD_ID": "x"}, "BUILD_ID")]
)
def test_inspect_rejects_bad_metadata(tmp_path: Path, override: dict[str, str], reason: str) -> None:
    path = tmp_path / "p.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", metadata=override)
    with pytest.raises(ArtifactError, match=reason):
        inspect_gpkg(path)


def test_inspect_bounds_metadata_decompression(gpkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gentoo, "_MAX_METADATA_TAR", 2000)
    with pytest.raises(ArtifactError, match="unpacks to over 2000 bytes"):
        inspect_gpkg(gpkg)


def test_index_entry_of_a_written_package(gpkg: Path) -> None:
    info = inspect_gpkg(gpkg)
    entry = packages_index_entry(info, gpkg_relpath(info.cpv), 1700000001)
    assert entry["CPV"] == "x11-themes/my-theme-1.0"
    assert entry["PATH"] == "x11-themes/my-theme/my-theme-1.0-1.gpkg.tar"
    assert (entry["SIZE"], entry["MTIME"], entry["MD5"], entry["SHA1"]) == (
        str(info.size), "1700000001", info.md5, info.sha1)
    assert (entry["REPO"], entry["BUILD_ID"], entry["BUILD_TIME"]) == ("localrepo", "1", "1700000000")
    assert entry["RDEPEND"] == "x11-libs/gtk+ dev-libs/a"  # USE conditionals resolved like binarytree
    assert "DEPEND" not in entry and "repository" not in entry
    assert int(entry["SIZE"]) > int(info.metadata["SIZE"])  # index SIZE is the file, metadata SIZE the image


def test_index_entry_rejects_broken_dependencies(tmp_path: Path) -> None:
    write_gpkg(tmp_path / "p", "cat/pkg-1.0", metadata={"RDEPEND": "foo? ( cat/x"})
    with pytest.raises(ArtifactError, match="invalid RDEPEND"):
        packages_index_entry(inspect_gpkg(tmp_path / "p"), "cat/pkg/pkg-1.0-1.gpkg.tar", 0)


# ------------------------------------------------------------------------------------- Portage as referee


@pytest.fixture(scope="module")
def portage_settings(tmp_path_factory: pytest.TempPathFactory):
    """A minimal portage.config (~35 ms) pointing at an empty directory: enough for portage.gpkg."""
    import portage

    root = str(tmp_path_factory.mktemp("portage-root"))
    repos = f"[DEFAULT]\nmain-repo = gentoo\n[gentoo]\nlocation = {root}\n"
    return portage.config(config_root=root, target_root=root, eprefix=root,
                          env={"PORTAGE_REPOSITORIES": repos, "BINPKG_COMPRESS": "zstd"})


def test_portage_reads_what_we_write(gpkg: Path, portage_settings, tmp_path: Path) -> None:
    import portage.gpkg

    package = portage.gpkg.gpkg(portage_settings, "my-theme-1.0-1", str(gpkg))
    meta = package.get_metadata()  # verifies structure and Manifest first
    assert meta["CATEGORY"] == b"x11-themes\n" and meta["PF"] == b"my-theme-1.0\n"
    assert "environment.bz2" in meta and "my-theme-1.0.ebuild" in meta  # what a client's merge reads
    package.decompress(str(tmp_path / "out"))
    assert (tmp_path / "out/usr/share/my-theme/my-theme-1.0.bin").stat().st_size == int(meta["SIZE"])


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_we_accept_what_portage_writes(portage_settings, tmp_path: Path) -> None:
    import portage.gpkg

    image = tmp_path / "image" / "usr" / "bin"
    image.mkdir(parents=True)
    (image / "tool").write_bytes(os.urandom(3000))
    path = tmp_path / "foo-2.0-3.gpkg.tar"
    meta = {"CATEGORY": "app-misc\n", "PF": "foo-2.0\n", "SLOT": "0\n", "BUILD_ID": "3", "EAPI": "8\n"}
    portage.gpkg.gpkg(portage_settings, "foo-2.0-3", str(path)).compress(str(tmp_path / "image"), meta)
    info = inspect_gpkg(path, expect_cpv="app-misc/foo-2.0")
    assert (info.build_id, info.metadata["SLOT"]) == (3, "0")
    with tarfile.open(path) as tar:
        assert "foo-2.0-3/metadata.tar.zst" in tar.getnames()


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_zstd_metadata_is_bounded_too(portage_settings, tmp_path: Path, monkeypatch) -> None:
    import portage.gpkg

    (tmp_path / "image").mkdir()
    path = tmp_path / "foo-1-1.gpkg.tar"
    meta = {"CATEGORY": "a\n", "PF": "foo-1\n", "SLOT": "0\n", "BIG": "x" * 50_000}
    portage.gpkg.gpkg(portage_settings, "foo-1-1", str(path)).compress(str(tmp_path / "image"), meta)
    monkeypatch.setattr(gentoo, "_MAX_METADATA_TAR", 10_000)
    with pytest.raises(ArtifactError, match="unpacks to over"):
        inspect_gpkg(path)


def _prefix_ready() -> str | None:
    if os.geteuid() != 0:
        return "gentoo-prefix runs as root"
    if not PREFIX_TOOL.exists() or not (VENV_BIN / "emerge").exists():
        return "gentoo-prefix or the venv's emerge is missing"
    missing = [tool for tool in ("bash", "zstd", "bzip2") if shutil.which(tool) is None]
    return f"missing {missing}" if missing else None


@pytest.mark.slow
@pytest.mark.skipif(_prefix_ready() is not None, reason=str(_prefix_ready()))
def test_real_portage_build_and_binhost_index_agree(tmp_path: Path) -> None:
    """A real `emerge --buildpkg` GPKG passes inspect_gpkg, and our entries (for it and for a
    simulated package) agree with the Packages file `emaint binhost --fix` writes."""
    prefix = tmp_path / "b"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(VENV_BIN)}
    _prefix(env, "builder", str(prefix))
    _prefix(env, "run", str(prefix), "emerge", "--buildpkg", "--oneshot", "=test-cat/hello-1.0")
    pkgdir = prefix / "var/cache/binpkgs"
    sim = pkgdir / gpkg_relpath("x11-themes/my-theme-1.0")
    sim.parent.mkdir(parents=True)
    write_gpkg(sim, "x11-themes/my-theme-1.0", size=20_000, repo="localrepo",
               metadata={"USE": "a", "RDEPEND": "a? ( test-cat/hello ) !a? ( x/y )"})
    _prefix(env, "run", str(prefix), "emaint", "binhost", "--fix")
    header, entries = _read_packages(pkgdir / "Packages")
    for cpv in ("test-cat/hello-1.0", "x11-themes/my-theme-1.0"):
        path = pkgdir / gpkg_relpath(cpv)
        info = inspect_gpkg(path, expect_cpv=cpv)
        ours = packages_index_entry(info, gpkg_relpath(cpv), int(path.stat().st_mtime))
        theirs = {k: v for k, v in entries[cpv].items() if k != "REPO_REVISIONS"}  # emerge-time only
        assert {k: ours.get(k) for k in theirs} == theirs
        # Whatever Portage left out is a value its writer drops as a default or as the header's.
        extra = {k: v for k, v in ours.items() if k not in theirs}
        assert extra == {k: {"SLOT": "0", "CHOST": header.get("CHOST")}.get(k) for k in extra}


def _prefix(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([str(PREFIX_TOOL), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, f"gentoo-prefix {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _read_packages(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    blocks = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
              for block in path.read_text().split("\n\n") if block.strip()]
    return blocks[0], {block["CPV"]: block for block in blocks[1:]}


# --------------------------------------------------------------------------------------------- helpers


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(path: Path, members: list[tuple[str, bytes]], extra: tarfile.TarInfo | None = None,
             link: str = "", fmt: int = tarfile.GNU_FORMAT, pax: dict[int, dict[str, str]] | None = None,
             global_pax: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w", format=fmt, pax_headers=global_pax) as tar:
        for number, (name, data) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = (pax or {}).get(number, {})
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra.type, extra.linkname = tarfile.SYMTYPE, link
            tar.addfile(extra)


def _image_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as outer:
        member = next(m for m in outer.getmembers() if "/image.tar" in m.name)
        image = io.BytesIO(outer.extractfile(member).read())  # type: ignore[union-attr]
    with tarfile.open(fileobj=image, mode="r:*") as inner:
        return {m.name: inner.extractfile(m).read() for m in inner.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_read_gpkg_metadata_matches_the_full_inspection(tmp_path):
    path = tmp_path / "p.gpkg.tar"
    gentoo.write_gpkg(path, "app-misc/meta-1.0", size=8192)
    assert gentoo.read_gpkg_metadata(path) == gentoo.inspect_gpkg(path).metadata


# --------------------------------------------------------------------------------------------- GPKG tar blocks

LONG_CPV = "app-misc/" + "long" * 30 + "-1.0"  # its top directory makes every member name over 100 bytes


@pytest.mark.parametrize(
    ("name", "size", "kind"),
    [
        ("my-theme-1.0-1/gpkg-1", 0, tarfile.REGTYPE),
        ("image/usr/share/", 0, tarfile.DIRTYPE),
        ("x/" + "n" * 97, 7, tarfile.REGTYPE),  # 99 bytes: still plain ustar
        ("x/" + "n" * 98, 7, tarfile.REGTYPE),  # 100 bytes: GNU, fits without a NUL
        ("x/" + "n" * 99, 7, tarfile.REGTYPE),  # 101 bytes: GNU long-name record
        ("x/" + "ü" * 80, 1234, tarfile.REGTYPE),
        ("x/image.tar.gz", 9 << 30, tarfile.REGTYPE),  # over 8 GiB: base-256 size
    ],
)
def test_tar_headers_are_tarfiles_byte_for_byte(name: str, size: int, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = size, 1700000000, kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    plain = len(name.encode()) < 100 and size < 8**11
    assert gentoo._tar_header(name, size, 1700000000, kind) == info.tobuf(
        tarfile.USTAR_FORMAT if plain else tarfile.GNU_FORMAT, "utf-8", "strict")


def test_long_member_names_round_trip(tmp_path: Path, portage_settings) -> None:
    import portage.gpkg

    path = tmp_path / "long.gpkg.tar"
    write_gpkg(path, LONG_CPV, size=9000)
    top = LONG_CPV.partition("/")[2] + "-1"
    with tarfile.open(path) as tar:
        assert tar.getnames() == [f"{top}/{n}" for n in ("gpkg-1", "metadata.tar.gz", "image.tar.gz", "Manifest")]
    meta = inspect_gpkg(path, expect_cpv=LONG_CPV).metadata
    assert gentoo.read_gpkg_metadata(path) == meta
    assert portage.gpkg.gpkg(portage_settings, top, str(path)).get_metadata()["PF"].decode().strip() == meta["PF"]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_pax_and_ustar_prefix_names_are_read(tmp_path: Path, fmt: int) -> None:
    """Portage writes long names in the ustar prefix field; other writers use pax headers."""
    path = tmp_path / "long.gpkg.tar"
    write_gpkg(path, LONG_CPV, size=9000)
    members = _members(path)
    _rewrite(path, members, fmt=fmt)
    assert (b"path=" in path.read_bytes()) == (fmt == tarfile.PAX_FORMAT)
    assert inspect_gpkg(path).cpv == LONG_CPV
    assert gentoo.read_gpkg_metadata(path)["PF"] == LONG_CPV.partition("/")[2]


def _header_offsets(path: Path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name.partition("/")[2]: m.offset for m in tar.getmembers()}


def _patch_header(data: bytearray, offset: int, field: int, value: bytes) -> None:
    """Overwrite part of the header at `offset` and give it a valid checksum again."""
    data[offset + field:offset + field + len(value)] = value
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + 512])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d, o: d.__setitem__(o["metadata.tar.gz"] + 5, ord("X")), "bad header checksum"),
        (lambda d, o: d.__delitem__(slice(o["Manifest"] + 200, None)), "truncated header"),
        (lambda d, o: d.__delitem__(slice(len(d) - 1024, None)), "without an end-of-archive marker"),
        (lambda d, o: _patch_header(d, o["image.tar.gz"], 124, b"%011o\0" % (1 << 30)), "cut short"),
        (lambda d, o: _patch_header(d, o["gpkg-1"], 100, b"06x4\0\0\0\0"), "malformed number field"),
        (lambda d, o: _patch_header(d, o["gpkg-1"], 257, b"ustar\0\0\0"), "neither ustar nor GNU"),
        (lambda d, o: _patch_header(d, o["gpkg-1"], 156, b"S"), "type 'S'"),
        (lambda d, o: d.extend(b"junk" + bytes(508)), "after the end-of-archive marker"),
    ],
)
def test_inspect_rejects_damaged_tar_blocks(gpkg: Path, damage, reason: str) -> None:
    data = bytearray(gpkg.read_bytes())
    damage(data, _header_offsets(gpkg))
    gpkg.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"not a readable GPKG tar archive.*{reason}"):
        inspect_gpkg(gpkg)


def test_inspect_accepts_unusual_but_valid_tar_blocks(gpkg: Path) -> None:
    """Old-style number fields (spaces, no leading zeros) and zero padding after the end marker."""
    data = bytearray(gpkg.read_bytes())
    _patch_header(data, _header_offsets(gpkg)["metadata.tar.gz"], 100, b"   644 \0")
    data += bytes(10240)
    gpkg.write_bytes(bytes(data))
    assert inspect_gpkg(gpkg).cpv == "x11-themes/my-theme-1.0"
    assert gentoo.read_gpkg_metadata(gpkg)["PF"] == "my-theme-1.0"


@pytest.mark.parametrize(
    ("pax", "reason"),
    [
        ({"GNU.sparse.major": "1"}, "pax record 'GNU.sparse.major'"),
        ({"size": "12x"}, "not a number"),
    ],
)
def test_inspect_rejects_pax_records_gpkgs_never_use(gpkg: Path, pax: dict[str, str], reason: str) -> None:
    _rewrite(gpkg, _members(gpkg), fmt=tarfile.PAX_FORMAT, pax={2: pax})
    with pytest.raises(ArtifactError, match=reason):
        inspect_gpkg(gpkg)


def test_inspect_rejects_global_pax_headers_and_names_given_twice(gpkg: Path) -> None:
    ours = gpkg.read_bytes()  # ends with exactly the two zero blocks of the end marker
    members = _members(gpkg)
    _rewrite(gpkg, members, fmt=tarfile.PAX_FORMAT, global_pax={"comment": "x"})
    with pytest.raises(ArtifactError, match="type 'g'"):
        inspect_gpkg(gpkg)
    _rewrite(gpkg, members)
    data = gpkg.read_bytes()
    named = io.BytesIO()
    with tarfile.open(fileobj=named, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(members[0][0])
        info.pax_headers = {"path": members[0][0]}
        tar.addfile(info)
    longname = gentoo._tar_header("x/" + "n" * 120, 0, 0)[:1024]  # the GNU long-name record alone
    gpkg.write_bytes(named.getvalue()[:1024] + longname + data)  # pax record, long-name record, gpkg-1
    with pytest.raises(ArtifactError, match="named or sized twice"):
        inspect_gpkg(gpkg)
    gpkg.write_bytes(ours[:-1024] + named.getvalue()[:1024] + ours[-1024:])  # a pax record, then the end
    with pytest.raises(ArtifactError, match="no member after it"):
        inspect_gpkg(gpkg)


def test_read_gpkg_metadata_rejects_a_cut_metadata_member(gpkg: Path) -> None:
    gpkg.write_bytes(gpkg.read_bytes()[:_header_offsets(gpkg)["metadata.tar.gz"] + 700])
    with pytest.raises(ArtifactError, match="not a readable GPKG.*runs past the end"):
        gentoo.read_gpkg_metadata(gpkg)


# --------------------------------------------------------------------------------------------- GPKG digests


def _with_manifest(members: list[tuple[str, bytes]], line) -> list[tuple[str, bytes]]:
    """The same members with a Manifest made of `line(name, data)` for each other member."""
    body = "".join(line(n.partition("/")[2], d) for n, d in members if not n.endswith("/Manifest"))
    return _tampered(members, members[3][0], body.encode())


def test_one_listed_digest_is_enough_and_other_algorithms_are_reread(gpkg: Path) -> None:
    members = _members(gpkg)
    _rewrite(gpkg, _with_manifest(members, lambda n, d: f"DATA {n} {len(d)} SHA256 {hashlib.sha256(d).hexdigest()}\n"))
    assert inspect_gpkg(gpkg).cpv == "x11-themes/my-theme-1.0"
    wrong = hashlib.sha256(b"other").hexdigest()
    _rewrite(gpkg, _with_manifest(members, lambda n, d: f"DATA {n} {len(d)} SHA256 {wrong}\n"))
    with pytest.raises(ArtifactError, match="does not match its Manifest"):
        inspect_gpkg(gpkg)


def test_blake2b_is_the_digest_checked_when_both_are_listed(gpkg: Path) -> None:
    members = _members(gpkg)
    good = lambda d: f"SHA512 {hashlib.sha512(d).hexdigest()}"  # noqa: E731
    _rewrite(gpkg, _with_manifest(members, lambda n, d: f"DATA {n} {len(d)} {good(d)} BLAKE2B {'0' * 128}\n"))
    with pytest.raises(ArtifactError, match="does not match its Manifest"):
        inspect_gpkg(gpkg)


def test_a_member_with_no_checkable_digest_is_rejected(gpkg: Path) -> None:
    members = _members(gpkg)
    _rewrite(gpkg, _with_manifest(members, lambda n, d: f"DATA {n} {len(d)} MD5 {hashlib.md5(d).hexdigest()}\n"))
    with pytest.raises(ArtifactError, match=r"no digest swarmmesh checks for gpkg-1 \(\['MD5'\]\)"):
        inspect_gpkg(gpkg)


def test_threaded_digests_agree_with_inline_ones(gpkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    inline = inspect_gpkg(gpkg)
    monkeypatch.setattr(gentoo, "_THREADED_FROM", 0)
    monkeypatch.setattr(gentoo, "_CHUNK", 4096)  # several chunks, so the lanes really queue
    before = threading.active_count()
    assert inspect_gpkg(gpkg) == inline
    data = bytearray(gpkg.read_bytes())
    data[_header_offsets(gpkg)["image.tar.gz"] + 3000] ^= 1
    gpkg.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match"):
        inspect_gpkg(gpkg)
    assert threading.active_count() == before  # every digest thread was joined


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_gpkgs_raise_artifact_errors_only(tmp_path_factory: pytest.TempPathFactory, data) -> None:
    """Whatever a flipped byte, a cut or inserted junk does, the readers fail cleanly (or accept a
    file whose damage no reader can see, e.g. in a member's zero padding)."""
    path = tmp_path_factory.getbasetemp() / "fuzz.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", size=2048, metadata={"BUILD_TIME": "1"})
    raw = bytearray(path.read_bytes())
    where = data.draw(st.integers(0, len(raw) - 1))
    how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if how == "flip":
        raw[where] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del raw[where:]
    else:
        raw[where:where] = data.draw(st.binary(min_size=1, max_size=600))
    path.write_bytes(bytes(raw))
    for read in (inspect_gpkg, gentoo.read_gpkg_metadata):
        with contextlib.suppress(ArtifactError):
            read(path)
