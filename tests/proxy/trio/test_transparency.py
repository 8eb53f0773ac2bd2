"""The relay shell is invisible: random streams in random chunkings arrive byte-identical, both
directions, through client fds passed two levels deep (real socketpairs, real SCM_RIGHTS).
And verdicts do exactly what the hook contract says."""

from __future__ import annotations

import array
import socket

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from wire.conversation import REPLY_AFTER, REPLY_BEFORE, REQUEST_BEFORE, ROLE_CLIENT, ROLE_MASTER

from proxy.core.hooks import CONN_CLOSED, CONN_REPLACED, ConnContext, Disconnect, Drop, Duplicate, Hold, Refuse, Replace
from proxy.core.relay import WHOLE_FRAME_LIMIT, Limits
from proxy.trio.fdpass import SocketEnd
from proxy.trio.shell import RelayShell
from tests.proxy.trio.conftest import (
    NODE_ID,
    PCP,
    PCP_REPLY,
    REPLY_109,
    Topology,
    read_to_eof,
    recv_exactly,
    status_shell,
    tsock,
)


async def send_chunks(sock, data: bytes, sizes: list[int]) -> None:
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        await _send_all(sock, data[pos : pos + size])
        pos += size
        i += 1
        await trio.sleep(0)
    sock.shutdown(socket.SHUT_WR)


async def _send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


garbage = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.binary(max_size=64).map(lambda tail: (1 << 27).to_bytes(4, "big") + tail),  # framing lost
)
streams = st.tuples(st.lists(st.binary(max_size=400), max_size=10), garbage).map(
    lambda t: b"".join(wire.frame(b) for b in t[0]) + t[1]
)
chunkings = st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(down=streams, up=streams, down_chunks=chunkings, up_chunks=chunkings, carrier=st.sampled_from([b"\x00", b"\xff"]),
       whole_frame=st.sampled_from([WHOLE_FRAME_LIMIT, 51, 120]),  # hsmd_client_hsmfd (51) still parsed
       watched=st.booleans())
def test_streams_are_byte_identical_through_clients_two_levels_deep(down, up, down_chunks, up_chunks, carrier,
                                                                     whole_frame, watched):
    """Frames longer than ``whole_frame`` are decided on by their first ``whole_frame`` bytes and
    go on in pieces: the same bytes arrive, whether a hook decides on them or none watches."""
    limits = Limits(whole_frame=whole_frame, max_unanswered_bytes=1 << 20)  # nobody answers these requests
    watch = Watch()

    async def main():
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                topo = Topology(RelayShell([watch] if watched else [], limits=limits), nursery)
                child_node, child_signer = await topo.pass_client(topo.node, topo.signer, 7, 1024, carrier)
                grand_node, grand_signer = await topo.pass_client(child_node, child_signer, 9, 447, carrier)
                await trio.testing.wait_all_tasks_blocked()
                contexts = {c.ctx.dbid: c.ctx for c in topo.shell.connections.values() if c.ctx.role == ROLE_CLIENT}
                assert contexts[9].permissions == 447 and contexts[9].parent_id == contexts[7].conn_id
                got = {}

                async def receive(name, sock):
                    got[name] = await read_to_eof(sock)

                async with trio.open_nursery() as io:
                    io.start_soon(send_chunks, grand_node, down, down_chunks)
                    io.start_soon(send_chunks, grand_signer, up, up_chunks)
                    io.start_soon(receive, "at_signer", grand_signer)
                    io.start_soon(receive, "at_node", grand_node)
                assert got == {"at_signer": down, "at_node": up}
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert all(held == whole_frame for held, tail in watch.long)


class Watch:
    """Watches the points before forwarding: what it held of each long frame."""

    points = (REQUEST_BEFORE, REPLY_BEFORE)

    def __init__(self):
        self.long: list[tuple[int, int]] = []  # (bytes held, bytes after them)

    async def on_request(self, ex, point):
        if ex.request_tail:
            self.long.append((len(ex.request_raw), ex.request_tail))

    async def on_reply(self, ex, point):
        if ex.reply_tail:
            self.long.append((len(ex.reply_raw), ex.reply_tail))


# ---- verdicts ---------------------------------------------------------------------------------------


class Decide:
    """A hook that applies one verdict to the first request named ``target``."""

    def __init__(self, target: str, verdict):
        self.target, self.verdict, self.used = target, verdict, False
        self.seen: list[tuple[str, str, int]] = []

    async def on_request(self, ex, point):
        self.seen.append((point, ex.name, ex.seq))
        if point == REQUEST_BEFORE and ex.name == self.target and not self.used:
            self.used = True
            return self.verdict

    async def on_reply(self, ex, point):
        self.seen.append((point, ex.reply.name if ex.reply else "?", ex.seq))


