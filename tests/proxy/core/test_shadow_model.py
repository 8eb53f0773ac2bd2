"""Hypothesis stateful tests: the shadow against a reference model kept as plain history.

The reference model stores every successful request (what the signer signed, revoked,
validated) and derives VLS's counters from that history; the shadow keeps only incremental
counters and two digests. They must agree after every step. The machine also checks the
guard's promise (no second digest signed at an index the shadow still holds), that replaying
the WAL records (from scratch and from any snapshot) rebuilds the same shadow, and that an
honest node never triggers a divergence. It kills the proxy with a request in flight (which
puts it in doubt: never a confirmed divergence, dropped once the channel moves past it) and
ends the node's connection or the node itself (a crash inside the window, flagged and later
resolved or confirmed as the reference derives from the history).
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from proxy.core.shadow import (
    CONFIRMED,
    CRASHED_IN_WINDOW,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    INDEX_REGRESSED,
    POSSIBLE,
    PREDICTED,
    REJECTED,
    RESOLVED,
    REVOCATION_MISMATCH,
    REVOKE_HOLDER,
    SIGNED,
    SIGN_REMOTE,
    UNANSWERED,
    VALIDATE_HOLDER,
    VALIDATE_REVOCATION,
    Intent,
    Shadow,
    connection_end_record,
    intent_record,
    load_shadow,
    outcome_record,
    restart_record,
    shadow_to_snapshot,
)

PEER = b"\x02" * 33
DIGESTS = [bytes([i]) * 32 for i in range(3)]
OUTCOMES = st.sampled_from([SIGNED, SIGNED, SIGNED, REJECTED, UNANSWERED])


def point(n: int, variant: int = 0) -> bytes:
    return bytes([2 + variant]) + n.to_bytes(32, "big")


class History:
    """The reference: what succeeded, in order; counters derived on demand."""

    def __init__(self):
        self.signed: list[tuple[int, bytes, bytes]] = []  # (index, digest, point)
        self.signed_ops: list[tuple[int, int]] = []  # (index, op_id) of each success, in order
        self.revoked: list[int] = []
        self.timeline: list[tuple[str, int]] = []  # ("sign" | "revoke", index), successes in order
        self.first_was_revocation: bool | None = None

    @property
    def C(self):
        return max(i for i, _, _ in self.signed) + 1 if self.signed else None

    @property
    def R(self):
        candidates = [n + 1 for n in self.revoked]
        if self.signed and not self.first_was_revocation:
            candidates.append(max(self.signed[0][0] - 1, 0))
        return max(candidates) if candidates else None

    def revoked_since_signed(self, index) -> bool:
        last_sign = max((k for k, (what, i) in enumerate(self.timeline) if what == "sign" and i == index), default=-1)
        return any(what == "revoke" and i >= index for what, i in self.timeline[last_sign + 1 :])

    def latest_at(self, index):
        found = [(d, p) for i, d, p in self.signed if i == index]
        return found[-1] if found else None

    def window(self):
        """(N, op_id of its latest signature) while the signer signed N and N-1 is not revoked."""
        C, R = self.C, self.R
        if C is None or R is None or R >= C - 1:
            return None
        return C - 1, [op for i, op in self.signed_ops if i == C - 1][-1]


class Crash:
    """The reference's record of the channel's latest crash in the window."""

    def __init__(self, index, op_id, digest, forwarded):
        self.index, self.op_id, self.digest, self.forwarded = index, op_id, digest, forwarded
        self.status = POSSIBLE


class ShadowMachine(RuleBasedStateMachine):
    @initialize(guard=st.booleans())
    def setup(self, guard):
        self.guard = guard
        self.shadow = Shadow()
        self.model = History()
        self.records: list = []
        self.snapshots: list[tuple[int, dict]] = [(0, shadow_to_snapshot(self.shadow))]
        self.conn = 1
        self.last_conn = None  # the connection of the channel's last request
        self.H_seen = self.C_seen = self.R_seen = -1
        self.crash: Crash | None = None
        self.in_doubt: list[Intent] = []  # the reference's list: what was in flight at a restart

    def _run(self, intent, outcome):
        intent, predicted = self.shadow.begin(intent)
        self.last_conn = intent.conn
        self.records.append(intent_record(intent))
        if self.guard and self.shadow.would_double_sign(predicted):
            outcome = GUARD_REFUSED
        final = self.shadow.finish(intent.op_id, outcome, 0, "")
        self.records.append(outcome_record(intent.op_id, outcome, 0, ""))
        assert all(ev.status != PREDICTED for ev in final)
        assert {ev.kind for ev in predicted} <= {ev.kind for ev in final}
        # A comparison with a request in doubt never confirms: the signer may never have seen it.
        assert all(ev.status != CONFIRMED for ev in final if ev.in_doubt)
        return intent, predicted, outcome

    def _after(self, intent, outcome):
        """The reference's view of what a finished request shows: the crash it resolves or
        confirms, and the intents in doubt it settles. Call once the history is updated."""
        crash = self.crash
        if crash is not None and crash.status == POSSIBLE:
            if intent.kind == SIGN_REMOTE and intent.index == crash.index:
                crash.status = RESOLVED if intent.digest == crash.digest else CONFIRMED
            elif outcome == SIGNED and ((self.model.R is not None and self.model.R >= crash.index)
                                        or (self.model.C is not None and self.model.C - 1 > crash.index)):
                crash.status = RESOLVED
        if outcome == SIGNED:
            self.in_doubt = [d for d in self.in_doubt if not (
                (d.kind == SIGN_REMOTE == intent.kind and d.index == intent.index) or self._moved_past(d))]

    def _moved_past(self, d) -> bool:
        C, R = self.model.C, self.model.R
        H = self.shadow.channel(PEER, 1).next_holder_commit_num  # the reference keeps no holder history
        if d.kind == SIGN_REMOTE:
            return C is not None and d.index < C - 1
        if d.kind == VALIDATE_REVOCATION:
            return R is not None and d.index < R
        if d.kind == VALIDATE_HOLDER:
            return H is not None and d.index < H - 1
        return H is not None and d.index + 2 <= H  # REVOKE_HOLDER

    @rule(offset=st.integers(-3, 2), digest=st.sampled_from(DIGESTS), outcome=OUTCOMES)
    def sign_remote(self, offset, digest, outcome):
        C = self.model.C or 0
        n = max(C + offset, 0)
        intent, predicted, outcome = self._run(
            Intent(0, SIGN_REMOTE, PEER, 1, n, digest, point(n), self.conn), outcome)
        kinds = {ev.kind for ev in predicted}
        if outcome == SIGNED:
            prior = self.model.latest_at(n)
            if prior is not None and prior[0] != digest:
                # A second digest at one index: the shadow must have said so, unless the index
                # is older than the two it keeps or was already revoked (its info is dropped).
                shadow_knew = n == C - 1 or (n == C - 2 and not self.model.revoked_since_signed(n))
                if shadow_knew:
                    assert DOUBLE_SIGNED in kinds
                    assert not self.guard, "the guard let a double signature through"
                else:
                    assert INDEX_REGRESSED in kinds
            self.model.signed.append((n, digest, point(n)))
            self.model.signed_ops.append((n, intent.op_id))
            self.model.timeline.append(("sign", n))
        if self.guard:
            assert outcome != SIGNED or DOUBLE_SIGNED not in kinds
        self._after(intent, outcome)

    @rule(offset=st.integers(-2, 1), wrong_point=st.booleans(), outcome=OUTCOMES)
    def validate_revocation(self, offset, wrong_point, outcome):
        R = self.model.R or 0
        n = max(R + offset, 0)
        p = point(n, 1 if wrong_point else 0)
        C, R_model = self.model.C, self.model.R
        ch = self.shadow.channel(PEER, 1)
        point_held = C is not None and (
            (n == C - 1 and ch.current_counterparty_point is not None)
            or (n == C - 2 and ch.previous_counterparty_point is not None))
        intent, predicted, outcome = self._run(Intent(0, VALIDATE_REVOCATION, PEER, 1, n, None, p, self.conn), outcome)
        if point_held and R_model is not None and n == R_model and n <= C - 2 and wrong_point:
            assert REVOCATION_MISMATCH in {ev.kind for ev in predicted}
            assert self.model.latest_at(n)[1] != p
        if outcome == SIGNED:
            if self.model.first_was_revocation is None:
                self.model.first_was_revocation = not self.model.signed
            self.model.revoked.append(n)
            self.model.timeline.append(("revoke", n))
        self._after(intent, outcome)

    @rule(offset=st.integers(-2, 1), digest=st.sampled_from(DIGESTS), outcome=OUTCOMES)
    def validate_holder(self, offset, digest, outcome):
        H = self.shadow.channel(PEER, 1).next_holder_commit_num or 0
        n = max(H + offset, 0)
        self._after(*self._run(Intent(0, VALIDATE_HOLDER, PEER, 1, n, digest, None, self.conn), outcome)[::2])

    @rule(offset=st.integers(-3, 0), outcome=OUTCOMES)
    def revoke_holder(self, offset, outcome):
        H = self.shadow.channel(PEER, 1).next_holder_commit_num or 1
        n = max(H - 1 + offset, 0)
        self._after(*self._run(Intent(0, REVOKE_HOLDER, PEER, 1, n, None, None, self.conn), outcome)[::2])

    @rule(n=st.integers(0, 6))
    def get_point(self, n):
        self._after(*self._run(Intent(0, GET_POINT, PEER, 1, n, None, None, self.conn), SIGNED)[::2])

    @rule()
    def new_client(self):
        self.conn += 1

    @rule()
    def proxy_restart(self):
        self.records.append(restart_record(0))
        self.shadow.restart()

    @rule(kind=st.sampled_from([SIGN_REMOTE, SIGN_REMOTE, VALIDATE_REVOCATION, VALIDATE_HOLDER, REVOKE_HOLDER]),
          offset=st.integers(-2, 1), digest=st.sampled_from(DIGESTS))
    def proxy_killed_with_a_request_in_flight(self, kind, offset, digest):
        """The intent is in the WAL, the signer's answer never is: the node retries after the restart."""
        ch = self.shadow.channel(PEER, 1)
        base = {SIGN_REMOTE: self.model.C, VALIDATE_REVOCATION: self.model.R, VALIDATE_HOLDER: ch.next_holder_commit_num,
                REVOKE_HOLDER: ch.next_holder_commit_num}[kind] or 0
        n = max(base + offset, 0)
        p = point(n) if kind in (SIGN_REMOTE, VALIDATE_REVOCATION) else None
        intent, _ = self.shadow.begin(Intent(0, kind, PEER, 1, n, digest if kind != VALIDATE_REVOCATION else None, p,
                                             self.conn))
        self.last_conn = intent.conn
        self.records.append(intent_record(intent))
        self.proxy_restart()  # which finishes it unanswered: the node's request still shows what it kept
        self._after(intent, UNANSWERED)
        self.in_doubt.append(intent)
        self.conn += 1  # the node comes back on a new connection

    @rule(master=st.booleans(), forwarded=st.booleans())
    def node_side_ends(self, master, forwarded):
        """The channel's client connection closes, or the node dies (its master connection closes)."""
        window = self.model.window()
        ops = [window[1]] if window and forwarded else []
        where = () if master else (self.conn, PEER, 1)
        self.records.append(connection_end_record(0, ops, *where))
        events = self.shadow.connection_ended(0, ops, *where)
        flagged = window is not None and (master or self.last_conn == self.conn) and not (
            self.crash is not None and self.crash.op_id == window[1] and self.crash.status != RESOLVED)
        if not flagged:
            assert events == []
            return
        n, op_id = window
        self.crash = Crash(n, op_id, self.model.latest_at(n)[0], forwarded)
        (ev,) = events
        assert (ev.kind, ev.index, ev.op_id, ev.status, ev.reply_forwarded) == (
            CRASHED_IN_WINDOW, n, op_id, POSSIBLE, forwarded)
        assert ev.shadow_digest == self.crash.digest

    @rule()
    def checkpoint(self):
        packed = msgpack.packb(shadow_to_snapshot(self.shadow), use_bin_type=True)
        self.snapshots.append((len(self.records), msgpack.unpackb(packed, raw=False, strict_map_key=False)))

    @invariant()
    def counters_match_the_history(self):
        ch = self.shadow.channels.get((PEER, 1))
        if ch is None:
            return
        assert ch.next_counterparty_commit_num == self.model.C
        assert ch.next_counterparty_revoke_num == self.model.R
        C = self.model.C
        if C is not None:
            latest = self.model.latest_at(C - 1)
            assert (ch.current_counterparty_digest, ch.current_counterparty_point) == latest
            previous = self.model.latest_at(C - 2)
            if ch.previous_counterparty_point is not None:
                assert ch.previous_counterparty_point == previous[1]
            if ch.previous_counterparty_digest is not None:
                assert ch.previous_counterparty_digest == previous[0]
        for name, seen in (("next_counterparty_commit_num", self.C_seen), ("next_counterparty_revoke_num", self.R_seen),
                           ("next_holder_commit_num", self.H_seen)):
            value = getattr(ch, name)
            if value is not None:
                assert value >= seen, f"{name} went back from {seen} to {value}"

    @invariant()
    def crash_in_the_window_matches_the_reference(self):
        ev = self.shadow.crashes.get((PEER, 1))
        if self.crash is None:
            assert ev is None
            return
        assert (ev.index, ev.op_id, ev.status, ev.reply_forwarded) == (
            self.crash.index, self.crash.op_id, self.crash.status, self.crash.forwarded)
        assert self.shadow.crashes_open() == (self.crash.status == POSSIBLE)

    @invariant()
    def in_doubt_matches_the_reference(self):
        assert self.shadow.in_doubt == self.in_doubt

    @invariant()
    def remember_counters(self):
        ch = self.shadow.channels.get((PEER, 1))
        if ch is not None:
            self.C_seen = ch.next_counterparty_commit_num if ch.next_counterparty_commit_num is not None else -1
            self.R_seen = ch.next_counterparty_revoke_num if ch.next_counterparty_revoke_num is not None else -1
            self.H_seen = ch.next_holder_commit_num if ch.next_holder_commit_num is not None else -1

    @invariant()
    def replay_from_the_last_snapshot_rebuilds_the_same_shadow(self):
        at, snap = self.snapshots[-1]
        assert shadow_to_snapshot(load_shadow(snap, self.records[at:])) == shadow_to_snapshot(self.shadow)

    def teardown(self):
        if hasattr(self, "shadow"):
            assert shadow_to_snapshot(load_shadow(None, self.records)) == shadow_to_snapshot(self.shadow)


ShadowMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestShadowModel = ShadowMachine.TestCase


@st.composite
def honest_traces(draw):
    """channeld's order for several channels, interleaved, with crash-and-retransmit of the
    identical request (what a node with a WAL, or no crash, does), also inside the window."""
    return draw(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["send", "receive", "crash", "crash_in_window"])),
                         max_size=60))


@settings(max_examples=40, deadline=None)
@given(honest_traces())
def test_an_honest_node_never_triggers_a_divergence(trace):
    shadow = Shadow()
    state = {}  # dbid -> dict(next_remote, revoked, next_local, conn, last_sent)
    conn_counter = [0]
    crashes = 0

    def op(dbid, kind, n, digest=None, p=None):
        ch = state[dbid]
        intent, predicted = shadow.begin(Intent(0, kind, PEER, dbid, n, digest, p, ch["conn"]))
        assert predicted == [], (kind, n, [e.detail for e in predicted])
        shadow.finish(intent.op_id, SIGNED)

    for dbid, action in trace:
        if dbid not in state:
            conn_counter[0] += 1
            state[dbid] = dict(next_remote=0, next_local=0, conn=conn_counter[0], last_sent=None)
            op(dbid, SIGN_REMOTE, 0, DIGESTS[0], point(0))  # openingd
            op(dbid, VALIDATE_HOLDER, 0, DIGESTS[0])
            state[dbid]["next_remote"] = state[dbid]["next_local"] = 1
            state[dbid]["last_sent"] = (0, DIGESTS[0])
            continue
        ch = state[dbid]
        if action == "send":  # sign N, peer revokes N-1
            n = ch["next_remote"]
            digest = bytes([n % 251]) * 32
            op(dbid, SIGN_REMOTE, n, digest, point(n))
            op(dbid, VALIDATE_REVOCATION, n - 1, None, point(n - 1))
            ch["next_remote"] += 1
            ch["last_sent"] = (n, digest)
        elif action == "crash_in_window":  # killed after the signer signed n, before the peer revoked n-1
            n = ch["next_remote"]
            digest = bytes([n % 251]) * 32
            op(dbid, SIGN_REMOTE, n, digest, point(n))
            node_dies = shadow.connection_ended(0, [], *((None,) if dbid == 2 else (ch["conn"], PEER, dbid)))
            assert [(e.kind, e.dbid, e.index) for e in node_dies if e.dbid == dbid] == [(CRASHED_IN_WINDOW, dbid, n)]
            crashes += 1
            conn_counter[0] += 1
            ch["conn"] = conn_counter[0]
            op(dbid, GET_POINT, ch["next_local"])
            op(dbid, SIGN_REMOTE, n, digest, point(n))  # the same commitment again, from the node's WAL
            op(dbid, VALIDATE_REVOCATION, n - 1, None, point(n - 1))
            ch["next_remote"] += 1
            ch["last_sent"] = (n, digest)
        elif action == "receive":  # validate L, revoke L-1
            n = ch["next_local"]
            op(dbid, VALIDATE_HOLDER, n, bytes([n % 251]) * 32)
            op(dbid, REVOKE_HOLDER, n - 1)
            ch["next_local"] += 1
        else:  # channeld restarts: new client, startup point, identical retransmissions
            conn_counter[0] += 1
            ch["conn"] = conn_counter[0]
            op(dbid, GET_POINT, ch["next_local"])
            op(dbid, GET_POINT, ch["next_local"] - 1)
            n, digest = ch["last_sent"]
            op(dbid, SIGN_REMOTE, n, digest, point(n))
            if ch["next_local"] >= 2:
                op(dbid, REVOKE_HOLDER, ch["next_local"] - 2)
    # The crashes inside the window were flagged, and the node's identical retries resolved them all.
    assert [(e.kind, e.status) for e in shadow.events] == [(CRASHED_IN_WINDOW, RESOLVED)] * crashes
