"""`hsmproxy chaos` as a real process, for the story and campaign tests."""

from __future__ import annotations

import sys

import trio

CLI = [sys.executable, "-m", "hsmproxy.cli"]


async def chaos(*args: str, timeout: float = 240) -> tuple[int, str, str]:
    with trio.fail_after(timeout):
        done = await trio.run_process([*CLI, "chaos", "--no-live", *args], capture_stdout=True,
                                      capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()
