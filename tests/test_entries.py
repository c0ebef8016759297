"""The per-node index records: computed or recorded once, kept in one append-only journal."""

from __future__ import annotations

import json
import os

import pytest

from swarmmesh import gpkg, gpkg_writer
from swarmmesh.entries import JOURNAL, Entries
from swarmmesh.errors import ArtifactError, CorruptError


@pytest.fixture
def stored(tmp_path):
    """Two real GPKGs and what inspect_gpkg says of them."""
    infos = []
    for i, cpv in enumerate(("app-misc/a-1.0", "app-misc/b-2.0")):
        path = tmp_path / f"p{i}.gpkg.tar"
        gpkg_writer.write_gpkg(path, cpv, size=20_000, seed=i)
        infos.append((path, gpkg.inspect_gpkg(path)))
    return infos


def logged(info: gpkg.GpkgInfo) -> dict:
    return {"size": info.size, "md5": info.md5, "sha1": info.sha1}


def test_a_computed_record_is_what_the_file_says_and_survives_a_restart(tmp_path, stored):
    (path, info), _ = stored
    entries = Entries(tmp_path / "entries")
    record = entries.compute(info.sha256, path, logged(info))
    assert (record["cpv"], record["build_id"], record["metadata"]) == (info.cpv, 1, info.metadata)
    assert (record["size"], record["md5"], record["sha1"]) == (info.size, info.md5, info.sha1)
    with pytest.raises(CorruptError, match="bytes, not 1"):
        entries.compute(info.sha256, path, {**logged(info), "size": 1})
    assert Entries(tmp_path / "entries").get(info.sha256) == record


def test_a_recorded_upload_needs_no_second_read_and_matches_a_computed_one(tmp_path, stored):
    (path, info), _ = stored
    recorded = Entries(tmp_path / "one").record(info)
    path.unlink()  # nothing to read: the record comes from the validation alone
    other = tmp_path / "again.gpkg.tar"
    gpkg_writer.write_gpkg(other, info.cpv, size=20_000, seed=0)
    assert recorded == Entries(tmp_path / "two").compute(info.sha256, other, logged(info))


def test_metadata_from_the_log_spares_parsing_the_file(tmp_path, stored):
    (path, info), _ = stored
    path.write_bytes(b"x" * info.size)  # not a GPKG any more: it is not read past its size
    record = Entries(tmp_path / "entries").compute(info.sha256, path, logged(info), info.metadata)
    assert record == Entries(tmp_path / "other").record(info)
    with pytest.raises(ArtifactError):
        Entries(tmp_path / "third").compute(info.sha256, path, logged(info))  # without it, parsed


def test_forget_is_journaled_and_a_torn_last_line_is_skipped(tmp_path, stored):
    (_, a), (_, b) = stored
    entries = Entries(tmp_path / "entries")
    entries.record(a)
    entries.record(b)
    entries.forget(a.sha256)
    with open(tmp_path / "entries" / JOURNAL, "a") as fh:
        fh.write('{"sha256": "torn by a crash')
    again = Entries(tmp_path / "entries")
    assert again.get(a.sha256) is None and again.get(b.sha256)["cpv"] == "app-misc/b-2.0"


def test_the_journal_is_compacted_at_start_up_when_mostly_dead(tmp_path, stored):
    (_, a), (_, b) = stored
    entries = Entries(tmp_path / "entries")
    for _ in range(600):
        entries.record(a)
        entries.forget(a.sha256)
    entries.record(b)
    journal = tmp_path / "entries" / JOURNAL
    assert len(journal.read_text().splitlines()) == 1201
    again = Entries(tmp_path / "entries")
    assert len(journal.read_text().splitlines()) == 1 and again.get(b.sha256)["sha256"] == b.sha256


def test_records_of_the_older_one_file_each_layout_move_into_the_journal(tmp_path, stored):
    (_, a), _ = stored
    root = tmp_path / "entries"
    root.mkdir()
    old = {"cpv": a.cpv, "size": a.size, "sha256": a.sha256, "build_id": 1, "md5": a.md5, "sha1": a.sha1,
           "metadata": a.metadata}
    (root / f"{a.sha256}.json").write_text(json.dumps(old))
    (root / f"{'e' * 64}.json").write_text("not json")
    entries = Entries(root)
    assert entries.get(a.sha256) == old and entries.get("e" * 64) is None
    assert sorted(os.listdir(root)) == [JOURNAL]


def test_junk_is_not_indexed(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(ArtifactError, match="not a readable GPKG"):
        Entries(tmp_path / "entries").compute("f" * 64, junk, {"size": 5000})
