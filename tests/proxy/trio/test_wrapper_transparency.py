"""Transparency through a real `hsmproxy wrap` process: the test plays lightningd on one side and,
through tests/fd_courier.py, the signer on the other. Random streams in random chunkings arrive
byte-identical, both directions, through client fds passed two levels deep; the status socket
is relayed byte for byte; and the wrapper exits with the status the signer chose."""

from __future__ import annotations

import array
import random
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from tests import ld_harness as h
from tests.paths import TESTS
from tests.proxy.trio.conftest import recv_exactly
from tests.proxy.trio.test_wrapper import children_of, wait_gone

pytestmark = pytest.mark.timeout(120)

COURIER = TESTS / "fd_courier.py"
NODE_ID = bytes.fromhex("02a8a0e038d28608037487c049729943070050ff19b51810ca5f941dd3bfab2945")


class Both:
    """One wrapper process; the test holds lightningd's sockets and the signer's."""

    def __init__(self, tmp: Path):
        courier_path = str(tmp / "courier.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(courier_path)
        listener.listen(1)
        listener.settimeout(h.TIMEOUT)
        signer = h.write_script(tmp / "courier-signer", [f'exec "{sys.executable}" "{COURIER}" "$@"'])
        self.ld = h.Lightningd([str(h.wrapper_script(tmp, signer))], tmp, env={"HSMPROXY_TEST_COURIER": courier_path})
        self.courier, _ = listener.accept()
        listener.close()
        _, ancdata, _, _ = self.courier.recvmsg(1, socket.CMSG_SPACE(2 * 4))
        status_fd, master_fd = array.array("i", ancdata[0][2])
        self.signer_status = socket.socket(fileno=status_fd)
        self.signer_master = socket.socket(fileno=master_fd)
        self.next_dbid = 100

    def close(self) -> None:
        for sock in (self.courier, self.signer_status, self.signer_master):
            sock.close()
        self.ld.close()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    pair = Both(tmp_path_factory.mktemp("wrap-transparency"))
    yield pair
    pair.close()




async def read_to_eof(sock) -> bytes:
    out = bytearray()
    while data := await sock.recv(65536):
        out += data
    return bytes(out)


async def send_in_chunks(sock, data: bytes, sizes: list[int]) -> None:
    pos = i = 0
    while pos < len(data):
        chunk = data[pos : pos + sizes[i % len(sizes)]]
        view = memoryview(chunk)
        while view:
            view = view[await sock.send(view) :]
        pos += len(chunk)
        i += 1
        await trio.sleep(0)
    sock.shutdown(socket.SHUT_WR)


async def pass_client(node_side, signer_side, dbid: int):
    """lightningd asks for a client fd; the signer (the test) answers 109 and passes a socket."""
    request = wire.encode(wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=dbid, permissions=1024 | 447))
    await node_side.send(wire.frame(request))
    assert await recv_exactly(signer_side, 4 + len(request)) == wire.frame(request)
    ours, theirs = socket.socketpair()
    await signer_side.send(wire.frame(b"\x00\x6d"))
    await signer_side.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
    theirs.close()
    assert await recv_exactly(node_side, 6) == wire.frame(b"\x00\x6d")
    byte, ancdata, _, _ = await node_side.recvmsg(1, socket.CMSG_SPACE(4))
    (fd,) = array.array("i", ancdata[0][2])
    assert byte == b"\x00"
    return trio.socket.from_stdlib_socket(socket.socket(fileno=fd)), trio.socket.from_stdlib_socket(ours)


garbage = st.one_of(st.just(b""), st.binary(min_size=1, max_size=40),
                    st.binary(max_size=40).map(lambda t: (0xFFFFFFFF).to_bytes(4, "big") + t))
streams = st.tuples(st.lists(st.binary(max_size=600), max_size=8), garbage).map(
    lambda t: b"".join(wire.frame(b) for b in t[0]) + t[1])
