"""Tests for swarmmesh.gpkg_writer: the simulated packages it writes are the GPKGs asked for.

inspect_gpkg is the first referee (a written package reads back with the metadata, image and size
that were asked for); that Portage itself reads what is written is tested in test_gpkg.py, with the
other tests that need a portage.config.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from swarmmesh.errors import InputError
from swarmmesh.gpkg import inspect_gpkg
from swarmmesh.gpkg_writer import write_gpkg


def test_round_trip(package: Path) -> None:
    info = inspect_gpkg(package, expect_cpv="x11-themes/my-theme-1.0")
    data = package.read_bytes()
    assert (info.cpv, info.build_id, info.size) == ("x11-themes/my-theme-1.0", 1, len(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.md5, info.sha1) == (hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest())
    meta = info.metadata
    for key in ("CATEGORY", "PF", "SLOT", "EAPI", "USE", "KEYWORDS", "DEFINED_PHASES", "repository",
                "BUILD_ID", "BUILD_TIME", "SIZE", "DEPEND", "RDEPEND", "CHOST"):
        assert key in meta, key
    assert (meta["PF"], meta["repository"], meta["BUILD_TIME"]) == ("my-theme-1.0", "localrepo", "1700000000")
    image = _image_files(package)
    assert list(image) == ["image/usr/share/my-theme/my-theme-1.0.bin"]
    assert int(meta["SIZE"]) == len(next(iter(image.values())))


def test_layout_is_glep78(package: Path) -> None:
    with tarfile.open(package) as tar:
        names = tar.getnames()
    assert names == [f"my-theme-1.0-1/{n}" for n in ("gpkg-1", "metadata.tar.gz", "image.tar.gz", "Manifest")]


@pytest.mark.parametrize("size", [2048, 4096, 50_000, 1 << 20])
def test_size_is_about_what_was_asked(tmp_path: Path, size: int) -> None:
    path = tmp_path / "p.gpkg.tar"
    write_gpkg(path, "cat/pkg-1.0", size=size)
    actual = path.stat().st_size
    assert actual <= max(size, 6 * 1024) + 1024
    assert actual >= size - 1024 - size // 100
    assert inspect_gpkg(path).size == actual


def test_same_seed_same_image_other_seed_other_image(tmp_path: Path) -> None:
    images = []
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        write_gpkg(tmp_path / name, "cat/pkg-1.0", size=8000, seed=seed, metadata={"BUILD_TIME": "1"})
        images.append(_image_files(tmp_path / name))
    assert images[0] == images[1] != images[2]
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_gpkg(tmp_path / "x.gpkg.tar", "cat/pkg-1.0")
    with pytest.raises(InputError):
        write_gpkg(tmp_path / "y.gpkg.tar", "cat/pkg-1.0", metadata={"../evil": "x"})
    with pytest.raises(InputError, match="build id"):
        write_gpkg(tmp_path / "z.gpkg.tar", "cat/pkg-1.0", build_id=0)
    assert sorted(os.listdir(tmp_path)) == ["x.gpkg.tar"]


# --------------------------------------------------------------------------------------------- helpers


def _image_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as outer:
        member = next(m for m in outer.getmembers() if "/image.tar" in m.name)
        image = io.BytesIO(outer.extractfile(member).read())  # type: ignore[union-attr]
    with tarfile.open(fileobj=image, mode="r:*") as inner:
        return {m.name: inner.extractfile(m).read() for m in inner.getmembers() if m.isfile()}  # type: ignore[union-attr]
