"""What a sweep reads from the proxies' traces: the requests a channel's channeld made, and the
fault that fired (with the commitment number of the request it hit).

Pure functions over trace records (``proxy.addons.trace.read_trace``), so they are tested with
plain lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import wire
from proxy.addons.trace import TraceFormatError, read_trace

# Request fields that say which commitment a request is about.
_INDEX_FIELDS = ("commit_num", "revoke_num", "n")


def trace_records(path: str) -> list[dict]:
    """Every complete record of a trace; a damaged one yields those before the damage."""
    records: list[dict] = []
    try:
        for record in read_trace(path):
            records.append(record)
    except TraceFormatError:
        if not records:
            raise
    return records


def _frame_name(record: dict) -> str | None:
    raw = record.get("raw")
    if isinstance(raw, (bytes, bytearray)) and len(raw) >= 2:
        spec = wire.SPECS_BY_TYPE.get(int.from_bytes(raw[:2], "big"))
        return spec.name if spec is not None else None
    shown = record.get("msg")  # a redacted frame keeps its decoded fields
    return shown.get("name") if isinstance(shown, dict) else None


def _is_channel_request(record: dict, dbid: int) -> bool:
    conn = record.get("conn") or {}
    return (record.get("kind") == "frame" and record.get("dir") == "request"
            and conn.get("role") == "client" and conn.get("dbid") == dbid)


def channel_requests(records: Iterable[dict], dbid: int, since_ns: int = 0) -> list[str]:
    """The requests channel ``dbid``'s channeld sent to hsmd at or after ``since_ns`` (wall
    clock, as the trace records it), each once, in the order first seen."""
    seen: dict[str, None] = {}
    for record in records:
        if _is_channel_request(record, dbid) and record.get("t", 0) >= since_ns:
            name = _frame_name(record)
            if name is not None:
                seen.setdefault(name)
    return list(seen)


@dataclass(frozen=True)
class FiredFault:
    """A fault the proxy injected, and the commitment number of the request it hit (if any)."""

    rule: str
    action: str
    point: str
    message: str
    seq: int
    index: int | None = None


def fired_faults(records: Iterable[dict], dbid: int | None = None) -> list[FiredFault]:
    """The faults a trace recorded (written before they were carried out, so a kill is there).
    A fault at ``request.before_forward`` is recorded before the request's own frame (the trace
    hook runs last), so the request it hit is looked up among all of the channel's requests; its
    sequence number is per connection, and a kill hits the channel's latest connection."""
    requests: dict[int, tuple[int, dict]] = {}  # seq -> (conn_id, frame) on the latest connection
    events: list[dict] = []
    for record in records:
        if dbid is not None and _is_channel_request(record, dbid):
            conn_id = (record.get("conn") or {}).get("conn_id") or 0
            seq = record.get("seq", -1)
            if seq not in requests or conn_id >= requests[seq][0]:
                requests[seq] = (conn_id, record)
        elif record.get("kind") == "fault":
            events.append(record.get("event") or {})
    fired = []
    for event in events:
        seq = int(event.get("seq", -1))
        fired.append(FiredFault(str(event.get("rule", "")), str(event.get("action", "")), str(event.get("point", "")),
                                str(event.get("message", "")), seq, _index_of(requests.get(seq, (0, None))[1])))
    return fired


def _index_of(record: dict | None) -> int | None:
    if record is None:
        return None
    fields = None
    raw = record.get("raw")
    if isinstance(raw, (bytes, bytearray)):
        try:
            fields = wire.decode(bytes(raw)).fields
        except wire.DecodeError:
            return None
    elif isinstance(record.get("msg"), dict):
        fields = record["msg"].get("fields")
    for key in _INDEX_FIELDS:
        value = (fields or {}).get(key)
        if isinstance(value, int):
            return value
    return None
