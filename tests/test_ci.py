"""CI entry (.ci/run) and the README agree, and a real-Portage skip cannot pass silently (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REQUIRE_PORTAGE

ROOT = Path(__file__).resolve().parents[1]
MARKED = '''
import pytest

@pytest.mark.portage
def test_needs_portage():
    pytest.skip("gentoo-prefix cannot run here: missing emerge")

def test_plain_skip():
    pytest.skip("not a Portage test")
'''


def readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    (line,) = [x for x in lines if x.startswith("python3 -m venv") and "pytest" in x]
    return line


def test_ci_runs_the_readme_test_command_with_skip_reasons():
    command = readme_test_command()
    assert command.endswith("python -m pytest -q -rs")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
    assert any(REQUIRE_PORTAGE in line for line in ci)


def run_marked(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_marked.py").write_text(MARKED)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    portage: needs real Portage\n")
    env = {**os.environ, REQUIRE_PORTAGE: require, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest", "-p", "no:cacheprovider",
            "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_marked.py")]
    return subprocess.run(argv,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_portage_test_that_skips_fails_where_portage_is_required(tmp_path):
    required = run_marked(tmp_path, "1")
    assert required.returncode == 1, required.stdout
    assert "1 failed, 1 skipped" in required.stdout
    assert "needs real Portage and skipped (gentoo-prefix cannot run here: missing emerge)" in required.stdout
    elsewhere = run_marked(tmp_path, "0")
    assert elsewhere.returncode == 0 and "2 skipped" in elsewhere.stdout, elsewhere.stdout
