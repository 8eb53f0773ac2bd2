"""The trio shell shared by wrapper mode and socket mode: sockets in, relay core, hooks, sockets out.

One task per direction per connection, every one running the same loop (``_relay``): read, cut
into segments, run the hooks, carry out the relay core's plan, read again. Nothing is queued
between the read and the write, so a slow reader slows the writer on the other side
(backpressure). Memory per direction stays bounded by one read plus one frame of at most the
core's whole-frame limit (a longer frame is decided on by that much of it, and the rest goes on
in pieces as it arrives), and per connection by
at most ``max_unanswered`` requests waiting for the signer: past that, the node's next request
waits until the signer answers one (the core decides; the shell stops reading).

The shell knows nothing about what verdicts mean: the core (``proxy.core.relay``) turns them
into actions, and the shell carries those out. It catches socket errors around socket calls
only; a hook's failure is the ``HookChain``'s to handle, and never closes a connection.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from itertools import count
from typing import Any, Awaitable, Callable

import trio

from wire.framing import FdCarrier, Frame, FramePiece, FrameReader, Unframed

from proxy.core.hooks import (
    CONN_CLOSED,
    CONN_FRAMING_LOST,
    CONN_OPENED,
    CONN_REPLACED,
    CONN_REQUESTS_PAUSED,
    FORWARD,
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    ConnContext,
    HookChain,
)
from proxy.core.relay import (
    DEFAULT_LIMITS,
    FORWARD_AS_RECEIVED,
    REPLY,
    REQUEST,
    CloseConnection,
    ConnectionRelay,
    Limits,
    PassClient,
    Plan,
    Send,
    SendReceived,
    StatusMessage,
    WaitRelease,
    WriteStatus,
    client_context,
)
from proxy.trio.fdpass import SocketEnd, close_fds

log = logging.getLogger("hsmproxy.relay")

_now = time.monotonic_ns


class _SocketFailed(Exception):
    """A socket call of this direction failed (a reset, a peer gone): raised only around socket
    calls, so nothing else (a hook, say) can end a direction this way. A failed write ends only
    its own direction: the other one may still carry what the peer wrote before it went."""


class _ReadFailed(_SocketFailed):
    """The source of this direction reset: it is the other direction's destination too, so the
    whole connection goes, abruptly, as a reset would."""


class StatusWriter:
    """The node's end of the status socket (fd 0). The status relay and refusals both write whole
    frames to it, so writes are serialised. Socket mode has no status socket: writes go nowhere."""

    def __init__(self, end: SocketEnd | None):
        self.end = end
        self.lock = trio.Lock()

    async def send(self, data: bytes, fds=()) -> None:
        if self.end is None:
            return
        async with self.lock:
            await self.end.send(data, fds)

    async def send_piece(self, piece: FramePiece) -> None:
        """A piece of a status frame too long to hold whole: no refusal may land inside that frame,
        so the lock is held from its first piece to its last (or ``release_piece``)."""
        if self.end is None:
            return
        if piece.start:
            await self.lock.acquire()
        await self.end.send(piece.raw, piece.fds)
        if piece.end:
            self.lock.release()

    def release_piece(self) -> None:
        """The relay of a long status frame stopped before its last piece: let refusals through."""
        if self.lock.statistics().owner is trio.lowlevel.current_task():
            self.lock.release()

    def shutdown_write(self) -> None:
        if self.end is not None:
            self.end.shutdown_write()


class RelayedConnection:
    """One relayed connection: the node's socket, the signer's socket, and the relay core."""

    def __init__(self, ctx: ConnContext, node: SocketEnd, signer: SocketEnd, *, decode: bool,
                 limits: Limits = DEFAULT_LIMITS):
        self.ctx = ctx
        self.node = node
        self.signer = signer
        self.core = ConnectionRelay(ctx, decode=decode, limits=limits)
        self.answered: trio.Event | None = None  # set at the next answer while the node's requests wait
        self.cancel_scope = trio.CancelScope()
        self.signer_done = trio.Event()  # the signer -> node direction has ended
        self.children: trio.Nursery | None = None  # where client connections passed on it run

    def close(self) -> None:
        """Close both ways, now (a CloseConnection action, or a side that is gone)."""
        self.cancel_scope.cancel()

    def answer_arrived(self) -> None:
        """A reply took a pairing slot, or none will come any more: waiting requests may go on."""
        if self.answered is not None:
            self.answered.set()


@dataclass(frozen=True, slots=True)
class _Direction:
    """One direction of one connection, as the shared read loop needs it."""

    name: str  # REQUEST (node -> signer) or REPLY (signer -> node)
    source: SocketEnd
    destination: Any  # SocketEnd, or the StatusWriter for the status socket
    reader: FrameReader
    arrived: Callable  # frame -> what the hooks see (Exchange or StatusMessage), from the core
    apply: Callable  # (seen, frame, verdict) -> Plan, from the core
    hooks: Callable[[Any, str], Awaitable] | None = None  # (seen, point) -> verdict
    before: str | None = None  # the point before forwarding, when some hook watches it
    after: str | None = None  # the point after forwarding, when some hook watches it
    stamps: tuple[str, str] | None = None  # the Exchange's received / forwarded time fields
    socket_error_closes: bool = True  # False: a socket error ends only this direction


class RelayShell:
    """Relays connections through the hooks. ``status`` is where refusals write
    ``hsmstatus_client_bad_request`` (wrapper mode: the node's status socket; socket mode: none)."""

    def __init__(self, hooks: HookChain | list = (), *, status: StatusWriter | None = None, decode: bool = True,
                 limits: Limits = DEFAULT_LIMITS):
        self.hooks = hooks if isinstance(hooks, HookChain) else HookChain(hooks)
        self.status = status or StatusWriter(None)
        self.decode = decode
        self.limits = limits
        self._ids = count()
        self.connections: dict[int, RelayedConnection] = {}
        self.clients_by_dbid: dict[int, ConnContext] = {}

    def new_conn_id(self) -> int:
        return next(self._ids)

    # ---- connections --------------------------------------------------------------------------

    async def run_connection(self, node: SocketEnd, signer: SocketEnd, ctx: ConnContext) -> None:
        """Relay one request connection (master, client or socket) until both directions end
        or it is closed; then close both sockets. Client connections passed inside it are
        relayed in a nursery of their own, so they outlive their parent like real fds do."""
        conn = RelayedConnection(ctx, node, signer, decode=self.decode, limits=self.limits)
        core = conn.core
        requests = _Direction(REQUEST, node, signer, core.requests, core.request_frame, core.apply_to_request,
                              self.hooks.at, *self._watched(REQUEST_BEFORE, REQUEST_AFTER),
                              ("request_received_ns", "request_forwarded_ns"))
        replies = _Direction(REPLY, signer, node, core.replies, core.reply_frame, core.apply_to_reply,
                             self.hooks.at, *self._watched(REPLY_BEFORE, REPLY_AFTER),
                             ("reply_received_ns", "reply_forwarded_ns"))
        await self._run(conn, requests, replies)

    def _watched(self, *points: str) -> list[str | None]:
        return [point if self.hooks.watches(point) else None for point in points]

    async def run_status(self, node: SocketEnd, signer: SocketEnd, ctx: ConnContext) -> None:
        """Relay fd 0. Signer -> node frames go to the hooks' ``on_status``; the other direction
        carries nothing in hsmd, and is relayed raw in case a signer uses it."""
        self.status.end = node
        conn = RelayedConnection(ctx, node, signer, decode=self.decode, limits=self.limits)
        core = conn.core
        # Nobody reads node -> signer on fd 0: when it fails, the status messages still flow.
        requests = _Direction(REQUEST, node, signer, core.requests, None, None, socket_error_closes=False)
        replies = _Direction(REPLY, signer, self.status, core.replies, core.status_frame, core.apply_to_status,
                             self._status_seen, before="status")
        await self._run(conn, requests, replies)

    async def _run(self, conn: RelayedConnection, *directions: _Direction) -> None:
        self.connections[conn.ctx.conn_id] = conn
        await self.hooks.connection(conn.ctx, CONN_OPENED)
        async with trio.open_nursery() as children:
            conn.children = children
            try:
                with conn.cancel_scope:
                    async with trio.open_nursery() as both:
                        for direction in directions:
                            both.start_soon(self._relay, conn, direction)
            finally:
                await self._finish(conn)

    async def _finish(self, conn: RelayedConnection) -> None:
        """Both sockets closed, the connection forgotten, and the hooks told (even while the
        relay is being cancelled)."""
        conn.node.close()
        conn.signer.close()
        conn.signer_done.set()
        ctx = conn.ctx
        self.connections.pop(ctx.conn_id, None)
        if ctx.dbid is not None and self.clients_by_dbid.get(ctx.dbid) is ctx:
            del self.clients_by_dbid[ctx.dbid]
        with trio.CancelScope(shield=True):
            await self.hooks.connection(ctx, CONN_CLOSED)

    # ---- the one read loop --------------------------------------------------------------------

    async def _relay(self, conn: RelayedConnection, direction: _Direction) -> None:
        reader = direction.reader
        try:
            while True:
                try:
                    data, fds = await direction.source.receive()
                except OSError as exc:
                    raise _ReadFailed from exc
                for seg in reader.feed(data, fds) if data else reader.flush():
                    kind = type(seg)
                    if kind is Frame or (kind is FramePiece and seg.start and direction.destination is not self.status):
                        # a long frame's first piece holds what is decided on: a frame to the core
                        if direction.name == REQUEST and conn.core.requests_blocked:
                            await self._wait_for_answers(conn)
                        await self._frame(conn, direction, seg)
                    elif kind is FramePiece:
                        await self._piece(conn, direction, seg)
                    elif kind is Unframed:
                        await self.hooks.raw(conn.ctx, direction.name, seg.raw)
                        await self._carry_out(conn, direction, seg, FORWARD_AS_RECEIVED)
                    elif kind is FdCarrier:
                        await self.hooks.raw(conn.ctx, direction.name, seg.raw)
                        await self._carry_out(conn, direction, seg, conn.core.carrier_arrived(seg))
                    else:  # FramingLost
                        log.warning("%s", conn.core.framing_lost(direction.name, seg))
                        await self.hooks.connection(conn.ctx, CONN_FRAMING_LOST)
                if not data:
                    direction.destination.shutdown_write()
                    return
        except _ReadFailed:
            if direction.socket_error_closes:
                conn.close()  # a side reset or vanished: close both abruptly, as a reset would
        except _SocketFailed:
            # The destination is gone: stop reading what nobody will take (on a Unix socket the
            # source's writes then fail, as they would to the gone peer), and leave the other
            # direction be: it may still carry what that peer wrote before it went.
            direction.source.shutdown_read()
        finally:
            if direction.name == REPLY:
                conn.core.replies_ended()
                conn.answer_arrived()
                conn.signer_done.set()
                if direction.destination is self.status:
                    self.status.release_piece()

    async def _wait_for_answers(self, conn: RelayedConnection) -> None:
        """Too many requests wait for the signer (the core says): read nothing more from the node
        until it answers; the node's writes then wait in the kernel, nothing is dropped."""
        message = conn.core.requests_paused()
        if message is not None:
            log.warning("%s", message)
        await self.hooks.connection(conn.ctx, CONN_REQUESTS_PAUSED)
        try:
            while conn.core.requests_blocked:
                conn.answered = trio.Event()
                await conn.answered.wait()
        finally:
            conn.answered = None

    async def _piece(self, conn: RelayedConnection, direction: _Direction, seg: FramePiece) -> None:
        """A piece of a long frame after its first, or of a long status frame (hooks hear of
        that once: nobody decides on status frames)."""
        if direction.destination is not self.status:
            await self._carry_out(conn, direction, seg, conn.core.piece(direction.name))
            return
        unparsed = conn.core.status_piece(seg)
        if unparsed is not None:
            await self.hooks.unparsed(unparsed)
        try:
            await self.status.send_piece(seg)
        except OSError as exc:
            raise _SocketFailed from exc
        finally:
            close_fds(seg.fds)

    async def _frame(self, conn: RelayedConnection, direction: _Direction, seg: Frame) -> None:
        seen = direction.arrived(seg)
        if direction.name == REPLY:
            conn.answer_arrived()
        before, after, stamps = direction.before, direction.after, direction.stamps
        if stamps is not None and (before is not None or after is not None):
            setattr(seen, stamps[0], _now())
        if before is not None:
            plan = direction.apply(seen, seg, await direction.hooks(seen, before))
        else:
            plan = direction.apply(seen, seg, FORWARD)
        if plan is FORWARD_AS_RECEIVED and not seg.fds:  # the common case, without the general machinery
            try:
                await direction.destination.send(seg.raw)
            except OSError as exc:
                raise _SocketFailed from exc
        else:
            if plan.note is not None:
                log.warning("%s", plan.note)
            await self._carry_out(conn, direction, seg, plan)
        if after is not None and plan.forwarded:
            setattr(seen, stamps[1], _now())
            await direction.hooks(seen, after)

    async def _carry_out(self, conn: RelayedConnection, direction: _Direction, seg, plan: Plan) -> None:
        """Carry out the core's actions for one segment; the segment's fds are ours to close
        after (a passed fd was duplicated into the kernel by sendmsg)."""
        dst = direction.destination
        try:
            for action in plan.actions:
                kind = type(action)
                if kind is SendReceived:
                    try:
                        await dst.send(seg.raw, seg.fds)
                    except OSError as exc:
                        raise _SocketFailed from exc
                elif kind is Send:
                    try:
                        await dst.send(action.data, action.fds)
                    except OSError as exc:
                        raise _SocketFailed from exc
                elif kind is WriteStatus:
                    try:
                        await self.status.send(action.data)
                    except OSError as exc:
                        raise _SocketFailed from exc
                elif kind is WaitRelease:
                    await action.release.wait()
                elif kind is CloseConnection:
                    conn.close()
                    await trio.lowlevel.checkpoint()  # nothing more happens on this connection
                elif kind is PassClient:
                    await self._pass_client(conn, dst, action)
                else:
                    raise AssertionError(f"unknown action {action!r}")
        finally:
            if seg.fds:
                close_fds(seg.fds)
            carrier = getattr(seg, "carrier", None)
            if carrier is not None and carrier.fds:
                close_fds(carrier.fds)

    async def _status_seen(self, message: StatusMessage, point: str):
        """Hooks see a status message (signer -> node); none decides on it."""
        await self.hooks.status(message.conn, message.raw, message.msg)
        return FORWARD

    # ---- client connections -------------------------------------------------------------------

    async def _pass_client(self, conn: RelayedConnection, node: SocketEnd, action: PassClient) -> None:
        """Hand the node one end of a new socketpair in place of the fd the signer passed, and
        relay between the other end and the signer's socket, in the context of the request."""
        carrier, frame = action.carrier, action.frame
        try:
            signer_sock = _adopt_signer_socket(carrier.fds)
            if signer_sock is None:  # no fd, or not a stream socket: passed on as it came
                if frame is not None:
                    await node.send_pair(frame.raw, frame.fds, carrier.raw, carrier.fds)
                else:
                    await node.send(carrier.raw, carrier.fds)
                return
            try:
                ours, theirs = socket.socketpair()
            except BaseException:
                signer_sock.close()
                raise
            try:
                fds = [theirs.fileno(), *carrier.fds[1:]]
                if frame is not None:
                    await node.send_pair(frame.raw, frame.fds, carrier.raw, fds)
                else:
                    await node.send(carrier.raw, fds)
            except BaseException:
                ours.close()
                signer_sock.close()
                raise
            finally:
                theirs.close()
        except OSError as exc:
            raise _SocketFailed from exc
        ctx = client_context(self.new_conn_id(), conn.ctx, action.request)
        old = self.clients_by_dbid.get(ctx.dbid) if ctx.dbid else None
        if ctx.dbid is not None:
            self.clients_by_dbid[ctx.dbid] = ctx
        conn.children.start_soon(self.run_connection, SocketEnd.from_stdlib(ours), SocketEnd.from_stdlib(signer_sock),
                                 ctx)
        if old is not None:
            # hsmd closes the old client itself; the relay carries that EOF through.
            await self.hooks.connection(old, CONN_REPLACED)

    # ---- draining -----------------------------------------------------------------------------

    async def wait_signer_side_closed(self) -> None:
        """Until every signer -> node direction has ended (after the signer exited: what it
        wrote has been forwarded)."""
        while True:
            pending = [conn for conn in self.connections.values() if not conn.signer_done.is_set()]
            if not pending:
                return
            await pending[0].signer_done.wait()
            await trio.sleep(0)  # let newly passed clients register


def _adopt_signer_socket(fds) -> socket.socket | None:
    """A socket of our own on the signer's end of a new client connection (the first fd), if it
    is a stream socket. A duplicate: the carrier's fds are closed with it, as every segment's are."""
    if not fds:
        return None
    dup = os.dup(fds[0])
    try:
        sock = socket.socket(fileno=dup)
    except OSError:  # not a socket
        os.close(dup)
        return None
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock
