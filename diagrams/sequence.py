"""A sequence diagram of what proxies saw, built from their trace records (sans-IO but for
``sequence_from_traces``, which reads the files).

Lanes: the node, the proxy (only where it acts: a fault fired, a verdict other than forward, a
divergence flagged) and the signer. A trace holds what passed between node and signer, nothing
the node said to its peer, so there is no peer lane: it would be invented.

Steps, in record order:

* a *signing request* (``SHOWN_REQUESTS``: every ``hsmd_sign_*`` and the commitment dance's state
  changes) is a message with its name, channel (``ch<dbid>``, or ``peer <first 4 bytes>``) and
  commitment number; its reply a returning message (``reply to ...``); a refusal
  (``hsmstatus_client_bad_request``) a returning message naming the request it refused (matched
  by the trace's digest);
* everything else (start-up, ``get_per_commitment_point``, ECDH, status logs, fd passing) is
  *chatter*: each run of it between two shown steps becomes one note counting the messages by
  name, so a diagram of a long trace stays readable. Status messages alone (the signer's logs,
  which come between a request and its reply) make no note: they are counted in the next one. A
  chatter message the proxy acted on (a fault, a verdict) or that caused a divergence is shown
  like a signing request;
* a fault is a note over the proxy where it fired (action, point, rule); a kill-node,
  kill-signer or crash-proxy is also a note across the lanes, and so is each restart (the start
  of the next trace: a chaos run keeps one trace per proxy incarnation); the signer's exit is a
  note over the signer;
* divergences are a note over the proxy right after the request that caused them: each event's
  kind, commitment number and how its status went (``predicted → confirmed``). A
  ``crashed_in_window`` (caused by a connection's end, not by a request) and the update of an
  event flagged in an earlier trace are notes where they were recorded.

Labels are made of message names, connection contexts, commitment numbers, and fault and
divergence records: never of a body's bytes, so no secret reaches a diagram, even from a trace
recorded with ``--trace-secrets``.

``Where`` names a step's origin: the trace's position among those given and the record number
``hsmproxy decode TRACE`` prints (the header is record 1). ``critical_windows`` cuts the steps
around each fault and divergence, the default view of a long trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Union

import wire
from faults.engine import connection_name
from proxy.addons.trace import TraceFormatError, read_trace
from proxy.core.shadow.model import CRASHED_IN_WINDOW
from proxy.core.shadow.transitions import KIND_BY_REQUEST, RULES

NODE, PROXY, SIGNER = "node", "proxy", "signer"
LANE_ORDER = (NODE, PROXY, SIGNER)
LANE_TITLES = {NODE: "node", PROXY: "hsmproxy", SIGNER: "signer"}

# Note kinds: what a note is about (renderers shade them apart).
FAULT = "fault"  # an injected fault, where it fired
VERDICT = "verdict"  # the proxy did not simply forward (a --guard refusal, fail closed)
KILL = "kill"  # a process killed by a fault (across the lanes)
RESTART = "restart"  # the next trace: the proxy (and in chaos runs node and signer) started again
DIVERGENCE = "divergence"  # shadow-state divergence events
EXIT = "exit"  # the signer exited
CHATTER = "chatter"  # non-signing messages, counted
GAP = "gap"  # steps left out between two windows
NOTE_KINDS = (FAULT, VERDICT, KILL, RESTART, DIVERGENCE, EXIT, CHATTER, GAP)
CRITICAL_KINDS = frozenset({FAULT, DIVERGENCE})
DEFAULT_CONTEXT = 4  # steps kept on each side of a fault or divergence

SHOWN_REQUESTS = frozenset(
    name for name in wire.SPECS_BY_NAME
    if (name.startswith("hsmd_sign_") and not name.endswith("_reply"))
) | {"hsmd_validate_commitment_tx", "hsmd_revoke_commitment_tx", "hsmd_validate_revocation"}
BAD_REQUEST = "hsmstatus_client_bad_request"

_KILLS = {"kill-node": "node killed (SIGKILL)", "kill-signer": "signer killed (SIGKILL)",
          "crash-proxy": "proxy crashed"}
# A fault that kills the frame's receiver (or the proxy) before it is forwarded: no arrow goes on.
# Faults that change what is forwarded (drop, hold, ...) show in the frame's verdict instead.
_NOTHING_GOES_ON = {"kill-node": {NODE}, "kill-signer": {SIGNER}, "crash-proxy": {NODE, SIGNER}}
_VERDICTS = {  # verdict -> (what the proxy did, whether the frame went on)
    "Drop": ("dropped", False),
    "Replace": ("altered", True),
    "Duplicate": ("sent twice", True),
    "Refuse": ("refused, as hsmd refuses a bad request", False),
    "Disconnect": ("connection cut", False),
    "Hold": ("held", False),
    "FailClosed": ("not forwarded: it could not be recorded", False),
}
_POLICY_TAG = re.compile(r"\bpolicy-[a-z0-9-]+")
_SAFE_FAULT_DETAIL = re.compile(r"\b(?:ms|mode)=[A-Za-z0-9-]+")


@dataclass(frozen=True, order=True)
class Where:
    """A step's origin: ``trace`` is the trace's position among those given (0 for the first),
    ``record`` the record number in it as ``hsmproxy decode`` prints it (the header is 1)."""

    trace: int
    record: int


@dataclass(frozen=True)
class Lane:
    key: str  # NODE, PROXY, SIGNER
    title: str


@dataclass(frozen=True)
class Message:
    sender: str
    receiver: str
    label: str
    where: Where
    reply: bool = False  # a returning arrow (a reply, a refusal)


@dataclass(frozen=True)
class Note:
    lanes: tuple[str, ...]  # one lane: over it; two: across, from the first to the second
    lines: tuple[str, ...]
    kind: str  # one of NOTE_KINDS
    where: Where


Step = Union[Message, Note]


@dataclass(frozen=True)
class Sequence:
    lanes: tuple[Lane, ...]
    steps: tuple[Step, ...]
    title: str | None = None
    sources: tuple[str, ...] = ()  # the traces' file names, by Where.trace
    span: tuple[int, int] | None = None  # a window: its steps are [start, stop) of the sequence it was cut from

    def describe(self, where: Where) -> str:
        """``trace-1.mp record 20``, for people."""
        if where.trace < len(self.sources):
            return f"{self.sources[where.trace]} record {where.record}"
        return f"record {where.record}"


Position = Union[Where, int, None]


# -- building -------------------------------------------------------------------------------------

def sequence_from_records(records: Iterable[dict], *, channel: str | int | None = None, start: Position = None,
                          end: Position = None, title: str | None = None) -> Sequence:
    """The diagram of one trace's records (as ``read_trace`` yields them, header first).

    ``channel``: only that channel's steps (a dbid, or a hex prefix of the peer id); kills,
    restarts and exits stay. ``start``/``end``: record numbers (or ``Where``), both included."""
    builder = _Builder(channel, _where(start, 0), _where(end, 0))
    builder.trace(0, records)
    return builder.sequence(title, ())


def sequence_from_traces(paths: Iterable[str | Path], *, channel: str | int | None = None, start: Position = None,
                         end: Position = None, title: str | None = None) -> Sequence:
    """The diagram of several traces in order (a chaos run's ``trace-0.mp``, ``trace-1.mp``, ...),
    a restart note between two. A plain number for ``start`` is a record of the first trace, for
    ``end`` one of the last. Raises ``TraceFormatError`` naming the file for anything that is
    not a trace or is damaged, ``OSError`` for a file that cannot be read."""
    paths = [Path(p) for p in paths]
    last = max(len(paths) - 1, 0)
    builder = _Builder(channel, _where(start, 0), _where(end, last))
    for index, path in enumerate(paths):
        try:
            builder.trace(index, read_trace(str(path)), source=path.name)
        except TraceFormatError as exc:
            message = str(exc)
            raise TraceFormatError(message if str(path) in message else f"{path}: {message}") from None
    return builder.sequence(title, tuple(p.name for p in paths))


def parse_channel(text: str) -> str:
    """A ``--channel`` value checked: a dbid (decimal, fewer than 8 digits) or a peer id prefix (hex)."""
    value = text.strip().lower()
    if value.isdigit() and len(value) < 8:
        return value
    if len(value) >= 2 and re.fullmatch(r"[0-9a-f]+", value):
        return value
    raise ValueError(f"channel {text!r}: give the channel's dbid (the N of chN in a diagram) or the first hex "
                     "digits of its peer id (8 or more digits when they are all decimal)")


def _where(position: Position, default_trace: int) -> Where | None:
    if position is None or isinstance(position, Where):
        return position
    return Where(default_trace, int(position))


def _short(name: str) -> str:
    return name.removeprefix("hsmd_")


def _frame_name(record: dict) -> str:
    raw = record.get("raw")
    if isinstance(raw, bytes):
        return wire.type_name(int.from_bytes(raw[:2], "big") if len(raw) >= 2 else None)
    view = record.get("msg")
    if isinstance(view, dict) and isinstance(view.get("name"), str):
        return view["name"]
    return wire.type_name(record.get("type"))


def _frame_fields(record: dict) -> dict:
    """The fields of a frame, for the few numbers a label takes (never shown whole)."""
    raw = record.get("raw")
    if isinstance(raw, bytes):
        try:
            return wire.decode(raw).fields
        except wire.DecodeError:
            return {}
    view = record.get("msg")
    fields = view.get("fields") if isinstance(view, dict) else None
    return fields if isinstance(fields, dict) else {}


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _peer_hex(value) -> str | None:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]+", value):
        return value.lower()
    return None


def _channel_label(dbid: int | None, peer: str | None) -> str | None:
    if dbid is not None:
        return f"ch{dbid}"
    if peer:
        return f"peer {peer[:8]}"
    return None


def _matches(channel: str | None, dbid: int | None, peer: str | None) -> bool:
    if channel is None:
        return True
    if channel.isdigit() and len(channel) < 8:
        return dbid == int(channel)
    return peer is not None and peer.startswith(channel[:len(peer)])  # fault events keep 16 digits


def _conn_name(conn: dict) -> str:
    """How fault events name the frame's connection (without the ``#n`` of a repeated identity)."""
    peer = conn.get("peer_id")
    return connection_name(str(conn.get("role")), conn.get("dbid"), peer if isinstance(peer, bytes) else None)


@dataclass
class _Request:
    label: str  # "sign_remote_commitment_tx ch1 #1"
    channel: tuple[int | None, str | None]
    digest: bytes | None = None  # the trace's digest of its body: a refusal quotes it
    shown: bool = False  # drawn as a message (else counted as chatter)
    divergences: "_DivergenceNote | None" = None  # the note of the divergences it caused


@dataclass
class _Event:
    """One divergence event's line in a note; its statuses in the order they were recorded."""

    kind: str
    index: object
    channel: str | None
    statuses: list[str]
    tag: str | None = None

    def line(self, with_channel: bool) -> str:
        where = f" ({self.channel})" if with_channel and self.channel else ""
        tag = f" [{self.tag}]" if self.tag else ""
        return f"{self.kind} #{self.index}{where}: {' → '.join(self.statuses)}{tag}"


@dataclass
class _DivergenceNote:
    where: Where
    events: list[_Event] = field(default_factory=list)
    standalone: bool = True

    def freeze(self) -> Note:
        lines = tuple(ev.line(self.standalone) for ev in self.events)
        return Note((PROXY,), lines, DIVERGENCE, self.where)


@dataclass
class _FaultNotes:
    """A fault's notes. One recorded before the frame it fired on is drawn after that frame's
    arrow; if the frame never comes (crash-proxy), where it was recorded."""

    action: str
    notes: list[Note]


class _Builder:
    def __init__(self, channel: str | int | None, start: Where | None, end: Where | None):
        self.channel = None if channel is None else parse_channel(str(channel))
        self.start, self.end = start, end
        self.items: list = []  # Message | Note | _DivergenceNote | _FaultNotes, in order
        self.chatter: dict[str, int] = {}  # messages not drawn since the last step, by name
        self.chatter_where: Where | None = None
        self.chatter_exchanges = 0  # chatter requests and replies (not status messages)
        self.chatter_statuses = 0
        self.events: dict[tuple, tuple[int, _Event, _DivergenceNote]] = {}  # (kind, op_id) -> (trace, ...)
        self.run_trace: dict[int, int] = {}  # the proxy run id in divergence conns -> trace index

    # -- output
    def visible(self, where: Where) -> bool:
        return (self.start is None or where >= self.start) and (self.end is None or where <= self.end)

    def add(self, item, *, flush: bool = True) -> None:
        """Append a step; the chatter counted so far goes before it (``flush``): replies, refusals
        and divergence notes stay next to their request."""
        if flush:
            self.flush_chatter()
        self.items.append(item)

    def add_chatter(self, name: str | None, where: Where, status: bool = False) -> None:
        """Count a message not shown: a request or status message by name; a reply (``name``
        None) only as part of its request's exchange."""
        if not self.visible(where):
            return
        if self.chatter_where is None:
            self.chatter_where = where
        if name is not None:
            self.chatter[name] = self.chatter.get(name, 0) + 1
            self.chatter_statuses += status
        self.chatter_exchanges += not status

    def flush_chatter(self) -> None:
        """The chatter so far as one note. Status messages alone (the signer's logs, which come
        between every request and its reply) make no note: they are counted in the next one, or
        left out when none comes."""
        if not self.chatter_exchanges:
            return
        requests = sum(self.chatter.values()) - self.chatter_statuses
        counts = sorted(self.chatter.items(), key=lambda item: (-item[1], item[0]))
        names = ", ".join(f"{_short(name)} ×{n}" for name, n in counts[:3])
        if len(counts) > 3:
            names += f", {len(counts) - 3} more"
        head = ", ".join(text for n, text in ((requests, f"{requests} other request{'s' if requests != 1 else ''}"),
                                              (self.chatter_statuses, f"{self.chatter_statuses} status message"
                                               f"{'s' if self.chatter_statuses != 1 else ''}")) if n)
        lines = (head, names) if names else (head,)
        self.items.append(Note((NODE, SIGNER), lines, CHATTER, self.chatter_where))
        self.forget_chatter()

    def forget_chatter(self) -> None:
        self.chatter, self.chatter_where, self.chatter_exchanges, self.chatter_statuses = {}, None, 0, 0

    def sequence(self, title: str | None, sources: tuple[str, ...]) -> Sequence:
        self.flush_chatter()
        steps: list[Step] = []
        for item in self.items:
            if isinstance(item, _DivergenceNote):
                if item.events:
                    steps.append(item.freeze())
            elif isinstance(item, _FaultNotes):
                steps.extend(item.notes)
            else:
                steps.append(item)
        return Sequence(lanes_of(steps), tuple(steps), title, sources)

    # -- input
    def trace(self, index: int, records: Iterable[dict], source: str | None = None) -> None:
        state = _TraceState(index)
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict):
                raise TraceFormatError(f"record {number} is not a trace record")
            where = Where(index, number)
            kind = record.get("kind")
            if kind == "header":
                if index > 0 and self.visible(where):
                    self.add(Note((NODE, SIGNER), (f"restart: {source or f'trace {index + 1}'}",), RESTART, where))
            elif kind == "frame":
                self.frame(state, record, where)
            elif kind in ("fault", "divergence"):
                event = record.get("event")
                (self.fault if kind == "fault" else self.divergence)(state, event if isinstance(event, dict) else {}, where)
            elif kind == "exit" and self.visible(where):
                self.add(Note((SIGNER,), (f"signer exited (status {record.get('status')})",), EXIT, where))
        self.flush_chatter()
        self.forget_chatter()  # status messages at a trace's end

    def frame(self, state: "_TraceState", record: dict, where: Where) -> None:
        conn = record.get("conn") if isinstance(record.get("conn"), dict) else {}
        direction = record.get("dir")
        seq = _int(record.get("seq"))
        name = _frame_name(record)
        verdict = str(record.get("verdict") or "Forward")
        faults = state.pending_faults.pop((_conn_name(conn), seq, direction), None)
        conn_dbid, conn_peer = _int(conn.get("dbid")), _peer_hex(conn.get("peer_id"))
        if direction == "request":
            key = (_int(conn.get("conn_id")), seq)
            divergences = state.pending_divergences.pop(key, None)
            fields = _frame_fields(record) if (name in SHOWN_REQUESTS or faults or divergences
                                               or verdict != "Forward") else {}
            dbid = conn_dbid if conn_dbid is not None else _int(fields.get("channel_dbid", fields.get("dbid")))
            peer = conn_peer or _peer_hex(fields.get("peer_id", fields.get("peerid")))
            kind = KIND_BY_REQUEST.get(name)
            index = _int(fields.get(RULES[kind].index_field if kind else "commit_num"))
            label = " ".join(part for part in (_short(name), _channel_label(dbid, peer),
                                                f"#{index}" if index is not None else None) if part)
            digest = record.get("digest") if isinstance(record.get("digest"), bytes) else None
            request = _Request(label, (dbid, peer), digest)
            state.requests[key] = request
            if digest is not None:
                state.by_digest[digest] = request
            if not _matches(self.channel, dbid, peer):
                return
            shown = name in SHOWN_REQUESTS or faults or divergences or verdict != "Forward"
            if not shown or not self.visible(where):
                self.add_chatter(name, where)  # its divergences stay where they were recorded
                return
            request.shown = True
            self.exchange(NODE, SIGNER, label, where, False, verdict, faults)
            if divergences is not None:
                self.items = [item for item in self.items if item is not divergences]  # not there if cut
                divergences.where, divergences.standalone = where, False
                self.items.append(divergences)
                request.divergences = divergences
        elif direction == "reply":
            request = state.requests.pop((_int(conn.get("conn_id")), seq), None)  # answered: forgotten
            if request is not None and request.digest is not None:
                state.by_digest.pop(request.digest, None)
            dbid, peer = request.channel if request else (conn_dbid, conn_peer)
            if not _matches(self.channel, dbid, peer):
                return
            shown = (request is not None and request.shown) or faults or verdict != "Forward"
            if not shown or not self.visible(where):
                self.add_chatter(None if request else name, where)
                return
            label = f"reply to {request.label}" if request else f"{_short(name)} (nobody asked)"
            self.exchange(SIGNER, NODE, label, where, True, verdict, faults)
        else:  # status: signer -> node on fd 0
            digest = record.get("embedded_digest")
            refused = state.by_digest.get(digest) if name == BAD_REQUEST and isinstance(digest, bytes) else None
            if refused is not None:
                if _matches(self.channel, *refused.channel) and self.visible(where):
                    self.add(Message(SIGNER, NODE, f"refused {refused.label}", where, reply=True), flush=False)
                return
            if self.channel is None:
                self.add_chatter(name, where, status=True)

    def exchange(self, sender: str, receiver: str, label: str, where: Where, reply: bool, verdict: str,
                 faults: "_FaultNotes | None") -> None:
        """One frame's arrows: straight across, or through the proxy when it acted on it."""
        if faults is None and verdict == "Forward":
            self.add(Message(sender, receiver, label, where, reply), flush=not reply)
            return
        self.add(Message(sender, PROXY, label, where, reply), flush=not reply)
        delivered = True
        if faults is not None:
            self.items.remove(faults)
            self.items.append(faults)
            delivered = receiver not in _NOTHING_GOES_ON.get(faults.action, ())
        if verdict != "Forward":
            what, goes_on = _VERDICTS.get(verdict, (f"verdict {verdict}", False))
            self.items.append(Note((PROXY,), (what,), VERDICT, where))
            delivered = delivered and goes_on
        if delivered:
            self.items.append(Message(PROXY, receiver, label, where, reply))

    def fault(self, state: "_TraceState", event: dict, where: Where) -> None:
        connection = str(event.get("connection", ""))
        dbid, peer = None, None
        parts = connection.split("#")[0].split(":")
        if parts[0] == wire.conversation.ROLE_CLIENT and len(parts) == 3:
            dbid = int(parts[1]) if parts[1].isdigit() else None
            peer = parts[2] if parts[2] != "-" else None
        if not _matches(self.channel, dbid, peer) or not self.visible(where):
            return
        action, point = str(event.get("action")), str(event.get("point"))
        detail = " ".join(_SAFE_FAULT_DETAIL.findall(str(event.get("detail") or "")))
        lines = [f"fault {action} at {point}", f"on {_short(str(event.get('message')))} (rule {event.get('rule')})"]
        if detail:
            lines.append(detail)
        notes = [Note((PROXY,), tuple(lines), FAULT, where)]
        if action in _KILLS:
            notes.append(Note((NODE, SIGNER), (_KILLS[action],), KILL, where))
        group = _FaultNotes(action, notes)
        self.add(group)
        if point in wire.conversation.BEFORE_FORWARD_POINTS:  # recorded before its frame: drawn after it
            direction = "request" if point.startswith("request") else "reply"
            state.pending_faults[(connection.split("#")[0], _int(event.get("seq")), direction)] = group

    def divergence(self, state: "_TraceState", event: dict, where: Where) -> None:
        kind, op_id, status = str(event.get("kind")), _int(event.get("op_id")), str(event.get("status"))
        dbid, peer = _int(event.get("dbid")), _peer_hex(event.get("peer_id"))
        if not _matches(self.channel, dbid, peer):
            return
        conn = _int(event.get("conn")) or 0
        run, conn_id = conn >> 32, conn & 0xFFFFFFFF
        known = self.events.get((kind, op_id))
        if known is None and kind != CRASHED_IN_WINDOW:
            self.run_trace.setdefault(run, state.index)  # a new event comes from this proxy run
        tag_match = _POLICY_TAG.search(str(event.get("detail") or ""))
        tag = tag_match.group(0) if tag_match else None
        if known is not None:
            trace, entry, note = known
            if entry.statuses[-1] == status:
                return
            if trace == state.index and not note.standalone:  # on its request: the status goes on
                entry.statuses.append(status)
                entry.tag = entry.tag or tag
                return
            status = f"{entry.statuses[-1]} → {status}"
        entry = _Event(kind, event.get("index"), _channel_label(dbid, peer), [status], tag)
        attachable = kind != CRASHED_IN_WINDOW and self.run_trace.get(run) == state.index
        key = (conn_id, _int(event.get("request_seq")))
        request = state.requests.get(key) if attachable else None
        if request is not None and request.divergences is not None:
            note = request.divergences
        elif attachable and key not in state.requests and key in state.pending_divergences:
            note = state.pending_divergences[key]
        else:
            note = _DivergenceNote(where)
            if attachable and request is None:
                state.pending_divergences[key] = note  # recorded before its request: moved after it
            if self.visible(where):
                self.add(note, flush=False)
        note.events.append(entry)
        self.events[(kind, op_id)] = (state.index, entry, note)


