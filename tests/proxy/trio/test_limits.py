"""Memory stays bounded whatever the node or the signer sends (issue 12 item 3): past
``max_unanswered`` requests the node's next ones wait in the kernel (nothing is dropped), and a
frame longer than the parse limit is decided on by its first WHOLE_FRAME_LIMIT bytes, then goes
on in pieces as the rest arrives. Real socketpairs."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

import wire
from wire.conversation import ROLE_MASTER

from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import MetricsHook
from proxy.addons.trace import TraceHook, read_trace
from proxy.core.hooks import Refuse
from proxy.core.relay import MAX_UNANSWERED, WHOLE_FRAME_LIMIT, Limits
from proxy.trio.shell import RelayShell
from tests.proxy.trio.conftest import PCP, PCP_REPLY, Topology, recv_exactly


def sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def nothing_more(sock) -> bool:
    """Nothing is waiting to be read on ``sock`` right now."""
    try:
        sock._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


class Seen:
    """Records what the hooks are told."""

    def __init__(self):
        self.requests, self.replies, self.unparsed = [], [], []

    async def on_request(self, ex, point):
        self.requests.append((point, ex.seq, ex.name, ex.request_tail))

    async def on_reply(self, ex, point):
        self.replies.append((point, ex.seq, ex.request_raw, ex.reply_raw))

    async def on_unparsed(self, frame):
        self.unparsed.append(frame)


async def test_past_the_cap_of_unanswered_requests_the_node_waits_and_nothing_is_dropped():
    metrics = Metrics()
    sent = MAX_UNANSWERED + 36
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(RelayShell([MetricsHook(metrics)]), nursery)
            await topo.node.send(PCP * sent)  # a node that does not wait for answers
            assert await recv_exactly(topo.signer, len(PCP) * MAX_UNANSWERED) == PCP * MAX_UNANSWERED
            await trio.testing.wait_all_tasks_blocked()
            assert nothing_more(topo.signer)  # the rest waits: the proxy reads no more from the node
            assert sample(metrics, "hsmproxy_requests_paused_total", role=ROLE_MASTER) == 1
            # each answer lets one more request through
            await topo.signer.send(PCP_REPLY)
            assert await recv_exactly(topo.node, len(PCP_REPLY)) == PCP_REPLY
            assert await recv_exactly(topo.signer, len(PCP)) == PCP
            await trio.testing.wait_all_tasks_blocked()
            assert nothing_more(topo.signer)
            # answering everything delivers every request, in order, once
            received = 1 + MAX_UNANSWERED
            while received < sent:
                await topo.signer.send(PCP_REPLY)
                assert await recv_exactly(topo.signer, len(PCP)) == PCP
                received += 1
            await topo.signer.send(PCP_REPLY * MAX_UNANSWERED)
            assert await recv_exactly(topo.node, len(PCP_REPLY) * (sent - 1)) == PCP_REPLY * (sent - 1)
            nursery.cancel_scope.cancel()


async def test_requests_no_longer_wait_once_the_signer_side_has_ended():
    """No answer can come from a closed signer: the node's requests meet the closed socket (its
    writes fail, as they would to the exited hsmd) instead of waiting forever."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(RelayShell([]), nursery)
            await topo.node.send(PCP * (MAX_UNANSWERED + 1))
            await recv_exactly(topo.signer, len(PCP) * MAX_UNANSWERED)
            topo.signer.close()
            assert await topo.node.recv(1) == b""  # the signer's end of stream reaches the node
            with pytest.raises(OSError) as failed:
                for _ in range(100):
                    await topo.node.send(PCP)
                    await trio.sleep(0.01)
            assert failed.value.errno in (errno.EPIPE, errno.ECONNRESET)
            nursery.cancel_scope.cancel()


async def test_a_frame_longer_than_the_parse_limit_is_decided_on_by_its_prefix_then_goes_on_as_it_arrives(tmp_path):
    """The signer reads nothing of a long frame until its first WHOLE_FRAME_LIMIT body bytes have
    arrived and the hooks decided on the message they hold (the rest is trailing padding); then
    it reads the first megabytes before the node has finished writing. Its reply pairs with it."""
    metrics, seen, trace = Metrics(), Seen(), TraceHook(str(tmp_path / "t.trace"))
    length = 2 * WHOLE_FRAME_LIMIT
    body = PCP[4:] + (bytes(range(256)) * (length // 256))[: length - len(PCP) + 4]  # padded past the limit
    frame = wire.frame(body)
    prefix = wire.HEADER_LEN + WHOLE_FRAME_LIMIT
    first = prefix + (1 << 20)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            topo = Topology(RelayShell([seen, MetricsHook(metrics), trace]), nursery)

            async def write(data):
                view = memoryview(data)
                while view:
                    view = view[await topo.node.send(view):]

            await write(frame[: prefix - 1])
            await trio.testing.wait_all_tasks_blocked()
            assert nothing_more(topo.signer) and seen.requests == []  # the prefix is one byte short
            nursery.start_soon(write, frame[prefix - 1 : first])
            assert await recv_exactly(topo.signer, first) == frame[:first]  # before the rest was even sent
            assert seen.requests == [(point, 0, "hsmd_get_per_commitment_point", length - WHOLE_FRAME_LIMIT)
                                     for point in ("request.before_forward", "request.after_forward")]
            nursery.start_soon(write, frame[first:])
            assert await recv_exactly(topo.signer, len(frame) - first) == frame[first:]
            await topo.signer.send(PCP_REPLY)
            assert await recv_exactly(topo.node, len(PCP_REPLY)) == PCP_REPLY
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert seen.unparsed == []  # only long status frames stay unparsed
    assert seen.replies[0] == ("reply.before_forward", 0, body[:WHOLE_FRAME_LIMIT], PCP_REPLY[4:])
    assert sample(metrics, "hsmproxy_long_frames_total", direction="node_to_signer") == 1
    assert sample(metrics, "hsmproxy_message_bytes_total", direction="node_to_signer") == len(frame)
    assert sample(metrics, "hsmproxy_requests_in_flight") == 0
    trace.close()
    (record,) = [r for r in read_trace(str(tmp_path / "t.trace")) if r.get("tail")]
    assert (record["dir"], record["seq"], record["len"], record["tail"]) == ("request", 0, length,
                                                                             length - WHOLE_FRAME_LIMIT)


class RefuseAll:
    async def on_request(self, ex, point):
        if point == "request.before_forward":
            return Refuse("no")


async def test_a_refusal_never_lands_inside_a_long_status_frame():
    """Refusals and the signer's status messages share the node's status socket: a refusal
    written while a long status frame is on its way waits for that frame's last piece."""
    shell = RelayShell([RefuseAll()], limits=Limits(whole_frame=20))
    status = wire.frame(b"\xff\xf0" + b"x" * 98)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery, status=True)
            client_node, client_signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
            await topo.status_signer.send(status[:50])
            assert await recv_exactly(topo.status_node, 50) == status[:50]
            await client_node.send(PCP)  # refused: hsmstatus_client_bad_request on the status socket
            await trio.testing.wait_all_tasks_blocked()
            assert nothing_more(topo.status_node)
            await topo.status_signer.send(status[50:])
            assert await recv_exactly(topo.status_node, len(status) - 50) == status[50:]
            (bad,) = [wire.decode(b) for b in wire.FrameReader().bodies(await topo.status_node.recv(4096))]
            assert bad.name == "hsmstatus_client_bad_request" and bad.fields["msg"] == PCP[4:]
            assert await client_node.recv(1) == b""  # and then the refused client is closed
            nursery.cancel_scope.cancel()
