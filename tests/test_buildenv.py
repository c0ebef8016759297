"""Tests for swarmmesh.buildenv: a build environment read from Portage settings, gcc and the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from swarmmesh import buildenv


class Settings(dict):
    """What buildenv reads of portage.settings: get(), profile_path, repositories."""

    def __init__(self, values: dict, profile_path: str | None = None, repositories: tuple = ()) -> None:
        super().__init__(values)
        self.profile_path, self.repositories = profile_path, repositories


def _repo(tmp_path: Path) -> tuple[SimpleNamespace, str]:
    location = tmp_path / "repo"
    (location / "profiles" / "default" / "linux" / "amd64").mkdir(parents=True)
    (location / "metadata").mkdir()
    (location / "metadata" / "timestamp.chk").write_text("Mon, 07 Dec 2026 00:00:00 +0000\n")
    link = tmp_path / "make.profile"
    link.symlink_to(location / "profiles" / "default" / "linux" / "amd64")
    return SimpleNamespace(name="gentoo", location=str(location)), str(link)


def test_client_env_from_settings(tmp_path: Path) -> None:
    repo, profile = _repo(tmp_path)
    settings = Settings({"CHOST": "x86_64-pc-linux-gnu", "ARCH": "amd64", "CFLAGS": "-O2 -march=x86-64-v3",
                         "CXXFLAGS": "-O2", "LDFLAGS": "-Wl,-O1", "USE_EXPAND": "CPU_FLAGS_X86 L10N",
                         "CPU_FLAGS_X86": "sse2 aes avx", "L10N": "en"}, profile, (repo,))
    env = buildenv.client_env(settings)
    assert env == {"chost": "x86_64-pc-linux-gnu", "arch": "amd64", "profile": "default/linux/amd64",
                   "cflags": "-O2 -march=x86-64-v3", "cxxflags": "-O2", "ldflags": "-Wl,-O1",
                   "march": "x86-64-v3", "isa_level": 3, "cpu_flags": {"CPU_FLAGS_X86": "aes avx sse2"},
                   "repos": {"gentoo": "Mon, 07 Dec 2026 00:00:00 +0000"}}


def test_no_profile_no_env() -> None:
    assert buildenv.client_env(Settings({})) is None
    assert buildenv.drone_env(Settings({"CHOST": "x"})) is None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_march_native_is_replaced_by_the_cpu_it_means() -> None:
    settings = Settings({"CHOST": "x86_64-pc-linux-gnu", "ARCH": "amd64", "CFLAGS": "-O2 -march=native -pipe",
                         "CXXFLAGS": "${CFLAGS}"})
    env = buildenv.client_env(settings)
    assert env is not None and env["march"] not in ("", "native")
    assert env["cflags"] == f"-O2 -march={env['march']} -pipe"
    assert env["isa_level"] >= 1
    assert buildenv.isa_level("x86-64-v2", None) == 2
    assert buildenv.isa_level("haswell", shutil.which("gcc")) == 3
    assert buildenv.isa_level("nehalem", shutil.which("gcc")) == 2
    assert buildenv.compiler(shutil.which("gcc")).startswith("gcc-")


def test_levels_without_gcc_and_from_cpuinfo(tmp_path: Path) -> None:
    assert buildenv.isa_level("", None) == 1
    assert buildenv.isa_level("skylake", None) == 0  # unknown without gcc
    assert buildenv.march_of("-march=k8 -O2 -march=x86-64-v4") == "x86-64-v4"
    cpuinfo = tmp_path / "cpuinfo"
    v3 = "sse4_2 popcnt ssse3 cx16 lahf_lm avx avx2 bmi2 fma movbe f16c abm xsave"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {v3}\n")
    assert buildenv.cpu_isa_level(cpuinfo) == 3
    cpuinfo.write_text("flags\t\t: fpu sse2\n")
    assert buildenv.cpu_isa_level(cpuinfo) == 1
    assert buildenv.cpu_isa_level(tmp_path / "missing") == 0


def test_repo_revision_from_git(tmp_path: Path) -> None:
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/master\n")
    (git / "refs" / "heads" / "master").write_text("abc123\n")
    settings = Settings({}, repositories=(SimpleNamespace(name="r", location=str(tmp_path / "repo")),))
    assert buildenv.repo_revisions(settings) == {"r": "abc123"}
