"""The node's side of its signer, started and spoken to exactly as lightningd does with hsmd:
``PATH --version`` first, then fork/exec with fd 0 = status socketpair, fd 3 = request
socketpair, the data directory as working directory; blocking request/reply (lightningd's
hsm_sync_req); client fds received with SCM_RIGHTS after hsmd_client_hsmfd_reply.

Any hsmd-compatible executable works; nothing here depends on our simulated signer.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import subprocess
import threading
from pathlib import Path

import wire
from forkserver.launch import fork_script


class SignerGone(Exception):
    """The signer closed a connection or exited: lightningd treats this as fatal."""


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SignerGone(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class Connection:
    """One request socket (the master or a client fd): strictly one request, one reply."""

    def __init__(self, sock: socket.socket, name: str, on_exchange=None):
        self.sock = sock
        self.name = name
        self.on_exchange = on_exchange

    def request(self, msg: wire.Message) -> wire.Message:
        try:
            self.sock.sendall(wire.frame(wire.encode(msg)))
            length = int.from_bytes(read_exact(self.sock, wire.HEADER_LEN), "big")
            if length > wire.MAX_BODY_LEN:
                raise SignerGone(f"reply length {length} exceeds the protocol limit {wire.MAX_BODY_LEN}")
            body = read_exact(self.sock, length)
        except (OSError, SignerGone) as exc:
            raise SignerGone(f"{self.name}: {msg.name}: {exc}") from None
        reply = wire.decode(body)
        if self.on_exchange:
            self.on_exchange(self.name, msg, reply)
        return reply

    def receive_fd(self) -> int:
        """The one dummy byte carrying SCM_RIGHTS that follows hsmd_client_hsmfd_reply."""
        fds_size = socket.CMSG_SPACE(4)
        data, ancdata, _flags, _addr = self.sock.recvmsg(1, fds_size)
        if not data:
            raise SignerGone(f"{self.name}: EOF instead of the client fd")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(payload) >= 4:
                return array.array("i", payload[:4])[0]
        raise SignerGone(f"{self.name}: the byte after hsmd_client_hsmfd_reply carried no fd")

    def close(self) -> None:
        self.sock.close()


class StatusReader(threading.Thread):
    """Drains fd 0 (status_version, logs, client bad requests, status_fail) in the background."""

    def __init__(self, sock: socket.socket, on_message=None):
        super().__init__(daemon=True, name="signer-status")
        self.sock = sock
        self.messages: list[wire.Message] = []
        self.version_seen = threading.Event()
        self.on_message = on_message

    def run(self) -> None:
        reader = wire.FrameReader()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                bodies = reader.bodies(data)
            except wire.FramingError:
                return
            for body in bodies:
                try:
                    msg = wire.decode(body)
                except wire.DecodeError:
                    continue
                self.messages.append(msg)
                if msg.name == "status_version":
                    self.version_seen.set()
                if self.on_message:
                    self.on_message(msg)

    @property
    def version(self) -> str | None:
        return next((m.fields["version"] for m in self.messages if m.name == "status_version"), None)

    def last_problem(self) -> str | None:
        """The description of the last client_bad_request or status_fail, if any."""
        for m in reversed(self.messages):
            if m.name == "hsmstatus_client_bad_request":
                return m.fields["description"]
            if m.name == "status_fail":
                return m.fields["desc"]
        return None


class SignerProcess:
    def __init__(self, argv: list[str], workdir: Path, env: dict | None = None, on_status=None, on_exchange=None):
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.on_exchange = on_exchange
        self.version_output = self._version()
        status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        req_ours, req_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_fd, req_fd = status_theirs.fileno(), req_theirs.fileno()

        def lightningd_fd_layout():
            # Child side of fork: fd 0 = status, fd 3 = requests, 1/2 inherited, everything else closed.
            high_status = fcntl.fcntl(status_fd, fcntl.F_DUPFD, 100)
            high_req = fcntl.fcntl(req_fd, fcntl.F_DUPFD, 100)
            os.dup2(high_status, 0)
            os.dup2(high_req, 3)
            os.closerange(4, 65536)

        # In a process of the fork server, one of our own scripts is forked with the same layout.
        self.proc = fork_script(argv, {0: status_fd, 3: req_fd}, cwd=workdir, env=env) or \
            subprocess.Popen(argv, cwd=workdir, env=env, close_fds=False, preexec_fn=lightningd_fd_layout)
        status_theirs.close()
        req_theirs.close()
        self.status = StatusReader(status_ours, on_status)
        self.status.start()
        self.master = Connection(req_ours, "master", on_exchange)

    def _version(self) -> str:
        try:
            out = subprocess.run(self.argv + ["--version"], capture_output=True, text=True, timeout=30, env=self.env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SignerGone(f"cannot run signer {self.argv[0]!r} --version: {exc}") from None
        if out.returncode != 0:
            raise SignerGone(f"signer {self.argv[0]!r} --version exited {out.returncode}: {out.stderr.strip()[:200]}")
        return out.stdout.strip()

    def client(self, peer_id: bytes, dbid: int, permissions: int) -> Connection:
        reply = self.master.request(wire.build("hsmd_client_hsmfd", id=peer_id, dbid=dbid, permissions=permissions))
        if reply.name != "hsmd_client_hsmfd_reply":
            raise SignerGone(f"hsmd_client_hsmfd answered with {reply.name}")
        fd = self.master.receive_fd()
        return Connection(socket.socket(fileno=fd), f"client:{dbid}", self.on_exchange)

    def explain(self, error: Exception) -> str:
        """Why a connection died: the signer's own last complaint on fd 0 when it made one."""
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        self.status.join(timeout=0.5)
        problem = self.status.last_problem()
        code = self.proc.poll()
        parts = [str(error)]
        if problem:
            parts.append(f"signer said: {problem}")
        if code is not None:
            parts.append(f"signer exit status {code}")
        return "; ".join(parts)

    def close(self) -> None:
        """Close the master socket (hsmd exits on EOF), wait for the process, then drop fd 0."""
        self.master.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.status.join(timeout=1)
        self.status.sock.close()
