"""Wrapper mode: stand where lightningd expects ``lightning_hsmd`` and run the real signer behind.

lightningd gives us fd 0 (status socket), fd 3 (request socket), fd 1/2, its environment and its
working directory. We give the signer the same layout on socketpairs of our own, relay fd 0 and
fd 3 (and every client fd passed after a 109 reply) through the relay shell, and exit as the
signer exits.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from dataclasses import dataclass

import trio

from forkserver.launch import ForkedProcess
from proxy.core.hooks import ROLE_MASTER, ROLE_STATUS, ConnContext, HookChain
from proxy.core.relay import DEFAULT_LIMITS, Limits
from proxy.trio.fdpass import SocketEnd
from proxy.trio.shell import RelayShell, StatusWriter
from proxy.trio.subdaemon import REQUEST_FD, exit_status, spawn_subdaemon, wait_process

STATUS_FD = 0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class WrapSetupError(RuntimeError):
    """The wrapper was not started the way lightningd starts hsmd."""


def _require_socket(fd: int, what: str) -> None:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise WrapSetupError(
            f"fd {fd} ({what}) is not open: `hsmproxy wrap` must be started by lightningd "
            "(--subdaemon=hsmd:SCRIPT), which passes the status socket as fd 0 and the request socket as fd 3"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise WrapSetupError(
            f"fd {fd} ({what}) is not a socket: `hsmproxy wrap` must be started by lightningd "
            "(--subdaemon=hsmd:SCRIPT), not by hand; for a signer on a socket use `hsmproxy serve`"
        )


def take_node_sockets() -> tuple[socket.socket, socket.socket]:
    """Take lightningd's fd 0 and fd 3 for ourselves, moved to high fds, so fd 3 is free for the
    signer's layout and fd 0 no longer keeps the status socket open behind our back."""
    _require_socket(STATUS_FD, "status socket")
    _require_socket(REQUEST_FD, "request socket")
    status = socket.socket(fileno=os.dup(STATUS_FD))
    master = socket.socket(fileno=os.dup(REQUEST_FD))
    os.close(REQUEST_FD)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, STATUS_FD)
    os.close(devnull)
    return status, master


@dataclass(frozen=True)
class StartedSigner:
    """The signer process and our ends of its fd 0 (status) and fd 3 (requests)."""

    proc: subprocess.Popen | ForkedProcess
    status: socket.socket
    master: socket.socket


def start_signer(argv: list[str]) -> StartedSigner:
    """Start the signer with the hsmd fd layout. Call it before ``trio.run``: in a process of
    the fork server the signer is forked, and a child must not inherit a running trio."""
    status_ours, status_theirs = socket.socketpair()
    master_ours, master_theirs = socket.socketpair()
    try:
        proc = spawn_subdaemon(argv, status_fd=status_theirs.fileno(), request_fd=master_theirs.fileno())
    except OSError as exc:
        status_ours.close()
        master_ours.close()
        raise WrapSetupError(f"cannot start the signer {argv[0]!r}: {exc}") from None
    finally:
        status_theirs.close()
        master_theirs.close()
    return StartedSigner(proc, status_ours, master_ours)


async def _forward_signals(proc: subprocess.Popen | ForkedProcess) -> None:
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        async for signum in signals:
            if proc.returncode is None:
                proc.send_signal(signum)


async def run_wrapper(
    signer: StartedSigner,
    hooks: HookChain,
    node_status: socket.socket,
    node_master: socket.socket,
    *,
    decode: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    """Relay between the node and the signer ``start_signer`` started until it exits; its exit status."""
    proc = signer.proc
    shell = RelayShell(hooks, status=StatusWriter(None), decode=decode, limits=limits)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_signals, proc)
            nursery.start_soon(
                shell.run_status,
                SocketEnd.from_stdlib(node_status),
                SocketEnd.from_stdlib(signer.status),
                ConnContext(conn_id=shell.new_conn_id(), role=ROLE_STATUS),
            )
            nursery.start_soon(
                shell.run_connection,
                SocketEnd.from_stdlib(node_master),
                SocketEnd.from_stdlib(signer.master),
                ConnContext(conn_id=shell.new_conn_id(), role=ROLE_MASTER, permissions=1027),
            )
            status = exit_status(await wait_process(proc))
            # The signer is gone: forward everything it wrote (its sockets now read to EOF), however
            # long the node takes to read it; a node that closes or goes ends that wait too (the
            # write fails). Then stop relaying what the node still sends to nobody.
            await shell.wait_signer_side_closed()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # we are being torn down: never leave an orphan signer
            proc.kill()
            proc.wait()
    await hooks.signer_exit(status)
    return status
