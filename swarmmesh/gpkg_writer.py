"""Writing GPKG files (GLEP 78) for simulated builds and test fixtures.

The simulated builder, the tests and the benches need real packages: files that the binhost's
readers, real Portage clients, index and merge, and that `swarmmesh.gpkg.inspect_gpkg` accepts as
it would a drone's. So each one is a valid GPKG laid out as ``portage.gpkg`` writes them
(``<name>/gpkg-1``, ``metadata.tar.gz``, ``image.tar.gz``, then a ``Manifest`` with each other
member's size and digests); the tests check that Portage reads what is written here.

Written by hand rather than with ``portage.gpkg``: that class needs a full ``portage.config`` and
spawns one compressor process per member (~5 ms per package), where a drone simulating a cluster
makes thousands of packages a minute. Nor with ``tarfile``: its per-header Python cost was most of
a package's CPU budget (our headers, from `swarmmesh.tarblock`, are several times faster to build).
"""

from __future__ import annotations

import bz2
import functools
import io
import logging
import os
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from portage.const import MANIFEST2_HASH_DEFAULTS

from swarmmesh import tarblock
from swarmmesh.errors import InputError
from swarmmesh.gentoo import PackageRef, parse_atom
from swarmmesh.gpkg import _CHUNK, _hash_constructor

log = logging.getLogger(__name__)

_HASHES = tuple(sorted(MANIFEST2_HASH_DEFAULTS, reverse=True))  # ("SHA512", "BLAKE2B"), as Portage
_HASH_NEW = tuple(_hash_constructor(algo.lower()) for algo in _HASHES)
_META_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_SIM_ENV = 'declare -x EAPI="{eapi}"\ndeclare -x SLOT="{slot}"\n'
_SIM_EBUILD = 'EAPI={eapi}\nDESCRIPTION="{desc}"\nSLOT="{slot}"\nKEYWORDS="{kw}"\nLICENSE="{lic}"\n'
_SIZE_TAIL = 64  # compressed bytes of metadata.tar.gz after its sync point: SIZE, end marker, gzip trailer


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
    write, payload = _assemble(cpv, size, repo, build_id, seed=seed, metadata=metadata)
    _write_atomically(path, write, small=payload < _CHUNK)


def gpkg_bytes(cpv: str, *, size: int = 4096, repo: str = "gentoo", build_id: int = 1, seed: int = 0,
               metadata: dict[str, str] | None = None) -> bytes:
    """The bytes `write_gpkg` would write, held in memory: a simulated build of a small package
    then costs no file to create and delete (on ext4, thousands of those a minute slow every
    other file creation on the disk). Only for sizes that are fine to hold in memory."""
    write, _payload = _assemble(cpv, size, repo, build_id, seed=seed, metadata=metadata)
    out = io.BytesIO()
    write(out)
    return out.getvalue()


def _assemble(cpv: str, size: int, repo: str, build_id: int, *, seed: int,
              metadata: dict[str, str] | None) -> tuple[Callable[[BinaryIO], None], int]:
    """The writer of a simulated GPKG, and its image payload size."""
    ref = parse_atom(cpv)
    if not isinstance(build_id, int) or build_id < 1:
        raise InputError(f"build id {build_id!r} is not a positive integer")
    meta = _sim_metadata(ref, repo, build_id, metadata or {})
    stamp, basename = meta["BUILD_TIME"], f"{ref.pf}-{build_id}"
    mtime = int(stamp) if stamp.isascii() and stamp.isdigit() and int(stamp) < tarblock.MAX_OCTAL else 0
    zobj, head = _metadata_head(meta, mtime)
    payload = _payload_for(size, basename, len(head) + _SIZE_TAIL)
    write = functools.partial(_write_container, basename=basename, mtime=mtime,
                              metadata=head + _metadata_tail(zobj, payload, mtime),
                              image=_image_chunks(ref, payload, seed, mtime))
    return write, payload


def _write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, small: bool) -> None:
    """The file appears whole or not at all. A small one is assembled in memory and written at
    once: patching headers in place would flush and seek the file a dozen times."""
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as out:
            if small:
                buffer = io.BytesIO()
                write(buffer)
                out.write(buffer.getbuffer())
            else:
                write(out)
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
    bad = [key for key in extra if not _META_KEY.fullmatch(key)]  # the keys above are all NAME-like
    if bad:
        raise InputError(f"metadata keys {bad!r} cannot be GPKG metadata file names; use NAME-like keys")
    return meta


def _metadata_head(meta: dict[str, str], mtime: int) -> tuple[zlib._Compress, bytes]:
    """metadata.tar.gz up to its last file: one file per key (value + newline, as Portage writes
    it) plus the saved environment and ebuild that a client's merge phases read. SIZE, the image
    size, depends on this member's length, so it goes last, once the length is known: the output
    so far is sync-flushed to make it exact, and the member is built once."""
    fmt = {"eapi": meta["EAPI"], "slot": meta["SLOT"], "kw": meta.get("KEYWORDS", ""),
           "lic": meta.get("LICENSE", ""), "desc": meta.get("DESCRIPTION", "")}
    files = [_metadata_file(key, value, mtime) for key, value in meta.items() if key != "SIZE"]
    files.append(_environment_file(fmt["eapi"], fmt["slot"], mtime))
    files.append(_tar_file(f"metadata/{meta['PF']}.ebuild", _SIM_EBUILD.format(**fmt).encode(), mtime))
    zobj = zlib.compressobj(3, zlib.DEFLATED, 31)  # 4x faster than level 6 on this tar of zeros, ~15% larger
    return zobj, zobj.compress(b"".join(files)) + zobj.flush(zlib.Z_SYNC_FLUSH)


