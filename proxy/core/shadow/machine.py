"""``Shadow``: every channel's shadow, the intents in flight, and the divergence events so far.

Two transitions: ``begin(intent)`` before a request is forwarded (predicts divergences) and
``finish(op_id, outcome)`` when the signer's answer is known (advances the channel only on
success, and confirms or refutes the prediction); ``restart()`` when the proxy starts again.
What each kind predicts and applies is ``proxy.core.shadow.transitions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.core.shadow.model import (
    CONFIRMED,
    DOUBLE_SIGNED,
    GET_POINT,
    OUTCOMES,
    REJECTED,
    RETRY_CHANGED,
    SIGN_REMOTE,
    SIGNED,
    SIGNER_REJECTED,
    UNANSWERED,
    ChannelShadow,
    Divergence,
    Intent,
)
from proxy.core.shadow.transitions import EVENT_STATUS, RULES, Prediction

RECENT_UNANSWERED = 256  # unanswered intents kept for a late bad-request status
IN_DOUBT = 1000  # intents in doubt kept across restarts


class Pending(NamedTuple):
    """An intent in flight and the divergences predicted for it."""

    intent: Intent
    events: list[Divergence]


@dataclass
class Shadow:
    """Every channel's shadow, the in-flight intents, and the divergence events so far."""

    channels: dict[tuple[bytes, int], ChannelShadow] = field(default_factory=dict)
    events: list[Divergence] = field(default_factory=list)
    pending: dict[int, Pending] = field(default_factory=dict)
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
        recreated = ch.last_conn is not None and ch.last_conn != intent.conn  # another client than the last
        predicted = RULES[intent.kind].predict(ch, intent, recreated)
        if self.in_doubt and intent.kind == SIGN_REMOTE:
            predicted = predicted + self._against_in_doubt(intent, predicted)
        events = [self._event(intent, *p) for p in predicted] if predicted else []
        ch.last_conn = intent.conn
        ch.last_request_kind = intent.kind
        ch.last_request_index = intent.index
        ch.last_request_time_ns = intent.time_ns
        ch.requests += 1
        self.pending[intent.op_id] = Pending(intent, events)
        return intent, events

    def finish(self, op_id: int, outcome: str, time_ns: int = 0, detail: str = "") -> list[Divergence]:
        """Apply the outcome of an intent; return its events in their final status (plus new ones)."""
        if outcome not in EVENT_STATUS:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        pending = self.pending.pop(op_id, None)
        if pending is None:
            late = self.recent_unanswered.pop(op_id, None) if outcome == REJECTED else None
            if late is None:
                return []
            pending = Pending(late, [])
        intent, events = pending.intent, pending.events
        if outcome == SIGNED and self.in_doubt and intent.kind == SIGN_REMOTE:
            # The signer answered for this index now; what it did before is in the events.
            self.in_doubt = [d for d in self.in_doubt if not (
                d.kind == SIGN_REMOTE and d.index == intent.index and d.dbid == intent.dbid
                and d.peer_id == intent.peer_id)]
        if outcome == SIGNED and not events:  # the common case, and most of a WAL replay
            RULES[intent.kind].apply(self.channels[(intent.peer_id, intent.dbid)], intent)
            return events
        double_signed_status, other_status = EVENT_STATUS[outcome]
        for ev in events:
            ev.outcome_time_ns = time_ns
            ev.status = double_signed_status if ev.kind == DOUBLE_SIGNED else other_status
            if outcome == REJECTED and ev.kind != DOUBLE_SIGNED:
                ev.detail = f"{ev.detail}; the signer refused it" if ev.detail else "the signer refused it"
        if outcome == UNANSWERED:
            self.recent_unanswered[op_id] = intent
            if len(self.recent_unanswered) > RECENT_UNANSWERED:
                del self.recent_unanswered[next(iter(self.recent_unanswered))]
        if outcome == SIGNED:
            RULES[intent.kind].apply(self.channel(intent.peer_id, intent.dbid), intent)
        elif outcome == REJECTED:
            ev = self._event(intent, SIGNER_REJECTED, None, detail or "the signer refused the request")
            ev.status, ev.outcome_time_ns = CONFIRMED, time_ns
            events.append(ev)
        self.events.extend(events)
        if len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events]
        return events

    def _against_in_doubt(self, it: Intent, predicted: list[Prediction]) -> list[Prediction]:
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
        del self.in_doubt[: max(0, len(self.in_doubt) - IN_DOUBT)]
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
