"""A compromised node pads a signing request past the relay's whole-frame limit (hsmd ignores
bytes after a message's last field): the shadow still reads it from its first 4 MiB and flags it
before the signer has seen a byte, and ``--guard`` refuses it so the signer never sees it. Real
socketpairs with a real client fd; the test plays the signer."""

from __future__ import annotations

import os
import socket

import trio
import trio.testing

import wire
from wire.permissions import CHANNELD

from proxy.addons.shadow_hook import ShadowHook
from proxy.core.relay import WHOLE_FRAME_LIMIT
from proxy.core.shadow import Shadow
from proxy.trio.shell import RelayShell
from tests.proxy.core.shadow_vectors import request
from tests.proxy.trio.conftest import Topology, read_to_eof, recv_exactly

SIGNED = wire.frame(wire.encode(wire.build("hsmd_sign_tx_reply", sig=bytes(64) + b"\x01")))
PADDING = b"\xee" * (WHOLE_FRAME_LIMIT + (1 << 20))  # trailing bytes: past the limit by 1 MiB


def sign_frame(padding: bytes = b"", **changes) -> bytes:
    return wire.frame(wire.encode(request("hsmd_sign_remote_commitment_tx", 0, **changes)) + padding)


def nothing_arrived(sock) -> bool:
    """No byte is waiting to be read on ``sock`` right now (nor has the peer closed it)."""
    try:
        sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


async def write_all(sock, data: bytes) -> None:
    """The node writes everything it can; a proxy that refused and closed cuts it short."""
    view = memoryview(data)
    try:
        while view:
            view = view[await sock.send(view):]
    except OSError:
        pass


async def close_when_cancelled(sock: socket.socket) -> None:
    try:
        await trio.sleep_forever()
    finally:
        sock.close()


async def signed_once(guard: bool, nursery) -> tuple[ShadowHook, Topology, object, object, list]:
    """A client connection whose commitment 0 the signer has signed; a listener that records each
    divergence with whether the signer had received any byte of the request when it was flagged."""
    hook = ShadowHook(Shadow(), guard=guard)
    topo = Topology(RelayShell([hook]), nursery, status=True)
    node, signer = await topo.pass_client(topo.node, topo.signer, 1, CHANNELD)
    flagged: list = []
    raw_signer = socket.socket(fileno=os.dup(signer.fileno()))  # to peek at from the synchronous listener
    nursery.start_soon(close_when_cancelled, raw_signer)
    hook.listeners.append(lambda event: flagged.append((event.kind, event.status, nothing_arrived(raw_signer))))
    first = sign_frame()
    await node.send(first)
    assert await recv_exactly(signer, len(first)) == first
    await signer.send(SIGNED)
    assert await recv_exactly(node, len(SIGNED)) == SIGNED
    return hook, topo, node, signer, flagged


async def test_a_padded_retry_is_flagged_before_the_signer_sees_it_and_reaches_it_byte_for_byte():
    padded = sign_frame(PADDING, feerate=999)  # other contents at the signed index: split-brain
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            hook, topo, node, signer, flagged = await signed_once(False, nursery)
            nursery.start_soon(write_all, node, padded)
            assert await recv_exactly(signer, len(padded)) == padded  # exactly the node's bytes
            assert flagged and all(signer_had_nothing for *_, signer_had_nothing in flagged)
            assert ("double_signed", "predicted") in [(kind, status) for kind, status, _ in flagged]
            await signer.send(SIGNED)
            assert await recv_exactly(node, len(SIGNED)) == SIGNED
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert ("double_signed", "confirmed") in [(e.kind, e.status) for e in hook.shadow.events]


async def test_guard_refuses_a_padded_double_signature_and_the_signer_sees_none_of_it():
    padded = sign_frame(PADDING, feerate=999)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            hook, topo, node, signer, flagged = await signed_once(True, nursery)
            nursery.start_soon(write_all, node, padded)
            assert await read_to_eof(signer) == b""  # refused and closed: not one byte of it
            await closed(node)
            (bad,) = [wire.decode(b) for b in wire.FrameReader().bodies(await read_status(topo))]
            assert bad.name == "hsmstatus_client_bad_request" and "--guard" in bad.fields["description"]
            assert bad.fields["msg"] == padded[4 : 4 + 0xFFFF]  # as much of it as the u16-long field holds
            nursery.cancel_scope.cancel()
    assert ("double_signed", "prevented") in [(e.kind, e.status) for e in hook.shadow.events]


async def test_guard_refuses_a_long_signing_request_whose_fields_do_not_fit_in_the_prefix():
    """hsmd would read a 5 MiB transaction; the shadow cannot read it, so --guard fails closed."""
    tx_len = 5 << 20
    body = b"\x00\x13" + tx_len.to_bytes(4, "big") + bytes(tx_len)  # hsmd_sign_remote_commitment_tx
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            hook, topo, node, signer, _ = await signed_once(True, nursery)
            nursery.start_soon(write_all, node, wire.frame(body))
            assert await read_to_eof(signer) == b""
            (bad,) = [wire.decode(b) for b in wire.FrameReader().bodies(await read_status(topo))]
            assert "--guard" in bad.fields["description"] and "cannot be checked" in bad.fields["description"]
            nursery.cancel_scope.cancel()


async def closed(node) -> None:
    """The node's client connection is closed; a close with the node's bytes unread (hsmd's
    too) reaches the node as a reset."""
    try:
        assert await read_to_eof(node) == b""
    except ConnectionResetError:
        pass


async def read_status(topo: Topology) -> bytes:
    """What the proxy wrote on the node's status socket: one frame, maybe over 4 MiB."""
    header = await recv_exactly(topo.status_node, wire.HEADER_LEN)
    return header + await recv_exactly(topo.status_node, int.from_bytes(header, "big"))
