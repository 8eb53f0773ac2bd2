"""Fork a child that works and reports acknowledgements on a pipe, SIGKILL it at a random moment,
and collect every acknowledgement it managed to write (what "the node had been told")."""

from __future__ import annotations

import os
import random
import select
import signal
import struct
import time


def run_and_sigkill(child, directory: str, rng: random.Random, acked: dict, ack: struct.Struct,
                    max_seconds: float) -> None:
    """Run ``child(directory, write_fd, seed)`` in a forked process, kill it after up to
    ``max_seconds``, and fold its ``(dbid, n, digest)`` acknowledgements into ``acked``."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            os.close(read_fd)
            child(directory, write_fd, rng.randrange(1 << 30))
        finally:
            os._exit(0)
    os.close(write_fd)
    buf = b""
    deadline = time.monotonic() + rng.uniform(0.0, max_seconds)
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([read_fd], [], [], left)[0]:
                buf += os.read(read_fd, 65536)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    while chunk := os.read(read_fd, 65536):
        buf += chunk
    os.close(read_fd)
    for off in range(0, len(buf) - len(buf) % ack.size, ack.size):
        dbid, n, digest = ack.unpack_from(buf, off)
        acked[dbid] = (n, digest)
