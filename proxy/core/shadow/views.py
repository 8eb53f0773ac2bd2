"""The shadow as JSON: what `hsmproxy state --json`, the control API (``/shadow/...``) and the
trace show. Bytes become hex; the keys are part of the interface.

Plain functions of the values' attributes (``proxy.core.shadow.model`` calls back into this
module for ``to_jsonable``, so nothing here imports the model).
"""

from __future__ import annotations

from proxy.core.wal_format import Recovery


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _hex_if_set(value: bytes | None) -> str | None:
    return value.hex() if value else None  # an empty digest shows as null too


def channel_jsonable(ch) -> dict:
    """A ``ChannelShadow``: the counters, the digests and points, and the last request seen."""
    return {
        "peer_id": ch.peer_id.hex(),
        "dbid": ch.dbid,
        "next_counterparty_commit_num": ch.next_counterparty_commit_num,
        "next_counterparty_revoke_num": ch.next_counterparty_revoke_num,
        "next_holder_commit_num": ch.next_holder_commit_num,
        "current_counterparty_point": _hex(ch.current_counterparty_point),
        "current_counterparty_digest": _hex(ch.current_counterparty_digest),
        "previous_counterparty_point": _hex(ch.previous_counterparty_point),
        "previous_counterparty_digest": _hex(ch.previous_counterparty_digest),
        "pending_holder_digest": _hex(ch.pending_holder_digest),
        "current_holder_digest": _hex(ch.current_holder_digest),
        "max_point_handed_out": ch.max_point_handed_out,
        "last_request_kind": ch.last_request_kind,
        "last_request_index": ch.last_request_index,
        "last_request_time_ns": ch.last_request_time_ns,
        "requests": ch.requests,
    }


def divergence_jsonable(ev) -> dict:
    """A ``Divergence`` event."""
    return {
        "kind": ev.kind,
        "peer_id": ev.peer_id.hex(),
        "dbid": ev.dbid,
        "index": ev.index,
        "status": ev.status,
        "shadow_digest": _hex_if_set(ev.shadow_digest),
        "request_digest": _hex_if_set(ev.request_digest),
        "op_id": ev.op_id,
        "conn": ev.conn,
        "request_seq": ev.request_seq,
        "time_ns": ev.time_ns,
        "outcome_time_ns": ev.outcome_time_ns,
        "detail": ev.detail,
        "in_doubt": ev.in_doubt,  # compared with a request in doubt after a proxy restart
        "reply_forwarded": ev.reply_forwarded,  # crashed_in_window: had the node been sent the signature?
    }


def intent_jsonable(intent) -> dict:
    """An ``Intent`` in flight or in doubt (its point and funding outpoint are left out)."""
    return {"kind": intent.kind, "peer_id": intent.peer_id.hex(), "dbid": intent.dbid, "index": intent.index,
            "digest": _hex_if_set(intent.digest), "op_id": intent.op_id,
            "request_seq": intent.seq, "time_ns": intent.time_ns}


def divergences_jsonable(shadow) -> list:
    return [divergence_jsonable(ev) for ev in shadow.events]


def shadow_jsonable(shadow, *, wal_dir: str | None = None, recovery: Recovery | None = None) -> dict:
    """A whole ``Shadow``: channels (sorted by peer and dbid), events, intents in flight and in
    doubt; with ``recovery``, what reading the WAL found (``wal.damage``: what could not be replayed)."""
    out = {
        "channels": [channel_jsonable(ch) for ch in sorted(shadow.channels.values(), key=lambda c: (c.peer_id, c.dbid))],
        "divergences": divergences_jsonable(shadow),
        "in_flight": [intent_jsonable(p.intent) for p in shadow.pending.values()],
        "in_doubt": [intent_jsonable(i) for i in shadow.in_doubt],
        "wal_dir": wal_dir,
    }
    if recovery is not None:
        out["wal"] = {"epoch": recovery.epoch, "records": recovery.record_count,
                      "invalid_tail_bytes": recovery.cut_bytes, "invalid_tail": recovery.problem,
                      "damage": [d.jsonable() for d in recovery.damage]}
    return out
