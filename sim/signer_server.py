"""The trio shell of the simulated signer: fd 0 status writer, the master connection, client
connections received by fd passing, and durable state before every reply (see signer_proc)."""

from __future__ import annotations

import array
import os
import signal
import socket

import trio

import wire

from .signer_core import LOG_BROKEN, MASTER_PERMISSIONS, BadRequest, Client, NotInitialized, SignerCore
from .signer_store import SignerStore

STATUS_FD, MASTER_FD = 0, 3
EXIT_MASTER_CLOSED = 2
EXIT_STATUS_FAIL = 242
FAIL_MASTER_IO, FAIL_INTERNAL_ERROR = 0, 3


class Status:
    """fd 0, write only. Blocking writes of small frames keep status and replies in program order."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(True)

    def send(self, msg: wire.Message) -> None:
        try:
            self.sock.sendall(wire.frame(wire.encode(msg)))
        except OSError:
            pass  # the node stopped listening; hsmd carries on too

    def log(self, level: int, entry: str, peer: bytes | None = None) -> None:
        self.send(wire.build("status_log", level=level, peer=peer, entry=entry))


class MasterFailure(Exception):
    def __init__(self, code: int):
        self.code = code


class SignerServer:
    def __init__(self, core: SignerCore, store: SignerStore, status: Status, crash_at: tuple[str, int] | None = None):
        self.crash_at = crash_at
        self.seen: dict[str, int] = {}
        self.core = core
        self.store = store
        self.status = status
        self.clients_by_dbid: dict[int, tuple[trio.SocketStream, trio.CancelScope]] = {}

    def fail(self, reason: int, desc: str) -> MasterFailure:
        self.status.log(LOG_BROKEN, desc)
        self.status.send(wire.build("status_fail", failreason=reason, desc=desc))
        return MasterFailure(EXIT_STATUS_FAIL)

    async def serve_master(self, sock: trio.SocketStream, nursery: trio.Nursery) -> None:
        client = Client(b"\x00" * 33, 0, MASTER_PERMISSIONS, is_master=True)
        await self.serve(sock, client, nursery)
        raise MasterFailure(EXIT_MASTER_CLOSED)

    async def serve(self, sock: trio.SocketStream, client: Client, nursery: trio.Nursery) -> None:
        reader = wire.FrameReader()
        while True:
            try:
                data = await sock.receive_some(65536)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return
            try:
                bodies = reader.bodies(data)
            except wire.FramingError:
                return  # hsmd drops the connection (exit 2 on the master)
            for body in bodies:
                if not await self.one_request(sock, client, body, nursery):
                    return

    async def one_request(self, sock, client: Client, body: bytes, nursery) -> bool:
        try:
            msg = wire.decode(body)
            if not client.is_master:
                self.status.log(3, f"Client: Received message {msg.type} from client")
            outcome = self.core.handle(client, msg)
        except (wire.DecodeError, BadRequest, NotInitialized) as exc:
            if client.is_master:
                code = FAIL_MASTER_IO
                kind = type(exc).__name__
                raise self.fail(code, f"Error parsing {body[:2].hex()} ({kind}): {exc}: {body.hex()[:400]}") from None
            description = str(exc) if not isinstance(exc, wire.DecodeError) else f"Error parsing: {exc}"
            self.status.log(LOG_BROKEN, f"{client.peer_id.hex()}: {description}")
            self.status.send(wire.build("hsmstatus_client_bad_request", id=client.peer_id, description=description, msg=body))
            return False
        if msg.type == 11:
            client.peer_id = self.core.keys.node_id
        for level, entry in outcome.logs:
            self.status.log(level, entry, None if client.is_master else client.peer_id)
        for record in {r.key: r for r in outcome.dirty}.values():
            self.store.save(record)  # durable before the reply leaves, as VLS does
        for record in outcome.forgotten:
            self.store.delete(record)
        self.seen[msg.name] = self.seen.get(msg.name, 0) + 1
        if self.crash_at and self.crash_at == (msg.name, self.seen[msg.name]):
            os.kill(os.getpid(), signal.SIGKILL)
        if outcome.reply is None:
            return True  # dev_preinit: no reply, as hsmd
        try:
            await sock.send_all(wire.frame(wire.encode(outcome.reply)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if outcome.pass_fd_for is not None:
            await self.pass_client_fd(sock, outcome.pass_fd_for, nursery)
        return True

    async def pass_client_fd(self, master, new_client: Client, nursery) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await master.socket.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        finally:
            theirs.close()
        if new_client.dbid != 0 and new_client.dbid in self.clients_by_dbid:
            old_sock, old_scope = self.clients_by_dbid.pop(new_client.dbid)
            old_scope.cancel()  # hsmd closes the previous client of the same channel
        sock = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        scope = trio.CancelScope()
        if new_client.dbid != 0:
            self.clients_by_dbid[new_client.dbid] = (sock, scope)
        nursery.start_soon(self.serve_client, sock, new_client, scope, nursery)

    async def serve_client(self, sock, client: Client, scope: trio.CancelScope, nursery) -> None:
        try:
            with scope:
                await self.serve(sock, client, nursery)
        finally:
            sock.socket.close()  # hsmd closes a client it is done with (EOF on the other side)
        if self.clients_by_dbid.get(client.dbid, (None, None))[1] is scope:
            del self.clients_by_dbid[client.dbid]




async def serve_forever(server: SignerServer) -> None:
    master = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(MASTER_FD))))
    async with trio.open_nursery() as nursery:
        await server.serve_master(master, nursery)


def leaves(group):
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from leaves(e)
        else:
            yield e
