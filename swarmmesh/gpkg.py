"""GPKG files (GLEP 78), judged without trusting them.

A GPKG is an uncompressed tar holding ``<name>/gpkg-1``, ``metadata.tar.*``, ``image.tar.*`` and a
``Manifest`` with each other member's size and digests. Drone artifacts arrive in this format, and
the binhost's readers are real Portage clients, so whatever swarmmesh accepts they must accept too:
files follow GLEP 78 as ``portage.gpkg`` writes and verifies them (the tests check both directions
against Portage itself).

GPKGs are read here rather than with ``portage.gpkg``: that class needs a full ``portage.config``,
spawns one compressor process per member (~5 ms per package) and extracts nothing without
trusting the file first, while a drone artifact must be judged without trusting it, in one
bounded pass. Nor with ``tarfile``: its per-header Python cost was most of a package's CPU budget
(our headers are several times faster to parse), and its reader is lenient where ours must be
strict (see `swarmmesh.tarblock`).

Simulated builds and tests write their GPKGs with `swarmmesh.gpkg_writer`, which builds on this
module and not the other way round. What a package *is* (atoms, where it lives in a binhost) is
Portage's data model and lives in `swarmmesh.gentoo`, below this module; its ``Packages`` entry is
`swarmmesh.pkgindex`, above it.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import hashlib
import io
import logging
import lzma
import os
import queue
import re
import shutil
import subprocess
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from portage.const import MANIFEST2_HASH_DEFAULTS

from swarmmesh import tarblock
from swarmmesh.errors import ArtifactError, InputError
from swarmmesh.gentoo import cpv_parts

log = logging.getLogger(__name__)
_CHUNK = 1 << 20  # files are read, and image data made (gpkg_writer), in pieces of this size


def _hash_constructor(name: str) -> Callable[..., Any]:
    """hashlib's own constructor for `name`: hashlib.new looks the name up on every call (~0.4 us,
    ~15 times per package); the same digests either way."""
    return getattr(hashlib, name, None) or functools.partial(hashlib.new, name)


# ---------------------------------------------------------------------------------------------
# Inspecting GPKGs without trusting them

_MIN_SIZE = 1024
_MAX_METADATA = 32 << 20  # compressed metadata.tar; Portage's are a few KiB
_MAX_METADATA_TAR = 64 << 20
_MAX_MANIFEST = 1 << 20
_MEMBER = re.compile(r"gpkg-1|Manifest|(?:metadata|image)\.tar(?:\.(?:gz|bz2|xz|zst|lz4|lz|lzo))?(?:\.sig)?")
# Manifest digests swarmmesh checks (hashlib has them): every one a Manifest lists must match, as
# on a Portage client. The Manifest is the last member, so the single pass cannot know in advance
# what it lists: it computes Portage's default set (MANIFEST2_HASH_DEFAULTS, BLAKE2B and SHA512)
# for every member, and any other algorithm listed is computed by reading that member again.
_CHECKABLE = {"BLAKE2B": "blake2b", "SHA512": "sha512", "SHA256": "sha256", "BLAKE2S": "blake2s",
              "SHA3_256": "sha3_256", "SHA3_512": "sha3_512"}
_STREAMED = tuple(algo for algo in _CHECKABLE if algo in MANIFEST2_HASH_DEFAULTS)  # ("BLAKE2B", "SHA512")
_STREAMED_NEW = tuple(_hash_constructor(_CHECKABLE[algo]) for algo in _STREAMED)
_WHOLE_FILE = 3  # sha256, md5 and sha1 of the whole file, for the index
_THREADED_FROM = 1 << 20  # below this, threads cost more than the digests they would overlap
_LANE_DEPTH = 3  # chunks queued per digest thread: memory stays at a few MiB for any file size


@dataclass(frozen=True)
class GpkgInfo:
    """What a validated GPKG says about itself, plus whole-file digests for the index."""

    cpv: str
    build_id: int | None
    size: int
    sha256: str
    md5: str
    sha1: str
    metadata: dict[str, str] = field(hash=False)
    signer: str | None = None  # fingerprint of the swarm key that signed it (signer.py)


_Opener = Callable[[], BinaryIO]  # opens the file being inspected (again), from its start


class _Digest(NamedTuple):
    size: int
    offset: int  # of the member's data in the file, to hash it again with an algorithm not streamed
    digests: list[Any]  # per _STREAMED algorithm, final once the lanes are joined; none for the Manifest


@dataclass
class _Scan:
    top: str = ""
    members: dict[str, _Digest] = field(default_factory=dict)
    kept: dict[str, bytes] = field(default_factory=dict)


class _Source:
    """The file read in chunks, each passed to `feed` once (the whole-file digests), then handed
    out as headers (`read`) or as member data (`pieces`, views of the chunks, never copied)."""

    def __init__(self, raw: BinaryIO, feed: Callable[[bytes], None], chunk: int) -> None:
        self._raw, self._feed, self._chunk = raw, feed, chunk
        self._buf, self._pos = b"", 0
        self.offset = 0  # in the file, of the next byte handed out

    def read(self, size: int) -> bytes:
        pos = self._pos
        if len(self._buf) - pos >= size:
            self._pos, self.offset = pos + size, self.offset + size
            return self._buf[pos:pos + size]
        return b"".join(self.pieces(size))

    def pieces(self, size: int) -> Iterator[memoryview]:
        """`size` bytes in pieces (fewer if the file ends first)."""
        while size > 0 and (self._pos < len(self._buf) or self._refill()):
            piece = memoryview(self._buf)[self._pos:self._pos + size]
            self._pos, self.offset, size = self._pos + len(piece), self.offset + len(piece), size - len(piece)
            yield piece

    def _refill(self) -> bool:
        chunk = self._raw.read(self._chunk)
        if chunk:
            self._feed(chunk)
        self._buf, self._pos = chunk, 0
        return bool(chunk)


class _Lane:
    """One thread applying queued calls in order. hashlib releases the GIL on updates over 2 KiB,
    so one lane per digest spreads the digests of the same chunks over the cores."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[[Any], Any], Any] | None] = queue.Queue(_LANE_DEPTH)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="gpkg-digest", daemon=True)
        self._thread.start()

    def put(self, call: Callable[[Any], Any], data: Any) -> None:
        self._queue.put((call, data))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:  # after a failure, keep draining so that `put` never blocks forever
                try:
                    item[0](item[1])
                except BaseException as exc:  # handed to the caller by `_Digests.hexdigests`
                    self.error = exc


