"""The proxy's shadow of every channel: VLS's index counters, kept from the hsmd conversation.

Sans-IO: no sockets, no clocks, no randomness. The shell turns a request into an ``Intent``
(``intent_from_request``), calls ``Shadow.begin(intent)`` before forwarding it (which predicts
divergences), and ``Shadow.finish(op_id, outcome)`` when the signer's answer is known (which
advances the state only on success, and confirms or refutes the prediction). Everything the
shadow does is a function of those two calls, so replaying the WAL's intents and outcomes
rebuilds exactly the same shadow and the same divergence events.

Numbering follows VLS (``../shared/reference/vls.md`` §1): C = next counterparty commit num,
R = next counterparty revoke num, H = next holder commit num. ``None`` means "not seen yet":
a proxy started in the middle of a channel's life anchors on the first successful request
instead of reporting every index as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.core.digest import digest_of_request, funding_outpoint

# Intent kinds: the hsmd requests that carry a channel index.
SIGN_REMOTE = "sign_remote_commitment"  # 19
VALIDATE_HOLDER = "validate_holder_commitment"  # 35
REVOKE_HOLDER = "revoke_holder_commitment"  # 40
VALIDATE_REVOCATION = "validate_revocation"  # 36
GET_POINT = "get_per_commitment_point"  # 18

INTENT_KINDS = (SIGN_REMOTE, VALIDATE_HOLDER, REVOKE_HOLDER, VALIDATE_REVOCATION, GET_POINT)

_KIND_BY_REQUEST = {
    "hsmd_sign_remote_commitment_tx": SIGN_REMOTE,
    "hsmd_validate_commitment_tx": VALIDATE_HOLDER,
    "hsmd_revoke_commitment_tx": REVOKE_HOLDER,
    "hsmd_validate_revocation": VALIDATE_REVOCATION,
    "hsmd_get_per_commitment_point": GET_POINT,
}
_INDEX_FIELD = {
    SIGN_REMOTE: "commit_num",
    VALIDATE_HOLDER: "commit_num",
    REVOKE_HOLDER: "commit_num",
    VALIDATE_REVOCATION: "revoke_num",
    GET_POINT: "n",
}
# The reply type that means "the signer did it"; anything else is a refusal.
SUCCESS_REPLY = {
    SIGN_REMOTE: "hsmd_sign_tx_reply",
    VALIDATE_HOLDER: "hsmd_validate_commitment_tx_reply",
    REVOKE_HOLDER: "hsmd_revoke_commitment_tx_reply",
    VALIDATE_REVOCATION: "hsmd_validate_revocation_reply",
    GET_POINT: "hsmd_get_per_commitment_point_reply",
}

# Divergence kinds (the names are part of the interface: logs, metrics, `hsmproxy state`).
RETRY_CHANGED = "retry_changed"
INDEX_REGRESSED = "index_regressed"
INDEX_SKIPPED = "index_skipped"
REVOCATION_MISMATCH = "revocation_mismatch"
DOUBLE_SIGNED = "double_signed"
SIGNER_REJECTED = "signer_rejected"
NODE_BEHIND_AFTER_RESTART = "node_behind_after_restart"
DIVERGENCE_KINDS = (
    RETRY_CHANGED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    REVOCATION_MISMATCH,
    DOUBLE_SIGNED,
    SIGNER_REJECTED,
    NODE_BEHIND_AFTER_RESTART,
)

# Outcomes of one intent.
SIGNED = "signed"  # the signer's success reply was seen
REJECTED = "rejected"  # error reply, bad-request status, or client closed by the signer
GUARD_REFUSED = "guard_refused"  # --guard refused it; the signer never saw it
UNANSWERED = "unanswered"  # the connection went away (or the proxy restarted) first
OUTCOMES = (SIGNED, REJECTED, GUARD_REFUSED, UNANSWERED)

# Divergence status: a prediction until the outcome is known.
PREDICTED = "predicted"
CONFIRMED = "confirmed"  # the request reached the signer and was answered (detail says how)
REFUTED = "refuted"  # double_signed that did not happen: the signer refused
PREVENTED = "prevented"  # the guard refused the request before the signer saw it
UNKNOWN = "unknown"  # never answered: the signer may or may not have acted


class IntentError(ValueError):
    """A request that should carry a channel index lacks what the shadow needs."""


class Intent(NamedTuple):
    """What one request asks of the signer, reduced to what the shadow compares (no secrets).

    A named tuple: the WAL replays millions of these at start-up, and tuples build fastest."""

    op_id: int
    kind: str
    peer_id: bytes
    dbid: int
    index: int
    digest: bytes | None = None  # commitment digest (sign_remote, validate_holder)
    point: bytes | None = None  # remote per-commitment point, or the point the revealed secret derives to
    conn: int = 0  # connection identity, unique across proxy runs (run id and conn id)
    seq: int = 0  # request number on that connection
    time_ns: int = 0  # wall clock, for people; never used for decisions
    funding: bytes | None = None  # the commitment's funding outpoint (sign_remote)

    def to_record(self) -> list:
        return list(self)

    @classmethod
    def from_record(cls, rec: list) -> "Intent":
        return cls._make(rec)


@dataclass(slots=True)
class Divergence:
    """One divergence event: what kind, where, both digests, which request, and what came of it."""

    kind: str
    peer_id: bytes
    dbid: int
    index: int
    op_id: int
    conn: int
    request_seq: int
    time_ns: int
    shadow_digest: bytes | None = None
    request_digest: bytes | None = None
    detail: str = ""
    status: str = PREDICTED
    outcome_time_ns: int | None = None

    def to_record(self) -> list:
        return [self.kind, self.peer_id, self.dbid, self.index, self.op_id, self.conn, self.request_seq,
                self.time_ns, self.shadow_digest, self.request_digest, self.detail, self.status,
                self.outcome_time_ns]

    @classmethod
    def from_record(cls, rec: list) -> "Divergence":
        return cls(*rec)

    def to_jsonable(self) -> dict:
        return {
            "kind": self.kind,
            "peer_id": self.peer_id.hex(),
            "dbid": self.dbid,
            "index": self.index,
            "status": self.status,
            "shadow_digest": self.shadow_digest.hex() if self.shadow_digest else None,
            "request_digest": self.request_digest.hex() if self.request_digest else None,
            "op_id": self.op_id,
            "conn": self.conn,
            "request_seq": self.request_seq,
            "time_ns": self.time_ns,
            "outcome_time_ns": self.outcome_time_ns,
            "detail": self.detail,
        }


class ChannelShadow:
    """VLS's EnforcementState fields for one channel, with digests in place of commitment infos."""

    __slots__ = (
        "peer_id", "dbid",
        "next_counterparty_commit_num", "next_counterparty_revoke_num",
        "current_counterparty_point", "current_counterparty_digest",
        "previous_counterparty_point", "previous_counterparty_digest",
        "current_counterparty_funding", "previous_counterparty_funding",
        "next_holder_commit_num", "pending_holder_digest", "current_holder_digest",
        "max_point_handed_out",
        "last_conn", "last_request_kind", "last_request_index", "last_request_time_ns", "requests",
    )

    def __init__(self, peer_id: bytes, dbid: int):
        self.peer_id = peer_id
        self.dbid = dbid
        self.next_counterparty_commit_num: int | None = None
        self.next_counterparty_revoke_num: int | None = None
        self.current_counterparty_point: bytes | None = None
        self.current_counterparty_digest: bytes | None = None
        self.previous_counterparty_point: bytes | None = None
        self.previous_counterparty_digest: bytes | None = None
        self.current_counterparty_funding: bytes | None = None  # funding outpoint of C-1's commitment
        self.previous_counterparty_funding: bytes | None = None
        self.next_holder_commit_num: int | None = None
        self.pending_holder_digest: bytes | None = None
        self.current_holder_digest: bytes | None = None
        self.max_point_handed_out: int | None = None
        self.last_conn: int | None = None
        self.last_request_kind: str | None = None
        self.last_request_index: int | None = None
        self.last_request_time_ns: int | None = None
        self.requests = 0

    def to_record(self) -> list:
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_record(cls, rec: list) -> "ChannelShadow":
        ch = cls.__new__(cls)
        for name, value in zip(cls.__slots__, rec, strict=True):
            setattr(ch, name, value)
        return ch

    def counters(self) -> tuple:
        """The index state a validating signer enforces (what the reference model compares)."""
        return (
            self.next_counterparty_commit_num, self.next_counterparty_revoke_num,
            self.current_counterparty_point, self.current_counterparty_digest,
            self.previous_counterparty_point, self.previous_counterparty_digest,
            self.next_holder_commit_num, self.pending_holder_digest, self.current_holder_digest,
        )

    def to_jsonable(self) -> dict:
        def hx(b):
            return b.hex() if b is not None else None

        return {
            "peer_id": self.peer_id.hex(),
            "dbid": self.dbid,
            "next_counterparty_commit_num": self.next_counterparty_commit_num,
            "next_counterparty_revoke_num": self.next_counterparty_revoke_num,
            "next_holder_commit_num": self.next_holder_commit_num,
            "current_counterparty_point": hx(self.current_counterparty_point),
            "current_counterparty_digest": hx(self.current_counterparty_digest),
            "previous_counterparty_point": hx(self.previous_counterparty_point),
            "previous_counterparty_digest": hx(self.previous_counterparty_digest),
            "pending_holder_digest": hx(self.pending_holder_digest),
            "current_holder_digest": hx(self.current_holder_digest),
            "max_point_handed_out": self.max_point_handed_out,
            "last_request_kind": self.last_request_kind,
            "last_request_index": self.last_request_index,
            "last_request_time_ns": self.last_request_time_ns,
            "requests": self.requests,
        }


