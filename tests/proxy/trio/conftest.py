"""Shared helpers for the trio shell's tests: a node <-> proxy <-> signer topology on real
socketpairs (with real SCM_RIGHTS for client fds), and a tiny full filesystem."""

from __future__ import annotations

import array
import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest
import trio

import wire
from wire.conversation import ROLE_MASTER, ROLE_STATUS

from proxy.core.hooks import ConnContext
from proxy.trio.fdpass import SocketEnd
from proxy.trio.shell import RelayShell, StatusWriter

NODE_ID = bytes.fromhex("02a8a0e038d28608037487c049729943070050ff19b51810ca5f941dd3bfab2945")
REPLY_109 = wire.frame(b"\x00\x6d")
PCP = wire.frame(bytes.fromhex("00120000000000000000"))  # get_per_commitment_point(0)
PCP_REPLY = wire.frame(bytes.fromhex("0076036da7c05008d5c49285ac78f908b70b08056ec5661a0a57467f76ae1f83946c9800"))


def tsock(sock: socket.socket) -> trio.socket.SocketType:
    return trio.socket.from_stdlib_socket(sock)


async def recv_exactly(sock, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await sock.recv(n - len(out))
        assert data, f"EOF after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


async def recv_up_to(sock, n: int) -> bytes:
    """``n`` bytes, or fewer if the peer closes first."""
    out = bytearray()
    while len(out) < n:
        data = await sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


async def recv_fd(sock) -> tuple[bytes, int]:
    data, ancdata, _, _ = await sock.recvmsg(1, socket.CMSG_SPACE(4))
    (fd,) = [fd for _, _, payload in ancdata for fd in array.array("i", payload)]
    return data, fd


async def read_to_eof(sock) -> bytes:
    out = bytearray()
    while data := await sock.recv(65536):
        out += data
    return bytes(out)


class Topology:
    """node <-> proxy <-> signer on a master socket, plus whatever client fds were passed; with
    ``status=True`` also the status socket (fd 0), where refusals are written."""

    def __init__(self, shell: RelayShell, nursery: trio.Nursery, *, status: bool = False):
        self.shell = shell
        self.nursery = nursery
        node, proxy_node = socket.socketpair()
        proxy_signer, signer = socket.socketpair()
        self.node, self.signer = tsock(node), tsock(signer)
        nursery.start_soon(
            shell.run_connection, SocketEnd.from_stdlib(proxy_node), SocketEnd.from_stdlib(proxy_signer),
            ConnContext(conn_id=shell.new_conn_id(), role=ROLE_MASTER),
        )
        self.status_node = self.status_signer = None
        if status:
            status_node, proxy_status_node = socket.socketpair()
            proxy_status_signer, status_signer = socket.socketpair()
            self.status_node, self.status_signer = tsock(status_node), tsock(status_signer)
            nursery.start_soon(
                shell.run_status, SocketEnd.from_stdlib(proxy_status_node), SocketEnd.from_stdlib(proxy_status_signer),
                ConnContext(conn_id=shell.new_conn_id(), role=ROLE_STATUS),
            )

    @staticmethod
    async def pass_client(node_side, signer_side, dbid: int, permissions: int, carrier=b"\x00"):
        """The node asks for a client fd on a connection; the signer answers 109 and passes one.
        Returns the (node, signer) ends of the new client connection."""
        await node_side.send(wire.frame(wire.encode(wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=dbid,
                                                                permissions=permissions))))
        await recv_exactly(signer_side, 4 + 51)
        ours, theirs = socket.socketpair()
        await signer_side.send(REPLY_109)
        await signer_side.sendmsg([carrier], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        theirs.close()
        assert await recv_exactly(node_side, 6) == REPLY_109
        byte, fd = await recv_fd(node_side)
        assert byte == carrier
        return tsock(socket.socket(fileno=fd)), tsock(ours)


def status_shell(hooks, **kw) -> tuple[RelayShell, trio.socket.SocketType]:
    """A shell whose refusals go to a status socket; returns it and the node's end of that socket."""
    status_node, status_proxy = socket.socketpair()
    return RelayShell(hooks, status=StatusWriter(SocketEnd.from_stdlib(status_proxy)), **kw), tsock(status_node)


class FullDisk:
    """A 64 KiB tmpfs; ``fill()`` takes every free page (files keep the room left in their
    last page, as on any filesystem, and then hit ENOSPC)."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> None:
        with open(self.path / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


@pytest.fixture
def full_disk(tmp_path):
    path = tmp_path / "tiny"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs to fill up (needs root): {done.stderr.strip()}")
    try:
        yield FullDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        assert not os.path.ismount(path)