def _whole_file_digests(data: bytes = b"") -> list[Any]:
    """sha256, md5 and sha1 of the whole file, for the index."""
    return [hashlib.sha256(data), hashlib.md5(data, usedforsecurity=False), hashlib.sha1(data, usedforsecurity=False)]


class _Digests:
    """The whole-file sha256, md5 and sha1 (the index needs them) and the member digests (one per
    _STREAMED algorithm), fed in file order: inline for small files, from one lane per digest for
    big ones."""

    def __init__(self, threaded: bool) -> None:
        self.whole = _whole_file_digests()
        self._lanes = [_Lane() for _ in range(_WHOLE_FILE + len(_STREAMED))] if threaded else []
        self._file_lanes, self._member_lanes = self._lanes[:_WHOLE_FILE], self._lanes[_WHOLE_FILE:]

    def file_chunk(self, chunk: bytes) -> None:
        self._update(self._file_lanes, self.whole, chunk)

    def member_piece(self, member_digests: list[Any], piece: memoryview) -> None:
        if member_digests:
            self._update(self._member_lanes, member_digests, piece)

    @staticmethod
    def _update(lanes: list[_Lane], digests: list[Any], data: bytes | memoryview) -> None:
        """Each digest updated inline, or by its lane in a big file."""
        if not lanes:
            for digest in digests:
                digest.update(data)
            return
        for lane, digest in zip(lanes, digests, strict=True):
            lane.put(digest.update, data)

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()

    def hexdigests(self) -> list[str]:
        """After `close`: until then the lanes may still be updating."""
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error
        return [digest.hexdigest() for digest in self.whole]


