"""Tests for swarmmesh.resolver against a real Portage: a gentoo-prefix consumer whose world is
top, greeter and flavour (`flavour spicy -mild`), resolved inside its environment as
`gentoo-prefix run CLIENT ...` starts it. Skipped where the prefix cannot run (not root, no emerge).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PREFIX_TOOL, VENV_BIN, prefix_ready

_SCRIPT = """
import json, sys
from swarmmesh.resolver import resolve
plan = resolve(sys.argv[1:])
print(json.dumps({"request": plan.request("me"), "slots": {w.cpv: w.slot for w in plan.packages}}))
"""


def _resolve(prefix: Path, *targets: str) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(VENV_BIN)}
    done = subprocess.run([str(PREFIX_TOOL), "run", str(prefix), sys.executable, "-c", _SCRIPT, *targets],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(prefix_ready() is not None, reason=str(prefix_ready()))
def test_world_resolved_with_use_edges_and_environment(tmp_path: Path) -> None:
    prefix = tmp_path / "client"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(VENV_BIN)}
    subprocess.run([str(PREFIX_TOOL), "consumer", str(prefix), "http://127.0.0.1:1/", "--ebuilds",
                    "--world", "test-cat/top test-cat/greeter test-cat/flavour",
                    "--use", "test-cat/flavour spicy -mild"], env=env, check=True, capture_output=True, timeout=120)
    with (prefix / "etc/portage/make.conf").open("a") as conf:
        conf.write('CFLAGS="-O2 -march=x86-64-v2"\n')
    got = _resolve(prefix, "@world")
    body = got["request"]
    names = [a.split("/")[1].split("::")[0] for a in body["packages"]]
    assert sorted(names) == ["base-1.0", "flavour-1.0", "greeter-1.0", "libgreet-1.0", "mid-a-1.0",
                             "mid-b-1.0", "top-1.0"]
    deps = {k.split("/")[1].split("::")[0]: sorted(d.split("/")[1].split("::")[0] for d in v)
            for k, v in body["deps"].items()}
    # top's build needs mid-a and mid-b, and what they need at run time: base
    assert deps == {"mid-a-1.0": ["base-1.0"], "mid-b-1.0": ["base-1.0"], "greeter-1.0": ["libgreet-1.0"],
                    "top-1.0": ["base-1.0", "mid-a-1.0", "mid-b-1.0"]}
    for pkg, needs in deps.items():
        assert all(names.index(n) < names.index(pkg) for n in needs)  # merge order
    assert body["use"]["=test-cat/flavour-1.0::test"] == ["spicy"]
    assert body["use"]["=test-cat/base-1.0::test"] == []  # ARCH, ELIBC...: not the package's USE
    assert body["env"] | {"repos": None} == {
        "chost": "x86_64-pc-linux-gnu", "arch": "amd64", "profile": "default/test", "cflags": "-O2 -march=x86-64-v2",
        "cxxflags": "", "ldflags": "", "march": "x86-64-v2", "isa_level": 2, "cpu_flags": {}, "repos": None}
    assert body["env"]["repos"] == {"test": ""}
    assert got["slots"]["test-cat/top-1.0"] == "0"

    single = _resolve(prefix, "=test-cat/greeter-1.0")["request"]
    assert single["packages"] == ["=test-cat/libgreet-1.0::test", "=test-cat/greeter-1.0::test"]


@pytest.mark.slow
@pytest.mark.skipif(prefix_ready() is not None, reason=str(prefix_ready()))
def test_an_unresolvable_atom_is_a_resolve_error(tmp_path: Path) -> None:
    prefix = tmp_path / "client"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORTAGE_BIN": str(VENV_BIN)}
    subprocess.run([str(PREFIX_TOOL), "consumer", str(prefix), "http://127.0.0.1:1/", "--ebuilds"],
                   env=env, check=True, capture_output=True, timeout=120)
    script = ("import sys\nfrom swarmmesh.errors import ResolveError\nfrom swarmmesh.resolver import resolve\n"
              "try:\n    resolve(['=test-cat/nothing-9'])\nexcept ResolveError as e:\n    print('refused:', e)\n")
    done = subprocess.run([str(PREFIX_TOOL), "run", str(prefix), sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert "refused: Portage could not resolve =test-cat/nothing-9" in done.stdout, done.stderr[-2000:]