def _point_from_secret(secret: bytes) -> bytes:
    # The per-commitment point is secret*G; the shadow keeps the point, never the secret.
    from coincurve import PrivateKey

    return PrivateKey(secret).public_key.format(compressed=True)


def intent_from_request(
    msg, peer_id: bytes | None, dbid: int | None, *, conn: int = 0, seq: int = 0, time_ns: int = 0
) -> Intent | None:
    """The Intent of a decoded request on a client connection, or None if it carries no index.

    ``peer_id``/``dbid`` come from the connection's context (the hsmd_client_hsmfd that created it).
    The op_id is 0 here; ``Shadow.begin`` assigns the real one.
    """
    kind = _KIND_BY_REQUEST.get(msg.name)
    if kind is None or peer_id is None or dbid is None:
        return None
    fields = msg.fields
    try:
        index = fields[_INDEX_FIELD[kind]]
        digest = point = funding = None
        if kind == SIGN_REMOTE:
            digest = digest_of_request(fields, with_point=True)
            point = fields["remote_per_commit"]
            funding = funding_outpoint(fields["tx"]["tx"])
        elif kind == VALIDATE_HOLDER:
            digest = digest_of_request(fields, with_point=False)
        elif kind == VALIDATE_REVOCATION:
            try:
                point = _point_from_secret(fields["per_commitment_secret"])
            except ValueError:
                point = b""  # not a valid scalar: matches no point
    except (KeyError, TypeError, ValueError) as exc:
        raise IntentError(f"{msg.name} from peer {peer_id.hex()} dbid {dbid}: cannot read {exc}") from exc
    return Intent(0, kind, bytes(peer_id), int(dbid), int(index), digest, point, conn, seq, time_ns, funding)


