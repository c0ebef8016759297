"""Tests for swarmmesh.tarblock: headers byte for byte as tarfile writes them, and a strict reader.

tarfile is the referee: it must read what we write, and we must read what it writes for GPKG-like
archives (long names as GNU records, pax headers or ustar prefixes). Everything else is refused.
How gpkg.py reports these failures for a whole file is tested in test_gpkg.py.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from swarmmesh import tarblock
from swarmmesh.errors import ArtifactError

MTIME = 1700000000
TOP = "long" * 30 + "-1.0-1"  # a GPKG top directory that makes every member name over 100 bytes
FILES = [
    ("p-1/gpkg-1", b""),
    ("p-1/metadata.tar.gz", b"m" * 700),
    ("p-1/image.tar.gz", b"i" * 1500),
    ("p-1/Manifest", b"DATA image.tar.gz 1500 SHA512 00\n"),
]


def _archive(files: list[tuple[str, bytes]]) -> bytes:
    """An archive as gpkg_writer.py writes one: header, data and padding per member, then the end marker."""
    body = b"".join(tarblock.tar_header(name, len(data), MTIME) + data + tarblock.pad(len(data))
                    for name, data in files)
    return body + bytes(2 * tarblock.BLOCK)


def _tarfile_archive(files: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT,
                     pax: dict[int, dict[str, str]] | None = None, global_pax: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=global_pax) as tar:
        for number, (name, data) in enumerate(files):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = (pax or {}).get(number, {})
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _reader(data: bytes) -> tuple[io.BytesIO, tarblock.TarReader]:
    file = io.BytesIO(data)
    return file, tarblock.TarReader(file.read, "t.tar: not a readable tar", "fix it")


def _read(data: bytes) -> list[tuple[str, bytes]]:
    """Every member's name and data, read whole, as gpkg.py reads a metadata tar."""
    _file, reader = _reader(data)
    members = []
    while (member := reader.next()) is not None:
        assert member.kind in tarblock.REGULAR
        members.append((member.name, reader.body(member)))
    reader.check_tail()
    return members


def _header_offsets(data: bytes) -> dict[str, int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.partition("/")[2]: m.offset for m in tar.getmembers()}


def _patch_header(data: bytearray, offset: int, field: int, value: bytes) -> None:
    """Overwrite part of the header at `offset` and give it a valid checksum again."""
    data[offset + field:offset + field + len(value)] = value
    data[offset + 148:offset + 156] = b" " * 8
    data[offset + 148:offset + 156] = b"%06o\0 " % sum(data[offset:offset + 512])


# --------------------------------------------------------------------------------------------- writing


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
    info.size, info.mtime, info.type = size, MTIME, kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    plain = len(name.encode()) < 100 and size < tarblock.MAX_OCTAL
    header = tarblock.tar_header(name, size, MTIME, kind)
    assert header == info.tobuf(tarfile.USTAR_FORMAT if plain else tarfile.GNU_FORMAT, "utf-8", "strict")
    assert len(header) == tarblock.header_size(name)


def test_long_names_round_trip() -> None:
    files = [(f"{TOP}/{base}", data) for base, data in [("gpkg-1", b""), ("x" * 200, b"a" * 600), ("ü" * 99, b"b")]]
    files.append(("x/" + "n" * 98, b"exactly 100 bytes"))
    data = _archive(files)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == files  # type: ignore[union-attr]
    assert _read(data) == files


def test_base_256_sizes_are_read() -> None:
    for name in ("x/image.tar.gz", f"{TOP}/image.tar.gz"):
        _file, reader = _reader(tarblock.tar_header(name, 9 << 30, MTIME))
        assert reader.next() == tarblock.Member(name, 9 << 30, tarfile.REGTYPE)


