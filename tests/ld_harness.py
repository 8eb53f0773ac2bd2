"""Plays lightningd toward an hsmd (or toward `hsmproxy wrap` standing in for one).

It starts the program exactly as ``lightningd/subd.c`` does (fd 0 status socket, fd 3 request
socket, fd 1/2 inherited, cwd and environment passed on), runs the ``--version`` check, and talks
like lightningd: blocking request -> reply on the master, ``hsmd_client_hsmfd`` read as the 6-byte
frame followed by ``fdpass_recv``. Everything it receives is recorded per connection, so two runs
(direct and through the wrapper) can be compared byte for byte.

Every blocking call is bounded by a socket timeout; ``close()`` kills what is left.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path

import wire
from proxy.trio.subdaemon import exit_status, spawn_subdaemon

CAPTURE = Path(__file__).parent / "vectors" / "hsmd-capture.jsonl"
HSMD_LIKE = Path(__file__).parent / "hsmd_like.py"
REPO = Path(__file__).parent.parent
TIMEOUT = 10.0


def write_script(path: Path, lines: list[str]) -> Path:
    path.write_text("#!/bin/sh\n" + "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def hsmd_like_script(directory: Path) -> Path:
    """An executable that runs tests/hsmd_like.py, as lightning_hsmd would be run."""
    return write_script(directory / "lightning_hsmd", [f'exec "{sys.executable}" "{HSMD_LIKE}" "$@"'])


def wrapper_script(directory: Path, signer: Path, *options: str) -> Path:
    """The two-line script users give to `lightningd --subdaemon=hsmd:SCRIPT`."""
    opts = " ".join(f'"{o}"' for o in options)
    return write_script(
        directory / "hsmd-wrapper.sh",
        [f'exec "{sys.executable}" -m hsmproxy.cli wrap --signer "{signer}" {opts} -- "$@"'],
    )


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def version_check(program: Path, cwd: Path) -> tuple[bytes, int]:
    done = subprocess.run([str(program), "--version"], capture_output=True, cwd=cwd, env=child_env(), timeout=TIMEOUT)
    return done.stdout, done.returncode


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    """n bytes, or None at end of stream (a short read then EOF is also None)."""
    chunks = bytearray()
    while len(chunks) < n:
        try:
            data = sock.recv(n - len(chunks))
        except ConnectionResetError:
            return None
        if not data:
            return None
        chunks += data
    return bytes(chunks)


def read_frame(sock: socket.socket) -> bytes | None:
    header = _recv_exactly(sock, 4)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    return _recv_exactly(sock, length)


def split_frames(buf: bytes) -> list[bytes]:
    """The complete frame bodies in ``buf`` (a partial last frame is left out)."""
    return wire.FrameReader().bodies(buf)


class Lightningd:
    """The lightningd side of one hsmd."""

    def __init__(self, argv: list[str], cwd: Path, env: dict | None = None):
        status_ours, status_theirs = socket.socketpair()
        master_ours, master_theirs = socket.socketpair()
        self.proc = spawn_subdaemon(
            argv, status_fd=status_theirs.fileno(), request_fd=master_theirs.fileno(), cwd=cwd, env=child_env(env)
        )
        status_theirs.close()
        master_theirs.close()
        self.status = status_ours
        self.master = master_ours
        for sock in (self.status, self.master):
            sock.settimeout(TIMEOUT)
        self.clients: dict[str, socket.socket] = {}
        self.transcript: list[tuple[str, str, str]] = []  # (conn, what, hex)
        self.status_bytes = bytearray()

    # ---- talking ------------------------------------------------------------------------------

    def conn(self, name: str) -> socket.socket:
        return self.master if name == "master" else self.clients[name]

    def request(self, name: str, body: bytes) -> bytes | None:
        """Send one request and block for its reply, as hsm_sync_req does; None at EOF."""
        sock = self.conn(name)
        try:
            sock.sendall(wire.frame(body))
        except (BrokenPipeError, ConnectionResetError):
            self.transcript.append((name, "send_failed", body.hex()))
            return None
        reply = read_frame(sock)
        self.transcript.append((name, "reply" if reply is not None else "eof", (reply or b"").hex()))
        return reply

    def client_hsmfd(self, name: str, body: bytes, via: str = "master") -> socket.socket | None:
        """``hsm_get_client_fd``: request 9, read the 109 frame, then ``fdpass_recv``."""
        sock = self.conn(via)
        sock.sendall(wire.frame(body))
        reply = read_frame(sock)
        self.transcript.append((via, "reply", (reply or b"").hex()))
        if reply is None:
            return None
        data, ancdata, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(array.array("i").itemsize))
        fds = [fd for lvl, kind, payload in ancdata if lvl == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", payload[: len(payload) - len(payload) % 4])]
        self.transcript.append((via, "carrier", f"{data.hex()} fds={len(fds)} ctrunc={bool(flags & socket.MSG_CTRUNC)}"))
        if len(fds) != 1:
            raise AssertionError(f"expected exactly one fd after 109, got {len(fds)}")
        client = socket.socket(fileno=fds[0])
        client.settimeout(TIMEOUT)
        if name in self.clients:
            self.clients[name].close()
        self.clients[name] = client
        return client

    def expect_eof(self, name: str) -> bool:
        sock = self.clients[name]
        try:
            data = sock.recv(1)
        except (ConnectionResetError, socket.timeout):
            data = b"x"
        self.transcript.append((name, "eof_check", data.hex()))
        return data == b""

    def close_client(self, name: str) -> None:
        self.clients.pop(name).close()

    def close_master(self) -> None:
        self.master.close()

    def read_status_until_eof(self) -> bytes:
        """Everything on fd 0 until the other side closes it (it does when hsmd exits)."""
        while True:
            data = self.status.recv(65536)
            if not data:
                return bytes(self.status_bytes)
            self.status_bytes += data

    def drain_status(self, quiet: float = 0.05) -> None:
        while select.select([self.status], [], [], quiet)[0]:
            data = self.status.recv(65536)
            if not data:
                return
            self.status_bytes += data

    def status_frames(self) -> list[bytes]:
        return split_frames(bytes(self.status_bytes))

    def wait(self, timeout: float = TIMEOUT) -> int:
        return exit_status(self.proc.wait(timeout=timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for sock in (self.status, self.master, *self.clients.values()):
            sock.close()


def capture_session(session: str = "main") -> list[dict]:
    with open(CAPTURE) as f:
        return [r for r in map(json.loads, f) if r["session"] == session]


def replay(ld: Lightningd, records: list[dict]) -> None:
    """Drive a captured session: send what lightningd sent, on the connection it used, and read
    like lightningd. Client fds are obtained where the capture obtained them."""
    pending_client_fd = None
    for rec in records:
        if rec["kind"] == "event":
            if rec["event"] == "fd_received":
                ld.client_hsmfd(rec["conn"], pending_client_fd)
                pending_client_fd = None
            elif rec["event"] == "eof" and rec.get("conn", "status") != "status":
                ld.expect_eof(rec["conn"])
            elif rec["event"] == "closed_by_node" and rec["conn"] != "master":
                ld.close_client(rec["conn"])
            continue
        if rec["dir"] != "node->signer":
            continue
        body = bytes.fromhex(rec["hex"])
        if rec["conn"] == "master" and rec["type"] == 9:
            pending_client_fd = body  # sent when the capture says the fd arrived
            continue
        ld.request(rec["conn"], body)