async def test_drop_refuse_replace_duplicate_and_hold():
    with trio.fail_after(10):
        hold = trio.Event()
        for verdict, check in [
            (Drop(), "dropped"), (Replace(bytes.fromhex("00120000000000000001")), "replaced"),
            (Duplicate(), "duplicated"), (Refuse("no thanks"), "refused"), (Hold(hold), "held"),
            (Disconnect(), "disconnected"),
        ]:
            hook = Decide("hsmd_get_per_commitment_point", verdict)
            shell, status_node = status_shell([hook])
            async with trio.open_nursery() as nursery:
                topo = Topology(shell, nursery)
                node, signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
                await node.send(PCP)
                if check == "dropped":
                    await node.send(PCP[:-1] + b"\x02")  # the next request is forwarded, and pairs
                    assert await recv_exactly(signer, len(PCP)) == PCP[:-1] + b"\x02"
                    await signer.send(PCP_REPLY)
                    assert await recv_exactly(node, len(PCP_REPLY)) == PCP_REPLY
                    await trio.testing.wait_all_tasks_blocked()
                    assert hook.seen[-1] == (REPLY_AFTER, "hsmd_get_per_commitment_point_reply", 1)
                elif check == "replaced":
                    assert await recv_exactly(signer, len(PCP)) == wire.frame(bytes.fromhex("00120000000000000001"))
                elif check == "duplicated":
                    assert await recv_exactly(signer, 2 * len(PCP)) == PCP + PCP
                    await signer.send(PCP_REPLY + PCP_REPLY)
                    assert await recv_exactly(node, 2 * len(PCP_REPLY)) == PCP_REPLY + PCP_REPLY
                    await trio.testing.wait_all_tasks_blocked()
                    replies = [s for s in hook.seen if s[0] == REPLY_AFTER and s[1].startswith("hsmd_get_per")]
                    assert [seq for _, _, seq in replies] == [0, 0]
                elif check == "refused":
                    bad = wire.decode((await recv_exactly(status_node, 4 + 2 + 33 + 10 + 2 + 10))[4:])
                    assert bad.name == "hsmstatus_client_bad_request"
                    assert (bad.fields["id"], bad.fields["description"], bad.fields["msg"]) == (
                        NODE_ID, "no thanks", PCP[4:])
                    assert await read_to_eof(node) == b"" and await read_to_eof(signer) == b""
                elif check == "held":
                    with trio.move_on_after(0.1):
                        await signer.recv(1)
                        raise AssertionError("a held request was forwarded before its release")
                    hold.set()
                    assert await recv_exactly(signer, len(PCP)) == PCP
                elif check == "disconnected":
                    assert await read_to_eof(node) == b"" and await read_to_eof(signer) == b""
                nursery.cancel_scope.cancel()


async def test_refuse_on_the_master_forwards():
    with trio.fail_after(10):
        shell, _ = status_shell([Decide("hsmd_get_per_commitment_point", Refuse("no"))])
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery)
            await topo.node.send(PCP)
            assert await recv_exactly(topo.signer, len(PCP)) == PCP
            nursery.cancel_scope.cancel()


async def test_connection_events_and_replacement():
    events = []

    class Watch:
        async def on_connection(self, conn, event):
            events.append((conn.role, conn.dbid, event))

    with trio.fail_after(10):
        shell = RelayShell([Watch()])
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery)
            first_node, first_signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
            second = await topo.pass_client(topo.node, topo.signer, 5, 447)  # noqa: F841 (kept open)
            await trio.testing.wait_all_tasks_blocked()
            assert (ROLE_CLIENT, 5, CONN_REPLACED) in events
            first_signer.close()  # hsmd closes the replaced client: the node sees EOF
            assert await read_to_eof(first_node) == b""
            first_node.close()
            await trio.testing.wait_all_tasks_blocked()
            assert events.count((ROLE_CLIENT, 5, CONN_CLOSED)) == 1
            nursery.cancel_scope.cancel()


