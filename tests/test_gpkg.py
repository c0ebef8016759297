"""Tests for swarmmesh.gpkg: validating GPKGs without trust.

Portage itself is the referee wherever it can run here: portage.gpkg must read what we write
(with gpkg_writer, whose own tests are in test_gpkg_writer.py), and inspect_gpkg must accept what
portage.gpkg writes. The tar layer under both (headers, the strict reader) is tested on its own in
test_tarblock.py.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmmesh import gpkg, gpkg_writer, tarblock
from swarmmesh.errors import ArtifactError
from swarmmesh.gpkg import inspect_gpkg
from swarmmesh.gpkg_writer import write_gpkg

# --------------------------------------------------------------------------------------------- GPKG


def test_inspect_rejects_another_package(package: Path) -> None:
    with pytest.raises(ArtifactError, match="x11-themes/other-1.0 was expected"):
        inspect_gpkg(package, expect_cpv="x11-themes/other-1.0")


def test_inspect_rejects_a_flipped_byte_in_the_image(package: Path) -> None:
    with tarfile.open(package) as tar:
        offset = tar.getmember("my-theme-1.0-1/image.tar.gz").offset_data + 2000
    data = bytearray(package.read_bytes())
    data[offset] ^= 0x01
    package.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"image\.tar\.gz does not match its Manifest"):
        inspect_gpkg(package)


def test_inspect_of_bytes_in_memory_is_the_inspection_of_the_file(package: Path, tmp_path: Path) -> None:
    data = package.read_bytes()
    elsewhere = tmp_path / "never-written.gpkg.tar"  # names it in messages, is never read
    assert inspect_gpkg(elsewhere, data=data) == inspect_gpkg(package)
    members = _members(package)
    _rewrite(package, _with_manifest(members, _digests(("SHA256", None))))  # re-read for SHA256
    assert inspect_gpkg(elsewhere, data=package.read_bytes()).cpv == "x11-themes/my-theme-1.0"
    spoiled = bytearray(data)
    spoiled[len(spoiled) // 2] ^= 0x01
    with pytest.raises(ArtifactError, match="never-written.gpkg.tar"):
        inspect_gpkg(elsewhere, data=bytes(spoiled))
    assert not elsewhere.exists()


def _outcome(inspect) -> str:
    try:
        return repr(inspect())
    except ArtifactError as exc:
        return f"ArtifactError: {exc}"


def test_bytes_in_memory_and_the_file_take_the_same_verdicts_on_damage(tmp_path: Path) -> None:
    """A small file held in memory is scanned by slicing, a file by streaming: the same checks in
    the same order, so every damaged copy gets the same verdict and message either way."""
    path = tmp_path / "p.gpkg.tar"
    whole = gpkg_writer.gpkg_bytes("cat/pkg-1.0", size=2048, metadata={"BUILD_TIME": "1"})
    flips = [whole[:at] + bytes([whole[at] ^ 0x01]) + whole[at + 1:] for at in range(0, len(whole), 61)]
    cuts = [whole[:at] for at in range(900, len(whole), 199)]
    verdicts = set()
    for data in [whole, *flips, *cuts, whole[:2048] + b"junk" + whole[2048:]]:
        path.write_bytes(data)
        by_file = _outcome(functools.partial(inspect_gpkg, path))
        assert _outcome(functools.partial(inspect_gpkg, path, data=data)) == by_file
        verdicts.add(by_file.partition("(")[0])
    assert len(verdicts) > 5  # the damage reached several different checks


def test_inspect_rejects_junk_tiny_empty_and_missing_files(tmp_path: Path) -> None:
    cases = {"junk": os.urandom(8192), "tiny": b"x" * 1000, "zeros": bytes(8192)}
    expected = {"junk": "not a readable", "tiny": "too small", "zeros": "empty archive"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ArtifactError, match=expected[name]):
            inspect_gpkg(tmp_path / name)
    with pytest.raises(ArtifactError, match="cannot read"):
        inspect_gpkg(tmp_path / "missing")


def test_inspect_rejects_a_truncated_file(package: Path) -> None:
    package.write_bytes(package.read_bytes()[:12_000])
    with pytest.raises(ArtifactError, match="not a readable GPKG tar"):
        inspect_gpkg(package)


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
def test_inspect_rejects_bad_structure(package: Path, change, reason: str) -> None:
    _rewrite(package, change(_members(package)))
    with pytest.raises(ArtifactError, match=reason):
        inspect_gpkg(package)


def test_inspect_rejects_links_in_the_outer_tar(package: Path) -> None:
    members = _members(package)
    _rewrite(package, members, extra=tarfile.TarInfo("my-theme-1.0-1/image.tar.gz.sig"), link="/etc/shadow")
    with pytest.raises(ArtifactError, match="not a regular file"):
        inspect_gpkg(package)


@pytest.mark.parametrize(
    ("override", "reason"), [({"CATEGORY": ""}, "no CATEGORY"), ({"BUILD_ID": "x"}, "BUILD_ID")]
)
def test_inspect_rejects_bad_metadata(tmp_path: Path, override: dict[str, str], reason: str) -> None:
    path = tmp_path / "p.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", metadata=override)
    with pytest.raises(ArtifactError, match=reason):
        inspect_gpkg(path)


@pytest.mark.parametrize("expect", [None, "cat/pkg-1.0"])
def test_inspect_rejects_metadata_naming_no_valid_package(tmp_path: Path, expect: str | None) -> None:
    """Checked by Portage's parser without an expected CPV; with one, by comparing to it."""
    path = tmp_path / "p.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", metadata={"CATEGORY": "cat", "PF": "pkg-1.0-x"})
    reason = "not a valid package version" if expect is None else "'cat/pkg-1.0-x', but cat/pkg-1.0 was expected"
    with pytest.raises(ArtifactError, match=re.escape(reason)):
        inspect_gpkg(path, expect_cpv=expect)


