"""Socket mode: a signer reached over a stream socket (Unix or TCP) speaking framed hsmd messages,
e.g. VLS's remote_hsmd_socket. Every accepted connection gets its own upstream connection."""

from __future__ import annotations

import errno
import logging
import socket

import trio

from proxy.core.hooks import ROLE_SOCKET, ConnContext, HookChain
from proxy.core.relay import DEFAULT_LIMITS, Limits
from proxy.trio.addresses import Address, AddressError
from proxy.trio.fdpass import SocketEnd
from proxy.trio.shell import RelayShell

log = logging.getLogger("hsmproxy.serve")


def check_listen_address(address: Address, *, allow_remote: bool) -> None:
    """`serve --listen` hands whoever connects a signer that authenticates nobody: anything they
    ask is signed. So an address other machines can reach (any TCP address but loopback: a typo
    such as 0.0.0.0 is enough) is refused with :class:`AddressError`, unless ``allow_remote``
    (``--listen-allow-remote``) says it is meant; then it is allowed, and logged loudly."""
    if address.is_loopback:
        return
    if not allow_remote:
        raise AddressError(
            f"--listen {address}: not a loopback address, so other machines could connect and have the "
            "signer sign anything (nothing authenticates them); listen on 127.0.0.1, [::1] or unix:PATH, "
            "or add --listen-allow-remote if the network in front of it is yours to trust"
        )
    log.warning("LISTENING ON %s, REACHABLE FROM OTHER MACHINES (--listen-allow-remote): whoever connects "
                "can have the signer sign anything; nothing authenticates them", address)


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
    limits: Limits = DEFAULT_LIMITS,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forever; relay each connection to its own upstream connection."""
    shell = RelayShell(hooks, decode=decode, limits=limits)
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
