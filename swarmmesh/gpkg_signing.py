"""Signed GPKGs, laid out exactly as Portage's ``gpkg-sign`` writes them, and their verification.

A signed GPKG (what ``portage.gpkg.gpkg.update_signature`` writes) holds, in this order::

    <name>/gpkg-1
    <name>/metadata.tar.zst      <name>/metadata.tar.zst.sig   (armoured detached signature)
    <name>/image.tar.zst         <name>/image.tar.zst.sig
    <name>/Manifest              (clear-signed; lists every other member, the .sig files too)

`sign_gpkg` rewrites a validated package that way: every member is copied byte for byte
(headers included), any signature the upload carried is dropped, the Manifest's own lines are
kept (they were checked against the members) and the new .sig members get lines as Portage
writes them (SIZE, SHA512, BLAKE2B). Why not ``portage.gpkg`` itself: it needs a full Portage
configuration and signs with one gpg process per signature (~29 ms each, three per package),
and it re-reads the file through ``tarfile``; here the signatures are made in-process and the
file is read once.

`verify_gpkg` is the release check: the Manifest's signature by a swarm key, every member
against the signed Manifest, and the detached signature of each member held in memory. A
member bigger than `IN_MEMORY` is covered by its digests in the signed Manifest (which also
pins the bytes of its .sig), so its detached signature is not re-verified.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from portage.const import MANIFEST2_HASH_DEFAULTS

from swarmmesh import tarblock
from swarmmesh.errors import ArtifactError, SignatureError
from swarmmesh.signing import Keyring, SigningKey

#: A member up to this size is read into memory to be signed (and verified); a bigger one is
#: copied to a temp file that the signer reads, so memory stays flat for any package size.
IN_MEMORY = 16 << 20
_CHUNK = 1 << 20
_HASHES = tuple(sorted(MANIFEST2_HASH_DEFAULTS, reverse=True))  # ("SHA512", "BLAKE2B"), Portage's order
_SIGNED = ("metadata.tar", "image.tar")  # the members Portage signs (gpkg-1 is not)


class _Part(NamedTuple):
    """A member of the outer tar: `start` is its first header block (long-name or pax records
    included), `data` its data, both offsets in the file."""

    base: str
    start: int
    data: int
    size: int


@dataclass(frozen=True)
class Signed:
    """A signed package: in memory (`data`) when the upload was, else a temp file (`path`) in
    the directory the caller named, which the caller moves into place or deletes."""

    size: int
    sha256: str
    md5: str
    sha1: str
    signer: str
    data: bytes | None = None
    path: Path | None = None


def sign_gpkg(key: SigningKey, source: Path | bytes, tmp_dir: Path, label: str = "package") -> Signed:
    """`source` (a validated GPKG, a file or its bytes) signed by `key`, as gpkg-sign would."""
    if isinstance(source, bytes):
        out = _Output(io.BytesIO())
        _write_signed(key, io.BytesIO(source), out, tmp_dir, label)
        return out.result(key.fingerprint, data=out.fh.getvalue())  # type: ignore[attr-defined]
    fd, name = tempfile.mkstemp(suffix=".signed", dir=tmp_dir)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as fh:
            out = _Output(fh)
            _write_signed(key, src, out, tmp_dir, label)
        return out.result(key.fingerprint, path=Path(name))
    except BaseException:
        os.unlink(name)
        raise


def verify_gpkg(keyring: Keyring, source: Path | bytes, label: str = "package") -> str:
    """The fingerprint of the swarm key that signed `source`; SignatureError if it is unsigned,
    signed by another key, or changed after signing."""
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as fh:
        top, parts = _parts(fh, label)
        by_name = {part.base: part for part in parts}
        manifest = by_name.get("Manifest")
        if manifest is None or not _read(fh, manifest).lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
            raise SignatureError(f"{label}: unsigned (its Manifest carries no signature)")
        signer, text = keyring.verify_clearsigned(_read(fh, manifest))
        records = _records(text, label)
        if set(records) != set(by_name) - {"Manifest"}:
            raise SignatureError(f"{label}: the signed Manifest lists {sorted(records)}, the file holds "
                                 f"{sorted(set(by_name) - {'Manifest'})}")
        for part in parts:
            if part.base != "Manifest":
                _check_part(fh, part, records[part.base], label)
                _check_detached(keyring, fh, part, by_name, label)
    return signer


# --- signing -----------------------------------------------------------------------------------

class _Output:
    """The signed file being written, with the whole-file digests the index needs."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = 0
        self._digests = [hashlib.sha256(), hashlib.md5(), hashlib.sha1()]  # noqa: S324 - Portage's index fields

    def write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.size += len(data)
        for digest in self._digests:
            digest.update(data)

    def result(self, signer: str, data: bytes | None = None, path: Path | None = None) -> Signed:
        sha256, md5, sha1 = (digest.hexdigest() for digest in self._digests)
        return Signed(self.size, sha256, md5, sha1, signer, data, path)


def _write_signed(key: SigningKey, src: BinaryIO, out: _Output, tmp_dir: Path, label: str) -> None:
    top, parts = _parts(src, label)
    old = {part.base: part for part in parts}
    if "Manifest" not in old:
        raise ArtifactError(f"{label}: no Manifest; not a GPKG")
    listed = _lines(_read(src, old["Manifest"]))
    mtime = int(time.time())
    lines = []
    for part in parts:
        if part.base == "Manifest" or part.base.endswith(".sig"):
            continue  # a signature the upload carried is replaced by the swarm's
        if part.base not in listed:
            raise ArtifactError(f"{label}: {part.base} is not in its Manifest; not a valid GPKG")
        lines.append(listed[part.base])
        signature = _copy_member(key, src, out, part, tmp_dir)
        if signature is not None:
            name = f"{part.base}.sig"
            _add(out, f"{top}/{name}", signature, mtime)
            lines.append(_manifest_line(name, signature))
    _add(out, f"{top}/Manifest", key.clearsign("".join(f"{line}\n" for line in lines).encode()), mtime)
    out.write(bytes(2 * tarblock.BLOCK))


