"""No observer can break the relay, and the WAL fails closed.

A trace on a full disk used to close both the node's and the signer's side of the connection,
with nothing logged: a full disk took the node's signer away. Now an observer's failure is
logged once, counted, and the observer switched off; the relay goes on. A deciding hook that
fails (the WAL that cannot make a request durable) does not let the message through: the node
sees what hsmd does for a refused request, or, on the master, its signer go.
"""

from __future__ import annotations

import contextlib
import errno
import logging

import pytest
import trio
import trio.testing

import wire
from wire.conversation import REPLY_BEFORE, REQUEST_BEFORE

from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import MetricsHook
from proxy.addons.shadow_hook import ShadowHook
from proxy.addons.trace import TraceHook
from proxy.core.shadow import INTENT_RECORD, OUTCOME_RECORD
from proxy.trio.shell import RelayShell
from proxy.trio.wal_store import read_state
from tests.proxy.trio.conftest import (
    NODE_ID,
    PCP,
    PCP_REPLY,
    Topology,
    read_to_eof,
    recv_exactly,
    recv_up_to,
)

pytestmark = pytest.mark.timeout(60)


def pcp(index: int) -> bytes:
    return wire.frame(bytes.fromhex("0012") + index.to_bytes(8, "big"))


async def round_trip(node, signer, request: bytes = PCP, reply: bytes = PCP_REPLY) -> None:
    await node.send(request)
    assert await recv_exactly(signer, len(request)) == request
    await signer.send(reply)
    assert await recv_exactly(node, len(reply)) == reply


async def read_frame(sock) -> bytes:
    """One frame's body."""
    length = int.from_bytes(await recv_exactly(sock, 4), "big")
    return await recv_exactly(sock, length)


def failures(metrics: Metrics, hook: str) -> float:
    return metrics.registry.get_sample_value("hsmproxy_hook_failures_total", {"hook": hook}) or 0


def failed_closed(metrics: Metrics, point: str) -> float:
    return metrics.registry.get_sample_value("hsmproxy_failed_closed_total", {"point": point})


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---- observers ----------------------------------------------------------------------------------


async def test_a_trace_on_a_full_disk_is_switched_off_and_the_relay_goes_on(full_disk, caplog):
    metrics = Metrics()
    trace = TraceHook(str(full_disk.path / "hsmd.trace"))
    shell = RelayShell([MetricsHook(metrics), trace])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery, status=True)
            await round_trip(topo.node, topo.signer)
            full_disk.fill()
            # The trace fills the room left in its last page, then hits ENOSPC; the node's
            # requests and the signer's replies and status messages keep flowing all along.
            for _ in range(60):
                await round_trip(topo.node, topo.signer)
                await topo.status_signer.send(wire.frame(b"\xff\xf6v1\x00"))
                assert await recv_exactly(topo.status_node, 9) == wire.frame(b"\xff\xf6v1\x00")
            nursery.cancel_scope.cancel()
    assert shell.hooks.switched_off == [trace]
    (message,) = errors(caplog)
    assert "TraceHook" in message and "switched off" in message and "No space left" in message
    assert failures(metrics, "TraceHook") == 1
    with contextlib.suppress(OSError):
        trace.close()  # what it still holds may not be writable either


class Broken:
    """An observer whose every write fails like a write to a full disk."""

    observer = True

    def __init__(self):
        self.calls = 0

    def _write(self, *_):
        self.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    async def on_request(self, ex, point):
        self._write()

    async def on_reply(self, ex, point):
        self._write()

    async def on_connection(self, conn, event):
        self._write()

    async def on_status(self, conn, raw, msg):
        self._write()

    async def on_raw(self, conn, direction, raw):
        self._write()


