"""`hsmproxy serve` as a real process, and a signer on a socket that answers like hsmd: shared by
the socket-mode tests and the tests of hooks served through it (faults, metrics)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import trio

from tests import ld_harness as h


def captured_pair(request_name: str) -> tuple[bytes, bytes]:
    records = [r for r in h.capture_session("main") if r["kind"] == "msg" and r["conn"] != "status"]
    for req, rep in zip(records, records[1:]):
        if req["name"] == request_name and req["dir"] == "node->signer":
            return bytes.fromhex(req["framed_hex"]), bytes.fromhex(rep["framed_hex"])
    raise LookupError(request_name)


REQUEST, REPLY = captured_pair("hsmd_sign_remote_commitment_tx")


async def signer_server(listener: trio.SocketListener, received: list, task_status=trio.TASK_STATUS_IGNORED):
    """Answers every complete REQUEST with REPLY; records what each connection sent."""

    async def handle(stream):
        got = bytearray()
        async with stream:
            while data := await stream.receive_some(65536):
                got += data
                while got.startswith(REQUEST):
                    del got[: len(REQUEST)]
                    await stream.send_all(REPLY)
                    received.append(REQUEST)
            received.append(bytes(got))  # leftovers, e.g. garbage

    async with trio.open_nursery() as nursery:
        task_status.started()
        await nursery.start(trio.serve_listeners, handle, [listener])


def start_serve(listen: str, connect: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hsmproxy.cli", "serve", "--listen", listen, "--connect", connect, *extra],
        env=h.child_env(), stderr=subprocess.PIPE, text=True,
    )


async def connect_when_ready(addr, proc: subprocess.Popen) -> trio.SocketStream:
    with trio.fail_after(10):
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if addr.kind == "unix":
                    return await trio.open_unix_socket(addr.path)
                return await trio.open_tcp_stream(addr.host, addr.port)
            except OSError:
                await trio.sleep(0.02)


async def round_trips(stream: trio.SocketStream, n: int) -> None:
    for _ in range(n):
        await stream.send_all(REQUEST)
        got = b""
        while len(got) < len(REPLY):
            got += await stream.receive_some(len(REPLY) - len(got))
        assert got == REPLY


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await stream.receive_some(n - len(got))
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
    return got


def unix_listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(8)
    return sock
