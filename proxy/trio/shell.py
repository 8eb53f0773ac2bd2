"""The trio shell shared by wrapper mode and socket mode: sockets in, relay core, hooks, sockets out.

One task per direction per connection: read, cut into segments, run the hooks, write, read again.
Nothing is queued between the read and the write, so a slow reader slows the writer on the other
side (backpressure) and memory stays bounded by one read per direction.

The shell knows nothing about what the hooks do; it applies their verdicts.
"""

from __future__ import annotations

import logging
import socket
import time
from itertools import count

import trio

import wire

from proxy.core import hooks as H
from proxy.trio.fdpass import Endpoint, close_fds
from proxy.core.relay import REPLY, REQUEST, Carrier, ConnectionRelay, Frame, FramingLost, client_context

log = logging.getLogger("hsmproxy.relay")

_now = time.monotonic_ns


class StatusOut:
    """The node's end of the status socket (fd 0). The status relay and ``Refuse`` verdicts both
    write whole frames to it, so writes are serialised."""

    def __init__(self, endpoint: Endpoint | None):
        self.endpoint = endpoint
        self.lock = trio.Lock()

    async def send(self, data: bytes, fds=()) -> None:
        if self.endpoint is None:
            return
        async with self.lock:
            await self.endpoint.send(data, fds)


class Link:
    """One relayed connection: the node's socket, the signer's socket, and the core."""

    def __init__(self, ctx: H.ConnContext, node: Endpoint, signer: Endpoint, *, decode: bool):
        self.ctx = ctx
        self.node = node
        self.signer = signer
        self.core = ConnectionRelay(ctx, decode=decode)
        self.cancel_scope = trio.CancelScope()
        self.signer_done = trio.Event()  # the signer -> node direction has ended

    def disconnect(self) -> None:
        """Close both ways, now (Refuse / Disconnect verdicts, or a peer that is gone)."""
        self.cancel_scope.cancel()