def inspect_gpkg(path: str | os.PathLike[str], *, expect_cpv: str | None = None,
                 data: bytes | None = None) -> GpkgInfo:
    """Validate a GPKG a peer produced (structure, Manifest digests, metadata) in one bounded
    read, extracting nothing; raises ArtifactError saying what is wrong. `data`: the file's
    bytes, when the caller holds them (a small upload): nothing is read from disk then, and
    `path` only names the file in messages."""
    label = os.path.basename(os.fspath(path))
    opener: _Opener = (lambda: io.BytesIO(data)) if data is not None else (lambda: open(path, "rb", buffering=0))
    try:
        size, scan, (sha256, md5, sha1) = _scan(opener, data, label)
        _check_manifest(scan, opener, label)
    except OSError as exc:
        raise ArtifactError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc
    base = next(b for b in scan.kept if b.startswith("metadata.tar"))
    meta = _parse_metadata(base, scan.kept[base], label)
    cpv = _check_identity(scan.top, meta, expect_cpv, label)
    build_id = meta.get("BUILD_ID", "")
    if build_id and not build_id.isdigit():
        raise ArtifactError(f"{label}: BUILD_ID {build_id!r} is not a number; rebuild the package")
    return GpkgInfo(cpv, int(build_id) if build_id else None, size, sha256, md5, sha1, meta)


def _scan(opener: _Opener, data: bytes | None, label: str) -> tuple[int, _Scan, list[str]]:
    """The file's size, structure and whole-file digests: sliced out of `data` when the caller
    holds a small file, else streamed."""
    if data is not None and _MIN_SIZE < len(data) < _THREADED_FROM:
        return len(data), *_scan_bytes(data, label)
    with opener() as raw:
        size = len(data) if data is not None else os.fstat(raw.fileno()).st_size
        if size <= _MIN_SIZE:
            raise ArtifactError(f"{label}: {size} bytes is too small for a GPKG (over {_MIN_SIZE} expected)")
        return size, *_scan_file(raw, size, label)


def _scan_file(raw: BinaryIO, size: int, label: str) -> tuple[_Scan, list[str]]:
    """One pass over every byte: structure, member digests and whole-file digests together."""
    digests = _Digests(threaded=size >= _THREADED_FROM)
    try:
        source = _Source(raw, digests.file_chunk, min(size, _CHUNK))
        scan = _scan_container(_outer_reader(source.read, label),
                               functools.partial(_read_member, source, digests), label)
    finally:
        digests.close()
    return scan, digests.hexdigests()


def _scan_bytes(data: bytes, label: str) -> tuple[_Scan, list[str]]:
    """`_scan_file` for a small file held in memory: each member's data is a slice of it, hashed
    in one call, where the streamed pass spends a dozen calls per member (~15% of an inspection)."""
    raw = io.BytesIO(data)
    scan = _scan_container(_outer_reader(raw.read, label),
                           functools.partial(_slice_member, raw, memoryview(data)), label)
    return scan, [digest.hexdigest() for digest in _whole_file_digests(data)]


def _outer_reader(read: Callable[[int], bytes], label: str) -> tarblock.TarReader:
    return tarblock.TarReader(read, f"{label}: not a readable GPKG tar archive", "rebuild and resend the package")


_MemberReader = Callable[[tarblock.TarReader, tarblock.Member, str], tuple[_Digest, bytes | None]]


def _scan_container(tar: tarblock.TarReader, read: _MemberReader, label: str) -> _Scan:
    """Every member checked against the layout and read by `read` (its digests, and its data if
    kept), then the tail."""
    scan = _Scan()
    while (member := tar.next()) is not None:
        _check_member(member, scan, label)
        base = member.name.partition("/")[2]
        scan.members[base], kept = read(tar, member, base)
        if kept is not None:
            scan.kept[base] = kept
        tar.padding(member.size)
    tar.check_tail()
    if not scan.top:
        raise ArtifactError(f"{label}: empty archive, not a GPKG")
    return scan


def _check_member(member: tarblock.Member, scan: _Scan, label: str) -> None:
    """GLEP 78 outer layout: regular files only, all in one top directory, gpkg-1 first; the
    members read into memory are bounded."""
    name = member.name
    top, _slash, base = name.partition("/")
    if not scan.top:
        if base != "gpkg-1" or not top or top in (".", ".."):
            raise ArtifactError(f"{label}: first member is {name!r}, not <name>/gpkg-1: not a GPKG")
        scan.top = top
    why = _layout_problem(member, top, base, scan)
    if why is not None:
        raise ArtifactError(f"{label}: member {name!r} is {why}; the file is not a valid GPKG")
    limit = _MAX_MANIFEST if base == "Manifest" else _MAX_METADATA
    if _keeps(base) and member.size > limit:
        raise ArtifactError(f"{label}: {base} is {member.size} bytes, over the {limit} byte limit")


