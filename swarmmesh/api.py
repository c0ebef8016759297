"""The gateway's HTTP client, for the CLI and tests: stdlib only, errors from errors.py.

Why the errors are rebuilt here: the gateway sends each failure as JSON with a status and a
message meant for people; turning it back into the project's exceptions lets the CLI map
them to exit codes the same way whether it talks to the gateway or not.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from swarmmesh.errors import (
    AuthError,
    BadAtomsError,
    ClusterError,
    CommitError,
    ConfigError,
    InputError,
    NoLeaderError,
    ProtocolError,
    RefusedError,
    SwarmError,
)

log = logging.getLogger(__name__)

HINT = "is `swarmmesh gateway` running? (--gateway / SWARMMESH_GATEWAY)"
#: No proxies: the gateway is a cluster-local service, and an http_proxy variable meant for
#: the web would otherwise send every request (and its errors) through a stranger.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"gateway URL {url!r} is not a plain http:// URL; "
                          "pass one like http://127.0.0.1:8090 (--gateway / SWARMMESH_GATEWAY)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise ConfigError(f"gateway URL {url!r} has an invalid port; use a number from 1 to 65535") from None
    return url.rstrip("/")


def binhost_release(binhost_url: str, timeout: float = 5.0) -> dict | None:
    """What one orchestrator's binhost serves right now (its GET /release: `serving`, `newest`),
    or None if it cannot say. Asked of the binhost itself, because the gateway learns it only
    at its next probe."""
    try:
        answer = GatewayClient(binhost_url, timeout=timeout)._call("GET", "/release")
    except SwarmError:
        return None
    return answer if isinstance(answer, dict) else None


class GatewayClient:
    """One method per gateway endpoint; each returns the decoded JSON answer or raises."""

    def __init__(self, url: str, timeout: float = 10.0, token: str | None = None):
        self.url = _check_url(url)
        self.timeout = timeout
        self.token = token  # admin token, sent as Authorization: Bearer

    def status(self) -> dict:
        return self._call("GET", "/status")

    def binhost(self) -> str:
        return self._request("GET", "/binhost").decode("utf-8", "replace").strip()

    def signing_key(self) -> str:
        """The swarm's public signing key(s), armoured (``GET /signing-key.asc``)."""
        return self._request("GET", "/signing-key.asc").decode("ascii", "replace")

    def submit_text(self, text: str, client: str = "cli") -> dict:
        path = "/build?" + urllib.parse.urlencode({"client": client})
        return self._call("POST", path, text.encode("utf-8"), "text/plain; charset=utf-8")

    def submit_packages(self, packages: list[str], client: str = "cli", deps: dict | None = None) -> dict:
        body: dict[str, Any] = {"packages": list(packages), "client": client}
        if deps is not None:
            body["deps"] = deps
        return self._call_json("POST", "/build", body)

    def submit_request(self, body: dict) -> dict:
        """POST /build with a whole JSON body (packages, client, deps, use, env)."""
        return self._call_json("POST", "/build", body)

    def swarm(self) -> dict:
        return self._call("GET", "/swarm")

    def finalize(self, force: bool = False) -> dict:
        return self._call_json("POST", "/finalize", {"force": force})

    def balance(self) -> dict:
        return self._call_json("POST", "/balance", {})

    def unblock(self, keys: list[str] | None = None) -> dict:
        return self._call_json("POST", "/unblock", {"keys": keys})

    def reset(self) -> dict:
        return self._call_json("POST", "/reset", {"confirm": True})

    def releases(self) -> dict:
        return self._call("GET", "/releases")

    def rollback(self, release_id: str) -> dict:
        return self._call_json("POST", "/rollback", {"release": release_id})

    # --- plumbing ----------------------------------------------------------------------
    def _call_json(self, method: str, path: str, body: dict) -> dict:
        return self._call(method, path, json.dumps(body).encode("utf-8"), "application/json")

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> dict:
        return self._decode(path, self._request(method, path, body, ctype))

    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310 - http:// checked
        if ctype:
            req.add_header("Content-Type", ctype)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._error(method, path, exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            raise ClusterError(f"cannot reach the gateway at {self.url}: {reason}; {HINT}") from None

    def _decode(self, path: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise ProtocolError(f"the gateway at {self.url} answered {path} with something that is not "
                                f"JSON ({data[:80]!r}); is {self.url} really a swarmmesh gateway?") from None

    def _error(self, method: str, path: str, status: int, data: bytes) -> SwarmError:
        """Turn an HTTP error answer back into the exception the gateway reported."""
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return ClusterError(f"the gateway at {self.url} answered {method} {path} with HTTP {status} "
                                f"and no JSON error ({data[:80]!r}); is it a swarmmesh gateway?")
        message = str(body.get("error") or f"HTTP {status}")
        return _exception(status, str(body.get("code", "")), message, body)


_BY_STATUS: dict[int, type[SwarmError]] = {400: InputError, 413: InputError, 409: RefusedError,
                                           401: AuthError, 403: AuthError}
_BY_CODE_503: dict[str, type[SwarmError]] = {
    "no_leader": NoLeaderError, "not_leader": NoLeaderError, "not_committed": CommitError}


def _exception(status: int, code: str, message: str, body: dict) -> SwarmError:
    if status == 400 and body.get("bad_lines"):
        return BadAtomsError(_bad_lines(body["bad_lines"]))
    if status == 409:
        message += f" (needed: {body.get('needed', '?')}, delegated: {body.get('delegated', '?')})"
    elif status in (404, 405):
        message += " (is the gateway the same swarmmesh version as this client?)"
    cls = _BY_STATUS.get(status) or (_BY_CODE_503.get(code) if status == 503 else None) or ClusterError
    return cls(message)


def _bad_lines(raw: Any) -> list[tuple[int, str, str]]:
    """The server's [[line, text, reason], ...], tolerating odd shapes rather than crashing."""
    lines = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list | tuple) and len(item) == 3:
            number, text, why = item
            lines.append((number if isinstance(number, int) else 0, str(text), str(why)))
    return lines or [(0, "?", "the gateway sent no usable details")]