@pytest.mark.parametrize("first_call", ["on_connection", "on_request", "on_reply", "on_status", "on_raw"])
async def test_an_observer_failing_anywhere_is_switched_off_once(first_call, caplog):
    """Whichever method fails first (the others work until then), the relay goes on: frames
    both ways, status messages, client fds, raw bytes after framing is lost."""
    broken = Broken()
    for name in ("on_connection", "on_request", "on_reply", "on_status", "on_raw"):
        if name != first_call:
            setattr(broken, name, _quiet)
    metrics = Metrics()
    shell = RelayShell([broken, MetricsHook(metrics)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery, status=True)
            await round_trip(topo.node, topo.signer)
            node, signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
            await round_trip(node, signer)
            await topo.status_signer.send(wire.frame(b"\xff\xf6v1\x00"))
            assert await recv_exactly(topo.status_node, 9) == wire.frame(b"\xff\xf6v1\x00")
            lost = (1 << 27).to_bytes(4, "big") + b"raw bytes"
            await node.send(lost)
            assert await recv_exactly(signer, len(lost)) == lost
            await round_trip(topo.node, topo.signer)
            nursery.cancel_scope.cancel()
    assert broken.calls == 1 and shell.hooks.switched_off == [broken]
    (message,) = errors(caplog)
    where = {"on_request": REQUEST_BEFORE, "on_reply": REPLY_BEFORE}.get(first_call, first_call)
    assert message.startswith(f"hook Broken failed at {where} and is switched off")
    assert failures(metrics, "Broken") == 1


async def _quiet(*_):
    return None


# ---- deciders: the WAL fails closed -------------------------------------------------------------


async def test_a_wal_on_a_full_disk_never_lets_an_unrecorded_message_through(full_disk, caplog):
    """Round trips on a client until the WAL's disk is full. Whichever append fails first, the
    message it was for does not go on: a request is refused as hsmd refuses one, a reply is not
    delivered and the connection closes. Everything the signer saw has its intent in the WAL,
    everything the node saw has its outcome there; the master is still served."""
    metrics = Metrics()
    wal_dir = full_disk.path / "wal"
    shadow = ShadowHook.open(str(wal_dir), metrics=metrics)
    shell = RelayShell([shadow, MetricsHook(metrics)])
    seen_by_signer = seen_by_node = 0
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                topo = Topology(shell, nursery, status=True)
                node, signer = await topo.pass_client(topo.node, topo.signer, 5, 8)
                full_disk.fill()
                failed_at = None
                for index in range(200):
                    request = pcp(index)
                    await node.send(request)
                    if await recv_up_to(signer, len(request)) != request:
                        failed_at = "request"
                        break
                    seen_by_signer += 1
                    await signer.send(PCP_REPLY)
                    if await recv_up_to(node, len(PCP_REPLY)) != PCP_REPLY:
                        failed_at = "reply"
                        break
                    seen_by_node += 1
                assert failed_at is not None, "the disk never filled up"
                assert await read_to_eof(node) == b"" and await read_to_eof(signer) == b""  # the client is closed
                if failed_at == "request":
                    bad = wire.decode(await read_frame(topo.status_node))
                    assert bad.name == "hsmstatus_client_bad_request"
                    assert bad.fields["id"] == NODE_ID and bad.fields["msg"] == request[4:]
                    assert "No space left" in bad.fields["description"]
                    assert failed_closed(metrics, REQUEST_BEFORE) == 1
                else:
                    assert failed_closed(metrics, REPLY_BEFORE) == 1
                await round_trip(topo.node, topo.signer)  # the master goes on
                nursery.cancel_scope.cancel()
    finally:
        shadow.close()
    assert failures(metrics, "ShadowHook") >= 1
    assert any("ShadowHook" in m and "fail closed" in m for m in errors(caplog))
    records = read_state(str(wal_dir), repair=False).records
    assert sum(1 for r in records if r[0] == INTENT_RECORD) >= seen_by_signer
    assert sum(1 for r in records if r[0] == OUTCOME_RECORD) >= seen_by_node


class WalFull:
    """A WAL store whose writes fail as on a full disk."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def write_durably(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_request_whose_intent_cannot_be_written_is_refused_as_hsmd_refuses(tmp_path, caplog):
    metrics = Metrics()
    shadow = ShadowHook.open(str(tmp_path / "wal"), metrics=metrics)
    shadow.wal.store = WalFull(shadow.wal.store)
    shell = RelayShell([shadow, MetricsHook(metrics)])
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                topo = Topology(shell, nursery, status=True)
                for dbid in (5, 6):  # a WAL that failed once keeps refusing
                    node, signer = await topo.pass_client(topo.node, topo.signer, dbid, 8)
                    await node.send(PCP)
                    assert await read_to_eof(signer) == b""  # never reached the signer
                    assert await read_to_eof(node) == b""  # and the client connection is closed
                    bad = wire.decode(await read_frame(topo.status_node))
                    assert bad.name == "hsmstatus_client_bad_request" and bad.fields["msg"] == PCP[4:]
                await round_trip(topo.node, topo.signer)  # the master is served
                nursery.cancel_scope.cancel()
    finally:
        shadow.close()
    assert failed_closed(metrics, REQUEST_BEFORE) == 2
    logged = [m for m in errors(caplog) if "ShadowHook" in m and "fail closed" in m]
    assert len(logged) >= 2 and all(REQUEST_BEFORE in m for m in logged)


class FailingDecider:
    """A deciding hook (no ``observer = True``) that cannot do its part at a point."""

    def __init__(self, point: str):
        self.point = point

    async def on_request(self, ex, point):
        if point == self.point:
            raise OSError(errno.EIO, "Input/output error")

    async def on_reply(self, ex, point):
        if point == self.point:
            raise OSError(errno.EIO, "Input/output error")


async def test_a_decider_failing_on_the_master_closes_it_so_lightningd_sees_its_signer_go(caplog):
    shell = RelayShell([FailingDecider(REQUEST_BEFORE)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery)
            await topo.node.send(PCP)
            assert await read_to_eof(topo.signer) == b""  # never forwarded: hsmd would have exited
            assert await read_to_eof(topo.node) == b""
            nursery.cancel_scope.cancel()
    assert any("FailingDecider" in m and "fail closed" in m for m in errors(caplog))


@pytest.mark.parametrize("point", ["request.after_forward", "reply.after_forward"])
async def test_a_decider_failing_after_the_bytes_moved_is_logged_and_the_relay_goes_on(point, caplog):
    decider = FailingDecider(point)
    shell = RelayShell([decider])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            topo = Topology(shell, nursery)
            await round_trip(topo.node, topo.signer)
            await round_trip(topo.node, topo.signer)
            nursery.cancel_scope.cancel()
    assert shell.hooks.switched_off == []  # a decider is never switched off
    logged = [m for m in errors(caplog) if "FailingDecider" in m]
    assert len(logged) == 2 and all(point in m for m in logged)