class _TraceState:
    """What one trace's records refer back to."""

    def __init__(self, index: int):
        self.index = index
        self.requests: dict[tuple, _Request] = {}  # (conn_id, seq) -> request
        self.by_digest: dict[bytes, _Request] = {}
        self.pending_faults: dict[tuple, _FaultNotes] = {}
        self.pending_divergences: dict[tuple, _DivergenceNote] = {}


# -- lanes and windows ----------------------------------------------------------------------------

def lanes_of(steps: Iterable[Step]) -> tuple[Lane, ...]:
    """The lanes the steps use, in the fixed order node, proxy, signer (node and signer always)."""
    used = {NODE, SIGNER}
    for step in steps:
        used.update((step.sender, step.receiver) if isinstance(step, Message) else step.lanes)
    return tuple(Lane(key, LANE_TITLES[key]) for key in LANE_ORDER if key in used)


def window(seq: Sequence, start: int, stop: int) -> Sequence:
    """Steps [start, stop) of ``seq``, with the lanes they use."""
    steps = seq.steps[start:stop]
    return replace(seq, lanes=lanes_of(steps), steps=steps, span=(start, stop))


def critical_windows(seq: Sequence, *, context: int = DEFAULT_CONTEXT) -> list[Sequence]:
    """The steps around each fault and divergence note, ``context`` steps on each side;
    overlapping or touching windows merged. Empty when there is neither."""
    spans: list[tuple[int, int]] = []
    for i, step in enumerate(seq.steps):
        if isinstance(step, Note) and step.kind in CRITICAL_KINDS:
            lo, hi = max(0, i - context), min(len(seq.steps), i + context + 1)
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
            else:
                spans.append((lo, hi))
    return [window(seq, lo, hi) for lo, hi in spans]


def join_windows(seq: Sequence, windows: list[Sequence]) -> Sequence:
    """One diagram of ``windows`` (cut from ``seq``), a gap note where steps were left out."""
    steps: list[Step] = []
    at = 0
    for win in windows:
        start, stop = win.span if win.span is not None else (at, at + len(win.steps))
        if start > at:
            steps.append(_gap(seq, at, start))
        steps.extend(win.steps)
        at = stop
    if at < len(seq.steps):
        steps.append(_gap(seq, at, len(seq.steps)))
    return replace(seq, lanes=lanes_of(steps), steps=tuple(steps), span=None)


def _gap(seq: Sequence, start: int, stop: int) -> Note:
    first, last = seq.steps[start].where, seq.steps[stop - 1].where
    n = stop - start
    text = f"… {n} step{'s' if n != 1 else ''} left out: {seq.describe(first)}"
    if last != first:
        text += f" to {seq.describe(last)}"
    return Note((NODE, SIGNER), (text + " …",), GAP, first)
