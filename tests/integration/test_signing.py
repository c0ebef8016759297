"""Issue 15 end to end: the swarm signs what its drones build, and a stock Portage client, with
signature verification on, installs it (real processes, real Portage through gentoo-prefix)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from swarmmesh import gpkg_signing, signing
from swarmmesh.errors import SignatureError
from tests.conftest import wait_until
from tests.integration.test_releases import (
    GENTOO_PREFIX,
    VENV_BIN,
    all_serve,
    binhost,
    http_get,
    index,
    prefix,
    wait_received,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.portage, pytest.mark.timeout(300)]


def emerge(consumer: Path, atom: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GENTOO_PREFIX), "run", str(consumer), "emerge", "--getbinpkg", "--usepkgonly",
                           "--oneshot", "--quiet", atom], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PORTAGE_BIN": str(VENV_BIN)}, check=False)


@pytest.fixture
def clients():
    """Where the consumers live: Portage verifies as user nobody, who cannot enter pytest's
    private tmp_path (mode 0700), so this directory is world-readable, and removed after."""
    root = Path(tempfile.mkdtemp(prefix="swarmmesh-clients-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def signed_release(make_cluster, tmp_path):
    """3 orchestrators (signing, as `cluster init` sets them up), a gateway and an emerge drone
    that built libgreet and greeter; one release of both, served everywhere."""
    for tool in ("bash", "zstd", "bzip2", "curl", "gpg"):
        if shutil.which(tool) is None:
            pytest.skip(f"gentoo-prefix cannot run here: {tool} is missing")
    builder = tmp_path / "builder"
    prefix("builder", str(builder))
    emerge_cfg = {"builder": "emerge", "slots": 1, "emerge": {
        "command_prefix": [str(GENTOO_PREFIX), "run", str(builder)], "emerge": "emerge",
        "env": {"PORTAGE_BIN": str(VENV_BIN)}, "timeout_seconds": 120.0}}
    c = make_cluster(orchestrators=3, drones=1, builder_overrides=emerge_cfg)
    leader = c.leader(timeout=20)
    c.api.submit_packages(["=test-cat/libgreet-1.0", "=test-cat/greeter-1.0"], client="itest",
                          deps={"=test-cat/greeter-1.0": ["=test-cat/libgreet-1.0"]})
    wait_received(c, 2, timeout=120)
    release = c.api.finalize()["release"]
    wait_until(lambda: all_serve(c, c.orchestrators, release), 20, what="the signed release everywhere")
    return c, leader


def test_a_verifying_client_installs_the_swarms_signed_packages_and_refuses_tampered_ones(signed_release, clients):
    c, leader = signed_release
    tmp_path = clients
    key = tmp_path / "swarm.asc"
    key.write_text(c.api.signing_key())
    assert key.read_text() == http_get(binhost(c, leader) + "signing-key.asc").decode()
    keyring = signing.Keyring([key.read_text()])
    packages = http_get(binhost(c, leader) + "Packages")
    for pkg in index(packages).packages:  # one signed file, byte for byte the same on every binhost
        copies = {http_get(binhost(c, name) + pkg["PATH"]) for name in c.orchestrators}
        assert len(copies) == 1
        assert gpkg_signing.verify_gpkg(keyring, copies.pop()) == keyring.fingerprints[0]
    url = c.api.binhost()

    prefix("consumer", str(tmp_path / "trusting"), url, "--trust", str(key))
    done = emerge(tmp_path / "trusting", "=test-cat/greeter-1.0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "trusting" / "usr" / "share" / "greeter").is_dir()

    prefix("consumer", str(tmp_path / "stock"), url, "--verify")
    refused = emerge(tmp_path / "stock", "=test-cat/libgreet-1.0")
    assert refused.returncode != 0 and "signed with at least one unknown key" in refused.stdout + refused.stderr
    trust = subprocess.run([str(GENTOO_PREFIX), "run", str(tmp_path / "stock"), "swarmmesh", "client", "trust",
                            "--gateway", c.gateway_url], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "PORTAGE_BIN": str(VENV_BIN)}, check=False)
    assert trust.returncode == 0 and f"trusted {keyring.fingerprints[0]}" in trust.stdout, trust.stderr
    assert str(tmp_path / "stock" / "etc" / "portage" / "gnupg") in trust.stdout  # Portage's own setting
    done = emerge(tmp_path / "stock", "=test-cat/libgreet-1.0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # a copy of the binhost with libgreet changed after signing, its index made to match
    served = tampered_binhost(tmp_path / "tampered", binhost(c, leader), packages, "libgreet")
    try:
        prefix("consumer", str(tmp_path / "victim"), served.url, "--trust", str(key))
        refused = emerge(tmp_path / "victim", "=test-cat/libgreet-1.0")
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert not (tmp_path / "victim" / "usr" / "share" / "libgreet").exists()
        with pytest.raises(SignatureError, match="changed after signing"):
            gpkg_signing.verify_gpkg(keyring, served.changed)
    finally:
        served.close()


class tampered_binhost:  # noqa: N801 - used like a function that returns a running server
    def __init__(self, root: Path, url: str, packages: bytes, pn: str) -> None:
        idx = index(packages)
        for pkg in idx.packages:
            data = http_get(url + pkg["PATH"])
            if f"/{pn}-" in pkg["PATH"]:
                data = self.changed = _flip_image_byte(data)
                pkg.update(SIZE=str(len(data)), MD5=hashlib.md5(data).hexdigest(), SHA1=hashlib.sha1(data).hexdigest())
            (root / pkg["PATH"]).parent.mkdir(parents=True, exist_ok=True)
            (root / pkg["PATH"]).write_bytes(data)
        out = io.StringIO()
        idx.write(out)
        (root / "Packages").write_text(out.getvalue())
        handler = functools.partial(_Quiet, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _flip_image_byte(data: bytes) -> bytes:
    """One byte inside the image member's data (after its 512-byte tar header) changed."""
    at = data.index(b"image.tar.zst\x00") + 512 + 64
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
