"""Processes, from Linux /proc: the wrapper's one child is the signer it started
(``proxy.trio.subdaemon``), the process a ``kill-signer`` fault signals; chaos sessions look
for the processes a run left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def live_processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process that is not a
    zombie: field 0 is the state, 1 the parent, 2 the process group, 19 the start time."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields and fields[0] != b"Z":
            yield int(entry.name), fields


def only_child_pid() -> int | None:
    """The pid of this process's only child; None when there is none or more than one."""
    children: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children[0] if len(children) == 1 else None
