"""``Shadow``: every channel's shadow, the intents in flight, and the divergence events so far.

Two transitions: ``begin(intent)`` before a request is forwarded (predicts divergences) and
``finish(op_id, outcome)`` when the signer's answer is known (advances the channel only on
success, and confirms or refutes the prediction); ``restart()`` when the proxy starts again, and
``connection_ended(...)`` when the node's side of a connection (or the whole node) went away.
What each kind predicts and applies is ``proxy.core.shadow.transitions``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.core.shadow.model import (
    CONFIRMED,
    CRASHED_IN_WINDOW,
    DOUBLE_SIGNED,
    GET_POINT,
    OUTCOMES,
    POSSIBLE,
    REJECTED,
    RESOLVED,
    RETRY_CHANGED,
    SIGN_REMOTE,
    SIGNED,
    SIGNER_REJECTED,
    UNANSWERED,
    ChannelShadow,
    Divergence,
    Intent,
)
from proxy.core.shadow.transitions import EVENT_STATUS, IN_DOUBT_STATUS, RULES, Prediction

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
    # The latest crashed_in_window event of each channel (an index into ``events``: a snapshot
    # does not hold it, ``shadow_from_snapshot`` finds it there again).
    crashes: dict[tuple[bytes, int], Divergence] = field(default_factory=dict)

    # --- the transitions -------------------------------------------------------------------

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
        events = [self._event(intent, *p) for p in predicted] if predicted else []
        if self.in_doubt and intent.kind == SIGN_REMOTE:
            events += self._against_in_doubt(intent, predicted)
        ch.last_conn = intent.conn
        ch.last_request_kind = intent.kind
        ch.last_request_index = intent.index
        ch.last_request_time_ns = intent.time_ns
        ch.requests += 1
        self.pending[intent.op_id] = Pending(intent, events)
        return intent, events

    def finish(self, op_id: int, outcome: str, time_ns: int = 0, detail: str = "") -> list[Divergence]:
        """Apply the outcome of an intent; return its events in their final status (plus new ones,
        and a crashed_in_window event it resolved or confirmed)."""
        if outcome not in EVENT_STATUS:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        pending = self.pending.pop(op_id, None)
        if pending is None:
            late = self.recent_unanswered.pop(op_id, None) if outcome == REJECTED else None
            if late is None:
                return []
            pending = Pending(late, [])
        intent, events = pending.intent, pending.events
        if outcome == SIGNED and not events:  # the common case, and most of a WAL replay
            RULES[intent.kind].apply(self.channels[(intent.peer_id, intent.dbid)], intent)
            if self.in_doubt or self.crashes:
                return self._settle(intent, outcome, time_ns, events)
            return events
        double_signed_status, other_status = EVENT_STATUS[outcome]
        for ev in events:
            ev.outcome_time_ns = time_ns
            status = double_signed_status if ev.kind == DOUBLE_SIGNED else other_status
            ev.status = IN_DOUBT_STATUS.get(status, status) if ev.in_doubt else status
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
        self._keep(events)
        if self.in_doubt or self.crashes:
            return self._settle(intent, outcome, time_ns, events)
        return events

    def restart(self) -> list[Intent]:
        """The proxy restarted: intents still in flight will never be answered through us."""
        stranded = [p.intent for p in self.pending.values()]
        for intent in stranded:
            self.finish(intent.op_id, UNANSWERED, detail="the proxy stopped before the signer's answer was durable")
        self.in_doubt.extend(i for i in stranded if i.kind != GET_POINT)
        del self.in_doubt[: max(0, len(self.in_doubt) - IN_DOUBT)]
        return stranded

    def connection_ended(self, time_ns: int = 0, forwarded: Collection[int] = (), conn: int | None = None,
                         peer_id: bytes | None = None, dbid: int | None = None) -> list[Divergence]:
        """The node's side went away: the client connection ``conn`` of channel (``peer_id``,
        ``dbid``), or, with ``conn`` None, the node itself (its master connection closed).

        Each channel it leaves inside the crash window (``windows_open``) gets a
        ``crashed_in_window`` event, status possible: the node may have lost the signature of
        counterparty commitment N. ``forwarded`` holds the op_ids whose signature had been sent
        to the node (written to its socket: a node killed at that moment may never read it). The node's next requests resolve or confirm the event."""
        events = []
        for ch in self.windows_open(conn, peer_id, dbid):
            n = ch.next_counterparty_commit_num - 1
            reply_forwarded = ch.current_counterparty_op_id in forwarded
            who = "process ended (its master connection closed)" if conn is None else "connection for this channel closed"
            detail = (f"the node's {who} after the signer signed counterparty commitment {n} and before the peer "
                      f"revoked {n - 1}; the signature {'had' if reply_forwarded else 'had not'} been sent to the "
                      "node: the node may be one commitment behind its signer")
            ev = Divergence(CRASHED_IN_WINDOW, ch.peer_id, ch.dbid, n, ch.current_counterparty_op_id or 0,
                            ch.last_conn or 0, 0, time_ns, ch.current_counterparty_digest, None, detail, POSSIBLE,
                            None, False, reply_forwarded)
            self.crashes[(ch.peer_id, ch.dbid)] = ev
            events.append(ev)
        self._keep(events)
        return events

    # --- queries ---------------------------------------------------------------------------

    def windows_open(self, conn: int | None = None, peer_id: bytes | None = None,
                     dbid: int | None = None) -> list[ChannelShadow]:
        """The channels a connection's end leaves inside the crash window: the signer signed
        counterparty commitment N (C-1) and the peer's revocation of N-1 was not seen (R < C-1).
        With ``conn``, only channel (``peer_id``, ``dbid``) and only if its last request came on
        that connection; without, every channel. A channel whose crash event for that very
        signature is still open or confirmed is not listed again."""
        if conn is None:
            candidates = self.channels.values()
        else:
            ch = self.channels.get((peer_id, dbid))
            candidates = [ch] if ch is not None and ch.last_conn == conn else []
        out = []
        for ch in candidates:
            C, R = ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num
            if C is None or R is None or R >= C - 1:
                continue
            last = self.crashes.get((ch.peer_id, ch.dbid))
            if last is not None and last.op_id == (ch.current_counterparty_op_id or 0) and last.status != RESOLVED:
                continue
            out.append(ch)
        return out

    def channel(self, peer_id: bytes, dbid: int) -> ChannelShadow:
        key = (peer_id, dbid)
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = ChannelShadow(peer_id, dbid)
        return ch

    def would_double_sign(self, events: list[Divergence]) -> bool:
        return any(ev.kind == DOUBLE_SIGNED for ev in events)

    def crashes_open(self) -> int:
        """Channels whose node ended inside the crash window and has not shown yet what it kept."""
        return sum(1 for ev in self.crashes.values() if ev.status == POSSIBLE)

    # --- helpers -----------------------------------------------------------------------------

    def _against_in_doubt(self, it: Intent, predicted: list[Prediction]) -> list[Divergence]:
        """A signing request that differs from one sent before the proxy stopped, whose answer
        was never recorded: the signer may have signed that one, so this could be a second
        signature at the index (the proxy's own crash window). It may also never have seen it:
        these events are at most possible."""
        kinds = {p[0] for p in predicted}
        for doubt in self.in_doubt:
            if (doubt.kind == SIGN_REMOTE and doubt.index == it.index and doubt.dbid == it.dbid
                    and doubt.peer_id == it.peer_id and doubt.digest != it.digest
                    and doubt.funding == it.funding and DOUBLE_SIGNED not in kinds):
                detail = (f"counterparty commitment {it.index} differs from a request in doubt (sent before the "
                          "proxy stopped, its answer never recorded; the signer may have signed it, or never seen it)")
                extra = [] if RETRY_CHANGED in kinds else [(RETRY_CHANGED, doubt.digest, detail)]
                events = [self._event(it, *p) for p in extra + [(DOUBLE_SIGNED, doubt.digest, detail)]]
                for ev in events:
                    ev.in_doubt = True
                return events
        return []

    def _settle(self, intent: Intent, outcome: str, time_ns: int, events: list[Divergence]) -> list[Divergence]:
        """After an outcome: drop the intents in doubt the channel has moved past, and resolve or
        confirm the channel's open crashed_in_window event. Returns ``events``, plus that event
        when its status changed."""
        key = (intent.peer_id, intent.dbid)
        ch = self.channels.get(key)
        if ch is None:
            return events
        if self.in_doubt and outcome == SIGNED:
            self._settle_in_doubt(ch, intent)
        crash = self.crashes.get(key)
        if crash is None or crash.status != POSSIBLE or not self._settle_crash(crash, ch, intent, outcome, events):
            return events
        crash.outcome_time_ns = time_ns
        return events + [crash]

    def _settle_in_doubt(self, ch: ChannelShadow, answered: Intent) -> None:
        """Intents in doubt that no longer matter: the signer answered for that index now (what
        it did before is in the events), or the channel moved past them."""
        keep = [d for d in self.in_doubt if not (
            d.dbid == ch.dbid and d.peer_id == ch.peer_id
            and ((d.kind == SIGN_REMOTE == answered.kind and d.index == answered.index)
                 or RULES[d.kind].moved_past(ch, d)))]
        if len(keep) != len(self.in_doubt):
            self.in_doubt = keep

    def _settle_crash(self, crash: Divergence, ch: ChannelShadow, it: Intent, outcome: str,
                      events: list[Divergence]) -> bool:
        """Whether this request shows what the node kept of commitment N (the crash's index):
        asking to sign N again with the same contents (it kept N: resolved) or other contents (it
        lost N: confirmed, whatever the signer answered), the peer revoking N-1, or a later
        commitment signed (the channel moved past N: resolved)."""
        n = crash.index
        if it.kind == SIGN_REMOTE and it.index == n and not (
                it.funding is not None and ch.current_counterparty_funding not in (None, it.funding)):
            crash.request_digest = it.digest
            if it.digest == crash.shadow_digest:
                crash.status = RESOLVED
                crash.detail += f"; resolved: the node asked to sign {n} again with the same contents (op {it.op_id})"
            else:
                flagged = [ev.kind for ev in events if ev.op_id == it.op_id and ev.kind in (RETRY_CHANGED, DOUBLE_SIGNED)]
                crash.status = CONFIRMED
                crash.detail += (f"; confirmed: the node asked to sign {n} again with other contents (op {it.op_id}"
                                 f"{': ' + ', '.join(flagged) if flagged else ''}): it had lost {n}")
            return True
        if outcome != SIGNED:
            return False
        C, R = ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num
        if R is not None and R >= n:
            crash.detail += f"; resolved: the peer revoked {n - 1} (op {it.op_id}), so the node had sent {n}"
        elif C is not None and C - 1 > n:
            crash.detail += f"; resolved: the channel moved on to counterparty commitment {C - 1} (op {it.op_id})"
        else:
            return False
        crash.status = RESOLVED
        return True

    def _keep(self, events: list[Divergence]) -> None:
        """Add events to the list, dropping the oldest beyond ``max_events``."""
        if not events:
            return
        self.events.extend(events)
        excess = len(self.events) - self.max_events
        if excess > 0:
            dropped = self.events[:excess]
            del self.events[:excess]
            gone = {id(ev) for ev in dropped if ev.kind == CRASHED_IN_WINDOW}
            if gone:  # forgotten here as in a snapshot, which only holds the events kept
                self.crashes = {k: ev for k, ev in self.crashes.items() if id(ev) not in gone}

    def _event(self, intent: Intent, kind: str, shadow_digest: bytes | None, detail: str) -> Divergence:
        return Divergence(kind, intent.peer_id, intent.dbid, intent.index, intent.op_id, intent.conn, intent.seq,
                          intent.time_ns, shadow_digest, intent.digest, detail)