def _metadata_tail(zobj: zlib._Compress, payload: int, mtime: int) -> bytes:
    return zobj.compress(_metadata_file("SIZE", str(payload), mtime) + bytes(1024)) + zobj.flush()


@functools.lru_cache(maxsize=256)
def _metadata_file(key: str, value: str, mtime: int) -> bytes:
    """The tar member metadata/<key>: the value and a newline, as Portage writes it. Cached: most
    keys have the same value in every simulated package, and the same mtime within a second, so
    most of a package's ~20 members cost a lookup instead of a header (~1.5 us each)."""
    return _tar_file(f"metadata/{key}", f"{value}\n".encode(), mtime)


def _tar_file(name: str, data: bytes, mtime: int) -> bytes:
    return tarblock.tar_header(name, len(data), mtime) + data + tarblock.pad(len(data))


@functools.lru_cache(maxsize=64)
def _environment_bz2(eapi: str, slot: str) -> bytes:
    """Cached: bz2 sets up ~7 MiB of tables per call (~30 us) for these 40 bytes."""
    return bz2.compress(_SIM_ENV.format(eapi=eapi, slot=slot).encode())


@functools.lru_cache(maxsize=16)
def _environment_file(eapi: str, slot: str, mtime: int) -> bytes:
    """The tar member metadata/environment.bz2; cached as `_metadata_file` is."""
    return _tar_file("metadata/environment.bz2", _environment_bz2(eapi, slot), mtime)


def _payload_for(size: int, basename: str, metadata_size: int) -> int:
    """Image bytes that bring the file to about `size`: random data does not compress."""
    manifest = 3 * (300 + len(str(size)))  # three DATA lines of two 128-hex digests
    fixed = 4 * tarblock.BLOCK + tarblock.padded(metadata_size) + tarblock.padded(manifest) + 1024
    image_overhead = 600 + size // 800  # compressed tar headers + deflate block framing (~0.125%)
    return max(0, size - fixed - image_overhead - len(basename))


def _image_chunks(ref: PackageRef, payload: int, seed: int, mtime: int) -> Iterator[bytes]:
    """image.tar as Portage lays it out (image/ + the installed tree), one file of `payload` bytes.
    The headers go as one chunk: each chunk costs a compress call and two hash updates."""
    pn = ref.pn
    yield (_image_top(mtime) + tarblock.tar_header(f"image/usr/share/{pn}/", 0, mtime, tarblock.DIRTYPE)
           + tarblock.tar_header(f"image/usr/share/{pn}/{ref.pf}.bin", payload, mtime))
    rng = random.Random(f"{ref.cpv}#{seed}")
    for offset in range(0, payload, _CHUNK):
        yield rng.randbytes(min(_CHUNK, payload - offset))
    yield tarblock.pad(payload) + bytes(1024)


@functools.lru_cache(maxsize=4)
def _image_top(mtime: int) -> bytes:
    """The headers of image/, image/usr/ and image/usr/share/: the same in every package of a second."""
    return b"".join(tarblock.tar_header(name, 0, mtime, tarblock.DIRTYPE)
                    for name in ("image/", "image/usr/", "image/usr/share/"))


def _gzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Streamed gzip; Z_RLE is 2x faster than level 1 on random bytes and still folds zeros. The
    compressor holds back small inputs: the empty outputs are not passed on to be written and hashed."""
    zobj = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    for chunk in chunks:
        if out := zobj.compress(chunk):
            yield out
    yield zobj.flush()


def _write_container(out: BinaryIO, basename: str, mtime: int, metadata: bytes, image: Iterable[bytes]) -> None:
    """The outer tar, by hand: the streamed member's size is patched into its header afterwards
    (tarfile wants it first), and no 10 KiB record padding inflates tiny packages."""
    records = [
        _add_member(out, basename, "gpkg-1", b"", mtime),
        _add_member(out, basename, "metadata.tar.gz", metadata, mtime),
        _add_streamed(out, basename, "image.tar.gz", _gzip_chunks(image), mtime),
    ]
    _add_member(out, basename, "Manifest", "".join(records).encode(), mtime)
    out.write(bytes(1024))


def _add_member(out: BinaryIO, basename: str, name: str, data: bytes, mtime: int) -> str:
    """Append a member held in memory, its header first; returns its Manifest line."""
    out.write(tarblock.tar_header(f"{basename}/{name}", len(data), mtime))
    out.write(data)
    out.write(tarblock.pad(len(data)))
    return _manifest_line(name, len(data), [new(data) for new in _HASH_NEW])


def _add_streamed(out: BinaryIO, basename: str, name: str, chunks: Iterable[bytes], mtime: int) -> str:
    """Append a member of unknown size: its header is written over a placeholder once the size is
    known. Returns its Manifest line."""
    start, member = out.tell(), f"{basename}/{name}"
    out.write(bytes(tarblock.header_size(member)))
    hashes = [new() for new in _HASH_NEW]
    size = 0
    for chunk in chunks:
        out.write(chunk)
        size += len(chunk)
        for digest in hashes:
            digest.update(chunk)
    out.write(tarblock.pad(size))
    end = out.tell()
    out.seek(start)
    out.write(tarblock.tar_header(member, size, mtime))
    out.seek(end)
    return _manifest_line(name, size, hashes)


def _manifest_line(name: str, size: int, hashes: list[Any]) -> str:
    """A DATA line: the size and the digests Portage records."""
    sums = " ".join([f"{algo} {digest.hexdigest()}" for algo, digest in zip(_HASHES, hashes, strict=True)])
    return f"DATA {name} {size} {sums}\n"
