"""The staging feed: every received package, indexed and served under `/staging/` before any release.

Drones use it as their PORTAGE_BINHOST, so a package built a moment ago is there for the next
build that needs it, and users can try packages before they are finalized into a release. It is
not a directory like a release: a `Feed` is an immutable snapshot (the Packages bytes and
PATH -> sha256) that the binhost serves from the content-addressed store, swapped whole after
each render. `ReceivedView` follows the log's received files at a cost that follows what
changed; `Stager` renders the index from blocks kept between renders. The `Releases` component
decides when each runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from swarmmesh.entries import Entries
from swarmmesh.errors import ArtifactError, InputError
from swarmmesh.pkgindex import common_chost, index_entry, packages_header, release_paths, render_entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feed:
    """An immutable index snapshot for the staging feed: swapped whole, read by the binhost thread."""

    packages: bytes = b""
    paths: dict[str, str] = field(default_factory=dict)  # PATH -> sha256


class ReceivedView:
    """This node's copy of the log's received files, kept current from the change feed: which
    of them the staging feed lists (those indexed here) and which files still need indexing.
    Keeping it costs what changed; reading all 20k received files again happens only on a
    `reload`. Loop thread only."""

    def __init__(self, entries: Entries) -> None:
        self.entries = entries
        self.files: dict[str, tuple[int, dict]] = {}  # key -> (seq, file record)
        self.listed: dict[str, tuple[int, dict]] = {}  # the indexed part of `files`: what staging lists
        self.todo: dict[str, dict] = {}  # sha256 -> file record, for files not indexed yet
        self.changed = False  # `listed` changed since the staging feed was last rendered
        self._keys: dict[str, set[str]] = {}  # sha256 -> keys (possibly stale: `files` decides)
        self._extra: set[str] = set()  # files the newest release wants (indexed even if not received)

    def reload(self, items: list[tuple[int, dict]]) -> None:
        """Start over from every received file (start-up, reset, restored snapshot, resync)."""
        self.files = {f["key"]: (seq, f) for seq, f in items}
        self._keys = {}
        for key, (_, f) in self.files.items():
            self._keys.setdefault(f["sha256"], set()).add(key)
        self.todo = {sha: f for sha, f in self.todo.items() if sha in self._extra}
        listed = {key: sf for key in self.files if (sf := self._listing(key)) is not None}
        if listed != self.listed:
            self.listed, self.changed = listed, True

    def update(self, sha256: str, items: list[tuple[int, dict]]) -> None:
        """The log changed something about this file: `items` are its received packages now."""
        keys = {key for key in self._keys.pop(sha256, ()) if self._sha_of(key) == sha256}
        for key in keys:
            del self.files[key]
        for seq, f in items:
            self.files[f["key"]] = (seq, f)
            keys.add(f["key"])
        if items:
            self._keys[sha256] = {f["key"] for _, f in items}
        elif sha256 not in self._extra:
            self.todo.pop(sha256, None)
        self._relist(keys)

    def want(self, files: list[dict]) -> None:
        """The newest release's files: index them too, received or not."""
        self._extra = {f["sha256"] for f in files}
        for f in files:
            if f["sha256"] not in self.todo and self.entries.get(f["sha256"]) is None:
                self.todo[f["sha256"]] = f

    def unindexed(self, held: Callable[[str], bool]) -> list[dict]:
        """Files to index now (held here, not indexed); those indexed meanwhile get listed."""
        missing = []
        for sha, f in list(self.todo.items()):
            if not held(sha):
                continue
            if self.entries.get(sha) is None:
                missing.append(f)
                continue
            del self.todo[sha]
            self._relist({key for key in self._keys.get(sha, ()) if self._sha_of(key) == sha})
        return missing

    def _relist(self, keys: Iterable[str]) -> None:
        for key in keys:
            listing = self._listing(key)
            if self.listed.get(key) != listing:
                self.changed = True
                if listing is None:
                    del self.listed[key]
                else:
                    self.listed[key] = listing

    def _listing(self, key: str) -> tuple[int, dict] | None:
        """What staging should list for `key`: its file once indexed (until then it is to do)."""
        sf = self.files.get(key)
        if sf is None:
            return None
        if self.entries.get(sf[1]["sha256"]) is None:
            self.todo[sf[1]["sha256"]] = sf[1]
            return None
        return sf

    def _sha_of(self, key: str) -> str | None:
        sf = self.files.get(key)
        return None if sf is None else sf[1]["sha256"]