def _layout_problem(member: tarblock.Member, top: str, base: str, scan: _Scan) -> str | None:
    """The first way the member breaks the layout, if any; an if-chain rather than a table so
    that nothing (such as a message) is built for the members that pass."""
    if member.name.startswith("/") or ".." in member.name.split("/"):
        return "an absolute or '..' path"
    if top != scan.top or "/" in base:
        return f"outside the single top directory {scan.top!r}"
    if member.kind not in tarblock.REGULAR:
        return "not a regular file (link, device or dir)"
    if not _MEMBER.fullmatch(base):
        return "not a GPKG member name"
    if base in scan.members:
        return "a duplicate"
    return None


def _keeps(base: str) -> bool:
    """The members read into memory: the Manifest and the metadata."""
    return base == "Manifest" or (base.startswith("metadata.tar") and not base.endswith(".sig"))


def _read_member(source: _Source, digests: _Digests, tar: tarblock.TarReader, member: tarblock.Member,
                 base: str) -> tuple[_Digest, bytes | None]:
    keep = _keeps(base)
    hashes = [] if base == "Manifest" else [new() for new in _STREAMED_NEW]
    offset, got, kept = source.offset, 0, []
    for piece in source.pieces(member.size):
        digests.member_piece(hashes, piece)
        got += len(piece)
        if keep:
            kept.append(piece)
    if got < member.size:
        raise tar.fail(f"{member.name!r} is cut short: the file ends inside it")
    return _Digest(member.size, offset, hashes), b"".join(kept) if keep else None


def _slice_member(raw: io.BytesIO, view: memoryview, tar: tarblock.TarReader, member: tarblock.Member,
                  base: str) -> tuple[_Digest, bytes | None]:
    """`_read_member` for a file in memory: the member's data is a slice of the file."""
    offset = raw.tell()
    piece = view[offset:offset + member.size]
    if len(piece) < member.size:
        raise tar.fail(f"{member.name!r} is cut short: the file ends inside it")
    raw.seek(len(piece), os.SEEK_CUR)
    hashes = [] if base == "Manifest" else [new(piece) for new in _STREAMED_NEW]
    return _Digest(member.size, offset, hashes), bytes(piece) if _keeps(base) else None


def _check_manifest(scan: _Scan, opener: _Opener, label: str) -> None:
    """Every member but the Manifest is listed with its size and digests, and each listed digest
    that swarmmesh can compute matches.

    Every one, not just the best: Portage, on the client, checks each digest it computes (BLAKE2B
    and SHA512 by default) and refuses the package if any differs. A file whose SHA512 is wrong
    but BLAKE2B right (a packager bug, or a Manifest edited by hand) would pass a single check
    here and then fail on every client."""
    members = {base for base in scan.members if base != "Manifest"}
    unsigned = [base for base in scan.members if not base.endswith(".sig")]
    for wanted in ("Manifest", "metadata.tar", "image.tar"):
        if len([base for base in unsigned if base.startswith(wanted)]) != 1:
            raise ArtifactError(f"{label}: not exactly one {wanted}[.*] member; the file is not a valid GPKG")
    records = _parse_manifest(scan.kept["Manifest"], label)
    if set(records) != members:
        raise ArtifactError(f"{label}: Manifest lists {sorted(records)} but the file holds {sorted(members)}")
    for base in sorted(members):
        _check_listed(base, scan.members[base], records[base], opener, label)


