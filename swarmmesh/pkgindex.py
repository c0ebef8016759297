"""The `Packages` index: one entry per GPKG and the file Portage reads, for releases and the staging feed.

Every orchestrator builds every release itself, from the replicated log and its own copy of the
files, so any of them can serve the binhost alone. That only works if they all write the same
bytes: the index is made from each GPKG's own metadata plus values from the log (the release's
`stamp` as TIMESTAMP, the file records), never from local clocks or mtimes, and is written by
Portage's own `PackageIndex` so clients read exactly what `emaint binhost` writes; each entry
follows ``portage.dbapi.bintree`` key for key (the tests check it against Portage itself).
Releases and the staging feed both render through here, so neither imports the other for it.
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
from collections import Counter
from collections.abc import Iterable

from portage.dep import Atom, paren_enclose, use_reduce
from portage.exception import InvalidDependString
from portage.getbinpkg import PackageIndex

from swarmmesh import gentoo, gpkg
from swarmmesh.errors import ArtifactError

log = logging.getLogger(__name__)

# portage.dbapi.bintree.binarytree: values equal to these defaults are left out of the index,
# CHOST/repository equal to the header's are inherited, internal names are translated.
_DEFAULT_PKG_DATA = {
    "BDEPEND": "", "BUILD_ID": "", "BUILD_TIME": "", "DEFINED_PHASES": "", "DEPEND": "", "EAPI": "0",
    "IDEPEND": "", "IUSE": "", "KEYWORDS": "", "LICENSE": "", "PATH": "", "PDEPEND": "", "PROPERTIES": "",
    "PROVIDES": "", "RDEPEND": "", "REQUIRES": "", "RESTRICT": "", "SLOT": "0", "USE": "",
}
_INHERITED = ["CHOST", "repository"]
_TRANSLATED = (("DESCRIPTION", "DESC"), ("_mtime_", "MTIME"), ("repository", "REPO"))

# portage.dbapi.bintree: bindbapi._aux_cache_keys (read from each package) and
# binarytree._pkgindex_use_evaluated_keys (USE-conditionals resolved against the package's USE).
_INDEX_KEYS = (
    "BDEPEND", "BUILD_ID", "BUILD_TIME", "CHOST", "DEFINED_PHASES", "DEPEND", "EAPI", "IDEPEND",
    "IUSE", "KEYWORDS", "LICENSE", "PDEPEND", "PROPERTIES", "PROVIDES", "RDEPEND", "REQUIRES",
    "RESTRICT", "SLOT", "USE", "USER_PATCHES",
)
_USE_EVALUATED = ("BDEPEND", "DEPEND", "IDEPEND", "LICENSE", "RDEPEND", "PDEPEND", "PROPERTIES", "RESTRICT")


def index_entry(record: dict, path: str) -> dict[str, str]:
    """One Packages entry with Portage's internal key names (PackageIndex translates them).
    MTIME is the package's BUILD_TIME: the same on every node, unlike any file's mtime."""
    info = gpkg.GpkgInfo(record["cpv"], record["build_id"], record["size"], record["sha256"],
                           record["md5"], record["sha1"], record["metadata"])
    build_time = record["metadata"].get("BUILD_TIME", "")
    entry = packages_index_entry(info, path, int(build_time) if build_time.isdigit() else 0)
    for internal, written in (("_mtime_", "MTIME"), ("repository", "REPO")):
        if written in entry:
            entry[internal] = entry.pop(written)
    return entry


def packages_index_entry(info: gpkg.GpkgInfo, path_in_repo: str, mtime: int) -> dict[str, str]:
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
    """USE-conditionals resolved against the package's own USE, as binarytree does: a client
    reads the dependencies of the binary it gets, not of every USE it could have had."""
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


def render_packages(entries: list[dict[str, str]], stamp: int) -> bytes:
    """The Packages file: a pure function of the entries and the stamp (byte-identical everywhere)."""
    index = _package_index(common_chost(e.get("CHOST") for e in entries))
    index.header.update(VERSION="0", TIMESTAMP=str(int(stamp)), PACKAGES=str(len(entries)))
    index.packages = [dict(e) for e in entries]
    return _text(index).encode("utf-8")


def common_chost(chosts: Iterable[str | None]) -> str | None:
    """The header's CHOST: the most common one (entries that share it leave it out)."""
    counts = Counter(c for c in chosts if c)
    return min(counts, key=lambda c: (-counts[c], c)) if counts else None


def packages_header(count: int, chost: str | None, stamp: int) -> str:
    """The header block of a Packages file; `render_entry` blocks sorted by CPV follow it."""
    index = _package_index(chost)
    index.header.update(VERSION="0", TIMESTAMP=str(int(stamp)), PACKAGES=str(count))
    return _text(index)


def render_entry(entry: dict[str, str], chost: str | None) -> str:
    """One package's block, as `render_packages` writes it under a header with this CHOST: the
    staging feed joins cached blocks instead of rewriting every package for each new one."""
    index = _package_index(chost)
    index.packages = [dict(entry)]
    return _text(index)[_bare_length(chost):]


@functools.lru_cache(maxsize=8)
def _bare_length(chost: str | None) -> int:
    """How long the header alone is as `render_entry` writes it (once per CHOST: writing it
    again for every package was a third of rendering one)."""
    return len(_text(_package_index(chost)))


def _package_index(chost: str | None) -> PackageIndex:
    index = PackageIndex(allowed_pkg_keys=None, default_pkg_data=_DEFAULT_PKG_DATA,
                         inherited_keys=_INHERITED, translated_keys=_TRANSLATED)
    if chost:
        index.header["CHOST"] = chost
    return index


def _text(index: PackageIndex) -> str:
    index.modified = False  # or write() stamps the local clock into TIMESTAMP
    out = io.StringIO()
    index.write(out)
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip: no name, mtime 0."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def release_paths(files: list[dict]) -> list[tuple[dict, str]]:
    """(file, PATH) per file, the PATH recomputed from the checked CPV and build id (never taken
    from the log as a path); a PATH taken twice (the same CPV under two keys) keeps the first."""
    seen: set[str] = set()
    out = []
    for f in files:
        path = gentoo.gpkg_relpath(f["cpv"], f["build_id"] or 1)
        if path != f.get("path"):
            raise ArtifactError(f"{f['key']}: recorded path {f.get('path')!r} is not {path!r}")
        if path in seen:
            log.warning("%s: %s is already in this release; left out", f["key"], path)
            continue
        seen.add(path)
        out.append((f, path))
    return out
