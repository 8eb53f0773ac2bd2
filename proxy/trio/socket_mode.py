"""Socket mode: a signer reached over a stream socket (Unix or TCP) speaking framed hsmd messages,
e.g. VLS's remote_hsmd_socket. Every accepted connection gets its own upstream connection."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass

import trio

from proxy.core.hooks import ROLE_SOCKET, ConnContext, HookChain
from proxy.trio.fdpass import SocketEnd
from proxy.trio.shell import RelayShell

log = logging.getLogger("hsmproxy.serve")


class AddressError(ValueError):
    """An ADDR argument that is neither unix:PATH nor tcp:HOST:PORT."""


@dataclass(frozen=True)
class Address:
    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return Address("unix", path=rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 <= int(port) < 65536:
            return Address("tcp", host=host, port=int(port))
    raise AddressError(
        f"address {text!r} is not unix:PATH or tcp:HOST:PORT (e.g. unix:/run/hsmd.sock, tcp:127.0.0.1:7701)"
    )


def _unix_listener(path: str) -> socket.socket:
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise AddressError(
                f"--listen unix:{path}: a file that is not a socket is in the way; remove it or pick another path"
            )
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale socket left by a process that is gone
        else:
            raise AddressError(f"--listen unix:{path}: another process is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)  # whoever can connect can ask for signatures
    sock.listen(64)
    return sock


def _tcp_listener(addr: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr.host, addr.port))
    sock.listen(64)
    return sock


def open_listener(addr: Address) -> socket.socket:
    return _unix_listener(addr.path) if addr.kind == "unix" else _tcp_listener(addr)


async def connect(addr: Address) -> trio.socket.SocketType:
    if addr.kind == "unix":
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(addr.path)
        except BaseException:
            sock.close()
            raise
        return sock
    stream = await trio.open_tcp_stream(addr.host, addr.port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream.socket


def _tune(sock: trio.socket.SocketType) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small request/reply frames


async def serve(
    listen: socket.socket,
    upstream: Address,
    hooks: HookChain,
    *,
    decode: bool = True,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forever; relay each connection to its own upstream connection."""
    shell = RelayShell(hooks, decode=decode)
    listener = trio.socket.from_stdlib_socket(listen)
    async with trio.open_nursery() as nursery:
        await shell.hooks.start(nursery)
        task_status.started(shell)
        while True:
            try:
                down, _ = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed (%s); retrying in 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            nursery.start_soon(_relay_one, shell, down, upstream)


async def _relay_one(shell: RelayShell, down: trio.socket.SocketType, upstream: Address) -> None:
    _tune(down)
    try:
        up = await connect(upstream)
    except OSError as exc:
        log.error("cannot reach the signer at %s (%s); closing the incoming connection", upstream, exc)
        down.close()
        return
    ctx = ConnContext(conn_id=shell.new_conn_id(), role=ROLE_SOCKET)
    await shell.run_connection(SocketEnd(down), SocketEnd(up), ctx)