def _check_listed(base: str, member: _Digest, record: tuple[int, dict[str, str]], opener: _Opener,
                  label: str) -> None:
    """One member against its Manifest line: the size, then every listed digest hashlib has."""
    listed_size, listed = record
    algos = [algo for algo in _CHECKABLE if algo in listed]
    if not algos:
        raise ArtifactError(f"{label}: Manifest lists no digest swarmmesh checks for {base} ({sorted(listed)});"
                            f" write {' and '.join(_STREAMED)} digests, as Portage does")
    if listed_size != member.size:
        raise ArtifactError(f"{label}: {base} does not match its Manifest size ({member.size} bytes, {listed_size}"
                            " listed): corrupted or tampered; rebuild and resend the package")
    unstreamed = [algo for algo in algos if algo not in _STREAMED]
    actual = _reread(member, unstreamed, opener) if unstreamed else {}
    for algo, digest in zip(_STREAMED, member.digests, strict=True):
        if algo in listed:
            actual[algo] = digest.hexdigest()
    for algo in algos:
        if listed[algo].lower() != actual[algo]:
            raise ArtifactError(f"{label}: {base} does not match its Manifest {algo} digest (corrupted, tampered"
                                " with, or a packager bug; Portage clients would refuse it too);"
                                " rebuild and resend the package")


def _reread(member: _Digest, algos: list[str], opener: _Opener) -> dict[str, str]:
    """Digests the pass did not compute (algorithms outside Portage's default set, which Portage
    does not write), all from one more read of that member. The callers own the file (a staged
    upload), so it cannot change in between."""
    if not algos:
        return {}
    hashes, left = [hashlib.new(_CHECKABLE[algo]) for algo in algos], member.size
    with opener() as raw:
        raw.seek(member.offset)
        while left > 0 and (chunk := raw.read(min(_CHUNK, left))):
            for digest in hashes:
                digest.update(chunk)
            left -= len(chunk)
    return {algo: digest.hexdigest() for algo, digest in zip(algos, hashes, strict=True)}


