"""The shadow from a WAL directory: its snapshot, then every valid record after it replayed.

The shadow hook calls this at start-up (with ``repair``), `hsmproxy state` without it. No trio
here: `hsmproxy state` does not pay for importing it.
"""

from __future__ import annotations

import functools
import gc

from proxy.core.shadow import Shadow, apply_record, shadow_from_snapshot
from proxy.core.wal_format import Recovery
from proxy.trio.wal_store import read_state


def recover(directory: str, *, repair: bool) -> tuple[Shadow, Recovery]:
    """Load the snapshot and replay the log. The cyclic garbage collector is paused meanwhile:
    replay allocates millions of small acyclic objects, and the collector's passes over them
    would double the recovery time without ever finding garbage."""
    replayed: list[Shadow] = []

    def replay_into(snapshot):
        shadow = shadow_from_snapshot(snapshot) if snapshot is not None else Shadow()
        replayed.append(shadow)
        return functools.partial(apply_record, shadow)

    enabled = gc.isenabled()
    gc.disable()
    try:
        recovery = read_state(directory, repair=repair, make_sink=replay_into)
        return replayed[-1], recovery
    finally:
        if enabled:
            gc.enable()
