"""The shadow as a snapshot (plain lists and a dict, for msgpack) and back.

A checkpoint writes this into ``snapshot-<epoch>.bin``; recovery reads it before replaying the
log after it. The record layouts are on disk: ``Intent`` in its field order, ``ChannelShadow``
in its ``__slots__`` order, ``Divergence`` as ``_divergence_record`` lists it. Snapshots written
before must still load: add fields at the end only.
"""

from __future__ import annotations

from proxy.core.shadow.machine import Pending, Shadow
from proxy.core.shadow.model import ChannelShadow, Divergence, Intent

_CHANNEL_FIELDS = ChannelShadow.__slots__


def shadow_to_snapshot(shadow: Shadow) -> dict:
    return {
        "channels": [[getattr(ch, name) for name in _CHANNEL_FIELDS] for ch in shadow.channels.values()],
        "events": [_divergence_record(ev) for ev in shadow.events],
        "pending": [[list(p.intent), [_divergence_record(ev) for ev in p.events]] for p in shadow.pending.values()],
        "in_doubt": [list(i) for i in shadow.in_doubt],
        "recent_unanswered": [list(i) for i in shadow.recent_unanswered.values()],
        "next_op_id": shadow.next_op_id,
    }


def shadow_from_snapshot(snap: dict) -> Shadow:
    shadow = Shadow(next_op_id=snap["next_op_id"])
    for rec in snap["channels"]:
        ch = _channel_from_record(rec)
        shadow.channels[(ch.peer_id, ch.dbid)] = ch
    shadow.events = [Divergence(*r) for r in snap["events"]]
    for intent_rec, event_recs in snap["pending"]:
        intent = Intent._make(intent_rec)
        shadow.pending[intent.op_id] = Pending(intent, [Divergence(*r) for r in event_recs])
    shadow.in_doubt = [Intent._make(r) for r in snap["in_doubt"]]
    shadow.recent_unanswered = {i.op_id: i for i in map(Intent._make, snap["recent_unanswered"])}
    return shadow


def _divergence_record(ev: Divergence) -> list:
    return [ev.kind, ev.peer_id, ev.dbid, ev.index, ev.op_id, ev.conn, ev.request_seq, ev.time_ns,
            ev.shadow_digest, ev.request_digest, ev.detail, ev.status, ev.outcome_time_ns]


def _channel_from_record(rec: list) -> ChannelShadow:
    ch = ChannelShadow.__new__(ChannelShadow)
    for name, value in zip(_CHANNEL_FIELDS, rec, strict=True):
        setattr(ch, name, value)
    return ch
