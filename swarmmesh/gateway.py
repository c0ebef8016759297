"""The stateless HTTP gateway: follows the orchestrators' events and forwards to the leader.

Why stateless: any number of gateways may run, and one that restarts knows the cluster again
within a second, because the leader publishes `LeaderInfo` at once on change and every
second after. Nothing here is authoritative: the cluster view is rebuilt from events, and
every answer about the queue comes from the leader itself.

Why requests are never re-sent after a timeout: a mutation that timed out may still commit
(FACTS.md), so only "not sent" (no connection) and "not the leader" are retried elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import zmq
import zmq.asyncio
from aiohttp import web

from swarmmesh import keys, protocol, tokens, transport
from swarmmesh.errors import ConfigError, InputError, ProtocolError, SwarmError
from swarmmesh.protocol import LeaderInfo, Message, NodeInfo, Reply, Request

if TYPE_CHECKING:
    from collections.abc import Iterable

    from swarmmesh.config import NodeConfig, OrchestratorAddr

log = logging.getLogger(__name__)

HEALTH_WINDOW = 2.0
REQUEST_TIMEOUT = 5.0
STATUS_TIMEOUT = 2.0
MAX_IN_FLIGHT = 64
MAX_BODY = 16 * 1024 * 1024
RETRY_PAUSE = 0.2
SHUTDOWN_GRACE = 2.0
PROBE_PERIOD = 0.5  # how often each orchestrator's binhost is asked what it serves
PROBE_TIMEOUT = 1.0
#: Codes that prove the request was not applied, so another orchestrator may be asked.
RETRYABLE = frozenset({"not_leader", "no_leader"})

#: Reply code -> HTTP status, for errors from the cluster and from the gateway alike.
HTTP_STATUS = {
    "ok": 200, "invalid": 400, "refused": 409, "too_large": 413, "protocol": 502,
    "not_leader": 503, "no_leader": 503, "not_committed": 503, "unavailable": 503, "busy": 503,
    "timeout": 504, "rate_limited": 429,
}
ENDPOINTS = "/status, /binhost, /build, /swarm, /finalize, /balance, /unblock, /reset, /releases, /rollback"
NO_LEADER = ("no orchestrator leads the cluster right now (election in progress or no quorum); "
             "retry in a few seconds")


def _failure(code: str, error: str) -> Reply:
    """A Reply made by the gateway itself, so its errors take the same path as the cluster's."""
    return Reply(req_id="", ok=False, code=code, error=error)


@dataclass
class _Heard:
    msg: Any
    at: float