class _Pending(NamedTuple):
    intent: Intent
    events: list[Divergence]


@dataclass
class Shadow:
    """Every channel's shadow, the in-flight intents, and the divergence events so far."""

    channels: dict[tuple[bytes, int], ChannelShadow] = field(default_factory=dict)
    events: list[Divergence] = field(default_factory=list)
    pending: dict[int, _Pending] = field(default_factory=dict)
    in_doubt: list[Intent] = field(default_factory=list)  # unanswered when the proxy stopped
    next_op_id: int = 1
    # Intents that ended unanswered, kept briefly: hsmd's bad-request status can arrive after
    # the client connection's close, and must still count as the signer's refusal.
    recent_unanswered: dict[int, Intent] = field(default_factory=dict)
    max_events: int = 100_000  # the oldest events are dropped beyond this (they are in the log)

    # --- the two transitions -------------------------------------------------------------

    def begin(self, intent: Intent) -> tuple[Intent, list[Divergence]]:
        """Record a request about to be forwarded; return it (with its op_id) and the predictions."""
        if intent.op_id == 0:
            intent = intent._replace(op_id=self.next_op_id)
        elif intent.op_id < self.next_op_id:
            raise ValueError(f"op_id {intent.op_id} replayed out of order (next is {self.next_op_id})")
        self.next_op_id = intent.op_id + 1
        ch = self.channels.get((intent.peer_id, intent.dbid)) or self.channel(intent.peer_id, intent.dbid)
        predicted = _predict(ch, intent)
        if self.in_doubt and intent.kind == SIGN_REMOTE:
            predicted = predicted + self._against_in_doubt(ch, intent, predicted)
        events = [self._event(intent, *p) for p in predicted] if predicted else []
        ch.last_conn = intent.conn
        ch.last_request_kind = intent.kind
        ch.last_request_index = intent.index
        ch.last_request_time_ns = intent.time_ns
        ch.requests += 1
        self.pending[intent.op_id] = _Pending(intent, events)
        return intent, events

    def finish(self, op_id: int, outcome: str, time_ns: int = 0, detail: str = "") -> list[Divergence]:
        """Apply the outcome of an intent; return its events in their final status (plus new ones)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        pending = self.pending.pop(op_id, None)
        if pending is None:
            late = self.recent_unanswered.pop(op_id, None) if outcome == REJECTED else None
            if late is None:
                return []
            pending = _Pending(late, [])
        intent, events = pending.intent, pending.events
        if outcome == SIGNED and self.in_doubt and intent.kind == SIGN_REMOTE:
            # The signer answered for this index now; what it did before is in the events.
            self.in_doubt = [d for d in self.in_doubt if not (
                d.kind == SIGN_REMOTE and d.index == intent.index and d.dbid == intent.dbid
                and d.peer_id == intent.peer_id)]
        if outcome == SIGNED and not events:  # the common case, and most of a WAL replay
            _apply_success(self.channels[(intent.peer_id, intent.dbid)], intent)
            return events
        for ev in events:
            ev.outcome_time_ns = time_ns
            if outcome == GUARD_REFUSED:
                ev.status = PREVENTED
            elif outcome == UNANSWERED:
                ev.status = UNKNOWN
            elif ev.kind == DOUBLE_SIGNED:
                ev.status = CONFIRMED if outcome == SIGNED else REFUTED
            else:
                ev.status = CONFIRMED
            if outcome == REJECTED and ev.kind != DOUBLE_SIGNED:
                ev.detail = f"{ev.detail}; the signer refused it" if ev.detail else "the signer refused it"
        if outcome == UNANSWERED:
            self.recent_unanswered[op_id] = intent
            if len(self.recent_unanswered) > 256:
                del self.recent_unanswered[next(iter(self.recent_unanswered))]
        if outcome == SIGNED:
            _apply_success(self.channel(intent.peer_id, intent.dbid), intent)
        elif outcome == REJECTED:
            ev = self._event(intent, SIGNER_REJECTED, None, detail or "the signer refused the request")
            ev.status, ev.outcome_time_ns = CONFIRMED, time_ns
            events.append(ev)
        self.events.extend(events)
        if len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events]
        return events

    def _against_in_doubt(self, ch: ChannelShadow, it: Intent, predicted: list) -> list:
        """A signing request that differs from one sent before the proxy stopped, whose answer
        was never recorded: the signer may have signed that one, so this could be a second
        signature at the index (the proxy's own crash window)."""
        kinds = {p[0] for p in predicted}
        for doubt in self.in_doubt:
            if (doubt.kind == SIGN_REMOTE and doubt.index == it.index and doubt.dbid == it.dbid
                    and doubt.peer_id == it.peer_id and doubt.digest != it.digest
                    and doubt.funding == it.funding and DOUBLE_SIGNED not in kinds):
                detail = (f"counterparty commitment {it.index} differs from a request in doubt (sent before the "
                          "proxy stopped; the signer may have signed it)")
                extra = [] if RETRY_CHANGED in kinds else [(RETRY_CHANGED, doubt.digest, detail)]
                return extra + [(DOUBLE_SIGNED, doubt.digest, detail)]
        return []

    def restart(self) -> list[Intent]:
        """The proxy restarted: intents still in flight will never be answered through us."""
        stranded = [p.intent for p in self.pending.values()]
        for intent in stranded:
            self.finish(intent.op_id, UNANSWERED, detail="the proxy stopped before the signer's answer was durable")
        self.in_doubt.extend(i for i in stranded if i.kind != GET_POINT)
        del self.in_doubt[: max(0, len(self.in_doubt) - 1000)]
        return stranded

    # --- queries ---------------------------------------------------------------------------

    def channel(self, peer_id: bytes, dbid: int) -> ChannelShadow:
        key = (peer_id, dbid)
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = ChannelShadow(peer_id, dbid)
        return ch

    def would_double_sign(self, events: list[Divergence]) -> bool:
        return any(ev.kind == DOUBLE_SIGNED for ev in events)

    def _event(self, intent: Intent, kind: str, shadow_digest: bytes | None, detail: str) -> Divergence:
        return Divergence(kind, intent.peer_id, intent.dbid, intent.index, intent.op_id, intent.conn, intent.seq,
                          intent.time_ns, shadow_digest, intent.digest, detail)

    # --- snapshot ----------------------------------------------------------------------------

    def to_snapshot(self) -> dict:
        return {
            "channels": [ch.to_record() for ch in self.channels.values()],
            "events": [ev.to_record() for ev in self.events],
            "pending": [[p.intent.to_record(), [ev.to_record() for ev in p.events]] for p in self.pending.values()],
            "in_doubt": [i.to_record() for i in self.in_doubt],
            "recent_unanswered": [i.to_record() for i in self.recent_unanswered.values()],
            "next_op_id": self.next_op_id,
        }

    @classmethod
    def from_snapshot(cls, snap: dict) -> "Shadow":
        shadow = cls(next_op_id=snap["next_op_id"])
        for rec in snap["channels"]:
            ch = ChannelShadow.from_record(rec)
            shadow.channels[(ch.peer_id, ch.dbid)] = ch
        shadow.events = [Divergence.from_record(r) for r in snap["events"]]
        for intent_rec, event_recs in snap["pending"]:
            intent = Intent.from_record(intent_rec)
            shadow.pending[intent.op_id] = _Pending(intent, [Divergence.from_record(r) for r in event_recs])
        shadow.in_doubt = [Intent.from_record(r) for r in snap["in_doubt"]]
        shadow.recent_unanswered = {i.op_id: i for i in map(Intent.from_record, snap["recent_unanswered"])}
        return shadow


# --- the transitions as rules ---------------------------------------------------------------


def _predict(ch: ChannelShadow, it: Intent) -> list[tuple[str, bytes | None, str]]:
    """(kind, shadow digest, detail) for every divergence this request would cause if signed."""
    out: list[tuple[str, bytes | None, str]] = []
    n = it.index
    C, R, H = ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num, ch.next_holder_commit_num
    recreated = ch.last_conn is not None and ch.last_conn != it.conn

    if it.kind == SIGN_REMOTE and C is not None:
        if _other_funding(ch, it, C):
            pass  # a splice candidate for the same index: a different commitment line, not a retry
        elif n == C - 1:
            if it.digest != ch.current_counterparty_digest:
                out.append((RETRY_CHANGED, ch.current_counterparty_digest,
                            f"re-sign of counterparty commitment {n} with different contents"))
                out.append((DOUBLE_SIGNED, ch.current_counterparty_digest,
                            f"two different counterparty commitments {n} would both be signed"))
        elif n < C - 1:
            out.append((INDEX_REGRESSED, None, f"counterparty commitment {n} is below the latest signed {C - 1}"))
            if n == C - 2 and ch.previous_counterparty_digest not in (None, it.digest):
                out.append((DOUBLE_SIGNED, ch.previous_counterparty_digest,
                            f"two different counterparty commitments {n} would both be signed"))
            if recreated:
                out.append((NODE_BEHIND_AFTER_RESTART, ch.current_counterparty_digest,
                            f"new client asks to sign counterparty commitment {n}; the signer is at {C - 1}"))
        elif n > C:
            out.append((INDEX_SKIPPED, None, f"counterparty commitment {n} skips {C}..{n - 1}"))
        elif R is not None and n > R + 1:
            out.append((INDEX_SKIPPED, None, f"counterparty commitment {n} before commitment {n - 2} was revoked"))

    elif it.kind == VALIDATE_HOLDER and H is not None:
        if n == H - 1 and ch.current_holder_digest is not None and it.digest != ch.current_holder_digest:
            out.append((RETRY_CHANGED, ch.current_holder_digest,
                        f"re-validation of current holder commitment {n} with different contents"))
        elif n < H - 1:
            out.append((INDEX_REGRESSED, None, f"holder commitment {n} was already revoked (next is {H})"))
            if recreated:
                out.append((NODE_BEHIND_AFTER_RESTART, ch.current_holder_digest,
                            f"new client validates holder commitment {n}; the signer is at {H - 1}"))
        elif n > H:
            out.append((INDEX_SKIPPED, None, f"holder commitment {n} skips {H}..{n - 1}"))

    elif it.kind == REVOKE_HOLDER and H is not None:
        if n + 1 > H:
            out.append((REVOCATION_MISMATCH, None, f"revoking holder commitment {n} before {n + 1} was validated"))
        elif n + 1 == H and ch.pending_holder_digest is None:
            out.append((REVOCATION_MISMATCH, None, f"revoking holder commitment {n} with no validated successor"))
        elif n + 2 < H and recreated:
            out.append((NODE_BEHIND_AFTER_RESTART, None,
                        f"new client revokes holder commitment {n}; the signer already revoked {H - 2}"))

    elif it.kind == VALIDATE_REVOCATION and R is not None:
        if n not in (R, R - 1):
            out.append((REVOCATION_MISMATCH, None, f"revocation of counterparty commitment {n} out of order "
                        f"(expected {R}{' or ' + str(R - 1) if R else ''})"))
            if recreated and n < R - 1:
                out.append((NODE_BEHIND_AFTER_RESTART, None,
                            f"new client revokes counterparty commitment {n}; the signer has {R - 1}"))
        elif C is not None and n > C - 2:
            out.append((REVOCATION_MISMATCH, None,
                        f"revocation of counterparty commitment {n} which is not yet superseded (latest signed {C - 1})"))
        else:
            expected = _counterparty_point(ch, n)
            if expected is not None and expected != it.point:
                out.append((REVOCATION_MISMATCH, None,
                            f"secret for counterparty commitment {n} does not match its per-commitment point"))

    elif it.kind == GET_POINT and H is not None and recreated and n + 1 < H:
        out.append((NODE_BEHIND_AFTER_RESTART, None,
                    f"new client asks for point {n}; the signer's current holder commitment is {H - 1}"))
    return out


def _other_funding(ch: ChannelShadow, it: Intent, C: int) -> bool:
    """Whether a signing request at C-1 or C-2 is for another funding outpoint than the one signed."""
    if it.funding is None:
        return False
    known = ch.current_counterparty_funding if it.index == C - 1 else (
        ch.previous_counterparty_funding if it.index == C - 2 else None)
    return known is not None and known != it.funding


def _counterparty_point(ch: ChannelShadow, n: int) -> bytes | None:
    C = ch.next_counterparty_commit_num
    if C is None:
        return None
    if n == C - 1:
        return ch.current_counterparty_point
    if n == C - 2:
        return ch.previous_counterparty_point
    return None


def _apply_success(ch: ChannelShadow, it: Intent) -> None:
    """Advance the shadow the way a validating signer advances once it has answered."""
    n = it.index
    if it.kind == SIGN_REMOTE:
        C = ch.next_counterparty_commit_num
        if C is not None and _other_funding(ch, it, C):
            return  # a splice candidate: the main funding's commitment stays the one tracked
        if C is None or n >= C:
            if C is not None and n == C:
                ch.previous_counterparty_point = ch.current_counterparty_point
                ch.previous_counterparty_digest = ch.current_counterparty_digest
                ch.previous_counterparty_funding = ch.current_counterparty_funding
            else:  # first sight or a jump: nothing is known about n-1
                ch.previous_counterparty_point = ch.previous_counterparty_digest = None
                ch.previous_counterparty_funding = None
            ch.current_counterparty_point, ch.current_counterparty_digest = it.point, it.digest
            ch.current_counterparty_funding = it.funding
            ch.next_counterparty_commit_num = n + 1
            if ch.next_counterparty_revoke_num is None:
                ch.next_counterparty_revoke_num = max(n - 1, 0)
        elif n == C - 1:
            # A signed retry: the node now holds these contents; the event keeps the old digest.
            ch.current_counterparty_digest = it.digest
            ch.current_counterparty_point = it.point
        elif n == C - 2:  # what the signer signed there last, even if it was unknown or revoked
            ch.previous_counterparty_digest = it.digest
            ch.previous_counterparty_point = it.point
        # Older indices move nothing: VLS stores nothing for them.
    elif it.kind == VALIDATE_HOLDER:
        H = ch.next_holder_commit_num
        if n == 0 and (H is None or H == 0):
            ch.current_holder_digest, ch.pending_holder_digest = it.digest, None  # activate the initial commitment
            ch.next_holder_commit_num = 1
        elif H is None or n == H:
            ch.pending_holder_digest = it.digest
            ch.next_holder_commit_num = n
        elif n > H:
            ch.pending_holder_digest, ch.next_holder_commit_num = it.digest, n
        _hand_out_point(ch, n + 1)
    elif it.kind == REVOKE_HOLDER:
        H = ch.next_holder_commit_num
        if H is None or n + 1 >= H:
            ch.current_holder_digest = ch.pending_holder_digest
            ch.pending_holder_digest = None
            ch.next_holder_commit_num = n + 2
        _hand_out_point(ch, n + 2)
    elif it.kind == VALIDATE_REVOCATION:
        R = ch.next_counterparty_revoke_num
        if R is None or n >= R:
            ch.next_counterparty_revoke_num = n + 1
        C = ch.next_counterparty_commit_num
        if C is not None and ch.next_counterparty_revoke_num >= C - 1:
            # The previous commitment is revoked: its info is no longer needed (VLS clears it too).
            ch.previous_counterparty_digest = None
    elif it.kind == GET_POINT:
        _hand_out_point(ch, n)


def _hand_out_point(ch: ChannelShadow, n: int) -> None:
    if ch.max_point_handed_out is None or n > ch.max_point_handed_out:
        ch.max_point_handed_out = n


# --- the WAL's view: every shadow input as a record ------------------------------------------

INTENT_RECORD, OUTCOME_RECORD, RESTART_RECORD = "i", "o", "r"
_make_intent = Intent._make


def intent_record(intent: Intent) -> list:
    return [INTENT_RECORD, *intent.to_record()]


def outcome_record(op_id: int, outcome: str, time_ns: int, detail: str = "") -> list:
    return [OUTCOME_RECORD, op_id, outcome, time_ns, detail]


def restart_record(time_ns: int) -> list:
    return [RESTART_RECORD, time_ns]


def apply_record(shadow: Shadow, rec: list) -> None:
    """Replay one WAL record: the same call the live proxy made when it wrote it."""
    tag = rec[0]
    if tag == INTENT_RECORD:
        shadow.begin(_make_intent(rec[1:]))
    elif tag == OUTCOME_RECORD:
        shadow.finish(rec[1], rec[2], rec[3], rec[4])
    elif tag == RESTART_RECORD:
        shadow.restart()
    else:
        raise ValueError(f"unknown WAL record tag {tag!r}")


def load_shadow(snapshot: dict | None, records: list) -> Shadow:
    shadow = Shadow.from_snapshot(snapshot) if snapshot is not None else Shadow()
    for rec in records:
        apply_record(shadow, rec)
    return shadow
