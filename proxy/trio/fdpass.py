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


class SocketEnd:
    """One socket of a relayed connection (the node's end or the signer's), with fd-aware reads
    and complete writes.

    The socket calls are tried directly and only wait (``wait_readable``/``wait_writable``)
    when the kernel says EAGAIN: on the hot path this skips the two scheduler checkpoints
    trio's socket methods add around every call. To stay fair to other tasks, every
    ``FAIRNESS_BUDGET`` calls that did not have to wait end with a checkpoint.
    """

    __slots__ = ("sock", "raw", "unix", "truncated_control", "_budget", "_drained")

    FAIRNESS_BUDGET = 16

    def __init__(self, sock: trio.socket.SocketType):
        self.sock = sock
        self.raw: socket.socket = sock._sock  # the stdlib socket, non-blocking under trio
        self.unix = sock.family == socket.AF_UNIX
        self.truncated_control = 0  # reads where the kernel had to drop fds (should stay 0)
        self._budget = self.FAIRNESS_BUDGET
        self._drained = False

    @classmethod
    def from_stdlib(cls, sock: socket.socket) -> "SocketEnd":
        return cls(trio.socket.from_stdlib_socket(sock))

    async def _fair(self) -> None:
        self._budget -= 1
        if self._budget <= 0:
            self._budget = self.FAIRNESS_BUDGET
            await trio.lowlevel.checkpoint()

    async def receive(self) -> tuple[bytes, list[int]]:
        """Bytes and the fds that arrived with their last byte; ``b""`` at end of stream.
        A reset (ECONNRESET) is raised, not turned into end of stream, so the relay can mirror
        it with an abrupt close instead of an orderly one."""
        raw = self.raw
        try:
            if self._drained:
                # The last read emptied the socket: in request/reply traffic the next bytes are
                # not there yet, so wait first instead of paying for a read that says EAGAIN.
                await trio.lowlevel.wait_readable(raw)
                self._budget = self.FAIRNESS_BUDGET
            while True:
                try:
                    if not self.unix:
                        data = raw.recv(RECV_SIZE)
                        self._drained = len(data) < RECV_SIZE
                        await self._fair()
                        return data, []
                    data, ancdata, flags, _ = raw.recvmsg(RECV_SIZE, _ANC_SIZE)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(raw)
                    self._budget = self.FAIRNESS_BUDGET
        except trio.ClosedResourceError:  # closed by the relay itself while waiting
            return b"", []
        self._drained = len(data) < RECV_SIZE
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_ITEMSIZE
                fds.extend(array.array("i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            self.truncated_control += 1
        await self._fair()
        return data, fds

    async def send(self, data: bytes, fds: list[int] | tuple = ()) -> None:
        """Write all of ``data``; ``fds`` ride on its first byte (callers pass carriers alone)."""
        await self._write(data, fds)
        await self._fair()

    async def send_pair(self, first: bytes, first_fds, second: bytes, second_fds) -> None:
        """Two writes back to back, with no checkpoint between them: a 109 frame and its fd
        carrier, so a reader that does one ``recvmsg`` gets both, as it does from hsmd."""
        await self._write(first, first_fds)
        await self._write(second, second_fds)
        await self._fair()

    async def _write(self, data: bytes, fds) -> None:
        raw = self.raw
        view = memoryview(data)
        while view or fds:
            try:
                if fds:
                    sent = raw.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    fds = ()
                else:
                    sent = raw.send(view)
                view = view[sent:]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
                self._budget = self.FAIRNESS_BUDGET

    def shutdown_write(self) -> None:
        """Half-close: the peer reads end of stream, but can still write to us."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone: nothing left to tell the peer

    def shutdown_read(self) -> None:
        """Read no more; on a Unix socket the peer's writes then fail with EPIPE."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already gone

    def close(self) -> None:
        self.sock.close()


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