def _parse_manifest(data: bytes, label: str) -> dict[str, tuple[int, dict[str, str]]]:
    """DATA lines only; a clear-signed Manifest's armour lines are skipped (signatures: later)."""
    text = data.decode("utf-8", "replace")
    signed = text.lstrip().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    records: dict[str, tuple[int, dict[str, str]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or (signed and fields[0] != "DATA"):
            continue
        if not _is_data_line(fields) or fields[1] in records:
            raise ArtifactError(f"{label}: malformed Manifest line {line[:80]!r}; rebuild the package")
        records[fields[1]] = (int(fields[2]), dict(zip(fields[3::2], fields[4::2], strict=True)))
    return records


def _is_data_line(fields: list[str]) -> bool:
    """`DATA <name> <size>` and algorithm/digest pairs, each algorithm once: Portage reads the first
    digest of a repeated algorithm and a dict the last, so a repeat could hide a wrong one."""
    algos = fields[3::2]
    return (fields[0] == "DATA" and len(fields) >= 3 and len(fields) % 2 == 1 and fields[2].isascii()
            and fields[2].isdigit() and len(set(algos)) == len(algos))


def _parse_metadata(base: str, data: bytes, label: str) -> dict[str, str]:
    """Text keys of metadata.tar.* (files such as environment.bz2 are skipped), normalised the
    way binarytree reads them (whitespace collapsed)."""
    inner = io.BytesIO(_decompress(base, data, label))
    tar = tarblock.TarReader(inner.read, f"{label}: {base} is not a readable tar", "rebuild the package")
    meta: dict[str, str] = {}
    while (member := tar.next()) is not None:
        key = member.name.removeprefix("metadata/")
        if member.kind not in tarblock.REGULAR or key == member.name or not key or "/" in key:
            raise ArtifactError(f"{label}: metadata member {member.name!r} is not a metadata/ file")
        value = tar.body(member)
        if "." not in key:
            meta[key] = " ".join(value.decode("utf-8", "replace").split())
    tar.check_tail()
    return meta


def _decompress(base: str, data: bytes, label: str) -> bytes:
    """Bounded decompression (a small bomb must not fill memory), in-process where Python can."""
    ext = base.rpartition(".tar")[2]
    limit = _MAX_METADATA_TAR
    try:
        if ext == "":
            out = data
        elif ext == ".gz":
            out = zlib.decompressobj(wbits=47).decompress(data, limit + 1)
        elif ext == ".bz2":
            out = bz2.BZ2Decompressor().decompress(data, max_length=limit + 1)
        elif ext == ".xz":
            out = lzma.LZMADecompressor().decompress(data, max_length=limit + 1)
        elif ext == ".zst":
            out = _zstd_decompress(data, limit, label)
        else:
            raise ArtifactError(f"{label}: {base} uses a compression swarmmesh cannot read; use zstd or gzip")
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        raise ArtifactError(f"{label}: {base} is corrupt ({exc})") from exc
    if len(out) > limit:
        raise ArtifactError(f"{label}: {base} unpacks to over {limit} bytes; refusing it")
    return out


def _zstd_decompress(data: bytes, limit: int, label: str) -> bytes:
    exe = shutil.which("zstd")
    if exe is None:
        raise ArtifactError(f"{label}: reading zstd metadata needs the zstd program; install zstd")
    with subprocess.Popen([exe, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        feeder = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
        feeder.start()
        assert proc.stdout is not None  # stdout=PIPE
        out = proc.stdout.read(limit + 1)
        if len(out) > limit:
            proc.kill()
        feeder.join()
        failed = proc.wait() != 0 and len(out) <= limit
    if failed:
        raise ArtifactError(f"{label}: metadata.tar.zst is not valid zstd data")
    return out


def _feed(pipe: BinaryIO, data: bytes) -> None:
    """Runs in a thread; a broken pipe only means zstd was killed for exceeding the limit."""
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _check_identity(top: str, meta: dict[str, str], expect_cpv: str | None, label: str) -> str:
    """The package is what its metadata says, and what the caller expected or else a valid CPV.
    `expect_cpv` must be a CPV Portage has parsed (the receiver's come from the queue, which
    takes only parsed ones): a match needs no second parse, ~5% of the leader's time."""
    for key in ("CATEGORY", "PF", "SLOT"):
        if not meta.get(key):
            raise ArtifactError(f"{label}: metadata has no {key}; Portage cannot index it")
    cpv = f"{meta['CATEGORY']}/{meta['PF']}"
    if expect_cpv is not None and cpv != expect_cpv:
        raise ArtifactError(f"{label}: holds {cpv!r}, but {expect_cpv} was expected")
    if expect_cpv is None and not _is_cpv(cpv):  # an expected CPV was parsed when it was submitted
        raise ArtifactError(f"{label}: metadata names {cpv!r}, which is not a valid package version")
    build = top.removeprefix(meta["PF"] + "-")
    if top != meta["PF"] and not (build != top and build.isascii() and build.isdigit()):
        raise ArtifactError(f"{label}: top directory {top!r} does not belong to {cpv}")
    return cpv


def _is_cpv(text: str) -> bool:
    try:
        cpv_parts(text)
    except InputError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Reading the metadata of a stored GPKG


def read_gpkg_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A stored GPKG's metadata, reading only its headers and the small metadata member.

    For files already validated in full by `inspect_gpkg` (the leader does that before
    `received`, and every store checks the sha256): a second full inspection would hash
    every byte five more times on every node."""
    label = os.path.basename(os.fspath(path))
    try:
        with open(path, "rb") as file:
            base, data = _find_metadata(file, label)
    except OSError as exc:
        raise ArtifactError(f"{label}: not a readable GPKG ({exc.strerror or exc})") from exc
    return _parse_metadata(base, data, label)


def _find_metadata(file: BinaryIO, label: str) -> tuple[str, bytes]:
    """Headers only: the members before metadata.tar.* are seeked over, never read."""
    end = os.fstat(file.fileno()).st_size
    tar = tarblock.TarReader(file.read, f"{label}: not a readable GPKG tar archive",
                             "discard this copy and fetch it again")
    while (member := tar.next()) is not None:
        base = member.name.partition("/")[2]
        if member.kind not in tarblock.REGULAR or file.tell() + member.size > end:
            raise tar.fail(f"member {member.name!r} is not a regular file, or runs past the end of the file")
        if _keeps(base) and base != "Manifest":
            if member.size > _MAX_METADATA:
                raise ArtifactError(f"{label}: {base} is over {_MAX_METADATA} bytes")
            return base, tar.body(member)
        file.seek(tarblock.padded(member.size), os.SEEK_CUR)
    raise ArtifactError(f"{label}: no metadata.tar member")