class RelayShell:
    """Relays connections through the hooks. ``status_out`` is where ``Refuse`` sends
    ``hsmstatus_client_bad_request`` (wrapper mode); socket mode has none."""

    def __init__(self, hooks: H.HookChain | list = (), *, status_out: StatusOut | None = None, decode: bool = True):
        self.hooks = hooks if isinstance(hooks, H.HookChain) else H.HookChain(hooks)
        self.status_out = status_out or StatusOut(None)
        self.decode = decode
        self._ids = count()
        self.links: dict[int, Link] = {}
        self.clients_by_dbid: dict[int, H.ConnContext] = {}
        self._nursery: trio.Nursery | None = None

    def new_conn_id(self) -> int:
        return next(self._ids)

    # ---- connections --------------------------------------------------------------------------

    async def run_connection(self, node: Endpoint, signer: Endpoint, ctx: H.ConnContext) -> None:
        """Relay one request connection (master, client or socket) until both directions end
        or it is disconnected; then close both sockets. Client connections passed inside it
        are relayed in a nursery of their own, so they outlive their parent like real fds do."""
        link = Link(ctx, node, signer, decode=self.decode)
        self.links[ctx.conn_id] = link
        await self.hooks.connection(ctx, H.CONN_OPENED)
        async with trio.open_nursery() as children:
            try:
                with link.cancel_scope:
                    async with trio.open_nursery() as directions:
                        directions.start_soon(self._requests, link)
                        directions.start_soon(self._replies, link, children)
            finally:
                await self._finish(link)

    async def run_status(self, node: Endpoint, signer: Endpoint, ctx: H.ConnContext) -> None:
        """Relay fd 0. Signer -> node frames go to the hooks' ``on_status``; the other direction
        carries nothing in hsmd, and is relayed raw in case a signer uses it."""
        self.status_out.endpoint = node
        link = Link(ctx, node, signer, decode=self.decode)
        self.links[ctx.conn_id] = link
        await self.hooks.connection(ctx, H.CONN_OPENED)
        try:
            with link.cancel_scope:
                async with trio.open_nursery() as directions:
                    directions.start_soon(self._raw_pump, link, node, signer, REQUEST)
                    directions.start_soon(self._status_from_signer, link)
        finally:
            await self._finish(link)

    async def _finish(self, link: Link) -> None:
        """Both sockets closed, the connection forgotten, and the hooks told (even while the
        relay is being cancelled)."""
        link.node.close()
        link.signer.close()
        link.signer_done.set()
        ctx = link.ctx
        self.links.pop(ctx.conn_id, None)
        if ctx.dbid is not None and self.clients_by_dbid.get(ctx.dbid) is ctx:
            del self.clients_by_dbid[ctx.dbid]
        with trio.CancelScope(shield=True):
            await self.hooks.connection(ctx, H.CONN_CLOSED)

    # ---- directions -----------------------------------------------------------------------------

    async def _requests(self, link: Link) -> None:
        core, splitter = link.core, link.core.requests
        try:
            while True:
                data, fds = await link.node.receive()
                if not data:
                    for seg in splitter.flush():
                        await self._forward_raw(link, link.signer, seg, REQUEST)
                    link.signer.shutdown_write()
                    return
                for seg in splitter.feed(data, fds):
                    if type(seg) is Frame:
                        await self._request_frame(link, core, seg)
                    elif type(seg) is FramingLost:
                        await self._framing_lost(link, seg, REQUEST)
                    else:
                        await self._forward_raw(link, link.signer, seg, REQUEST)
        except OSError:
            link.disconnect()  # the signer closed this connection: so does the node's side

    async def _replies(self, link: Link, children: trio.Nursery) -> None:
        core, splitter = link.core, link.core.replies
        try:
            while True:
                data, fds = await link.signer.receive()
                if not data:
                    for seg in splitter.flush():
                        await self._forward_raw(link, link.node, seg, REPLY)
                    link.node.shutdown_write()
                    return
                segments = splitter.feed(data, fds)
                carrier_sent = None
                for i, seg in enumerate(segments):
                    kind = type(seg)
                    if kind is Frame:
                        # A 109 frame and its carrier read together leave together (send_pair).
                        after = segments[i + 1] if i + 1 < len(segments) else None
                        carrier_sent = after if type(after) is Carrier else None
                        await self._reply_frame(link, core, seg, carrier_sent, children)
                    elif kind is Carrier:
                        if seg is not carrier_sent:
                            await self._carrier(link, seg, children)
                    elif kind is FramingLost:
                        await self._framing_lost(link, seg, REPLY)
                    else:
                        await self._forward_raw(link, link.node, seg, REPLY)
        except OSError:
            link.disconnect()  # a side reset or vanished: close both abruptly, as a reset would
        finally:
            link.signer_done.set()

    async def _status_from_signer(self, link: Link) -> None:
        splitter = link.core.replies
        try:
            while True:
                data, fds = await link.signer.receive()
                if not data:
                    for seg in splitter.flush():
                        await self._forward_raw(link, None, seg, REPLY)
                    link.node.shutdown_write()
                    return
                for seg in splitter.feed(data, fds):
                    if type(seg) is Frame:
                        await self.hooks.status(link.ctx, seg.body, link.core.parse(seg.body))
                        await self.status_out.send(seg.raw, seg.fds)
                        close_fds(seg.fds)
                    elif type(seg) is FramingLost:
                        await self._framing_lost(link, seg, REPLY)
                    else:
                        await self._forward_raw(link, None, seg, REPLY)
        except OSError:
            link.disconnect()  # a side reset or vanished: close both abruptly, as a reset would
        finally:
            link.signer_done.set()

    async def _raw_pump(self, link: Link, src: Endpoint, dst: Endpoint, direction: str) -> None:
        try:
            while True:
                data, fds = await src.receive()
                if not data:
                    dst.shutdown_write()
                    return
                await self.hooks.raw(link.ctx, direction, data)
                await dst.send(data, fds)
                close_fds(fds)
        except OSError:
            return  # nobody reads this direction any more; the other one carries on

    # ---- segments ---------------------------------------------------------------------------------

    async def _forward_raw(self, link: Link, dst: Endpoint | None, seg, direction: str) -> None:
        await self.hooks.raw(link.ctx, direction, seg.raw)
        if dst is None:
            await self.status_out.send(seg.raw, seg.fds)
        else:
            await dst.send(seg.raw, seg.fds)
        close_fds(seg.fds)

    async def _framing_lost(self, link: Link, seg: FramingLost, direction: str) -> None:
        link.core.stats.framing_lost += 1
        log.warning("%s %s: %s; relaying raw bytes from here on", link.ctx.describe(), direction, seg.reason)
        await self.hooks.connection(link.ctx, H.CONN_FRAMING_LOST)

    async def _request_frame(self, link: Link, core: ConnectionRelay, seg: Frame) -> None:
        ex = core.request_frame(seg)
        if not self.hooks.watches_requests:  # nobody looks: just forward
            await link.signer.send(seg.raw, seg.fds)
            close_fds(seg.fds)
            return
        ex.request_received_ns = _now()
        verdict = await self.hooks.request(ex, H.REQUEST_BEFORE)
        if type(verdict) is H.Forward:
            await link.signer.send(seg.raw, seg.fds)
        elif not await self._apply(link, core, ex, seg, verdict, link.signer, request=True):
            return
        close_fds(seg.fds)
        ex.request_forwarded_ns = _now()
        await self.hooks.request(ex, H.REQUEST_AFTER)

    async def _reply_frame(self, link: Link, core: ConnectionRelay, seg: Frame, carrier=None, children=None) -> None:
        """A reply frame; ``carrier``, when given, is the fd carrier that came right after it and
        is forwarded here too (back to back with the frame when the frame is forwarded as is)."""
        ex = core.reply_frame(seg)
        watching = self.hooks.watches_replies
        verdict = H.FORWARD
        if watching:
            ex.reply_received_ns = _now()
            verdict = await self.hooks.reply(ex, H.REPLY_BEFORE)
        if type(verdict) is H.Forward:
            if carrier is not None:
                await self._carrier(link, carrier, children, frame=seg)
            else:
                await link.node.send(seg.raw, seg.fds)
        else:
            forwarded = await self._apply(link, core, ex, seg, verdict, link.node, request=False)
            if carrier is not None:
                if link.cancel_scope.cancel_called:
                    close_fds(carrier.fds)  # the connection is gone: so is the fd it carried
                else:
                    await self._carrier(link, carrier, children)
            if not forwarded:
                return
        close_fds(seg.fds)
        if watching:
            ex.reply_forwarded_ns = _now()
            await self.hooks.reply(ex, H.REPLY_AFTER)

    async def _apply(self, link, core, ex, seg: Frame, verdict, dst: Endpoint, *, request: bool) -> bool:
        """Apply a verdict other than Forward; False when nothing was forwarded."""
        kind = type(verdict)
        if kind is H.Hold:
            await verdict.release.wait()
            await dst.send(seg.raw, seg.fds)
        elif kind is H.Replace:
            await dst.send(wire.frame(verdict.raw), seg.fds)
        elif kind is H.Duplicate:
            await dst.send(seg.raw, seg.fds)
            await dst.send(seg.raw)
            if request:
                core.expect_extra_reply(ex)
        elif kind is H.Drop:
            if request:
                core.forget(ex)
            close_fds(seg.fds)
            return False
        elif kind is H.Refuse and link.ctx.role == H.ROLE_MASTER:
            await dst.send(seg.raw, seg.fds)  # hsmd would exit; the proxy never refuses the master
        elif kind is H.Refuse:
            if request:
                core.forget(ex)
                await self._send_bad_request(link.ctx, verdict.description, ex.request_raw)
            close_fds(seg.fds)
            link.disconnect()
            return False
        elif kind is H.Disconnect:
            close_fds(seg.fds)
            link.disconnect()
            return False
        else:  # HookChain only lets verdicts through
            raise AssertionError(f"unhandled verdict {verdict!r}")
        return True

    async def _send_bad_request(self, ctx: H.ConnContext, description: str, request_raw: bytes) -> None:
        msg = wire.build(
            "hsmstatus_client_bad_request", id=ctx.peer_id or bytes(33), description=description, msg=request_raw
        )
        await self.status_out.send(wire.frame(wire.encode(msg)))

    async def _carrier(self, link: Link, seg: Carrier, children: trio.Nursery, frame: Frame | None = None) -> None:
        """The fd after a 109 reply: hand the node one end of a new socketpair instead, and relay
        between the other end and the signer's socket, with the context of the request.
        ``frame`` is the 109 frame when it has not been forwarded yet: it goes right before."""
        await self.hooks.raw(link.ctx, REPLY, seg.raw)
        adopted = self._adopt_signer_socket(seg.fds)
        if adopted is None:  # no fd, or not a stream socket: forwarded as it came
            if frame is not None:
                await link.node.send_pair(frame.raw, frame.fds, seg.raw, seg.fds)
            else:
                await link.node.send(seg.raw, seg.fds)
            close_fds(seg.fds)
            return
        signer_sock, extra = adopted
        ours, theirs = socket.socketpair()
        try:
            if frame is not None:
                await link.node.send_pair(frame.raw, frame.fds, seg.raw, [theirs.fileno(), *extra])
            else:
                await link.node.send(seg.raw, [theirs.fileno(), *extra])
        except BaseException:
            ours.close()
            signer_sock.close()
            raise
        finally:
            theirs.close()
            close_fds(extra)
        request = link.core.last_reply.request if link.core.last_reply is not None else None
        ctx = client_context(self.new_conn_id(), link.ctx, request)
        old = self.clients_by_dbid.get(ctx.dbid) if ctx.dbid else None
        if ctx.dbid is not None:
            self.clients_by_dbid[ctx.dbid] = ctx
        children.start_soon(self.run_connection, Endpoint.from_stdlib(ours), Endpoint.from_stdlib(signer_sock), ctx)
        if old is not None:
            # hsmd closes the old client itself; the relay carries that EOF through.
            await self.hooks.connection(old, H.CONN_REPLACED)

    @staticmethod
    def _adopt_signer_socket(fds: list[int]) -> tuple[socket.socket, list[int]] | None:
        """The signer's end of a new client connection (the first fd), if it is a stream socket."""
        if not fds:
            return None
        try:
            sock = socket.socket(fileno=fds[0])
        except OSError:  # not a socket
            return None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()  # the fd stays open, to be passed on untouched
            return None
        return sock, fds[1:]

    # ---- draining -----------------------------------------------------------------------------

    async def wait_signer_side_closed(self) -> None:
        """Until every signer -> node direction has ended (after the signer exited: what it
        wrote has been forwarded)."""
        while True:
            pending = [link for link in self.links.values() if not link.signer_done.is_set()]
            if not pending:
                return
            await pending[0].signer_done.wait()
            await trio.sleep(0)  # let newly passed clients register