def test_inspect_bounds_metadata_decompression(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpkg, "_MAX_METADATA_TAR", 2000)
    with pytest.raises(ArtifactError, match="unpacks to over 2000 bytes"):
        inspect_gpkg(package)


def test_a_metadata_member_sized_past_any_file_is_refused(package: Path) -> None:
    """A base-256 size of 2**87 in metadata.tar, behind a Manifest that matches: refused with a
    clear message (it was an OverflowError from the read)."""
    members = _members(package)
    inner = tarblock.tar_header("metadata/X", 1 << 87, 0) + bytes(1024)
    members = _tampered(members, members[1][0], gzip.compress(inner))
    _rewrite(package, _with_manifest(members, _digests(("BLAKE2B", None), ("SHA512", None))))
    with pytest.raises(ArtifactError, match=r"metadata\.tar\.gz is not a readable tar \('metadata/X' is cut short"):
        inspect_gpkg(package)


def test_read_gpkg_metadata_matches_the_full_inspection(tmp_path):
    path = tmp_path / "p.gpkg.tar"
    gpkg_writer.write_gpkg(path, "app-misc/meta-1.0", size=8192)
    assert gpkg.read_gpkg_metadata(path) == gpkg.inspect_gpkg(path).metadata


# ------------------------------------------------------------------------------------- Portage as referee


@pytest.fixture(scope="module")
def portage_settings(tmp_path_factory: pytest.TempPathFactory):
    """A minimal portage.config (~35 ms) pointing at an empty directory: enough for portage.gpkg."""
    import portage

    root = str(tmp_path_factory.mktemp("portage-root"))
    repos = f"[DEFAULT]\nmain-repo = gentoo\n[gentoo]\nlocation = {root}\n"
    return portage.config(config_root=root, target_root=root, eprefix=root,
                          env={"PORTAGE_REPOSITORIES": repos, "BINPKG_COMPRESS": "zstd"})


def test_portage_reads_what_we_write(package: Path, portage_settings, tmp_path: Path) -> None:
    import portage.gpkg

    reader = portage.gpkg.gpkg(portage_settings, "my-theme-1.0-1", str(package))
    meta = reader.get_metadata()  # verifies structure and Manifest first
    assert meta["CATEGORY"] == b"x11-themes\n" and meta["PF"] == b"my-theme-1.0\n"
    assert "environment.bz2" in meta and "my-theme-1.0.ebuild" in meta  # what a client's merge reads
    reader.decompress(str(tmp_path / "out"))
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
    monkeypatch.setattr(gpkg, "_MAX_METADATA_TAR", 10_000)
    with pytest.raises(ArtifactError, match="unpacks to over"):
        inspect_gpkg(path)


# --------------------------------------------------------------------------------------------- GPKG tar layer

LONG_CPV = "app-misc/" + "long" * 30 + "-1.0"  # its top directory makes every member name over 100 bytes


def test_long_member_names_round_trip(tmp_path: Path, portage_settings) -> None:
    import portage.gpkg

    path = tmp_path / "long.gpkg.tar"
    write_gpkg(path, LONG_CPV, size=9000)
    top = LONG_CPV.partition("/")[2] + "-1"
    with tarfile.open(path) as tar:
        assert tar.getnames() == [f"{top}/{n}" for n in ("gpkg-1", "metadata.tar.gz", "image.tar.gz", "Manifest")]
    meta = inspect_gpkg(path, expect_cpv=LONG_CPV).metadata
    assert gpkg.read_gpkg_metadata(path) == meta
    assert portage.gpkg.gpkg(portage_settings, top, str(path)).get_metadata()["PF"].decode().strip() == meta["PF"]


def _header_offsets(path: Path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name.partition("/")[2]: m.offset for m in tar.getmembers()}


def test_tar_damage_is_reported_with_the_file_and_what_to_do(package: Path) -> None:
    data = bytearray(package.read_bytes())
    data[_header_offsets(package)["metadata.tar.gz"] + 5] ^= 0x01
    package.write_bytes(bytes(data))
    where = r"^my-theme-1\.0-1\.gpkg\.tar: not a readable GPKG tar archive \(bad header checksum"
    with pytest.raises(ArtifactError, match=where + r".*\); rebuild and resend the package$"):
        inspect_gpkg(package)
    with pytest.raises(ArtifactError, match=where + r".*\); discard this copy and fetch it again$"):
        gpkg.read_gpkg_metadata(package)


def test_read_gpkg_metadata_rejects_a_cut_metadata_member(package: Path) -> None:
    package.write_bytes(package.read_bytes()[:_header_offsets(package)["metadata.tar.gz"] + 700])
    with pytest.raises(ArtifactError, match="not a readable GPKG.*runs past the end"):
        gpkg.read_gpkg_metadata(package)


# --------------------------------------------------------------------------------------------- GPKG digests


def _with_manifest(members: list[tuple[str, bytes]], line) -> list[tuple[str, bytes]]:
    """The same members with a Manifest made of `line(name, data)` for each other member."""
    body = "".join(line(n.partition("/")[2], d) for n, d in members if not n.endswith("/Manifest"))
    return _tampered(members, members[3][0], body.encode())


def _digests(*pairs: tuple[str, str | None]):
    """A Manifest line maker: each (algorithm, None) pair lists the right digest, (algorithm, hex)
    lists `hex` for image.tar.gz and the right digest for the other members."""
    def line(name: str, data: bytes) -> str:
        listed = [f"{algo} {_hex(algo, data) if hex_ is None or 'image' not in name else hex_}" for algo, hex_ in pairs]
        return f"DATA {name} {len(data)} {' '.join(listed)}\n"
    return line


def _hex(algo: str, data: bytes) -> str:
    return hashlib.new(algo.lower(), data).hexdigest()


def test_a_single_listed_digest_is_enough_and_other_algorithms_are_reread(package: Path) -> None:
    members = _members(package)
    _rewrite(package, _with_manifest(members, _digests(("SHA256", None))))
    assert inspect_gpkg(package).cpv == "x11-themes/my-theme-1.0"
    _rewrite(package, _with_manifest(members, _digests(("SHA256", hashlib.sha256(b"other").hexdigest()))))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match its Manifest SHA256 digest"):
        inspect_gpkg(package)


def test_a_wrong_sha512_is_rejected_though_blake2b_matches(package: Path) -> None:
    """What Portage writes, with one digest wrong: every Portage client would refuse this file."""
    members = _members(package)
    wrong = hashlib.sha512(b"other").hexdigest()
    _rewrite(package, _with_manifest(members, _digests(("BLAKE2B", None), ("SHA512", wrong))))
    with pytest.raises(ArtifactError) as info:
        inspect_gpkg(package)
    message = str(info.value)
    assert "image.tar.gz does not match its Manifest SHA512 digest" in message
    assert "Portage clients would refuse it too" in message and "rebuild and resend the package" in message


def test_a_wrong_blake2b_is_rejected_though_sha512_matches(package: Path) -> None:
    members = _members(package)
    _rewrite(package, _with_manifest(members, _digests(("SHA512", None), ("BLAKE2B", "0" * 128))))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match its Manifest BLAKE2B digest"):
        inspect_gpkg(package)


def test_every_listed_algorithm_hashlib_has_is_checked(package: Path) -> None:
    members = _members(package)
    right = (("BLAKE2B", None), ("SHA512", None), ("SHA3_256", None))
    unknown = lambda n, d: _digests(*right)(n, d).replace("\n", " WHIRLPOOL 00\n")  # noqa: E731 - not in hashlib
    _rewrite(package, _with_manifest(members, unknown))
    assert inspect_gpkg(package).cpv == "x11-themes/my-theme-1.0"
    _rewrite(package, _with_manifest(members, _digests(*right, ("SHA256", "0" * 64))))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match its Manifest SHA256 digest"):
        inspect_gpkg(package)


