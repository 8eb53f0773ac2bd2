"""Start a process with the fd layout lightningd gives a subdaemon (``lightningd/subd.c``).

fd 0 = status socket, fd 1/2 inherited, fd 3 = request socket, nothing else. The environment
and the working directory are inherited (hsmd opens ``hsm_secret`` relative to it).
"""

from __future__ import annotations

import os
import subprocess

import trio

from forkserver.launch import ForkedProcess, fork_script

REQUEST_FD = 3


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def spawn_subdaemon(argv: list[str], *, status_fd: int, request_fd: int,
                    **popen_kwargs) -> subprocess.Popen | ForkedProcess:
    """``Popen`` with ``status_fd`` as the child's fd 0 and ``request_fd`` as its fd 3.

    fd 3 of this process is borrowed for the duration of the fork and restored afterwards,
    because ``pass_fds`` keeps fd numbers (call this before other tasks can touch fd 3).
    In a process of the fork server, one of our own scripts is forked instead of exec'd (call
    this before ``trio.run``).
    """
    if not popen_kwargs:
        forked = fork_script(argv, {0: status_fd, REQUEST_FD: request_fd})
        if forked is not None:
            return forked
    saved = os.dup(REQUEST_FD) if _fd_is_open(REQUEST_FD) else None
    try:
        if request_fd != REQUEST_FD:
            os.dup2(request_fd, REQUEST_FD)  # inheritable, unlike request_fd itself
        else:
            os.set_inheritable(REQUEST_FD, True)
        return subprocess.Popen(argv, stdin=status_fd, pass_fds=(REQUEST_FD,), close_fds=True, **popen_kwargs)
    finally:
        if saved is not None:
            os.dup2(saved, REQUEST_FD, inheritable=False)
            os.close(saved)
        elif request_fd != REQUEST_FD:
            os.close(REQUEST_FD)


async def wait_process(proc: subprocess.Popen | ForkedProcess) -> int:
    """Wait for a child without a thread (its pidfd becomes readable when it exits); its returncode."""
    if proc.returncode is None:
        pidfd = os.pidfd_open(proc.pid)
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)
    return proc.wait()


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_version(signer: str) -> int:
    """``--version``: lightningd compares the output byte for byte, so the signer prints it."""
    completed = subprocess.run([signer, "--version"])
    return exit_status(completed.returncode)
