"""The control API of an orchestrator: validate a request, commit, then reply.

A mutation is acknowledged only from its commit callback; a request whose commit does not
come back within COMMIT_TIMEOUT gets a `not_committed` reply (the command may still commit
later, which is why every command is idempotent or conditional). Followers answer
`not_leader` with the leader's name so the caller can go there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from swarmmesh import commands, gentoo
from swarmmesh.component import Component, Node
from swarmmesh.config import NodeConfig
from swarmmesh.errors import BadAtomsError, InputError, SwarmError
from swarmmesh.protocol import Message, Reply, Request
from swarmmesh.releases import check_release_id, new_release_id

log = logging.getLogger(__name__)

COMMIT_TIMEOUT = 10.0
#: Packages in one submission at most (the 16 MiB body limit alone would allow ~800,000).
MAX_BATCH_PACKAGES = 50_000
#: Answered by any orchestrator from its own applied state. `view` is `swarm` as this node
#: applied it (the chaos checks compare each follower's queue with the leader's, not only the
#: fingerprint each reports about itself); `swarm` itself stays the leader's.
READ_OPS = {"status", "releases", "view"}


#: `balance(reply)`: the broker's; `reply(result)` runs once the requeue is committed.
Balance = Callable[[Callable[[dict], None]], None]


class Control(Component):
    """Component of an Orchestrator: answers `Request`s on its ROUTER. The peers it calls are
    handed in: the election's `fingerprint`, the broker's `dispatch_new` and `balance`, and
    the release this node `serving`."""

    def __init__(self, node: Node, config: NodeConfig, *, fingerprint: Callable[[], str],
                 dispatch_new: Callable[[list[str], dict | None], None], balance: Balance,
                 serving: Callable[[], str | None]) -> None:
        self.node = node
        self._keep_releases = config.keep_releases
        self._fingerprint = fingerprint
        self._dispatch_new = dispatch_new
        self._balance_now = balance
        self._serving = serving
        self._pending: dict[str, tuple[bytes, float]] = {}
        self._ops: dict[str, Callable[[bytes, Request], None]] = {
            "status": self._status, "swarm": self._swarm, "view": self._swarm, "submit": self._submit,
            "finalize": self._finalize, "balance": self._balance, "unblock": self._unblock,
            "reset": self._reset, "releases": self._releases, "rollback": self._rollback,
        }

    def accepts(self, msg: Message) -> bool:
        return isinstance(msg, Request)

    def handle(self, identity: bytes, req: Request) -> None:
        op = self._ops.get(req.op)
        if op is None:
            self._error(identity, req, "invalid", f"unknown operation {req.op!r}; "
                        f"known: {', '.join(sorted(self._ops))}")
            return
        if req.op not in READ_OPS and not self.node.is_leader():
            self._error(identity, req, "not_leader",
                        f"{self.node.name} is not the leader; ask {self.node.leader_name() or 'the leader'}")
            return
        try:
            op(identity, req)
        except BadAtomsError as exc:
            self._error(identity, req, exc.code, str(exc), {"bad_lines": [list(b) for b in exc.bad_lines]})
        except SwarmError as exc:
            self._error(identity, req, exc.code, str(exc))

    def tick(self, now: float) -> None:
        for req_id, (identity, deadline) in list(self._pending.items()):
            if now > deadline:
                del self._pending[req_id]
                self._send(identity, Reply(req_id=req_id, ok=False, code="not_committed",
                                           error="the change was not committed in time; check status and retry"))

    # --- replies -----------------------------------------------------------------------
    def _send(self, identity: bytes, reply: Reply) -> None:
        self.node.send(identity, Reply(**{**reply.__dict__, "leader": self.node.leader_name()}))

    def _ok(self, identity: bytes, req: Request, result: Any) -> None:
        self._send(identity, Reply(req_id=req.req_id, ok=True, result=result))

    def _error(self, identity: bytes, req: Request, code: str, error: str, result: Any = None) -> None:
        self._send(identity, Reply(req_id=req.req_id, ok=False, code=code, error=error, result=result))

    def _commit(self, identity: bytes, req: Request, cmd: commands.Command,
                shape: Callable[[dict], tuple[bool, str, str, Any]] | None = None) -> None:
        """Commit, and reply from the callback: the ack means committed."""
        self._pending[req.req_id] = (identity, self.node.now() + COMMIT_TIMEOUT)

        def then(result: Any, err: str | None) -> None:
            if self._pending.pop(req.req_id, None) is None:
                return  # already answered as timed out
            if err is not None:
                self._error(identity, req, "not_committed", err)
                return
            ok, code, error, value = (shape or _plain)(result)
            self._send(identity, Reply(req_id=req.req_id, ok=ok, code=code, error=error, result=value))

        self.node.commit(cmd, then=then)

    # --- operations --------------------------------------------------------------------
    def _status(self, identity: bytes, req: Request) -> None:
        node = self.node
        counts, fingerprint = node.read(lambda q: q.counts()), self._fingerprint()
        commit, applied = node.indexes()
        self._ok(identity, req, {"fingerprint": fingerprint,
            "node": node.name, "role": node.role(),
            "leader": node.leader_name(), "term": node.term, "counts": counts,
            "commit_index": commit, "applied_index": applied,
        })

    def _swarm(self, identity: bytes, req: Request) -> None:
        snap = self.node.read(lambda q: q.snapshot())
        snap["node"], snap["leader"], snap["term"] = self.node.name, self.node.leader_name(), self.node.term
        self._ok(identity, req, snap)

    def _submit(self, identity: bytes, req: Request) -> None:
        refs = _refs_from(req.args)
        deps = _deps_from(req.args.get("deps"))
        client = _client_from(req.args.get("client"))
        items = [(r.key, r.cpv, r.repo) for r in refs]
        batch_id = f"b-{uuid.uuid4().hex[:12]}"
        log.info("submit %s from %r: %d packages", batch_id, client, len(items))
        self._commit(identity, req, commands.Submit(batch_id, client, items, deps, self.node.wall()),
                     shape=lambda r: (True, "ok", "", {k: r[k] for k in ("batch", "count", "new")}))
        self._dispatch_new([key for key, _cpv, _repo in items], deps)

    def _finalize(self, identity: bytes, req: Request) -> None:
        force = bool(req.args.get("force", False))
        release_id = time.strftime("r-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]
        self._commit(identity, req, commands.Finalize(release_id, self.node.wall(), force), shape=_finalize_shape)

    def _balance(self, identity: bytes, req: Request) -> None:
        self._balance_now(lambda result: self._ok(identity, req, result))

    def _unblock(self, identity: bytes, req: Request) -> None:
        keys = req.args.get("keys")
        if keys is not None:
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise InputError("unblock: keys must be a list of package keys (CPVs) or drone names")
            keys = [_unblock_key(k) for k in keys]
        self._commit(identity, req, commands.Unblock(keys or None, self.node.wall()))

    def _reset(self, identity: bytes, req: Request) -> None:
        if req.args.get("confirm") is not True:
            raise InputError("reset forgets the whole queue; pass confirm=true (swarmmesh reset --yes)")
        log.warning("queue reset requested")
        self._commit(identity, req, commands.Reset())


    def _releases(self, identity: bytes, req: Request) -> None:
        """The releases in the log, newest last; `serving` is what this node's binhost serves."""
        views = self.node.read(lambda q: q.release_views())
        self._ok(identity, req, {"releases": views, "current": views[-1]["id"] if views else None,
                                 "node": self.node.name, "serving": self._serving()})

    def _rollback(self, identity: bytes, req: Request) -> None:
        target = check_release_id(req.args.get("release"))
        keep = self._keep_releases
        kept = self.node.read(lambda q: [r.id for r in q.releases][-keep:])
        if target not in kept:
            raise InputError(f"release {target!r} is not one of the last {keep} releases, whose files are kept; "
                             f"roll back to one of: {', '.join(kept) or 'none yet'}")
        release_id = new_release_id()
        log.warning("rollback to %s requested: publishing its files again as %s", target, release_id)
        self._commit(identity, req, commands.Rollback(target, release_id, self.node.wall()), shape=_rollback_shape)