@dataclass
class _Block:
    """One package's part of the staging index, kept between renders."""

    source: dict  # the file record it was made from
    path: str
    cpv: str
    chost: str | None
    record: dict
    entry: dict[str, str] | None  # kept until the block is first rendered
    text: str | None = None
    under: str | None = None  # the header CHOST `text` was rendered for (a package sharing it omits it)


@dataclass(frozen=True)
class _Unlisted:
    """A package whose file cannot be listed (why was logged): not looked at again unless its
    file record changes."""

    source: dict


class Stager:
    """Renders the staging index (worker thread only). Each package's block is rendered once
    and kept while its file record stays the same, so a render is a sort and a join, not 20k
    index entries; the output is what `render_packages` writes for the same entries."""

    def __init__(self, entries: Entries) -> None:
        self.entries = entries
        self._blocks: dict[str, _Block | _Unlisted] = {}  # by package key
        self._stamp = 0
        self._warned: set[str] = set()

    def render(self, files: list[tuple[int, dict]]) -> Feed:
        placed, paths = self._place(sorted(files, key=_first))
        chost = common_chost(block.chost for block in placed)
        placed.sort(key=_cpv_of)  # stable, so like PackageIndex.write: by CPV, then in seq order
        body = "".join([self._text(block, chost) for block in placed])
        self._stamp = max(self._stamp + 1, int(time.time()))
        return Feed((packages_header(len(placed), chost, self._stamp) + body).encode("utf-8"), paths)

    def _place(self, files: list[tuple[int, dict]]) -> tuple[list[_Block], dict[str, str]]:
        """Each listable package's block, in seq order, and PATH -> sha256; a PATH taken twice
        keeps the first, as in a release."""
        placed: list[_Block] = []
        paths: dict[str, str] = {}
        used, old = {}, self._blocks
        for _, f in files:
            block = old.get(f["key"])
            if block is None or (block.source is not f and block.source != f):
                record = self.entries.get(f["sha256"])
                if record is None:
                    continue  # forgotten since it was listed: the next render leaves it out
                block = self._block(f, record)
            used[f["key"]] = block
            if isinstance(block, _Unlisted):
                continue
            if block.path in paths:
                self._warn(f["key"], f"{block.path} is already in the staging feed; left out")
                continue
            paths[block.path] = f["sha256"]
            placed.append(block)
        self._blocks = used
        return placed, paths

    def _block(self, f: dict, record: dict) -> _Block | _Unlisted:
        if record["cpv"] != f["cpv"]:
            self._warn(f["key"], f"left out of the staging feed: its file is indexed as {record['cpv']}")
            return _Unlisted(f)
        try:
            path = release_paths([f])[0][1]
            entry = index_entry(record, path)
        except (ArtifactError, InputError) as exc:
            self._warn(f["key"], f"left out of the staging feed: {exc}")
            return _Unlisted(f)
        return _Block(f, path, f["cpv"], entry.get("CHOST") or None, record, entry)

    @staticmethod
    def _text(block: _Block, chost: str | None) -> str:
        """Rendered once, and again only if the header's CHOST changes (rare)."""
        if block.text is None or block.under != chost:
            entry = block.entry if block.entry is not None else index_entry(block.record, block.path)
            block.text, block.under, block.entry = render_entry(entry, chost), chost, None
        return block.text

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", key, message)


def _first(item: tuple[int, dict]) -> int:
    return item[0]


def _cpv_of(block: _Block) -> str:
    return block.cpv