class ClusterView:
    """What the gateway believes about the cluster, from events only; the clock is passed in
    so that leadership rules are testable without sockets."""

    def __init__(self, orchestrators: Iterable[OrchestratorAddr], window: float = HEALTH_WINDOW):
        self.addrs = {o.name: o for o in orchestrators}
        self.window = window
        self._nodes: dict[str, _Heard] = {}
        self._leaders: dict[str, _Heard] = {}
        self._binhosts: dict[str, _Heard] = {}

    def heard(self, msg: Message, now: float) -> None:
        if getattr(msg, "name", None) not in self.addrs:
            log.debug("ignored an event from %r: not in this gateway's orchestrator list", msg)
        elif isinstance(msg, LeaderInfo):
            self._leaders[msg.name] = _Heard(msg, now)
        elif isinstance(msg, NodeInfo):
            self._nodes[msg.name] = _Heard(msg, now)

    def binhost_heard(self, name: str, info: dict, now: float) -> None:
        """What an orchestrator's binhost said it serves (GET /release): stamps of its current
        release and of the newest release in its log."""
        stamps = (info.get("serving_stamp"), info.get("newest_stamp"))
        if name in self.addrs and all(isinstance(s, int) and not isinstance(s, bool) for s in stamps):
            self._binhosts[name] = _Heard(info, now)

    def serving(self, now: float) -> dict[str, dict]:
        """Fresh binhost answers of healthy orchestrators."""
        return {name: h.msg for name, h in self._binhosts.items() if self._fresh(h, now) and self.healthy(name, now)}

    def _fresh(self, heard: _Heard | None, now: float) -> bool:
        return heard is not None and now - heard.at <= self.window

    def leader(self, now: float) -> LeaderInfo | None:
        """The freshest LeaderInfo of the highest term, unless a newer term names someone else."""
        fresh = [h for h in self._leaders.values() if self._fresh(h, now)]
        if not fresh:
            return None
        best = max(fresh, key=lambda h: (h.msg.term, h.at)).msg
        return None if self._deposed(best, now) else best

    def _deposed(self, info: LeaderInfo, now: float) -> bool:
        return any(self._fresh(h, now) and h.msg.term > info.term and h.msg.leader not in (None, info.name)
                   for h in self._nodes.values())

    def healthy(self, name: str, now: float) -> bool:
        return self._fresh(self._nodes.get(name), now)

    def candidates(self, now: float) -> list[str]:
        """Whom to ask, best first: the leader, whom healthy nodes name, healthy nodes, the rest."""
        leader = self.leader(now)
        rank = {name: i for i, name in enumerate(self.addrs)}
        nodes = sorted((h.msg for h in self._nodes.values() if self._fresh(h, now)),
                       key=lambda m: (-m.term, rank[m.name]))
        hints = [m.leader for m in nodes if m.leader in self.addrs]
        order = ([leader.name] if leader else []) + hints + [m.name for m in nodes] + list(self.addrs)
        return list(dict.fromkeys(order))

    def describe(self, now: float) -> list[dict]:
        return [self._describe(addr, self._nodes.get(name), now) for name, addr in self.addrs.items()]

    def _describe(self, addr: OrchestratorAddr, heard: _Heard | None, now: float) -> dict:
        info = heard.msg if heard else None
        return {
            "name": addr.name, "role": info.role if info else None, "healthy": self._fresh(heard, now),
            "term": info.term if info else None, "last_seen": round(now - heard.at, 3) if heard else None,
            "broker": addr.broker_url, "binhost": addr.binhost_url,
        }


def choose_binhost(view: ClusterView, now: float) -> str | None:
    """The binhost URL clients should use: a healthy orchestrator serving the newest release
    (the leader when it does), so a client never reads an index whose files are missing; with
    no release served anywhere, the leader's."""
    leader = view.leader(now)
    serving = view.serving(now)
    rank = {name: i for i, name in enumerate(view.addrs)}
    best = sorted(serving, key=lambda n: (-serving[n]["serving_stamp"], not (leader and n == leader.name), rank[n]))
    if best and serving[best[0]]["serving_stamp"] > 0:
        name = best[0]
        return (leader.binhost if leader and leader.name == name else "") or view.addrs[name].binhost_url
    if leader is None:
        return None
    return leader.binhost or view.addrs[leader.name].binhost_url


