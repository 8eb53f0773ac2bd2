"""Socket IO that never loses a passed file descriptor (trio sockets, AF_UNIX or TCP).

hsmd passes a client fd as SCM_RIGHTS on a 1-byte carrier right after the 109 reply. A plain
``recv`` would swallow the carrier and silently close the fd (MSG_CTRUNC), so every read on a
Unix socket goes through ``recvmsg`` with room for control data.
"""

from __future__ import annotations

import array
import os
import socket

import trio

RECV_SIZE = 65536
MAX_FDS_PER_READ = 16
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_READ * array.array("i").itemsize)
_FD_ITEMSIZE = array.array("i").itemsize


class Endpoint:
    """One socket of a relay, with fd-aware reads and complete writes."""

    __slots__ = ("sock", "unix", "truncated_control")

    def __init__(self, sock: trio.socket.SocketType):
        self.sock = sock
        self.unix = sock.family == socket.AF_UNIX
        self.truncated_control = 0  # reads where the kernel had to drop fds (should stay 0)

    @classmethod
    def from_stdlib(cls, sock: socket.socket) -> "Endpoint":
        return cls(trio.socket.from_stdlib_socket(sock))

    @classmethod
    def from_fd(cls, fd: int) -> "Endpoint":
        """Take ownership of an inherited or received fd (it must be a stream socket)."""
        return cls.from_stdlib(socket.socket(fileno=fd))

    async def receive(self) -> tuple[bytes, list[int]]:
        """Bytes and the fds that arrived with their last byte; ``b""`` at end of stream.
        A reset connection counts as end of stream: the peer is gone either way."""
        try:
            if not self.unix:
                return await self.sock.recv(RECV_SIZE), []
            data, ancdata, flags, _ = await self.sock.recvmsg(RECV_SIZE, _ANC_SIZE)
        except (ConnectionResetError, BrokenPipeError):
            return b"", []
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_ITEMSIZE
                fds.extend(array.array("i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            self.truncated_control += 1
        return data, fds

    async def send(self, data: bytes, fds: list[int] | tuple = ()) -> None:
        """Write all of ``data``; ``fds`` ride on its first byte (callers pass carriers alone)."""
        view = memoryview(data)
        if fds:
            sent = await self.sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            view = view[sent:]
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    def shutdown_write(self) -> None:
        """Half-close: the peer reads end of stream, but can still write to us."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone: nothing left to tell the peer

    def close(self) -> None:
        self.sock.close()


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
