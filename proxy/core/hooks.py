"""The plug-in interface of the relay: what a hook sees and what it may decide.

The proxy shells (wrapper mode, socket mode) call hooks at fixed points; the shadow state / WAL,
the fault injector, metrics and the trace are hooks. Hooks never see sockets.

Points, in order, for every request and every reply::

    request.before_forward -> request.after_forward -> reply.before_forward -> reply.after_forward

A ``Hook`` is any object with some of these optional async methods::

    async def on_request(self, ex: Exchange, point: str) -> Verdict | None
    async def on_reply(self, ex: Exchange, point: str) -> Verdict | None
    async def on_connection(self, conn: ConnContext, event: str) -> None
        # event: "opened" | "closed" | "replaced" | "framing_lost" | "requests_paused"
    async def on_status(self, conn: ConnContext, raw: bytes, msg: wire.Message | None) -> None
    async def on_signer_exit(self, status: int) -> None
    async def on_raw(self, conn: ConnContext, direction: str, raw: bytes) -> None
        # bytes that are not frames: fd carriers, and everything after framing was lost
    async def on_unparsed(self, frame: UnparsedFrame) -> None
        # a status frame too long to parse, forwarded in pieces as it arrives: its type and length
    async def on_hook_failed(self, failure: HookFailure) -> None
        # another hook raised (for metrics: the chain has already logged and handled it)
    async def start(self, nursery: trio.Nursery) -> None
        # socket mode only: called once before the first connection is accepted (e.g. to start
        # a server next to the relay). Wrapper mode never calls it: there, nothing may stop
        # hsmd from starting, so such hooks start themselves lazily and must not raise.

A hook that acts at some points only says which with ``points`` (e.g. ``points =
(REQUEST_BEFORE, REPLY_BEFORE)``); its ``on_request`` / ``on_reply`` is then called only there,
and a point no hook watches costs nothing. Without ``points``, a hook sees all four.

Hooks run in registration order (shadow/WAL first, then faults, then metrics/trace) and the relay
awaits each one before the bytes move on, so a WAL hook can make its record durable first. At a
``*.before_forward`` point the first hook that returns a verdict other than ``Forward`` decides;
later hooks still run (they see ``ex.verdict``) but cannot overrule it, except by failing (see
below: then nothing is forwarded). Return values at
``*.after_forward`` points are ignored. What a verdict does is the relay core's business
(``proxy.core.relay``); the shells only carry out what it says.

Observers and deciders. A hook class that only watches (metrics, trace) says so with
``observer = True``. Its failures must never reach the node: an exception from an observer is
logged once with the hook's name, reported to ``on_hook_failed`` (a metric), and the observer is
switched off; the relay goes on. Every other hook decides (shadow/WAL, faults, control), and its
failures fail closed: an exception at a ``*.before_forward`` point becomes a ``FailClosed``
verdict (the message is not forwarded: a request whose intent could not be recorded never
reaches the signer), and one anywhere else is logged and reported, and the relay goes on. A
decider is never switched off: a WAL that failed once keeps refusing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from wire.conversation import (  # noqa: F401 - the contract's vocabulary, re-exported for hooks
    BEFORE_FORWARD_POINTS,
    POINTS,
    REPLY_AFTER,
    REPLY_BEFORE,
    REPLY_POINTS,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    REQUEST_POINTS,
    ROLE_CLIENT,
    ROLE_MASTER,
    ROLE_SOCKET,
    ROLE_STATUS,
    ROLES,
)

log = logging.getLogger("hsmproxy.hooks")

CONN_OPENED = "opened"
CONN_CLOSED = "closed"
CONN_REPLACED = "replaced"
CONN_FRAMING_LOST = "framing_lost"
CONN_REQUESTS_PAUSED = "requests_paused"  # too many unanswered requests: the node's next ones wait


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
    # A long frame (body longer than the relay's whole-frame limit) is seen by its first
    # whole-frame-limit bytes: ``request_raw`` / ``reply_raw`` hold those, ``request`` / ``reply``
    # is decoded from them (the fields must fit; the rest of the prefix is ``trailing``), and
    # these count the body bytes after them: trailing bytes too, relayed as they arrive, never held.
    request_tail: int = 0
    reply_tail: int = 0

    @property
    def name(self) -> str:
        if self.request is not None:
            return self.request.name
        return "undecodable"


@dataclass(frozen=True)
class UnparsedFrame:
    """A status-socket frame longer than the relay's whole-frame limit: forwarded in pieces as its
    bytes arrived, never parsed or held whole, so hooks hear of its type and length only. (Long
    requests and replies are exchanges: see ``Exchange.request_tail``.)"""

    conn: ConnContext
    direction: str  # "request", "reply" or "status"
    seq: int | None  # as Exchange.seq (-1: a reply nobody asked for); None on the status socket
    type: int
    length: int  # body bytes


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


@dataclass(frozen=True)
class FailClosed:
    """Never forward this message: a deciding hook could not do its part (e.g. the WAL could not
    make a request's intent durable). A request is refused as hsmd refuses one, except on the
    master, where hsmd would exit: there the connection is closed, so lightningd sees its signer
    go. A reply is not forwarded and its connection is closed. The chain returns it when a
    decider raises at a ``*.before_forward`` point; a hook may return it too."""

    description: str


Verdict = Forward | Drop | Replace | Duplicate | Refuse | Disconnect | Hold | FailClosed
VERDICT_TYPES = (Forward, Drop, Replace, Duplicate, Refuse, Disconnect, Hold, FailClosed)
FORWARD = Forward()
_BEFORE_FORWARD = frozenset(BEFORE_FORWARD_POINTS)


@dataclass(frozen=True)
class HookFailure:
    """A hook raised. ``where`` is a point or an event (``on_connection``, ...); ``switched_off``
    for an observer; ``failed_closed`` when the message it was deciding on was not forwarded."""

    hook: str
    where: str
    error: str
    switched_off: bool = False
    failed_closed: bool = False


class Hook(Protocol):  # documentation only: every method and attribute is optional
    observer: bool  # True: it only watches, and is switched off when it fails (default False)
    points: tuple[str, ...]  # the points its on_request / on_reply want (default: all of POINTS)

    async def on_request(self, ex: Exchange, point: str) -> Verdict | None: ...
    async def on_reply(self, ex: Exchange, point: str) -> Verdict | None: ...
    async def on_connection(self, conn: ConnContext, event: str) -> None: ...
    async def on_status(self, conn: ConnContext, raw: bytes, msg: Any) -> None: ...
    async def on_signer_exit(self, status: int) -> None: ...
    async def on_raw(self, conn: ConnContext, direction: str, raw: bytes) -> None: ...
    async def on_unparsed(self, frame: UnparsedFrame) -> None: ...
    async def on_hook_failed(self, failure: HookFailure) -> None: ...


def hook_name(hook) -> str:
    return type(hook).__name__


def is_observer(hook) -> bool:
    return getattr(hook, "observer", False) is True


class HookChain:
    """Calls a list of hooks in order. Looks each method up once, so hooks that do not implement
    a method cost nothing on the hot path; a switched-off observer is dropped from those lists."""

    _METHODS = ("on_request", "on_reply", "on_connection", "on_status", "on_signer_exit", "on_raw", "on_unparsed",
                "on_hook_failed")

    def __init__(self, hooks: list | tuple = ()):
        self.hooks = tuple(hooks)
        self.switched_off: list = []  # observers that failed, in order
        self._deciders_failed: set[str] = set()
        self._bind()

    def _bind(self) -> None:
        live = [h for h in self.hooks if not any(h is off for off in self.switched_off)]
        self._bound = {
            name: tuple((getattr(h, name), h) for h in live if callable(getattr(h, name, None)))
            for name in self._METHODS
        }
        self._at = {  # point -> the (method, hook) pairs that watch it
            point: tuple(pair for pair in self._bound[name] if point in getattr(pair[1], "points", POINTS))
            for name, points in (("on_request", REQUEST_POINTS), ("on_reply", REPLY_POINTS))
            for point in points
        }

    def watches(self, point: str) -> bool:
        """Whether some hook wants to see ``point`` (the shells skip the others)."""
        return bool(self._at[point])

    def __bool__(self) -> bool:
        return bool(self.hooks)

    # ---- the points ---------------------------------------------------------------------------

    async def at(self, ex: Exchange, point: str) -> Verdict:
        """Run the hooks that watch ``point`` on ``ex``. At a ``*.before_forward`` point: the
        verdict (the first decisive one; ``FailClosed`` if a decider raised); elsewhere ``FORWARD``.
        One loop for every point of every frame, so it is written out flat."""
        methods = self._at[point]
        if point not in _BEFORE_FORWARD:
            for method, hook in methods:
                try:
                    await method(ex, point)
                except Exception as exc:  # noqa: BLE001 - a hook's failure is handled here, see the module doc
                    await self._failed(hook, point, exc)
            return FORWARD
        decided: Verdict = FORWARD
        ex.verdict = decided
        for method, hook in methods:
            try:
                verdict = await method(ex, point)
            except Exception as exc:  # noqa: BLE001 - a hook's failure is handled here, see the module doc
                if await self._failed(hook, point, exc, deciding=True) and type(decided) is not FailClosed:
                    decided = FailClosed(f"hsmproxy could not check this message ({hook_name(hook)} failed: {exc})")
                    ex.verdict = decided
                continue
            if decided is FORWARD and verdict is not None and type(verdict) is not Forward:
                if not isinstance(verdict, VERDICT_TYPES):
                    raise TypeError(f"hook {method!r} returned {verdict!r}, which is not a Verdict")
                decided = verdict
                ex.verdict = decided
        return decided

    request = at  # chain.request(ex, REQUEST_BEFORE) reads better where the direction is known
    reply = at

    async def _notify(self, methods, where: str, *args) -> None:
        for method, hook in methods:
            try:
                await method(*args)
            except Exception as exc:  # noqa: BLE001 - a hook's failure is handled here, see the module doc
                await self._failed(hook, where, exc)

    # ---- events -------------------------------------------------------------------------------

    async def connection(self, conn: ConnContext, event: str) -> None:
        await self._notify(self._bound["on_connection"], "on_connection", conn, event)

    async def status(self, conn: ConnContext, raw: bytes, msg: Any) -> None:
        await self._notify(self._bound["on_status"], "on_status", conn, raw, msg)

    async def signer_exit(self, status: int) -> None:
        await self._notify(self._bound["on_signer_exit"], "on_signer_exit", status)

    async def raw(self, conn: ConnContext, direction: str, raw: bytes) -> None:
        await self._notify(self._bound["on_raw"], "on_raw", conn, direction, raw)

    async def unparsed(self, frame: UnparsedFrame) -> None:
        await self._notify(self._bound["on_unparsed"], "on_unparsed", frame)

    async def start(self, nursery) -> None:
        for hook in self.hooks:
            start = getattr(hook, "start", None)
            if callable(start):
                await start(nursery)

    # ---- failures -----------------------------------------------------------------------------

    async def _failed(self, hook, where: str, exc: Exception, *, deciding: bool = False) -> bool:
        """Handle a hook's exception; True when the message it was deciding on must fail closed."""
        name = hook_name(hook)
        if is_observer(hook):
            if any(hook is off for off in self.switched_off):
                return False  # a call that was already under way when it was switched off
            self.switched_off.append(hook)
            self._bind()
            log.error("hook %s failed at %s and is switched off; the relay goes on without it: %s",
                      name, where, exc, exc_info=exc)
            await self._report(HookFailure(name, where, repr(exc), switched_off=True))
            return False
        first = name not in self._deciders_failed  # the traceback once; a broken WAL fails every time
        self._deciders_failed.add(name)
        outcome = "; the message is not forwarded (fail closed)" if deciding else ""
        log.error("hook %s failed at %s: %s%s", name, where, exc, outcome, exc_info=exc if first else None)
        await self._report(HookFailure(name, where, repr(exc), failed_closed=deciding))
        return deciding

    async def _report(self, failure: HookFailure) -> None:
        for method, hook in self._bound["on_hook_failed"]:
            try:
                await method(failure)
            except Exception as exc:  # noqa: BLE001 - not reported again: that could go round forever
                if is_observer(hook) and not any(hook is off for off in self.switched_off):
                    self.switched_off.append(hook)
                    self._bind()
                log.error("hook %s failed while being told of a failure: %s", hook_name(hook), exc, exc_info=exc)