def _copy_member(key: SigningKey, src: BinaryIO, out: _Output, part: _Part, tmp_dir: Path) -> bytes | None:
    """Copy the member (headers, data, padding) and return its signature if Portage signs it."""
    signed = part.base.startswith(_SIGNED)
    out.write(_read_at(src, part.start, part.data - part.start))
    if not signed:
        _copy(src, part.data, tarblock.padded(part.size), [out.write])
        return None
    if part.size <= IN_MEMORY:
        data = _read_at(src, part.data, part.size)
        out.write(data)
        out.write(tarblock.pad(part.size))
        return key.detached(data)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".member") as member:
        _copy(src, part.data, part.size, [out.write, member.write])
        member.flush()
        out.write(tarblock.pad(part.size))
        return key.detached_file(Path(member.name))


def _add(out: _Output, name: str, data: bytes, mtime: int) -> None:
    out.write(tarblock.tar_header(name, len(data), mtime))
    out.write(data)
    out.write(tarblock.pad(len(data)))


def _manifest_line(name: str, data: bytes) -> str:
    sums = " ".join(f"{algo} {hashlib.new(algo.lower(), data).hexdigest()}" for algo in _HASHES)
    return f"DATA {name} {len(data)} {sums}"


def _lines(manifest: bytes) -> dict[str, str]:
    """The Manifest's DATA lines by member name (a clear-signed Manifest's armour skipped)."""
    lines = {}
    for line in manifest.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "DATA":
            lines[fields[1]] = " ".join(fields)
    return lines


# --- verifying ---------------------------------------------------------------------------------

def _records(text: bytes, label: str) -> dict[str, tuple[int, dict[str, str]]]:
    records: dict[str, tuple[int, dict[str, str]]] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] != "DATA" or len(fields) < 3 or len(fields) % 2 == 0 or not fields[2].isdigit() \
                or fields[1] in records:
            raise SignatureError(f"{label}: malformed line in the signed Manifest: {line[:80]!r}")
        records[fields[1]] = (int(fields[2]), dict(zip(fields[3::2], fields[4::2], strict=True)))
    return records


def _check_part(fh: BinaryIO, part: _Part, record: tuple[int, dict[str, str]], label: str) -> None:
    size, listed = record
    algos = [algo for algo in _HASHES if algo in listed]
    if size != part.size or not algos:
        raise SignatureError(f"{label}: {part.base} does not match the signed Manifest (size {part.size}, "
                             f"listed {size}): changed after signing")
    digests = [hashlib.new(algo.lower()) for algo in algos]
    _copy(fh, part.data, part.size, [digest.update for digest in digests])
    for algo, digest in zip(algos, digests, strict=True):
        if digest.hexdigest() != listed[algo].lower():
            raise SignatureError(f"{label}: {part.base} does not match its {algo} digest in the signed "
                                 "Manifest: changed after signing")


def _check_detached(keyring: Keyring, fh: BinaryIO, part: _Part, by_name: dict[str, _Part], label: str) -> None:
    if not part.base.startswith(_SIGNED) or part.base.endswith(".sig"):
        return
    sig = by_name.get(f"{part.base}.sig")
    if sig is None:
        raise SignatureError(f"{label}: {part.base} has no signature ({part.base}.sig)")
    if part.size <= IN_MEMORY:
        try:
            keyring.verify_detached(_read(fh, part), _read(fh, sig))
        except SignatureError as exc:
            raise SignatureError(f"{label}: {part.base}.sig: {exc}") from None


# --- the outer tar -----------------------------------------------------------------------------

def _parts(fh: BinaryIO, label: str) -> tuple[str, list[_Part]]:
    """The members of a GPKG (already validated, or about to be refused), without their data."""
    pos = 0

    def read(size: int) -> bytes:
        nonlocal pos
        data = fh.read(size)
        pos += len(data)
        return data

    fh.seek(0)
    tar = tarblock.TarReader(read, f"{label}: not a readable GPKG tar archive", "rebuild the package")
    parts, top = [], ""
    while True:
        start = pos
        member = tar.next()
        if member is None:
            break
        top, _slash, base = member.name.partition("/")
        parts.append(_Part(base, start, pos, member.size))
        pos += tarblock.padded(member.size)
        fh.seek(pos)
    if not parts:
        raise ArtifactError(f"{label}: empty archive, not a GPKG")
    return top, parts


def _read(fh: BinaryIO, part: _Part) -> bytes:
    return _read_at(fh, part.data, part.size)


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    data = fh.read(size)
    if len(data) < size:
        raise ArtifactError("the file ends inside a member; not a valid GPKG")
    return data


def _copy(fh: BinaryIO, offset: int, size: int, sinks: Iterable[Callable[[bytes], object]]) -> None:
    fh.seek(offset)
    sinks = list(sinks)
    while size > 0:
        chunk = fh.read(min(_CHUNK, size))
        if not chunk:
            raise ArtifactError("the file ends inside a member; not a valid GPKG")
        for sink in sinks:
            sink(chunk)
        size -= len(chunk)
