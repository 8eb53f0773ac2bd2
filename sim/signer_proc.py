"""``hsmproxy sim-signer``: the simulated validating signer as a process that lightningd (or our
simulated node) starts exactly like lightning_hsmd: fd 0 = status socket, fd 3 = master request
socket, working directory holding ``hsm_secret``. A thin trio shell around signer_core.

Exit codes follow hsmd: 0 after ``--version``; 2 when the master socket closes; 242 (0x80|0xF2)
after a status_fail for a bad master request.
"""

from __future__ import annotations

import argparse
import array
import os
import signal
import socket
import sys
from pathlib import Path

import trio

import wire

from .policy import PolicyFilter
from .signer_core import (LOG_BROKEN, LOG_UNUSUAL, MASTER_PERMISSIONS, VERSION, BadRequest, Client, NotInitialized,
                          SignerCore)
from .signer_keys import load_or_create_secret
from .signer_store import SignerStore

STATUS_FD, MASTER_FD = 0, 3
EXIT_MASTER_CLOSED = 2
EXIT_STATUS_FAIL = 242
FAIL_MASTER_IO, FAIL_INTERNAL_ERROR = 0, 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the simulated validating signer the way lightningd runs lightning_hsmd: requests on fd 3, "
        "status on fd 0, hsm_secret in the working directory (created if absent). It enforces VLS's "
        "commitment index rules and persists its state in ./sim-signer-state/ before every reply. "
        "Normally started by `hsmproxy sim-node`, not by hand.")
    parser.add_argument("--version", dest="print_version", action="store_true", help="print the signer version and exit")
    parser.add_argument("--policy-filter", action="append", default=[], metavar="TAG:ACTION",
                        help="turn a VLS policy tag into a warning or an error, e.g. policy-commitment-retry-same:warn; "
                             "a trailing * matches a prefix; repeatable, first match wins. VLS_PERMISSIVE=1 in the "
                             "environment makes every tag a warning. Also read from HSMPROXY_SIM_POLICY_FILTER "
                             "(comma separated), so a node can pass it through to a signer it execs.")
    parser.add_argument("--crash-at", metavar="MSG[:N]",
                        help="SIGKILL the signer after it persisted the state of the Nth request named MSG (e.g. "
                             "hsmd_sign_remote_commitment_tx:3) but before it replies: VLS's persist-then-reply window. "
                             "Also read from HSMPROXY_SIM_SIGNER_CRASH_AT")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync when persisting state (benchmarks only; "
                        "a killed process still loses nothing, a power cut might)")
    for flag in ("--developer", "--log-io", "--log-trace", "--dev-debug-self"):
        parser.add_argument(flag, action="store_true", help=f"accepted for lightning_hsmd compatibility ({flag[2:]}); ignored")


def policy_filter_from(args_filters: list[str], environ=os.environ) -> PolicyFilter:
    if environ.get("VLS_PERMISSIVE") == "1":
        return PolicyFilter.permissive()
    specs = list(args_filters)
    extra = environ.get("HSMPROXY_SIM_POLICY_FILTER", "")
    specs += [s.strip() for s in extra.split(",") if s.strip()]
    return PolicyFilter.parse(specs)


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
                bodies = reader.feed(data)
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
        self.seen[msg.name] = self.seen.get(msg.name, 0) + 1
        if self.crash_at and self.crash_at == (msg.name, self.seen[msg.name]):
            os.kill(os.getpid(), signal.SIGKILL)
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


async def _main(server: SignerServer) -> None:
    master = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(MASTER_FD))))
    async with trio.open_nursery() as nursery:
        await server.serve_master(master, nursery)


def run(args: argparse.Namespace) -> int:
    if args.print_version:
        print(VERSION)
        return 0
    try:
        policy_filter = policy_filter_from(args.policy_filter)
    except ValueError as exc:
        print(f"sim-signer: {exc}", file=sys.stderr)
        return 2
    for fd in (STATUS_FD, MASTER_FD):
        try:
            os.fstat(fd)
        except OSError:
            print(f"sim-signer: fd {fd} is not open; run me the way lightningd runs hsmd "
                  "(fd 0 = status socket, fd 3 = request socket), e.g. through `hsmproxy sim-node`", file=sys.stderr)
            return 2
    crash_spec = args.crash_at or os.environ.get("HSMPROXY_SIM_SIGNER_CRASH_AT")
    crash_at = None
    if crash_spec:
        name, _, n = crash_spec.partition(":")
        if name not in wire.SPECS_BY_NAME or (n and not n.isdigit()):
            print(f"sim-signer: --crash-at {crash_spec!r}: expected an hsmd message name and an optional count, "
                  "e.g. hsmd_sign_remote_commitment_tx:3", file=sys.stderr)
            return 2
        crash_at = (name, int(n) if n else 1)
    status = Status(STATUS_FD)
    status.send(wire.build("status_version", version=VERSION))
    workdir = Path.cwd()
    try:
        secret, created = load_or_create_secret(workdir)
        store = SignerStore(workdir, fsync=not args.no_fsync)
        store.lock()  # a previous signer of this directory may still be exiting
        core = SignerCore(secret, policy_filter, store.load_all())
    except (OSError, ValueError) as exc:
        status.send(wire.build("status_fail", failreason=FAIL_INTERNAL_ERROR, desc=str(exc)))
        return EXIT_STATUS_FAIL
    if created:
        status.log(LOG_UNUSUAL, "HSM: created new hsm_secret file")
    try:
        trio.run(_main, SignerServer(core, store, status, crash_at))
    except MasterFailure as exc:
        return exc.code
    except BaseExceptionGroup as group:  # trio wraps the failure of a task
        codes = [e.code for e in _leaves(group) if isinstance(e, MasterFailure)]
        if codes:
            return codes[0]
        raise
    return 0


def _leaves(group):
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e
