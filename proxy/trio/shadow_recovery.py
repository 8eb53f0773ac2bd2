"""The shadow from a WAL directory: its snapshot, then every valid record after it replayed.

The shadow hook calls this at start-up (with ``repair``), `hsmproxy state` without it. No trio
here: `hsmproxy state` does not pay for importing it.
"""

from __future__ import annotations

import functools
import gc
import os

from proxy.core.shadow import Shadow, apply_record, shadow_from_snapshot, shadow_jsonable
from proxy.core.wal_format import Recovery, WalError, epochs_of, snapshot_name
from proxy.trio.wal_store import read_state


def recover(directory: str, *, repair: bool, set_aside_damage: bool = False) -> tuple[Shadow, Recovery]:
    """Load the snapshot and replay the log (``proxy.trio.wal_store.read_state`` says what
    ``repair`` and ``set_aside_damage`` change on disk). A record the shadow cannot replay is
    damage, reported like a damaged log, never an exception of its own.

    The cyclic garbage collector is paused meanwhile: replay allocates millions of small acyclic
    objects, and the collector's passes over them would double the recovery time without ever
    finding garbage."""
    replayed: list[Shadow] = []

    def replay_into(snapshot):
        try:
            shadow = shadow_from_snapshot(snapshot) if snapshot is not None else Shadow()
        except Exception as exc:  # a valid checksum over content this version does not know
            name = snapshot_name(epochs_of(os.listdir(directory))[1][-1])
            raise WalError(f"{name} has a valid checksum but unexpected content ({type(exc).__name__}: {exc}); "
                           "read it with the hsmproxy version that wrote it, or move the WAL directory aside "
                           "and start with an empty one") from None
        replayed.append(shadow)
        return functools.partial(apply_record, shadow)

    enabled = gc.isenabled()
    gc.disable()
    try:
        recovery = read_state(directory, repair=repair, set_aside_damage=set_aside_damage, make_sink=replay_into)
        return replayed[-1], recovery
    finally:
        if enabled:
            gc.enable()


def wal_view(directory: str) -> dict:
    """What `hsmproxy state --json` shows of a WAL directory, read without changing it (while its
    proxy runs or after it stopped); a directory not made yet is an empty shadow."""
    if not os.path.isdir(directory):
        return shadow_jsonable(Shadow(), wal_dir=directory)
    shadow, recovery = recover(directory, repair=False)
    return shadow_jsonable(shadow, wal_dir=directory, recovery=recovery)