def test_a_member_with_no_checkable_digest_is_rejected(package: Path) -> None:
    members = _members(package)
    _rewrite(package, _with_manifest(members, _digests(("MD5", None))))
    with pytest.raises(ArtifactError, match=r"no digest swarmmesh checks for gpkg-1 \(\['MD5'\]\)"):
        inspect_gpkg(package)


@pytest.mark.parametrize(
    "line",
    [
        "DATA\n",
        "DATA ghost\n",
        "DATA ghost \u00b2 BLAKE2B 00\n",  # a digit to str.isdigit, not to int()
        "DATA ghost 1 BLAKE2B 00 SHA512\n",
    ],
)
def test_malformed_manifest_lines_are_refused(package: Path, line: str) -> None:
    members = _members(package)
    _rewrite(package, _tampered(members, members[3][0], members[3][1] + line.encode()))
    with pytest.raises(ArtifactError, match="malformed Manifest line"):
        inspect_gpkg(package)


def test_an_algorithm_listed_twice_is_a_malformed_line(package: Path) -> None:
    """Portage checks the first SHA512 of such a line: a right second one must not hide it."""
    members = _members(package)
    wrong = hashlib.sha512(b"other").hexdigest()
    _rewrite(package, _with_manifest(members, _digests(("BLAKE2B", None), ("SHA512", wrong), ("SHA512", None))))
    with pytest.raises(ArtifactError, match="malformed Manifest line"):
        inspect_gpkg(package)


def test_threaded_digests_agree_with_inline_ones(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    inline = inspect_gpkg(package)
    members = _members(package)
    monkeypatch.setattr(gpkg, "_THREADED_FROM", 0)
    monkeypatch.setattr(gpkg, "_CHUNK", 4096)  # several chunks, so the lanes really queue
    before = threading.active_count()
    assert inspect_gpkg(package) == inline
    data = bytearray(package.read_bytes())
    data[_header_offsets(package)["image.tar.gz"] + 3000] ^= 1
    package.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match its Manifest BLAKE2B"):
        inspect_gpkg(package)
    _rewrite(package, _with_manifest(members, _digests(("BLAKE2B", None), ("SHA512", "0" * 128))))
    with pytest.raises(ArtifactError, match="image.tar.gz does not match its Manifest SHA512"):
        inspect_gpkg(package)
    assert threading.active_count() == before  # every digest thread was joined


def _digest_hex_offsets(path: Path) -> list[int]:
    """File offsets of every hex digit of the Manifest's BLAKE2B and SHA512 digests."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/Manifest"))
        text = tar.extractfile(member).read()  # type: ignore[union-attr]
    found = re.finditer(rb"(?:BLAKE2B|SHA512) ([0-9a-f]+)", text)
    return [member.offset_data + i for match in found for i in range(*match.span(1))]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_gpkgs_raise_artifact_errors_only(tmp_path_factory: pytest.TempPathFactory, data) -> None:
    """Whatever a flipped byte, a cut or inserted junk does, the readers fail cleanly (or accept a
    file whose damage no reader can see, e.g. in a member's zero padding). A flip inside any
    listed digest is always seen: each one is checked, as Portage clients check them."""
    path = tmp_path_factory.getbasetemp() / "fuzz.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", size=2048, metadata={"BUILD_TIME": "1"})
    raw = bytearray(path.read_bytes())
    digest_hex = _digest_hex_offsets(path)
    where = data.draw(st.integers(0, len(raw) - 1) | st.sampled_from(digest_hex))
    how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    before = raw[where]
    if how == "flip":
        raw[where] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del raw[where:]
    else:
        raw[where:where] = data.draw(st.binary(min_size=1, max_size=600))
    path.write_bytes(bytes(raw))
    # Only a change of letter case inside a digest is invisible (Portage compares them lowercased).
    if how == "flip" and where in digest_hex and chr(raw[where]).lower() != chr(before).lower():
        with pytest.raises(ArtifactError, match="does not match its Manifest|malformed Manifest"):
            inspect_gpkg(path)
    for read in (inspect_gpkg, gpkg.read_gpkg_metadata):
        with contextlib.suppress(ArtifactError):
            read(path)


# --------------------------------------------------------------------------------------------- helpers


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(path: Path, members: list[tuple[str, bytes]], extra: tarfile.TarInfo | None = None,
             link: str = "") -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra.type, extra.linkname = tarfile.SYMTYPE, link
            tar.addfile(extra)