async def test_a_signer_that_does_not_read_stops_the_node_backpressure():
    """Nothing queues between a read and its write: once the socket buffers are full the node's
    writes block, instead of the proxy buffering without bound."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(RelayShell([]), nursery)
            chunk = wire.frame(b"\x00\x12" + bytes(10_000))
            accepted = 0
            with trio.move_on_after(1.0):
                while True:
                    accepted += await topo.node.send(chunk)
            raw = topo.node._sock
            buffers = sum(raw.getsockopt(socket.SOL_SOCKET, opt) for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF))
            # node send buffer + proxy receive buffer + one read in hand + proxy send buffer + signer receive buffer
            assert 0 < accepted < 2 * buffers + 65536 + len(chunk)
            # and everything accepted is delivered once the signer reads
            received = 0
            with trio.move_on_after(0.5):
                while received < accepted:
                    received += len(await topo.signer.recv(1 << 20))
            assert received == accepted
            nursery.cancel_scope.cancel()


async def test_a_client_outlives_its_parent_connection():
    events = []

    class Watch:
        async def on_connection(self, conn, event):
            events.append((conn.role, event))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(RelayShell([Watch()]), nursery)
            node, signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
            topo.node.close()  # lightningd closes the master; the client fd lives on
            topo.signer.close()
            await trio.testing.wait_all_tasks_blocked()
            assert (ROLE_MASTER, CONN_CLOSED) in events and (ROLE_CLIENT, CONN_CLOSED) not in events
            await node.send(PCP)
            assert await recv_exactly(signer, len(PCP)) == PCP
            nursery.cancel_scope.cancel()


async def test_a_109_and_its_carrier_read_together_reach_the_node_together():
    """hsmd's frame and fd carrier usually arrive in one recvmsg (the captures show 7 bytes and
    the fd); the proxy writes them back to back so the node sees the same."""
    with trio.fail_after(10):
        node, proxy_node = socket.socketpair()
        proxy_signer, signer = socket.socketpair()
        ours, theirs = socket.socketpair()
        signer.sendall(REPLY_109)
        signer.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        theirs.close()
        shell = RelayShell([])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shell.run_connection, SocketEnd.from_stdlib(proxy_node), SocketEnd.from_stdlib(proxy_signer),
                               ConnContext(conn_id=0, role=ROLE_MASTER))
            tnode = tsock(node)
            await trio.lowlevel.wait_readable(node)
            data, ancdata, flags, _ = await tnode.recvmsg(4096, socket.CMSG_SPACE(4))
            assert data == REPLY_109 + b"\x00" and len(ancdata) == 1 and not flags & socket.MSG_CTRUNC
            client = tsock(socket.socket(fileno=array.array("i", ancdata[0][2])[0]))
            await client.send(PCP)  # and the passed fd is relayed to the signer's socket
            assert await recv_exactly(tsock(ours), len(PCP)) == PCP
            nursery.cancel_scope.cancel()


async def test_verdicts_on_a_long_request_apply_to_the_whole_frame():
    """A request longer than the whole-frame limit is decided on by its prefix before any of it
    goes on; then the whole frame goes on (forwarded, held: the node's exact bytes), or none of
    it (dropped, replaced: the replacement instead), and a duplicate goes once."""
    long_pcp = wire.frame(PCP[4:] + b"\xee" * 300)  # trailing padding past a 64-byte limit
    replacement = wire.frame(bytes.fromhex("00120000000000000001"))
    next_pcp = PCP[:-1] + b"\x02"
    with trio.fail_after(10):
        hold = trio.Event()
        for verdict, expected in [
            (None, long_pcp), (Hold(hold), long_pcp), (Drop(), b""), (Replace(replacement[4:]), replacement),
            (Duplicate(), long_pcp),
        ]:
            hook = Decide("hsmd_get_per_commitment_point", verdict)
            shell, _ = status_shell([hook], limits=Limits(whole_frame=64))
            async with trio.open_nursery() as nursery:
                topo = Topology(shell, nursery)
                node, signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
                nursery.start_soon(send_chunks, node, long_pcp + next_pcp, [50, 7, 100])
                if type(verdict) is Hold:
                    with trio.move_on_after(0.1):
                        await signer.recv(1)
                        raise AssertionError("a held request was forwarded before its release")
                    hold.set()
                assert await recv_exactly(signer, len(expected + next_pcp)) == expected + next_pcp
                assert await read_to_eof(signer) == b""  # and nothing else: a duplicate goes once
                await signer.send(PCP_REPLY * (2 if expected else 1))
                await trio.testing.wait_all_tasks_blocked()
                replies = [seq for point, name, seq in hook.seen
                           if point == REPLY_AFTER and name.startswith("hsmd_get_per")]
                assert replies == ([0, 1] if expected else [1])  # the long request paired like any
                nursery.cancel_scope.cancel()
