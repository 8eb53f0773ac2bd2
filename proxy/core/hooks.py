"""The plug-in interface of the relay: what a hook sees and what it may decide.

The proxy shells (wrapper mode, socket mode) call hooks at fixed points; the shadow state / WAL,
the fault injector, metrics and the trace are hooks. Hooks never see sockets.

Points, in order, for every request and every reply::

    request.before_forward -> request.after_forward -> reply.before_forward -> reply.after_forward

A ``Hook`` is any object with some of these optional async methods::

    async def on_request(self, ex: Exchange, point: str) -> Verdict | None
    async def on_reply(self, ex: Exchange, point: str) -> Verdict | None
    async def on_connection(self, conn: ConnContext, event: str) -> None
        # event: "opened" | "closed" | "replaced" | "framing_lost"
    async def on_status(self, conn: ConnContext, raw: bytes, msg: wire.Message | None) -> None
    async def on_signer_exit(self, status: int) -> None
    async def on_raw(self, conn: ConnContext, direction: str, raw: bytes) -> None
        # bytes that are not frames: fd carriers, and everything after framing was lost
    async def start(self, nursery: trio.Nursery) -> None
        # socket mode only: called once before the first connection is accepted (e.g. to start
        # a server next to the relay). Wrapper mode never calls it: there, nothing may stop
        # hsmd from starting, so such hooks start themselves lazily and must not raise.

Hooks run in registration order (shadow/WAL first, then faults, then metrics/trace) and the relay
awaits each one before the bytes move on, so a WAL hook can make its record durable first. At a
``*.before_forward`` point the first hook that returns a verdict other than ``Forward`` decides;
later hooks still run (they see ``ex.verdict``) but cannot overrule it. Return values at
``*.after_forward`` points are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

REQUEST_BEFORE = "request.before_forward"
REQUEST_AFTER = "request.after_forward"
REPLY_BEFORE = "reply.before_forward"
REPLY_AFTER = "reply.after_forward"
POINTS = (REQUEST_BEFORE, REQUEST_AFTER, REPLY_BEFORE, REPLY_AFTER)

CONN_OPENED = "opened"
CONN_CLOSED = "closed"
CONN_REPLACED = "replaced"
CONN_FRAMING_LOST = "framing_lost"

ROLE_MASTER = "master"  # lightningd's request socket (fd 3)
ROLE_CLIENT = "client"  # an fd obtained with hsmd_client_hsmfd
ROLE_STATUS = "status"  # fd 0, signer -> node
ROLE_SOCKET = "socket"  # a connection accepted by `hsmproxy serve`


@dataclass(frozen=True)
class ConnContext:
    """Who is talking on a connection. Client connections carry the context of the
    ``hsmd_client_hsmfd`` request that created them (hsmd binds it to the socket, and per-channel
    requests on that socket never repeat it)."""

    conn_id: int
    role: str
    peer_id: bytes | None = None
    dbid: int | None = None
    permissions: int | None = None
    parent_id: int | None = None

    def describe(self) -> str:
        if self.role == ROLE_CLIENT:
            return f"client#{self.conn_id}(dbid={self.dbid})"
        return f"{self.role}#{self.conn_id}"


@dataclass
class Exchange:
    """One request and (once it arrives) its reply, paired by order on one connection."""

    conn: ConnContext
    seq: int  # request number on this connection, from 0
    request_raw: bytes  # the frame body (no 4-byte length) exactly as received
    request: Any = None  # wire.Message, or None when the body does not decode
    reply_raw: bytes | None = None
    reply: Any = None
    request_received_ns: int | None = None  # time.monotonic_ns(), set by the shell
    request_forwarded_ns: int | None = None
    reply_received_ns: int | None = None
    reply_forwarded_ns: int | None = None
    verdict: "Verdict | None" = None  # the verdict applied at the current before_forward point
    duplicate: bool = False  # an extra pairing slot created by a Duplicate verdict

    @property
    def name(self) -> str:
        if self.request is not None:
            return self.request.name
        return "undecodable"


# ---- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """Forward the original bytes (the default; ``None`` means the same)."""


@dataclass(frozen=True)
class Drop:
    """Do not forward this frame. A dropped request gets no reply and leaves no pairing slot."""


@dataclass(frozen=True)
class Replace:
    """Forward ``raw`` (a frame body; the relay adds the 4-byte length) instead of the original."""

    raw: bytes


@dataclass(frozen=True)
class Duplicate:
    """Forward the frame twice. A duplicated request expects two replies."""


@dataclass(frozen=True)
class Refuse:
    """Answer as hsmd answers a bad client request: ``hsmstatus_client_bad_request`` on the status
    socket toward the node and the client connection closed both ways. On the master the proxy
    does not refuse (hsmd would exit); it forwards."""

    description: str


@dataclass(frozen=True)
class Disconnect:
    """Close this connection both ways."""


@dataclass(frozen=True)
class Hold:
    """Forward only once ``release.wait()`` returns (a ``trio.Event`` or anything with an async
    ``wait()``)."""

    release: Any = field(compare=False)


Verdict = Forward | Drop | Replace | Duplicate | Refuse | Disconnect | Hold
FORWARD = Forward()


class Hook(Protocol):  # documentation only: every method is optional
    async def on_request(self, ex: Exchange, point: str) -> Verdict | None: ...
    async def on_reply(self, ex: Exchange, point: str) -> Verdict | None: ...
    async def on_connection(self, conn: ConnContext, event: str) -> None: ...
    async def on_status(self, conn: ConnContext, raw: bytes, msg: Any) -> None: ...
    async def on_signer_exit(self, status: int) -> None: ...
    async def on_raw(self, conn: ConnContext, direction: str, raw: bytes) -> None: ...


class HookChain:
    """Calls a list of hooks in order. Looks each method up once, so hooks that do not implement
    a method cost nothing on the hot path."""

    _METHODS = ("on_request", "on_reply", "on_connection", "on_status", "on_signer_exit", "on_raw")

    def __init__(self, hooks: list | tuple = ()):
        self.hooks = tuple(hooks)
        self._bound = {
            name: tuple(getattr(h, name) for h in self.hooks if callable(getattr(h, name, None)))
            for name in self._METHODS
        }

    @property
    def watches_requests(self) -> bool:
        return bool(self._bound["on_request"])

    @property
    def watches_replies(self) -> bool:
        return bool(self._bound["on_reply"])

    def __bool__(self) -> bool:
        return bool(self.hooks)

    async def _decide(self, methods, ex: Exchange, point: str) -> Verdict:
        decided: Verdict = FORWARD
        ex.verdict = decided
        for method in methods:
            verdict = await method(ex, point)
            if decided is FORWARD and verdict is not None and not isinstance(verdict, Forward):
                if not isinstance(verdict, (Drop, Replace, Duplicate, Refuse, Disconnect, Hold)):
                    raise TypeError(f"hook {method!r} returned {verdict!r}, which is not a Verdict")
                decided = verdict
                ex.verdict = decided
        return decided

    async def request(self, ex: Exchange, point: str) -> Verdict:
        methods = self._bound["on_request"]
        if not methods:
            return FORWARD
        if point == REQUEST_BEFORE:
            return await self._decide(methods, ex, point)
        for method in methods:
            await method(ex, point)
        return FORWARD

    async def reply(self, ex: Exchange, point: str) -> Verdict:
        methods = self._bound["on_reply"]
        if not methods:
            return FORWARD
        if point == REPLY_BEFORE:
            return await self._decide(methods, ex, point)
        for method in methods:
            await method(ex, point)
        return FORWARD

    async def connection(self, conn: ConnContext, event: str) -> None:
        for method in self._bound["on_connection"]:
            await method(conn, event)

    async def status(self, conn: ConnContext, raw: bytes, msg: Any) -> None:
        for method in self._bound["on_status"]:
            await method(conn, raw, msg)

    async def signer_exit(self, status: int) -> None:
        for method in self._bound["on_signer_exit"]:
            await method(status)

    async def start(self, nursery) -> None:
        for hook in self.hooks:
            start = getattr(hook, "start", None)
            if callable(start):
                await start(nursery)

    async def raw(self, conn: ConnContext, direction: str, raw: bytes) -> None:
        for method in self._bound["on_raw"]:
            await method(conn, direction, raw)
