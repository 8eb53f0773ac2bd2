"""The fork server: one process imports everything once, then forks a child per request.

Its starter (the chaos runner) holds one end of a SOCK_SEQPACKET socketpair; the server holds
the other (``--fd=N``). A request is one JSON packet (the CLI arguments, environment, working
directory, whether to start a new session, which child fds the passed fds become) with the fds
attached (SCM_RIGHTS); the answer is ``{"pid": N}`` or ``{"error": TEXT}``. Children are forked
with CLONE_PARENT: they are the *starter's* children, so the starter gets their SIGCHLD, waits
for them and sees their exit status as with exec, and a dead fork server takes no child with it.
The server exits when the starter closes its end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence

from forkserver.launch import ForkedProcess, fork, run_child

MAX_PACKET = 1 << 20
MAX_FDS = 8
ANSWER_TIMEOUT = 60.0  # the first answer waits for the server's imports, on a machine that may be busy
CMDLINE_ROOM = 4096  # bytes of command line the children can show (see launch.set_command_line)


class ForkServerError(RuntimeError):
    """The fork server cannot start a process (it died, hung or the fork failed)."""


def serve(sock: socket.socket) -> int:
    """The server's loop: fork one child per request until the starter closes its end."""
    while True:
        try:
            packet, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, MAX_FDS)
        except ConnectionResetError:
            return 0
        if not packet:
            return 0
        try:
            request = json.loads(packet)
            layout = dict(zip(request["fds"], fds, strict=True))
            if not os.path.isdir(request["cwd"]):  # as Popen(cwd=...) fails in the parent, not in the child
                raise FileNotFoundError(f"working directory {request['cwd']!r} does not exist")
            pid = fork(sibling=True)
            if pid == 0:
                sock.close()  # only the server may hold its end: the starter sees EOF when it dies
                run_child(request["args"], layout, cwd=request["cwd"], env=request["env"],
                          new_session=request["new_session"])
            answer = {"pid": pid}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(answer).encode())


class ForkServer:
    """The starter's side: start the server, ask it for processes, stop it."""

    def __init__(self, argv: Sequence[str]):
        """Start the server: ``argv`` runs a module that imports everything the children need,
        registers the entry point and calls ``serve`` on the socket ``--fd=N``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [*argv, f"--fd={theirs.fileno()}", "--cmdline-room=" + "." * CMDLINE_ROOM], stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True)  # a Ctrl-C is for the session, not for it
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(ANSWER_TIMEOUT)
        self._lock = threading.Lock()  # one request at a time on the one socket

    def _gone(self, what: str) -> ForkServerError:
        code = self.proc.poll()
        state = f"exited with status {code}" if code is not None else "is still running"
        return ForkServerError(f"the fork server (pid {self.proc.pid}) {what}; it {state}. "
                               "Run again with --no-fork-server to start every process by exec")

    def spawn(self, args: Sequence[str], fds: Mapping[int, int], *, env: Mapping[str, str],
              cwd: str | os.PathLike, new_session: bool = False) -> ForkedProcess:
        """Fork ``hsmproxy ARGS`` with ``fds`` (child fd -> our fd) and nothing else open; it is our
        child. Blocking (milliseconds; up to ``ANSWER_TIMEOUT`` while the server imports)."""
        request = json.dumps({"args": list(args), "fds": list(fds), "env": dict(env), "cwd": os.fspath(cwd),
                              "new_session": new_session}).encode()
        with self._lock:
            try:
                socket.send_fds(self.sock, [request], list(fds.values()))
                answer = self.sock.recv(MAX_PACKET)
            except TimeoutError:
                self.proc.kill()  # a late answer must not be taken for the next request's
                self.proc.wait()
                raise self._gone(f"did not answer within {ANSWER_TIMEOUT:.0f} s and was stopped") from None
            except OSError as exc:
                raise self._gone(f"cannot be reached ({exc})") from None
        if not answer:
            raise self._gone("closed its socket")
        reply = json.loads(answer)
        if "error" in reply:
            raise ForkServerError(f"the fork server could not start `hsmproxy {' '.join(args[:1])}`: {reply['error']}")
        return ForkedProcess(reply["pid"])

    def close(self) -> None:
        """Stop the server (it exits on EOF) and reap it; its children live on, they are ours."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