chunkings = st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(down=streams, up=streams, down_chunks=chunkings, up_chunks=chunkings)
def test_random_streams_through_a_real_wrapper_two_levels_deep(both, down, up, down_chunks, up_chunks):
    async def main():
        with trio.fail_after(15):
            node_master = trio.socket.from_stdlib_socket(both.ld.master)
            signer_master = trio.socket.from_stdlib_socket(both.signer_master)
            both.next_dbid += 2
            child_node, child_signer = await pass_client(node_master, signer_master, both.next_dbid)
            grand_node, grand_signer = await pass_client(child_node, child_signer, both.next_dbid + 1)
            got = {}

            async def receive(name, sock):
                got[name] = await read_to_eof(sock)

            async with trio.open_nursery() as io:
                io.start_soon(send_in_chunks, grand_node, down, down_chunks)
                io.start_soon(send_in_chunks, grand_signer, up, up_chunks)
                io.start_soon(receive, "at_signer", grand_signer)
                io.start_soon(receive, "at_node", grand_node)
            assert got == {"at_signer": down, "at_node": up}
            for sock in (child_node, child_signer, grand_node, grand_signer):
                sock.close()

    trio.run(main)


def test_status_bytes_and_the_chosen_exit_status_pass_through(tmp_path):
    both = Both(tmp_path)
    try:
        frames = wire.frame(b"\xff\xf6v-test\x00") + wire.frame(b"\xff\xf0\x00\x00hello\x00")
        tail = b"\x00\x00\x01"  # a partial frame: relayed when the signer closes the socket
        both.signer_status.sendall(frames + tail)
        both.signer_status.close()
        both.signer_master.close()
        assert both.ld.read_status_until_eof() == frames + tail
        both.courier.sendall(b"77\n")  # the stand-in signer exits 77
        assert both.ld.wait() == 77
    finally:
        both.close()


LAST_REPLY = wire.frame(b"\x00\x70" + random.Random(5).randbytes(1 << 20))  # 1 MiB: more than the sockets hold


@pytest.fixture
def signer_gone(tmp_path):
    """A wrapper whose signer (the test) wrote a 1 MiB reply, closed its sockets and exited 0,
    before lightningd read any of it. The reply is written from a thread: the write completes
    only as fast as the wrapper takes it."""
    both = Both(tmp_path)
    try:
        (pid,) = children_of(both.ld.proc.pid)

        def reply_and_exit() -> None:
            both.signer_master.sendall(LAST_REPLY)
            both.signer_master.close()
            both.signer_status.close()
            both.courier.sendall(b"0\n")  # the stand-in signer exits 0

        thread = threading.Thread(target=reply_and_exit, daemon=True)
        thread.start()
        thread.join(h.TIMEOUT)
        assert not thread.is_alive() and wait_gone(pid)
        yield both.ld
    finally:
        both.close()


def test_a_reply_the_signer_wrote_before_exiting_reaches_a_node_that_reads_it_late(signer_gone):
    ld = signer_gone
    time.sleep(3)  # lightningd is busy for longer than the wrapper used to wait (2 s)
    assert h.read_frame(ld.master) == LAST_REPLY[4:]
    assert ld.master.recv(1) == b""
    assert ld.wait() == 0


def test_a_request_to_the_exited_signer_does_not_cut_its_reply_short(signer_gone):
    ld = signer_gone
    # lightningd writes to a signer that is gone (the wrapper's write to it fails with EPIPE);
    # the wrapper mirrors that, so lightningd's own write fails: then the wrapper has seen it
    for _ in range(500):
        try:
            ld.master.send(wire.frame(bytes.fromhex("00120000000000000000")))
        except BrokenPipeError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the wrapper kept taking requests for an exited signer")
    assert h.read_frame(ld.master) == LAST_REPLY[4:]
    assert ld.wait() == 0


def test_a_node_that_closes_without_reading_the_last_reply_lets_the_wrapper_exit(signer_gone):
    ld = signer_gone
    ld.master.close()
    ld.status.close()
    assert ld.wait() == 0
