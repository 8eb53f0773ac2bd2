"""The shadow as a snapshot (plain lists and a dict, for msgpack) and back.

A checkpoint writes this into ``snapshot-<epoch>.bin``; recovery reads it before replaying the
log after it. The record layouts are on disk: ``Intent`` in its field order, ``ChannelShadow``
in its ``__slots__`` order, ``Divergence`` as ``_divergence_record`` lists it. Snapshots written
before must still load: add fields at the end only. Fields added after the first layout are
left out while they hold their default, so a snapshot of the same state keeps the same bytes.
"""

from __future__ import annotations

from proxy.core.shadow.machine import Pending, Shadow
from proxy.core.shadow.model import CRASHED_IN_WINDOW, ChannelShadow, Divergence, Intent

_CHANNEL_FIELDS = ChannelShadow.__slots__
_CHANNEL_FIELDS_V1 = 19  # up to ``requests``; later fields are written only when set (not None)


def shadow_to_snapshot(shadow: Shadow) -> dict:
    return {
        "channels": [_channel_record(ch) for ch in shadow.channels.values()],
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
    for ev in shadow.events:  # the latest crash event of each channel, as the live shadow has it
        if ev.kind == CRASHED_IN_WINDOW:
            shadow.crashes[(ev.peer_id, ev.dbid)] = ev
    return shadow


def _divergence_record(ev: Divergence) -> list:
    rec = [ev.kind, ev.peer_id, ev.dbid, ev.index, ev.op_id, ev.conn, ev.request_seq, ev.time_ns,
           ev.shadow_digest, ev.request_digest, ev.detail, ev.status, ev.outcome_time_ns]
    if ev.reply_forwarded is not None:
        return rec + [ev.in_doubt, ev.reply_forwarded]
    return rec + [True] if ev.in_doubt else rec


def _channel_record(ch: ChannelShadow) -> list:
    rec = [getattr(ch, name) for name in _CHANNEL_FIELDS]
    while len(rec) > _CHANNEL_FIELDS_V1 and rec[-1] is None:
        rec.pop()
    return rec


def _channel_from_record(rec: list) -> ChannelShadow:
    if not _CHANNEL_FIELDS_V1 <= len(rec) <= len(_CHANNEL_FIELDS):
        raise ValueError(f"a channel record of the snapshot has {len(rec)} fields; expected "
                         f"{_CHANNEL_FIELDS_V1} to {len(_CHANNEL_FIELDS)}")
    ch = ChannelShadow.__new__(ChannelShadow)
    for name, value in zip(_CHANNEL_FIELDS, rec):
        setattr(ch, name, value)
    for name in _CHANNEL_FIELDS[len(rec):]:
        setattr(ch, name, None)  # a field added after this snapshot was written
    return ch