class Forwarder:
    """One DEALER per orchestrator; Replies are matched to their Request by req_id."""

    def __init__(self, ctx: zmq.asyncio.Context, view: ClusterView, timeout: float = REQUEST_TIMEOUT,
                 max_in_flight: int = MAX_IN_FLIGHT):
        self.view, self.timeout = view, timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, tuple[str, asyncio.Future[Reply]]] = {}
        self._changed = asyncio.Event()
        self._dealers = {name: self._dealer(ctx, addr.broker_url) for name, addr in view.addrs.items()}
        self._readers = [asyncio.create_task(self._read(n, s)) for n, s in self._dealers.items()]

    @staticmethod
    def _dealer(ctx: zmq.asyncio.Context, url: str) -> zmq.asyncio.Socket:
        # IMMEDIATE: no queueing for a peer that is not connected, or a request could reach
        # an orchestrator long after its caller was told it failed.
        sock = transport.dealer(ctx)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        transport.connect_to(sock, url)
        return sock

    def leader_changed(self) -> None:
        """Wake the requests waiting for a leader."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for sock in self._dealers.values():
            sock.close(linger=0)

    async def _read(self, name: str, sock: zmq.asyncio.Socket) -> None:
        while True:
            frame = await sock.recv()
            try:
                msg = protocol.decode(frame)
            except ProtocolError as exc:
                log.warning("ignored a bad reply from %s: %s", name, exc)
                continue
            sender, fut = self._pending.get(getattr(msg, "req_id", ""), ("", None))
            if isinstance(msg, Reply) and fut is not None and sender == name and not fut.done():
                fut.set_result(msg)

    async def call(self, op: str, args: dict, timeout: float | None = None) -> Reply:
        """Ask the leader; never waits longer than the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout or self.timeout)
        except TimeoutError:
            return _failure("busy", "the gateway has too many requests in flight; retry shortly")
        try:
            return await self._call(Request(op=op, req_id="", args=args), deadline)
        finally:
            self._slots.release()

    async def _call(self, req: Request, deadline: float) -> Reply:
        loop = asyncio.get_running_loop()
        last = _failure("no_leader", NO_LEADER)
        while True:
            reply = await self._round(req, deadline)
            if reply is not None and reply.code not in RETRYABLE:
                return reply
            last = reply or last
            spare = deadline - loop.time() - RETRY_PAUSE   # a round needs time to be answered
            if spare <= 0:
                return last
            try:
                await asyncio.wait_for(self._changed.wait(), min(RETRY_PAUSE, spare))
            except TimeoutError:
                pass

    async def _round(self, req: Request, deadline: float) -> Reply | None:
        """Ask each orchestrator at most once, a not_leader hint first; None if none was reachable."""
        todo, tried, last = self.view.candidates(time.monotonic()), set(), None
        while todo:
            name = todo.pop(0)
            if name in tried:
                continue
            tried.add(name)
            reply = await self._ask(name, req, deadline)
            if reply is None:
                continue
            if reply.code not in RETRYABLE:
                return reply
            last = reply
            if reply.leader in self.view.addrs:
                todo.insert(0, reply.leader)
        return last

    async def _ask(self, name: str, req: Request, deadline: float) -> Reply | None:
        """One attempt; None when the request could not even be sent (not connected)."""
        req_id = uuid.uuid4().hex
        frame = protocol.encode(Request(op=req.op, req_id=req_id, args=req.args))
        if len(frame) > protocol.MAX_FRAME:
            return _failure("too_large", f"the request is {len(frame)} bytes, over the cluster's "
                            f"{protocol.MAX_FRAME}-byte frame limit; split it into several submissions")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (name, fut)
        try:
            await self._dealers[name].send(frame, zmq.NOBLOCK)
            return await asyncio.wait_for(fut, max(0.0, deadline - asyncio.get_running_loop().time()))
        except zmq.Again:
            log.debug("%s is not connected; trying another orchestrator", name)
            return None
        except TimeoutError:
            return _failure("timeout", f"orchestrator {name} did not answer {req.op!r} in time; it may "
                            "still apply it: check `swarmmesh status` before retrying")
        finally:
            self._pending.pop(req_id, None)


# --- HTTP --------------------------------------------------------------------------------

def _json(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers=headers or None)


def _reply_response(reply: Reply, ok_status: int = 200) -> web.Response:
    if reply.ok:
        return _json(reply.result, ok_status)
    body = dict(reply.result) if isinstance(reply.result, dict) else {}
    body.update(error=reply.error or f"the cluster answered {reply.code!r}", code=reply.code)
    if reply.leader:
        body.setdefault("leader", reply.leader)
    return _json(body, HTTP_STATUS.get(reply.code, 500))


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _json({"error": f"request body over the {MAX_BODY // (1024 * 1024)} MiB limit; split the "
                      "package list into several submissions", "code": "too_large"}, 413)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _json({"error": f"{request.method} is not allowed on {request.path}; use {allowed}",
                      "code": "method"}, 405, Allow=allowed)
    if isinstance(exc, web.HTTPNotFound):
        return _json({"error": f"no such endpoint {request.path!r}; the gateway serves {ENDPOINTS}",
                      "code": "not_found"}, 404)
    if isinstance(exc, SwarmError):
        return _json({"error": str(exc), "code": exc.code}, HTTP_STATUS.get(exc.code, 500))
    status = exc.status if isinstance(exc, web.HTTPException) else 500
    return _json({"error": getattr(exc, "reason", "internal error"), "code": "http"}, status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves as JSON, and no exception stops the gateway."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(request, exc)
    except SwarmError as exc:
        return _error_response(request, exc)
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return _json({"error": "internal gateway error; see the gateway log", "code": "error"}, 500)


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    return await request.read()


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the request body is not valid UTF-8 (bad byte at offset {exc.start}); "
                         "send the package list as UTF-8 text") from None