def test_a_size_past_any_file_is_cut_short_not_an_overflow() -> None:
    """A base-256 size field reaches 2**88: no archive holds such a member, and no read call takes
    that many bytes (BytesIO.read raised OverflowError, which no caller expects)."""
    with pytest.raises(ArtifactError, match="'p-1/metadata/X' is cut short"):
        _read(tarblock.tar_header("p-1/metadata/X", 1 << 87, MTIME) + bytes(2 * tarblock.BLOCK))


def test_sizes_round_up_to_whole_blocks() -> None:
    assert [tarblock.padded(size) for size in (0, 1, 512, 513)] == [0, 512, 512, 1024]
    assert [len(tarblock.pad(size)) for size in (0, 1, 512, 513)] == [0, 511, 0, 511]


# --------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_pax_ustar_prefix_and_gnu_long_names_are_read(fmt: int) -> None:
    """Portage writes long names in the ustar prefix field; other writers use pax or GNU records."""
    files = [(f"{TOP}/{name.partition('/')[2]}", data) for name, data in FILES]
    data = _tarfile_archive(files, fmt)
    assert (b"path=" in data) == (fmt == tarfile.PAX_FORMAT)
    assert _read(data) == files


def test_streamed_members_and_their_padding() -> None:
    """gpkg.py's single pass reads each member's data itself, then skips the padding."""
    data = _archive(FILES)
    file, reader = _reader(data)
    while (member := reader.next()) is not None:
        assert file.read(member.size) == dict(FILES)[member.name]
        reader.padding(member.size)
    reader.check_tail()
    file, reader = _reader(data[:_header_offsets(data)["metadata.tar.gz"] + 512 + 800])
    reader.next()
    member = reader.next()
    assert member is not None and len(file.read(member.size)) == 700
    with pytest.raises(ArtifactError, match="the file ends inside a member's padding"):
        reader.padding(member.size)


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
def test_damaged_tar_blocks_are_refused(damage, reason: str) -> None:
    data = bytearray(_archive(FILES))
    damage(data, _header_offsets(bytes(data)))
    with pytest.raises(ArtifactError, match=rf"^t\.tar: not a readable tar \(.*{reason}.*\); fix it$"):
        _read(bytes(data))


def test_unusual_but_valid_tar_blocks_are_accepted() -> None:
    """Old-style number fields (spaces, no leading zeros) and zero padding after the end marker."""
    data = bytearray(_archive(FILES))
    _patch_header(data, _header_offsets(bytes(data))["metadata.tar.gz"], 100, b"   644 \0")
    data += bytes(10240)
    assert _read(bytes(data)) == FILES


@pytest.mark.parametrize(
    ("pax", "reason"),
    [
        ({"GNU.sparse.major": "1"}, "pax record 'GNU.sparse.major'"),
        ({"size": "12x"}, "not a number"),
    ],
)
def test_pax_records_gpkgs_never_use_are_refused(pax: dict[str, str], reason: str) -> None:
    with pytest.raises(ArtifactError, match=reason):
        _read(_tarfile_archive(FILES, tarfile.PAX_FORMAT, pax={2: pax}))


def test_global_pax_headers_and_names_given_twice_are_refused() -> None:
    with pytest.raises(ArtifactError, match="type 'g'"):
        _read(_tarfile_archive(FILES, tarfile.PAX_FORMAT, global_pax={"comment": "x"}))
    ours = _archive(FILES)  # ends with exactly the two zero blocks of the end marker
    named = io.BytesIO()
    with tarfile.open(fileobj=named, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(FILES[0][0])
        info.pax_headers = {"path": FILES[0][0]}
        tar.addfile(info)
    pax_record = named.getvalue()[:1024]
    longname = tarblock.tar_header("x/" + "n" * 120, 0, 0)[:1024]  # the GNU long-name record alone
    with pytest.raises(ArtifactError, match="named or sized twice"):
        _read(pax_record + longname + ours)  # pax record, long-name record, gpkg-1
    with pytest.raises(ArtifactError, match="no member after it"):
        _read(ours[:-1024] + pax_record + ours[-1024:])  # a pax record, then the end
