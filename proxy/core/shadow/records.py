"""The WAL's view of the shadow: every input of the shadow as a record, and replay.

A record is a msgpack list whose first item is its tag:
    ["i", *Intent]                              Shadow.begin(intent)
    ["o", op_id, outcome, time_ns, detail]      Shadow.finish(op_id, outcome, time_ns, detail)
    ["r", time_ns]                              Shadow.restart()
    ["c", time_ns, forwarded, conn, peer_id, dbid]
                                                Shadow.connection_ended(time_ns, forwarded, conn, peer_id, dbid)
Replaying them in order makes the same calls the live proxy made, so it rebuilds the same
shadow and the same divergence events. Logs written before a tag existed simply hold none.
"""

from __future__ import annotations

from proxy.core.shadow.machine import Shadow
from proxy.core.shadow.model import Intent
from proxy.core.shadow.snapshot import shadow_from_snapshot

INTENT_RECORD, OUTCOME_RECORD, RESTART_RECORD, CONNECTION_END_RECORD = "i", "o", "r", "c"
_make_intent = Intent._make  # a local name: replay calls it for every intent of the log


def intent_record(intent: Intent) -> list:
    return [INTENT_RECORD, *intent]


def outcome_record(op_id: int, outcome: str, time_ns: int, detail: str = "") -> list:
    return [OUTCOME_RECORD, op_id, outcome, time_ns, detail]


def restart_record(time_ns: int) -> list:
    return [RESTART_RECORD, time_ns]


def connection_end_record(time_ns: int, forwarded: list[int], conn: int | None = None,
                          peer_id: bytes | None = None, dbid: int | None = None) -> list:
    return [CONNECTION_END_RECORD, time_ns, list(forwarded), conn, peer_id, dbid]


def apply_record(shadow: Shadow, rec: list) -> None:
    """Replay one WAL record: the same call the live proxy made when it wrote it."""
    tag = rec[0]
    if tag == INTENT_RECORD:
        shadow.begin(_make_intent(rec[1:]))
    elif tag == OUTCOME_RECORD:
        shadow.finish(rec[1], rec[2], rec[3], rec[4])
    elif tag == RESTART_RECORD:
        shadow.restart()
    elif tag == CONNECTION_END_RECORD:
        shadow.connection_ended(rec[1], rec[2], rec[3], rec[4], rec[5])
    else:
        raise ValueError(f"unknown WAL record tag {tag!r}")


def load_shadow(snapshot: dict | None, records: list) -> Shadow:
    """The shadow a snapshot (or none: an empty shadow) and the records after it describe."""
    shadow = shadow_from_snapshot(snapshot) if snapshot is not None else Shadow()
    for rec in records:
        apply_record(shadow, rec)
    return shadow
