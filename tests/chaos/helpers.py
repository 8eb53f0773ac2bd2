"""`hsmproxy chaos` as a real process, for the story and campaign tests."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

CLI = [sys.executable, "-m", "hsmproxy.cli"]


async def chaos(*args: str, timeout: float = 240) -> tuple[int, str, str]:
    with trio.fail_after(timeout):
        done = await trio.run_process([*CLI, "chaos", "--no-live", *args], capture_stdout=True,
                                      capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def command_line(pid: int) -> str:
    """The command line of a process, as ps shows it; "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