async def _json_object(request: web.Request, required: bool = False) -> dict:
    raw = await _read_body(request)
    if not raw.strip():
        if required:
            raise InputError('empty request body; send a JSON object such as {"packages": ["cat/pkg-1.0"]}')
        return {}
    try:
        data = json.loads(_utf8(raw))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON body ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise InputError(f"the JSON body must be an object, not {type(data).__name__}")
    return data


def _client_name(request: web.Request) -> str:
    return request.query.get("client") or request.headers.get("X-Swarm-Client") or "anonymous"


async def _submit_args(request: web.Request) -> dict:
    if request.content_type == "application/json":
        data = await _json_object(request, required=True)
        if not isinstance(data.get("packages"), list) or not data["packages"]:
            raise InputError('the JSON body needs "packages": a non-empty list of atoms')
        args = {"packages": data["packages"], "client": data.get("client") or _client_name(request)}
        return args | {key: data[key] for key in ("deps", "use", "env") if data.get(key) is not None}
    text = _utf8(await _read_body(request))
    if not text.strip():
        raise InputError("empty request body; send package atoms, one per line, or `emerge --pretend` output")
    return {"text": text, "client": _client_name(request)}


class Gateway:
    """The gateway, usable in-process: `await start()`, then `await stop()`."""

    def __init__(self, config: NodeConfig, *, host: str | None = None, port: int | None = None,
                 request_timeout: float = REQUEST_TIMEOUT, health_window: float = HEALTH_WINDOW,
                 max_in_flight: int = MAX_IN_FLIGHT):
        self.config = config
        self.host = host if host is not None else config.gateway.host
        self.port = port if port is not None else config.gateway.port
        self.view = ClusterView(config.orchestrators, health_window)
        self._timeout, self._max_in_flight = request_timeout, max_in_flight
        self._started = time.monotonic()
        self._leader_key: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._ctx = transport.async_context(keys.node_curve(self.config))
        self._sub = transport.sub(self._ctx, [o.events_url for o in self.config.orchestrators],
                                  [protocol.TOPIC_LEADER, protocol.TOPIC_NODE])
        self.forwarder = Forwarder(self._ctx, self.view, self._timeout, self._max_in_flight)
        self._tasks.append(asyncio.create_task(self._follow()))
        self._tasks.append(asyncio.create_task(self._probe_binhosts()))
        # shutdown_timeout: a stop must not wait out aiohttp's 10 s lingering read of a refused body.
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(f"the gateway cannot listen on {self.host}:{self.port} ({exc.strerror or exc});"
                              " stop whatever uses that port or change [gateway] port") from None
        self.port = self._runner.addresses[0][1]
        log.info("swarmmesh gateway %s ready", self.config.name)

    async def stop(self) -> None:
        await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.forwarder.close()
        self._sub.close(linger=0)
        self._ctx.term()

    def _app(self) -> web.Application:
        gw = self.config.gateway
        access = tokens.middleware(gw.tokens, gw.open_reads, tokens.RateLimit(gw.build_rate))
        app = web.Application(client_max_size=MAX_BODY + 1, middlewares=[_errors, access])
        app.router.add_get("/status", self._status)
        app.router.add_get("/binhost", self._binhost)
        app.router.add_get("/signing-key.asc", self._signing_key)
        app.router.add_get("/swarm", self._simple("swarm"))
        app.router.add_post("/build", self._build)
        app.router.add_post("/finalize", self._finalize)
        app.router.add_post("/balance", self._simple("balance"))
        app.router.add_post("/unblock", self._unblock)
        app.router.add_post("/reset", self._reset)
        app.router.add_get("/releases", self._simple("releases"))
        app.router.add_post("/rollback", self._rollback)
        return app

    # --- events ------------------------------------------------------------------------
    async def _follow(self) -> None:
        while True:
            self._on_event(await self._sub.recv_multipart())

    def _on_event(self, frames: list[bytes]) -> None:
        expected = {protocol.TOPIC_LEADER: LeaderInfo, protocol.TOPIC_NODE: NodeInfo}
        if len(frames) != 2 or frames[0] not in expected:
            return
        try:
            msg = protocol.decode(frames[1])
        except ProtocolError as exc:
            log.warning("ignored a bad event: %s", exc)
            return
        if isinstance(msg, expected[frames[0]]):
            self.view.heard(msg, time.monotonic())
            self._check_leader()

    def _check_leader(self) -> None:
        leader = self.view.leader(time.monotonic())
        key = (leader.name, leader.term) if leader else None
        if key != self._leader_key:
            self._leader_key = key
            log.info("leader is %s", f"{key[0]} (term {key[1]})" if key else "unknown")
            self.forwarder.leader_changed()

    async def _probe_binhosts(self) -> None:
        """Ask every orchestrator's binhost what it serves, for choose_binhost."""
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self._probe(session, a) for a in self.config.orchestrators))
                await asyncio.sleep(PROBE_PERIOD)

    async def _probe(self, session: aiohttp.ClientSession, addr: OrchestratorAddr) -> None:
        try:
            async with session.get(addr.binhost_url + "release") as resp:
                info = await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        if isinstance(info, dict):
            self.view.binhost_heard(addr.name, info, time.monotonic())

    # --- endpoints ---------------------------------------------------------------------
    async def _status(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        leader, counts = self.view.leader(now), None
        if leader is not None:
            reply = await self.forwarder.call("status", {}, min(STATUS_TIMEOUT, self._timeout))
            counts = reply.result.get("counts") if reply.ok and isinstance(reply.result, dict) else None
        return _json({
            "gateway": {"name": self.config.name, "uptime": round(now - self._started, 3)},
            "leader": leader.name if leader else None, "term": leader.term if leader else None,
            "binhost": choose_binhost(self.view, now), "orchestrators": self.view.describe(now),
            "counts": counts,
        })

    async def _binhost(self, request: web.Request) -> web.Response:
        url = choose_binhost(self.view, time.monotonic())
        if url is None:
            return _json({"error": f"no binhost: {NO_LEADER}", "code": "no_leader"}, 503)
        return web.Response(text=url + "\n", content_type="text/plain")

    async def _signing_key(self, request: web.Request) -> web.Response:
        """The public signing key(s), as the chosen binhost serves them (the gateway holds no key)."""
        url = choose_binhost(self.view, time.monotonic())
        if url is None:
            return _json({"error": f"no binhost: {NO_LEADER}", "code": "no_leader"}, 503)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as session, \
                    session.get(url + "signing-key.asc") as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _json({"error": f"the binhost {url} did not answer ({exc}); try again", "code": "no_leader"}, 503)
        if resp.status != 200:
            return web.Response(status=resp.status, body=body, content_type="text/plain")
        return web.Response(body=body, content_type="application/pgp-keys")

    def _simple(self, op: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return _reply_response(await self.forwarder.call(op, {}))
        return handler

    async def _build(self, request: web.Request) -> web.Response:
        return _reply_response(await self.forwarder.call("submit", await _submit_args(request)), 202)

    async def _finalize(self, request: web.Request) -> web.Response:
        force = (await _json_object(request)).get("force", False)
        if not isinstance(force, bool):
            raise InputError('"force" must be true or false')
        return _reply_response(await self.forwarder.call("finalize", {"force": force}))

    async def _unblock(self, request: web.Request) -> web.Response:
        keys = (await _json_object(request)).get("keys")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise InputError('"keys" must be a list of package keys or drone names, or null for all')
        return _reply_response(await self.forwarder.call("unblock", {"keys": keys or None}))

    async def _rollback(self, request: web.Request) -> web.Response:
        release = (await _json_object(request, required=True)).get("release")
        if not isinstance(release, str) or not release:
            raise InputError('send {"release": "<id>"}; `swarmmesh releases` lists the ids')
        return _reply_response(await self.forwarder.call("rollback", {"release": release}))

    async def _reset(self, request: web.Request) -> web.Response:
        if (await _json_object(request)).get("confirm") is not True:
            raise InputError('reset forgets the whole queue; send {"confirm": true} to do it')
        return _reply_response(await self.forwarder.call("reset", {"confirm": True}))


# --- the process -------------------------------------------------------------------------

def run_gateway(config: NodeConfig) -> None:
    """Serve until SIGTERM or SIGINT; the readiness line tells supervisors it is listening."""
    asyncio.run(_serve(config))


async def _serve(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    await gateway.start()
    try:
        print(f"swarmmesh gateway {config.name} ready", flush=True)  # supervisors wait for this line
        await stop.wait()
        log.info("gateway %s stopping", config.name)
    finally:
        await gateway.stop()
