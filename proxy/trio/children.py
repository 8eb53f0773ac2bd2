"""This process's children, from Linux /proc: the wrapper's one child is the signer it started
(``proxy.trio.subdaemon``), the process a ``kill-signer`` fault signals."""

from __future__ import annotations

from pathlib import Path


def only_child_pid() -> int | None:
    """The pid of this process's only child; None when there is none or more than one."""
    children: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children[0] if len(children) == 1 else None