def _rollback_shape(result: dict) -> tuple[bool, str, str, Any]:
    if result.get("ok"):
        return True, "ok", "", {k: result[k] for k in ("release", "source", "count")}
    return False, "invalid", (f"no release {result.get('release')!r}; `swarmmesh releases` lists them"), result


def _plain(result: dict) -> tuple[bool, str, str, Any]:
    ok = bool(result.get("ok", True))
    return ok, result.get("code", "ok") if not ok else "ok", "" if ok else str(result.get("code")), result


def _finalize_shape(result: dict) -> tuple[bool, str, str, Any]:
    if result.get("ok"):
        return True, "ok", "", {"release": result["release"], "count": result["count"]}
    needed, delegated = result.get("needed", 0), result.get("delegated", 0)
    return False, "refused", (
        f"finalize refused: {needed} package(s) still needed and {delegated} being built; "
        "wait for them or pass --force to release what is received"
    ), {"needed": needed, "delegated": delegated}


def _refs_from(args: dict) -> list[gentoo.PackageRef]:
    text, packages = args.get("text"), args.get("packages")
    if isinstance(packages, list) and len(packages) > MAX_BATCH_PACKAGES:
        raise InputError(_too_many(len(packages)))
    if isinstance(text, str) and packages is None:
        refs = gentoo.parse_package_list(text)
    elif isinstance(packages, list) and text is None:
        refs = gentoo.parse_packages(packages)
    else:
        raise InputError("submit needs either 'text' (a package list) or 'packages' (a list of atoms), not both")
    if len(refs) > MAX_BATCH_PACKAGES:
        raise InputError(_too_many(len(refs)))
    return refs


def _too_many(count: int) -> str:
    return f"a batch of {count} packages is more than {MAX_BATCH_PACKAGES}; split it into several submissions"


def _deps_from(raw: Any) -> dict[str, list[str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InputError("deps must map a package atom to a list of atoms it depends on")
    deps: dict[str, list[str]] = {}
    for pkg, needs in raw.items():
        if not isinstance(pkg, str) or not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            raise InputError("deps must map a package atom to a list of atoms it depends on")
        deps[gentoo.parse_atom(pkg).key] = [gentoo.parse_atom(n).key for n in needs]
    return deps


def _client_from(raw: Any) -> str:
    if raw is None:
        return "anonymous"
    if not isinstance(raw, str) or not 0 < len(raw) <= 128 or not raw.isprintable():
        raise InputError("client must be a printable name of 1 to 128 characters")
    return raw


def _unblock_key(text: str) -> str:
    """A CPV is normalised to its queue key; anything else is taken as a drone name."""
    try:
        return gentoo.parse_atom(text).key
    except InputError:
        if not text or len(text) > 128 or not text.isprintable():
            raise InputError(f"unblock: {text!r} is neither a package atom nor a drone name") from None
        return text
