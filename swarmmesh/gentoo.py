"""Portage glue: package atoms, `emerge --pretend` output, GPKG files and `Packages` entries.

The binhost's readers are real Portage clients, so whatever swarmmesh accepts they must accept
too: atoms are judged by Portage's own parser (``portage.dep.Atom``), index entries follow
``portage.dbapi.bintree`` key for key, and GPKG files follow GLEP 78 as ``portage.gpkg`` writes
and verifies them (the tests check both directions against Portage itself).

GPKGs are written and read here with ``tarfile`` rather than ``portage.gpkg``: that class needs
a full ``portage.config``, spawns one compressor process per member (~5 ms per package) and
extracts nothing without trusting the file first, while a drone artifact must be judged
without trusting it, in one bounded pass.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import hashlib
import io
import logging
import lzma
import os
import random
import re
import shutil
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from portage.const import MANIFEST2_HASH_DEFAULTS
from portage.dep import Atom, paren_enclose, use_reduce
from portage.exception import InvalidAtom, InvalidDependString
from portage.versions import catpkgsplit

from swarmmesh.errors import ArtifactError, BadAtomsError, InputError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Atoms and package lists

_FORM = "expected one exact version such as cat/pkg-1.0, =cat/pkg-1.0 or =cat/pkg-1.0::repo"
_MAX_ATOM = 512
_SPACE = re.compile(r"\s")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PRETEND = re.compile(r"\[(?:ebuild|binary|nomerge|blocks|uninstall)[\s\]]")
_EBUILD = re.compile(r"\[ebuild[^\]]*\]\s*(\S*)")


@dataclass(frozen=True)
class PackageRef:
    """One package to build; `key` is its identity in the queue."""

    cpv: str
    repo: str | None = None

    @property
    def key(self) -> str:
        return f"{self.cpv}::{self.repo}" if self.repo else self.cpv

    @property
    def category(self) -> str:
        return self.cpv.partition("/")[0]

    @property
    def pf(self) -> str:
        return self.cpv.partition("/")[2]

    @property
    def pn(self) -> str:
        split = catpkgsplit(self.cpv)
        if split is None:
            raise InputError(f"{self.cpv!r} is not a category/package-version; {_FORM}")
        return split[1]


def parse_atom(text: str) -> PackageRef:
    """One package from one atom; the reason in the error tells the user how to fix it."""
    result = _parse_token(text.strip()) if isinstance(text, str) else "not a string"
    if isinstance(result, str):
        raise InputError(f"{text!r} is not a package to build: {result}; {_FORM}")
    return result


def parse_package_list(text: str) -> list[PackageRef]:
    """The packages of a submission body: an atom list, or pasted `emerge --pretend` output."""
    if not isinstance(text, str):
        raise InputError("the package list must be text: atoms one per line, or `emerge -p` output")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    lines = text.splitlines()
    pretend = any(_PRETEND.match(line) for line in lines)
    found, bad = _scan_pretend(lines) if pretend else _scan_atom_lines(lines)
    if bad:
        raise BadAtomsError(bad)
    if not found:
        what = "the emerge output has no [ebuild ...] line" if pretend else "the list names no package"
        raise InputError(f"no packages to build: {what}; submit atoms such as =cat/pkg-1.0, one per line")
    return _unique(found)


def parse_packages(items: list[str]) -> list[PackageRef]:
    """The packages of a JSON request (`{"packages": [...]}`), validated like a list body."""
    if not isinstance(items, list):
        raise InputError("'packages' must be a JSON list of atom strings such as [\"=cat/pkg-1.0\"]")
    found, bad = [], []
    for number, item in enumerate(items, 1):
        result = _parse_token(item.strip()) if isinstance(item, str) else "not a string"
        if isinstance(result, str):
            bad.append((number, item if isinstance(item, str) else repr(item), result))
        else:
            found.append(result)
    if bad:
        raise BadAtomsError(bad)
    if not found:
        raise InputError("no packages to build: the 'packages' list is empty")
    return _unique(found)


@functools.lru_cache(maxsize=32768)
def _parse_token(text: str) -> PackageRef | str:
    """The package a token names, or why it names none (cached: Atom costs ~10 us)."""
    reason = _precheck(text)
    if reason:
        return reason
    atom = _atom(text) if text[0] in "<>=~" else (_atom("=" + text) or _atom(text))
    if atom is None:
        return "not a valid package atom"
    if atom.operator is None:
        return "no version given (a build needs one exact version)"
    if atom.operator != "=":
        return f"the operator {atom.operator!r} names a version range, not one version"
    return PackageRef(str(atom.cpv), str(atom.repo) if atom.repo else None)


def _precheck(text: str) -> str | None:
    """Reasons Portage's own error would not make clear to the person who typed the atom."""
    checks = (
        (not text, "empty"),
        (len(text) > _MAX_ATOM, f"longer than {_MAX_ATOM} characters"),
        (_SPACE.search(text) is not None, "contains whitespace"),
        (text.startswith("!"), "a blocker (!) is not a package to build"),
        (text.startswith("@"), "a package set; submit the output of `emerge -p @set` instead"),
        ("[" in text, "USE dependencies ([...]) are not accepted"),
        ("*" in text, "a wildcard version (*) is not one version"),
        ("/" not in text, "no category"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _atom(text: str) -> Atom | None:
    try:
        return Atom(text, allow_repo=True)
    except InvalidAtom:
        return None


def _scan_atom_lines(lines: list[str]) -> tuple[list[PackageRef], list[tuple[int, str, str]]]:
    found, bad = [], []
    for number, line in enumerate(lines, 1):
        tokens = line.partition("#")[0].split()
        results = [(token, _parse_token(token)) for token in tokens]
        reasons = [f"{tok!r}: {res}" if len(tokens) > 1 else res
                   for tok, res in results if isinstance(res, str)]
        if reasons:
            bad.append((number, line.strip(), "; ".join(reasons)))
        found += [res for _tok, res in results if isinstance(res, PackageRef)]
    return found, bad


def _scan_pretend(lines: list[str]) -> tuple[list[PackageRef], list[tuple[int, str, str]]]:
    """Only `[ebuild ...]` lines are builds; `[binary` and the rest are emerge's business."""
    found, bad = [], []
    for number, line in enumerate(lines, 1):
        match = _EBUILD.match(line)
        if not match:
            continue
        result = _parse_token(match.group(1)) if match.group(1) else "no package after [ebuild ...]"
        if isinstance(result, str):
            bad.append((number, line.strip(), result))
        else:
            found.append(result)
    return found, bad


def _unique(refs: list[PackageRef]) -> list[PackageRef]:
    return list(dict.fromkeys(refs))


def gpkg_relpath(ref_or_cpv: PackageRef | str, build_id: int = 1) -> str:
    """Where a package lives in a binhost (binpkg-multi-instance layout), from a checked CPV only."""
    cpv = ref_or_cpv.cpv if isinstance(ref_or_cpv, PackageRef) else ref_or_cpv
    ref = parse_atom(cpv)
    if ref.cpv != cpv or not isinstance(build_id, int) or build_id < 1:
        raise InputError(f"cannot place {cpv!r} build {build_id!r}: need a bare cat/pkg-1.0, build id >= 1")
    return f"{ref.category}/{ref.pn}/{ref.pf}-{build_id}.gpkg.tar"


# ---------------------------------------------------------------------------------------------
# Writing GPKGs (GLEP 78)

_HASHES = tuple(sorted(MANIFEST2_HASH_DEFAULTS, reverse=True))  # ("SHA512", "BLAKE2B"), as Portage
_CHUNK = 1 << 20
_SIM_ENV = 'declare -x EAPI="{eapi}"\ndeclare -x SLOT="{slot}"\n'
_SIM_EBUILD = 'EAPI={eapi}\nDESCRIPTION="{desc}"\nSLOT="{slot}"\nKEYWORDS="{kw}"\nLICENSE="{lic}"\n'


def write_gpkg(
    path: str | os.PathLike[str],
    cpv: str,
    *,
    size: int = 4096,
    repo: str = "gentoo",
    build_id: int = 1,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a real GPKG of about `size` bytes (never under ~5 KiB) for simulated builds and tests.

    The image holds one file of random-looking bytes, deterministic for (cpv, seed), streamed in
    1 MiB chunks so memory stays flat for any size; members are gzip (Python has no zstd
    built in, and a `zstd` process per member costs ~2.4 ms). The file appears atomically."""
    ref = parse_atom(cpv)
    if not isinstance(build_id, int) or build_id < 1:
        raise InputError(f"build id {build_id!r} is not a positive integer")
    meta = _sim_metadata(ref, repo, build_id, metadata or {})
    mtime = int(meta["BUILD_TIME"]) if meta["BUILD_TIME"].isdigit() else 0
    payload = _payload_for(size, f"{ref.pf}-{build_id}", meta)
    meta["SIZE"] = str(payload)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as out:
            image = _image_chunks(ref, payload, seed, mtime)
            _write_container(out, f"{ref.pf}-{build_id}", mtime, meta, image)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sim_metadata(ref: PackageRef, repo: str, build_id: int, extra: dict[str, str]) -> dict[str, str]:
    """What `emerge --buildpkg` records, and what a client needs to index and merge the package."""
    meta = {
        "CATEGORY": ref.category, "PF": ref.pf, "SLOT": "0", "EAPI": "8", "USE": "", "IUSE": "",
        "KEYWORDS": "amd64", "LICENSE": "MIT", "DEFINED_PHASES": "compile install",
        "DESCRIPTION": f"swarmmesh simulated build of {ref.cpv}", "repository": repo,
        "BUILD_ID": str(build_id), "BUILD_TIME": str(int(time.time())), "SIZE": "0",
        "DEPEND": "", "RDEPEND": "", "BDEPEND": "", "CHOST": "x86_64-pc-linux-gnu",
        "CBUILD": "x86_64-pc-linux-gnu",
    }
    meta.update(extra)
    bad = [key for key in meta if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", key)]
    if bad:
        raise InputError(f"metadata keys {bad!r} cannot be GPKG metadata file names; use NAME-like keys")
    return meta


def _metadata_member(meta: dict[str, str]) -> bytes:
    """metadata.tar.gz: one file per key (value + newline, as Portage writes it), plus the saved
    environment and ebuild that a client's merge phases read."""
    fmt = {"eapi": meta["EAPI"], "slot": meta["SLOT"], "kw": meta.get("KEYWORDS", ""),
           "lic": meta.get("LICENSE", ""), "desc": meta.get("DESCRIPTION", "")}
    files = [(f"metadata/{key}", f"{value}\n".encode()) for key, value in meta.items()]
    files.append(("metadata/environment.bz2", bz2.compress(_SIM_ENV.format(**fmt).encode())))
    files.append((f"metadata/{meta['PF']}.ebuild", _SIM_EBUILD.format(**fmt).encode()))
    mtime = int(meta["BUILD_TIME"]) if meta["BUILD_TIME"].isdigit() else 0
    body = b"".join(_tar_header(name, len(data), mtime) + data + _pad(len(data)) for name, data in files)
    return gzip.compress(body + bytes(1024), compresslevel=6, mtime=0)


def _payload_for(size: int, basename: str, meta: dict[str, str]) -> int:
    """Image bytes that bring the file to about `size`: random data does not compress."""
    manifest = 3 * (300 + len(str(size)))  # three DATA lines of two 128-hex digests
    fixed = 4 * 512 + _padded(len(_metadata_member(meta))) + _padded(manifest) + 1024
    image_overhead = 600 + size // 800  # compressed tar headers + deflate block framing (~0.125%)
    return max(0, size - fixed - image_overhead - len(basename))


def _image_chunks(ref: PackageRef, payload: int, seed: int, mtime: int) -> Iterator[bytes]:
    """image.tar as Portage lays it out (image/ + the installed tree), one file of `payload` bytes."""
    for name in ("image/", "image/usr/", "image/usr/share/", f"image/usr/share/{ref.pn}/"):
        yield _tar_header(name, 0, mtime, tarfile.DIRTYPE)
    yield _tar_header(f"image/usr/share/{ref.pn}/{ref.pf}.bin", payload, mtime)
    rng = random.Random(f"{ref.cpv}#{seed}")
    for offset in range(0, payload, _CHUNK):
        yield rng.randbytes(min(_CHUNK, payload - offset))
    yield _pad(payload) + bytes(1024)


def _gzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Streamed gzip; Z_RLE is 2x faster than level 1 on random bytes and still folds zeros."""
    zobj = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    for chunk in chunks:
        yield zobj.compress(chunk)
    yield zobj.flush()


def _write_container(out: BinaryIO, basename: str, mtime: int, meta: dict[str, str],
                     image: Iterable[bytes]) -> None:
    """The outer tar, by hand: a streamed member's size is patched into its header afterwards
    (tarfile wants it first), and no 10 KiB record padding inflates tiny packages."""
    records = [
        _add_member(out, basename, "gpkg-1", [b""], mtime),
        _add_member(out, basename, "metadata.tar.gz", [_metadata_member(meta)], mtime),
        _add_member(out, basename, "image.tar.gz", _gzip_chunks(image), mtime),
    ]
    _add_member(out, basename, "Manifest", ["".join(records).encode()], mtime)
    out.write(bytes(1024))


def _add_member(out: BinaryIO, basename: str, name: str, chunks: Iterable[bytes], mtime: int) -> str:
    """Append one member; returns its Manifest line (size + the hashes Portage records)."""
    start = out.tell()
    out.write(bytes(512))
    hashes = [hashlib.new(algo.lower()) for algo in _HASHES]
    size = 0
    for chunk in chunks:
        out.write(chunk)
        size += len(chunk)
        for digest in hashes:
            digest.update(chunk)
    out.write(_pad(size))
    end = out.tell()
    out.seek(start)
    out.write(_tar_header(f"{basename}/{name}", size, mtime))
    out.seek(end)
    sums = " ".join(f"{algo} {digest.hexdigest()}" for algo, digest in zip(_HASHES, hashes, strict=True))
    return f"DATA {name} {size} {sums}\n"


def _tar_header(name: str, size: int, mtime: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = size, mtime, kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    fmt = tarfile.USTAR_FORMAT if len(name.encode()) < 100 else tarfile.GNU_FORMAT
    return info.tobuf(fmt, "utf-8", "strict")


def _pad(size: int) -> bytes:
    return bytes(-size % 512)


def _padded(size: int) -> int:
    return size + -size % 512


# ---------------------------------------------------------------------------------------------
# Inspecting GPKGs without trusting them

_MIN_SIZE = 1024
_MAX_METADATA = 32 << 20  # compressed metadata.tar; Portage's are a few KiB
_MAX_METADATA_TAR = 64 << 20
_MAX_MANIFEST = 1 << 20
_MEMBER = re.compile(r"gpkg-1|Manifest|(?:metadata|image)\.tar(?:\.(?:gz|bz2|xz|zst|lz4|lz|lzo))?(?:\.sig)?")


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


@dataclass
class _Scan:
    top: str = ""
    digests: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    kept: dict[str, bytes] = field(default_factory=dict)


class _HashingReader:
    """Hashes every byte tarfile reads, so the whole-file digests need no second pass."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.hashes = [hashlib.new(name, usedforsecurity=False) for name in ("sha256", "md5", "sha1")]

    def read(self, size: int = _CHUNK) -> bytes:
        data = self.raw.read(_CHUNK if size is None or size < 0 else size)
        for digest in self.hashes:
            digest.update(data)
        return data

    def drain(self) -> list[str]:
        while self.read(_CHUNK):
            pass
        return [digest.hexdigest() for digest in self.hashes]


def inspect_gpkg(path: str | os.PathLike[str], *, expect_cpv: str | None = None) -> GpkgInfo:
    """Validate a GPKG a peer produced (structure, Manifest digests, metadata) in one bounded
    read, extracting nothing; raises ArtifactError saying what is wrong."""
    label = os.path.basename(os.fspath(path))
    try:
        size = os.stat(path).st_size
        if size <= _MIN_SIZE:
            raise ArtifactError(f"{label}: {size} bytes is too small for a GPKG (over {_MIN_SIZE} expected)")
        with open(path, "rb") as raw:
            reader = _HashingReader(raw)
            scan = _scan_container(reader, label)
            sha256, md5, sha1 = reader.drain()
    except OSError as exc:
        raise ArtifactError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc
    _check_manifest(scan, label)
    meta = _read_metadata(scan, label)
    cpv = _check_identity(scan.top, meta, expect_cpv, label)
    build_id = meta.get("BUILD_ID", "")
    if build_id and not build_id.isdigit():
        raise ArtifactError(f"{label}: BUILD_ID {build_id!r} is not a number; rebuild the package")
    return GpkgInfo(cpv, int(build_id) if build_id else None, size, sha256, md5, sha1, meta)


def _scan_container(reader: _HashingReader, label: str) -> _Scan:
    scan = _Scan()
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                _check_member(member, scan, label)
                _read_member(tar, member, scan, label)
    except tarfile.TarError as exc:
        raise ArtifactError(f"{label}: not a readable GPKG tar archive ({exc}); rebuild and resend") from exc
    if not scan.top:
        raise ArtifactError(f"{label}: empty archive, not a GPKG")
    return scan


def _check_member(member: tarfile.TarInfo, scan: _Scan, label: str) -> None:
    """GLEP 78 outer layout: regular files only, all in one top directory, gpkg-1 first."""
    name = member.name
    top, _slash, base = name.partition("/")
    if not scan.top:
        if base != "gpkg-1" or not top or top in (".", ".."):
            raise ArtifactError(f"{label}: first member is {name!r}, not <name>/gpkg-1: not a GPKG")
        scan.top = top
    problems = (
        (name.startswith("/") or ".." in name.split("/"), "an absolute or '..' path"),
        (top != scan.top or "/" in base, f"outside the single top directory {scan.top!r}"),
        (member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE), "not a regular file (link, device or dir)"),
        (not _MEMBER.fullmatch(base), "not a GPKG member name"),
        (base in scan.digests, "a duplicate"),
    )
    for failed, why in problems:
        if failed:
            raise ArtifactError(f"{label}: member {name!r} is {why}; the file is not a valid GPKG")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, scan: _Scan, label: str) -> None:
    base = member.name.partition("/")[2]
    keep = base == "Manifest" or (base.startswith("metadata.tar") and not base.endswith(".sig"))
    limit = _MAX_MANIFEST if base == "Manifest" else _MAX_METADATA
    if keep and member.size > limit:
        raise ArtifactError(f"{label}: {base} is {member.size} bytes, over the {limit} byte limit")
    hashes = [hashlib.new(algo.lower()) for algo in _HASHES]
    stream = tar.extractfile(member)
    kept = bytearray()
    while chunk := stream.read(_CHUNK):  # type: ignore[union-attr]
        for digest in hashes:
            digest.update(chunk)
        if keep:
            kept += chunk
    sums = {algo: digest.hexdigest() for algo, digest in zip(_HASHES, hashes, strict=True)}
    scan.digests[base] = (member.size, sums)
    if keep:
        scan.kept[base] = bytes(kept)


def _check_manifest(scan: _Scan, label: str) -> None:
    """Every member but the Manifest is listed with its size and a matching hash, as Portage checks."""
    members = {base for base in scan.digests if base != "Manifest"}
    for wanted in ("Manifest", "metadata.tar", "image.tar"):
        if sum(base.startswith(wanted) and not base.endswith(".sig") for base in scan.digests) != 1:
            raise ArtifactError(f"{label}: not exactly one {wanted}[.*] member; the file is not a valid GPKG")
    records = _parse_manifest(scan.kept["Manifest"], label)
    if set(records) != members:
        raise ArtifactError(f"{label}: Manifest lists {sorted(records)} but the file holds {sorted(members)}")
    for base in sorted(members):
        size, sums = scan.digests[base]
        listed_size, listed = records[base]
        common = [algo for algo in sums if algo in listed]
        if listed_size != size or not common or any(listed[a].lower() != sums[a] for a in common):
            raise ArtifactError(f"{label}: {base} does not match its Manifest digest: corrupted or tampered")


def _parse_manifest(data: bytes, label: str) -> dict[str, tuple[int, dict[str, str]]]:
    """DATA lines only; a clear-signed Manifest's armour lines are skipped (signatures: later)."""
    text = data.decode("utf-8", "replace")
    signed = text.lstrip().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    records: dict[str, tuple[int, dict[str, str]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or (signed and fields[0] != "DATA"):
            continue
        if fields[0] != "DATA" or len(fields) % 2 == 0 or not fields[2].isdigit() or fields[1] in records:
            raise ArtifactError(f"{label}: malformed Manifest line {line[:80]!r}")
        records[fields[1]] = (int(fields[2]), dict(zip(fields[3::2], fields[4::2], strict=True)))
    return records


def _read_metadata(scan: _Scan, label: str) -> dict[str, str]:
    """Text keys of metadata.tar.* (files such as environment.bz2 are skipped), normalised the
    way binarytree reads them (whitespace collapsed)."""
    base = next(b for b in scan.kept if b.startswith("metadata.tar"))
    raw = _decompress(base, scan.kept[base], label)
    meta: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                key = member.name.removeprefix("metadata/")
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or key == member.name or "/" in key:
                    raise ArtifactError(f"{label}: metadata member {member.name!r} is not a metadata/ file")
                if "." not in key:
                    value = tar.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
                    meta[key] = " ".join(value.split())
    except tarfile.TarError as exc:
        raise ArtifactError(f"{label}: {base} is not a readable tar ({exc})") from exc
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
        out = proc.stdout.read(limit + 1)  # type: ignore[union-attr]
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
    """The package is what its metadata says, a valid CPV, and what the caller expected."""
    for key in ("CATEGORY", "PF", "SLOT"):
        if not meta.get(key):
            raise ArtifactError(f"{label}: metadata has no {key}; Portage cannot index it")
    cpv = f"{meta['CATEGORY']}/{meta['PF']}"
    ref = _parse_token(cpv)
    if not isinstance(ref, PackageRef) or ref.cpv != cpv:
        raise ArtifactError(f"{label}: metadata names {cpv!r}, which is not a valid package version")
    if top != meta["PF"] and not re.fullmatch(re.escape(meta["PF"]) + r"-\d+", top):
        raise ArtifactError(f"{label}: top directory {top!r} does not belong to {cpv}")
    if expect_cpv is not None and cpv != expect_cpv:
        raise ArtifactError(f"{label}: holds {cpv}, but {expect_cpv} was expected")
    return cpv


# ---------------------------------------------------------------------------------------------
# Packages index entries

# portage.dbapi.bintree: bindbapi._aux_cache_keys (read from each package) and
# binarytree._pkgindex_use_evaluated_keys (USE-conditionals resolved against the package's USE).
_INDEX_KEYS = (
    "BDEPEND", "BUILD_ID", "BUILD_TIME", "CHOST", "DEFINED_PHASES", "DEPEND", "EAPI", "IDEPEND",
    "IUSE", "KEYWORDS", "LICENSE", "PDEPEND", "PROPERTIES", "PROVIDES", "RDEPEND", "REQUIRES",
    "RESTRICT", "SLOT", "USE", "USER_PATCHES",
)
_USE_EVALUATED = ("BDEPEND", "DEPEND", "IDEPEND", "LICENSE", "RDEPEND", "PDEPEND", "PROPERTIES", "RESTRICT")


def read_gpkg_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A stored GPKG's metadata, reading only its headers and the small metadata member.

    For files already validated in full by `inspect_gpkg` (the leader does that before
    `received`, and every store checks the sha256): a second full inspection would hash
    every byte five more times on every node."""
    label = os.path.basename(os.fspath(path))
    try:
        with tarfile.open(path, "r:") as tar:  # random access: the image member is skipped, not read
            for member in tar:
                base = member.name.partition("/")[2]
                if member.isreg() and base.startswith("metadata.tar") and not base.endswith(".sig"):
                    if member.size > _MAX_METADATA:
                        raise ArtifactError(f"{label}: {base} is over {_MAX_METADATA} bytes")
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    return _read_metadata(_Scan(kept={base: data}), label)
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactError(f"{label}: not a readable GPKG ({exc})") from exc
    raise ArtifactError(f"{label}: no metadata.tar member")


def packages_index_entry(info: GpkgInfo, path_in_repo: str, mtime: int) -> dict[str, str]:
    """One `Packages` entry, as binarytree builds it before writing (PackageIndex.write later drops
    values equal to the defaults, e.g. SLOT 0, and CHOST/REPO equal to the header's)."""
    meta = info.metadata
    entry = {key: meta[key] for key in _INDEX_KEYS if meta.get(key)}
    entry.setdefault("EAPI", "0")
    _evaluate_use(entry, info.cpv)
    entry.update(CPV=info.cpv, SIZE=str(info.size), MTIME=str(int(mtime)), PATH=path_in_repo,
                 MD5=info.md5, SHA1=info.sha1)
    if meta.get("repository"):
        entry["REPO"] = meta["repository"]
    return dict(sorted(entry.items()))


def _evaluate_use(entry: dict[str, str], cpv: str) -> None:
    use = frozenset(entry.get("USE", "").split())
    for key in _USE_EVALUATED:
        if key not in entry:
            continue
        try:
            token_class = Atom if key.endswith("DEPEND") else None
            reduced = use_reduce(entry[key], uselist=use, token_class=token_class)
        except InvalidDependString as exc:
            raise ArtifactError(f"{cpv}: invalid {key} in its metadata ({exc}); rebuild the package") from exc
        value = paren_enclose(reduced)
        if value:
            entry[key] = value
        else:
            del entry[key]
