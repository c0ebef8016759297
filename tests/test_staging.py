"""The staging feed: the Stager's index, rendered from blocks kept between renders."""

from __future__ import annotations

from swarmmesh import pkgindex, staging
from tests.fakes import logged, receive, store_gpkg
from tests.test_pkgindex import read_index


def test_stager_renders_what_render_packages_writes_and_each_file_once(node, monkeypatch):
    made = []
    index_entry = pkgindex.index_entry
    monkeypatch.setattr(staging, "index_entry", lambda record, path: made.append(path) or index_entry(record, path))
    entries, stager = node.storage.entries, staging.Stager(node.storage.entries)

    def add(n: int, chost: str | None = None) -> None:
        info = store_gpkg(node, f"app-misc/p{n}-1.0", seed=n)
        receive(node, info)
        record = entries.compute(info.sha256, node.storage.store.path(info.sha256), logged(info))
        if chost is not None:
            record["metadata"]["CHOST"] = chost

    def render_and_check(files: list[tuple[int, dict]]) -> staging.Feed:
        feed = stager.render(files)
        stamp = int(read_index(feed.packages).header["TIMESTAMP"])
        expected = [index_entry(entries.get(f["sha256"]), f["path"]) for _, f in files]
        assert feed.packages == pkgindex.render_packages(expected, stamp)
        assert feed.paths == {f["path"]: f["sha256"] for _, f in files}
        return feed

    for n in (2, 0, 1):
        add(n)
    render_and_check(node.queue.received()[:2])
    render_and_check(node.queue.received())
    assert len(made) == 3  # the second render made an entry for the new file only
    for n in (3, 4, 5):  # as many packages for another CHOST: the header's changes, every block with it
        add(n, "aarch64-unknown-linux-gnu")
    feed = render_and_check(node.queue.received())
    assert read_index(feed.packages).header["CHOST"] == "aarch64-unknown-linux-gnu" and len(made) == 9
    render_and_check(node.queue.received())
    assert len(made) == 9
