"""The shadow against real channel messages: the normal flow stays silent, and every divergence
kind comes out of the exchange that causes it."""

from __future__ import annotations

import msgpack
import pytest

from proxy.core.digest import commitment_digest, tx_outputs
from proxy.core.shadow import (
    CONFIRMED,
    CRASHED_IN_WINDOW,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    NODE_BEHIND_AFTER_RESTART,
    OUTCOMES,
    POSSIBLE,
    PREVENTED,
    REFUTED,
    REJECTED,
    RESOLVED,
    RETRY_CHANGED,
    REVOCATION_MISMATCH,
    REVOKE_HOLDER,
    SIGN_REMOTE,
    SIGNED,
    SIGNER_REJECTED,
    UNANSWERED,
    UNKNOWN,
    VALIDATE_HOLDER,
    VALIDATE_REVOCATION,
    Intent,
    Shadow,
    connection_end_record,
    intent_from_request,
    intent_record,
    load_shadow,
    outcome_record,
    restart_record,
    shadow_from_snapshot,
    shadow_to_snapshot,
)
from proxy.core.shadow.transitions import EVENT_STATUS, KIND_BY_REQUEST, RULES
from tests.proxy.core.shadow_vectors import channel_messages, peer_id, request

SIGN = "hsmd_sign_remote_commitment_tx"
VALIDATE = "hsmd_validate_commitment_tx"
REVOKE = "hsmd_revoke_commitment_tx"
REVOCATION = "hsmd_validate_revocation"
POINT = "hsmd_get_per_commitment_point"


def step(shadow, msg, *, conn=1, seq=0, outcome=SIGNED, detail=""):
    intent = intent_from_request(msg, peer_id(), 1, conn=conn, seq=seq, time_ns=1000 + seq)
    intent, predicted = shadow.begin(intent)
    kinds_predicted = [ev.kind for ev in predicted]
    final = shadow.finish(intent.op_id, outcome, time_ns=2000 + seq, detail=detail)
    return kinds_predicted, final


def normal_flow(shadow, conn=1):
    """openingd then channeld as in the capture: C=2, R=1, H=2 afterwards."""
    for seq, (name, index) in enumerate([(POINT, 0), (POINT, 1), (SIGN, 0), (VALIDATE, 0), (SIGN, 1),
                                         (REVOCATION, 0), (POINT, 2), (VALIDATE, 1), (REVOKE, 0)]):
        predicted, final = step(shadow, request(name, index), conn=conn, seq=seq)
        assert predicted == [] and final == [], (name, index, final)
    return shadow.channel(peer_id(), 1)


def test_real_channel_flow_is_silent_and_advances_like_vls():
    ch = normal_flow(Shadow())
    assert (ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num, ch.next_holder_commit_num) == (2, 1, 2)
    assert ch.current_counterparty_point == channel_messages()[(SIGN, 1)].fields["remote_per_commit"]
    assert ch.previous_counterparty_point == channel_messages()[(SIGN, 0)].fields["remote_per_commit"]
    assert ch.pending_holder_digest is None and ch.current_holder_digest is not None
    assert ch.max_point_handed_out == 2


def test_digest_reads_the_real_commitment_outputs_and_ignores_htlc_order():
    fields = channel_messages()[(SIGN, 1)].fields
    outputs = tx_outputs(fields["tx"]["tx"])
    assert len(outputs) == 5 and all(len(script) == 34 for _, script in outputs)
    assert sum(v for v, _ in outputs) < 1_000_000  # funding 0.01 BTC minus fee
    htlc = fields["htlcs"][0]
    other = dict(htlc, payment_hash=bytes(32))
    d1 = commitment_digest(fields["tx"]["tx"], [htlc, other], 253, fields["remote_per_commit"])
    d2 = commitment_digest(fields["tx"]["tx"], [other, htlc], 253, fields["remote_per_commit"])
    assert d1 == d2
    assert d1 != commitment_digest(fields["tx"]["tx"], [htlc, other], 254, fields["remote_per_commit"])
    assert d1 != commitment_digest(fields["tx"]["tx"], [htlc, other], 253, None)


def test_identical_retry_is_not_a_divergence():
    shadow = Shadow()
    normal_flow(shadow)
    assert step(shadow, request(SIGN, 1), seq=20) == ([], [])


def test_retry_changed_and_double_signed_the_split_brain():
    shadow = Shadow()
    before = normal_flow(shadow).current_counterparty_digest
    htlc = dict(channel_messages()[(SIGN, 1)].fields["htlcs"][0], amount=4_000_000)
    predicted, final = step(shadow, request(SIGN, 1, htlcs=[htlc]), seq=20)
    assert predicted == [RETRY_CHANGED, DOUBLE_SIGNED]
    by_kind = {ev.kind: ev for ev in final}
    assert by_kind[DOUBLE_SIGNED].status == CONFIRMED
    assert by_kind[RETRY_CHANGED].index == 1
    assert by_kind[RETRY_CHANGED].shadow_digest == before
    assert by_kind[RETRY_CHANGED].request_digest not in (None, before)
    assert by_kind[RETRY_CHANGED].request_seq == 20 and by_kind[RETRY_CHANGED].time_ns == 1020


def test_a_validating_signer_refuses_the_changed_retry():
    shadow = Shadow()
    normal_flow(shadow)
    predicted, final = step(shadow, request(SIGN, 1, feerate=1000), seq=20, outcome=REJECTED,
                            detail="policy-commitment-retry-same")
    statuses = {ev.kind: ev.status for ev in final}
    assert statuses == {RETRY_CHANGED: CONFIRMED, DOUBLE_SIGNED: REFUTED, SIGNER_REJECTED: CONFIRMED}
    assert [ev.detail for ev in final if ev.kind == SIGNER_REJECTED] == ["policy-commitment-retry-same"]
    assert shadow.channel(peer_id(), 1).next_counterparty_commit_num == 2  # nothing advanced


def test_guard_refusal_prevents_and_changes_nothing():
    shadow = Shadow()
    digest = normal_flow(shadow).current_counterparty_digest
    intent = intent_from_request(request(SIGN, 1, feerate=1000), peer_id(), 1, conn=1, seq=20)
    intent, predicted = shadow.begin(intent)
    assert shadow.would_double_sign(predicted)
    final = shadow.finish(intent.op_id, GUARD_REFUSED)
    assert {ev.status for ev in final} == {PREVENTED}
    assert shadow.channel(peer_id(), 1).current_counterparty_digest == digest


def test_index_regressed_re_signing_an_older_commitment():
    shadow = Shadow()
    normal_flow(shadow)
    predicted, _ = step(shadow, request(SIGN, 0, feerate=999), seq=20)
    assert predicted == [INDEX_REGRESSED]  # commitment 0 is revoked, its info is gone (as in VLS)
    predicted, _ = step(shadow, request(SIGN, 0, feerate=999), seq=21)
    assert predicted == [INDEX_REGRESSED]  # identical to what was just signed there
    predicted, _ = step(shadow, request(SIGN, 0), seq=22)
    assert predicted == [INDEX_REGRESSED, DOUBLE_SIGNED]  # the signer did sign 999 at 0 again
    predicted, _ = step(shadow, request(VALIDATE, 0), seq=23)
    assert predicted == [INDEX_REGRESSED]


def test_double_signed_at_the_previous_unrevoked_index():
    shadow = Shadow()
    for seq, (name, index) in enumerate([(SIGN, 0), (VALIDATE, 0), (SIGN, 1)]):
        step(shadow, request(name, index), seq=seq)
    predicted, final = step(shadow, request(SIGN, 0, feerate=999), seq=10)
    assert predicted == [INDEX_REGRESSED, DOUBLE_SIGNED]
    assert [ev.status for ev in final if ev.kind == DOUBLE_SIGNED] == [CONFIRMED]


def test_index_skipped_jumping_ahead():
    shadow = Shadow()
    normal_flow(shadow)
    predicted, _ = step(shadow, request(SIGN, 1, commit_num=4), seq=20)
    assert predicted == [INDEX_SKIPPED]
    predicted, _ = step(shadow, request(VALIDATE, 1, commit_num=5), seq=21)
    assert predicted == [INDEX_SKIPPED]


def test_signing_before_the_counterparty_revoked_is_skipping():
    shadow = Shadow()
    for seq, (name, index) in enumerate([(SIGN, 0), (VALIDATE, 0), (SIGN, 1)]):
        step(shadow, request(name, index), seq=seq)
    predicted, _ = step(shadow, request(SIGN, 1, commit_num=2), seq=10)
    assert predicted == [INDEX_SKIPPED]  # 0 not revoked yet: VLS's policy-commitment-previous-revoked


def test_revocation_mismatch_wrong_secret_out_of_order_and_early_revoke():
    shadow = Shadow()
    for seq, (name, index) in enumerate([(SIGN, 0), (VALIDATE, 0), (SIGN, 1)]):
        step(shadow, request(name, index), seq=seq)
    wrong = channel_messages()[(REVOCATION, 9)].fields["per_commitment_secret"]
    predicted, _ = step(shadow, request(REVOCATION, 0, per_commitment_secret=wrong), seq=10, outcome=REJECTED)
    assert predicted == [REVOCATION_MISMATCH]
    predicted, _ = step(shadow, request(REVOCATION, 9), seq=11, outcome=REJECTED)
    assert predicted == [REVOCATION_MISMATCH]
    predicted, _ = step(shadow, request(REVOKE, 7), seq=12)
    assert predicted == [REVOCATION_MISMATCH]
    # The real secret for 0 derives to the point the node used when signing commitment 0.
    assert step(shadow, request(REVOCATION, 0), seq=13)[0] == []


def test_signer_rejected_and_late_bad_request_after_close():
    shadow = Shadow()
    normal_flow(shadow)
    _, final = step(shadow, request(POINT, 2), seq=20, outcome=REJECTED, detail="bad request")
    assert [ev.kind for ev in final] == [SIGNER_REJECTED]
    intent, _ = shadow.begin(intent_from_request(request(POINT, 2), peer_id(), 1, conn=1, seq=21))
    assert shadow.finish(intent.op_id, UNANSWERED) == []
    late = shadow.finish(intent.op_id, REJECTED, detail="client does not have capability")
    assert [ev.kind for ev in late] == [SIGNER_REJECTED]


def test_node_behind_after_restart_on_a_recreated_client():
    shadow = Shadow()
    normal_flow(shadow, conn=1)
    predicted, _ = step(shadow, request(SIGN, 0), conn=2, seq=0)
    assert NODE_BEHIND_AFTER_RESTART in predicted and INDEX_REGRESSED in predicted
    # Only the first request of the new client is a restart question.
    predicted, _ = step(shadow, request(SIGN, 0), conn=2, seq=1)
    assert predicted == [INDEX_REGRESSED]
    # A re-created client at the right index (channeld's startup point request) is fine.
    assert step(shadow, request(POINT, 2), conn=3, seq=0)[0] == []
    assert step(shadow, request(POINT, 0), conn=4, seq=0)[0] == [NODE_BEHIND_AFTER_RESTART]


def test_restart_marks_in_flight_intents_unknown_and_in_doubt():
    shadow = Shadow()
    normal_flow(shadow)
    intent, predicted = shadow.begin(intent_from_request(request(SIGN, 1, feerate=7), peer_id(), 1, conn=1))
    stranded = shadow.restart()
    assert stranded == [intent] and shadow.in_doubt == [intent]
    assert {ev.status for ev in shadow.events[-len(predicted):]} == {UNKNOWN}


def test_snapshot_round_trip_keeps_everything():
    shadow = Shadow()
    normal_flow(shadow)
    step(shadow, request(SIGN, 1, feerate=7), seq=20)
    shadow.begin(intent_from_request(request(SIGN, 1, feerate=8), peer_id(), 1, conn=1))
    snap = msgpack.unpackb(msgpack.packb(shadow_to_snapshot(shadow), use_bin_type=True), raw=False)
    back = shadow_from_snapshot(snap)
    assert shadow_to_snapshot(back) == shadow_to_snapshot(shadow)


def test_requests_without_a_channel_or_index_are_ignored():
    assert intent_from_request(request(SIGN, 0), None, None) is None
    assert intent_from_request(channel_messages()[("hsmd_check_outpoint", None)], peer_id(), 1) is None


def test_the_tables_have_one_rule_per_kind_and_a_status_for_every_outcome():
    assert set(RULES) == {SIGN_REMOTE, VALIDATE_HOLDER, REVOKE_HOLDER, VALIDATE_REVOCATION, GET_POINT}
    assert len(KIND_BY_REQUEST) == len(RULES) and set(KIND_BY_REQUEST.values()) == set(RULES)
    assert set(EVENT_STATUS) == set(OUTCOMES)
    assert EVENT_STATUS[SIGNED] == (CONFIRMED, CONFIRMED)  # a signed prediction happened


def test_bad_outcome_is_named():
    with pytest.raises(ValueError, match="unknown outcome 'ok'"):
        Shadow().finish(1, "ok")


def test_a_splice_candidate_at_the_same_index_is_not_a_changed_retry():
    shadow = Shadow()
    normal_flow(shadow)
    fields = channel_messages()[(SIGN, 1)].fields
    raw = fields["tx"]["tx"]
    assert raw[4] == 1  # one input, right after the version (no segwit marker here)
    spliced = raw[:5] + bytes(32) + raw[37:]  # the same commitment on another funding outpoint
    htlc = dict(fields["htlcs"][0], amount=4_000_000)
    predicted, final = step(shadow, request(SIGN, 1, tx={"tx": spliced, "psbt": fields["tx"]["psbt"]},
                                            htlcs=[htlc]), seq=20)
    assert predicted == [] and final == []
    ch = shadow.channel(peer_id(), 1)
    assert ch.current_counterparty_funding == raw[5:41]  # the main funding stays tracked
    # A changed retry on the main funding is still the split-brain.
    assert step(shadow, request(SIGN, 1, htlcs=[htlc]), seq=21)[0] == [RETRY_CHANGED, DOUBLE_SIGNED]


def test_a_request_differing_from_one_in_doubt_after_a_proxy_restart_is_a_possible_double_signature():
    shadow = Shadow()
    normal_flow(shadow)
    # Sign 2 was forwarded, then the proxy died before the answer was durable.
    first = request(SIGN, 1, commit_num=2, feerate=300)
    shadow.begin(intent_from_request(first, peer_id(), 1, conn=1, seq=30))
    shadow.restart()
    assert [i.index for i in shadow.in_doubt] == [2]
    # The node comes back and asks for 2 with other contents: the signer may now sign twice.
    predicted, final = step(shadow, request(SIGN, 1, commit_num=2, feerate=400), conn=2, seq=0)
    assert predicted == [RETRY_CHANGED, DOUBLE_SIGNED]
    assert "in doubt" in final[0].detail
    assert shadow.in_doubt == []  # resolved: the signer answered for index 2
    assert {ev.status for ev in final} == {POSSIBLE}  # the signer may never have seen the first one
    assert all(ev.in_doubt for ev in final)
    # The same contents as the one in doubt is a plain retry.
    shadow2 = Shadow()
    normal_flow(shadow2)
    shadow2.begin(intent_from_request(first, peer_id(), 1, conn=1, seq=30))
    shadow2.restart()
    assert step(shadow2, first, conn=2, seq=0) == ([], [])


# --- issue 12 item 9: a request in doubt is not a signature --------------------------------------


def in_doubt_at_2(shadow: Shadow, conn: int = 1) -> None:
    """Sign 2 was written to the WAL and forwarded, then the proxy died before the answer was durable."""
    normal_flow(shadow, conn=conn)
    shadow.begin(intent_from_request(request(SIGN, 1, commit_num=2, feerate=300), peer_id(), 1, conn=conn, seq=30))
    shadow.restart()


@pytest.mark.parametrize("outcome,expected", [
    (SIGNED, {RETRY_CHANGED: POSSIBLE, DOUBLE_SIGNED: POSSIBLE}),
    (REJECTED, {RETRY_CHANGED: POSSIBLE, DOUBLE_SIGNED: REFUTED, SIGNER_REJECTED: CONFIRMED}),
    (GUARD_REFUSED, {RETRY_CHANGED: PREVENTED, DOUBLE_SIGNED: PREVENTED}),
    (UNANSWERED, {RETRY_CHANGED: UNKNOWN, DOUBLE_SIGNED: UNKNOWN}),
])
def test_a_retry_against_a_request_in_doubt_is_never_confirmed(outcome, expected):
    shadow = Shadow()
    in_doubt_at_2(shadow)
    predicted, final = step(shadow, request(SIGN, 1, commit_num=2, feerate=400), conn=2, outcome=outcome)
    assert predicted == [RETRY_CHANGED, DOUBLE_SIGNED]
    assert {ev.kind: ev.status for ev in final} == expected
    assert [ev.in_doubt for ev in final if ev.kind != SIGNER_REJECTED] == [True, True]
    assert shadow.would_double_sign(final)  # what --guard looks at: it still refuses such a retry
    back = shadow_from_snapshot(msgpack.unpackb(msgpack.packb(shadow_to_snapshot(shadow), use_bin_type=True),
                                                raw=False))
    assert [(ev.kind, ev.status, ev.in_doubt) for ev in back.events] == [(ev.kind, ev.status, ev.in_doubt)
                                                                         for ev in shadow.events]


def test_a_confirmed_double_signature_stays_confirmed_next_to_a_request_in_doubt():
    """What the signer did sign (the shadow's own digest at C-1) still confirms: only the comparison
    with the request in doubt is possible."""
    shadow = Shadow()
    normal_flow(shadow)
    shadow.begin(intent_from_request(request(SIGN, 1, feerate=300), peer_id(), 1, conn=1, seq=30))
    shadow.restart()
    _, final = step(shadow, request(SIGN, 1, feerate=400), conn=2)
    assert [(ev.kind, ev.status, ev.in_doubt) for ev in final] == [(RETRY_CHANGED, CONFIRMED, False),
                                                                   (DOUBLE_SIGNED, CONFIRMED, False)]


PEER = b"\x02" * 33


def point(n: int) -> bytes:
    return b"\x03" + n.to_bytes(32, "big")


def run(shadow: Shadow, kind: str, n: int, digest: bytes | None = None, p: bytes | None = None, conn: int = 1,
        outcome: str = SIGNED):
    intent, predicted = shadow.begin(Intent(0, kind, PEER, 1, n, digest, p, conn))
    return shadow.finish(intent.op_id, outcome) if outcome else intent


def dance(shadow: Shadow, first: int, last: int, conn: int = 1) -> None:
    """channeld's order for commitments first..last on both sides: sign n, the peer revokes n-1;
    validate holder n, revoke holder n-1."""
    for n in range(first, last + 1):
        assert run(shadow, SIGN_REMOTE, n, bytes([n % 251]) * 32, point(n), conn) == []
        if n:
            assert run(shadow, VALIDATE_REVOCATION, n - 1, None, point(n - 1), conn) == []
        assert run(shadow, VALIDATE_HOLDER, n, bytes([n % 251]) * 32, None, conn) == []
        if n:
            assert run(shadow, REVOKE_HOLDER, n - 1, None, None, conn) == []


@pytest.mark.parametrize("in_flight", range(4))
def test_in_doubt_entries_clear_once_the_channel_moves_past_them(in_flight):
    """The report: an entry for index 18 was still listed at commitment 96. The proxy dies with
    one of commitment 19's four requests in flight; the node retries it and goes on."""
    shadow = Shadow()
    dance(shadow, 0, 18)
    steps = [(SIGN_REMOTE, 19, b"\x13" * 32, point(19)), (VALIDATE_REVOCATION, 18, None, point(18)),
             (VALIDATE_HOLDER, 19, b"\x13" * 32, None), (REVOKE_HOLDER, 18, None, None)]
    for i, (kind, n, digest, p) in enumerate(steps):
        if i == in_flight:
            run(shadow, kind, n, digest, p, outcome=None)
            shadow.restart()
            assert [(d.kind, d.index) for d in shadow.in_doubt] == [(kind, n)]
        assert run(shadow, kind, n, digest, p, conn=2) == []
    dance(shadow, 20, 22, conn=2)
    assert shadow.in_doubt == [] and shadow.events == []


def test_an_in_doubt_entry_of_another_channel_stays():
    shadow = Shadow()
    dance(shadow, 0, 3)
    shadow.begin(Intent(0, VALIDATE_REVOCATION, PEER, 2, 5, None, point(5), 1))
    shadow.restart()
    dance(shadow, 4, 9)
    assert [(i.dbid, i.index) for i in shadow.in_doubt] == [(2, 5)]


# --- issue 13 §3: crashed_in_window --------------------------------------------------------------


def into_the_window(shadow: Shadow, conn: int = 1) -> int:
    """openingd and channeld up to the signature of counterparty commitment 1, before the peer's
    revocation of 0 (the capture's own order); returns that signature's op_id."""
    for seq, (name, index) in enumerate([(POINT, 0), (POINT, 1), (SIGN, 0), (VALIDATE, 0), (SIGN, 1)]):
        assert step(shadow, request(name, index), conn=conn, seq=seq) == ([], [])
    ch = shadow.channel(peer_id(), 1)
    assert (ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num) == (2, 0)
    return ch.current_counterparty_op_id


def crash(shadow: Shadow, op_id: int | None, *, conn: int | None = 1, time_ns: int = 5000):
    """The node's side ends: the channel's client connection (conn), or the node (None)."""
    where = (conn, peer_id(), 1) if conn is not None else ()
    return shadow.connection_ended(time_ns, [op_id] if op_id else [], *where)


def test_a_crash_in_the_window_is_flagged_at_once_with_the_channel_index_and_what_the_node_was_sent():
    shadow = Shadow()
    op_id = into_the_window(shadow)
    assert crash(shadow, op_id, conn=7) == []  # another connection than the channel's
    (ev,) = crash(shadow, op_id)
    assert (ev.kind, ev.status, ev.dbid, ev.peer_id, ev.index, ev.op_id) == (
        CRASHED_IN_WINDOW, POSSIBLE, 1, peer_id(), 1, op_id)
    assert ev.reply_forwarded is True and ev.time_ns == 5000 and ev.outcome_time_ns is None
    assert ev.shadow_digest == shadow.channel(peer_id(), 1).current_counterparty_digest
    assert "signed counterparty commitment 1 and before the peer revoked 0" in ev.detail and "had been sent" in ev.detail
    assert shadow.events == [ev] and shadow.crashes_open() == 1
    assert crash(shadow, op_id, conn=None) == []  # the node's death is the same crash: flagged once
    assert ev.to_jsonable()["reply_forwarded"] is True and ev.to_jsonable()["status"] == "possible"


def test_the_node_dying_flags_every_channel_in_the_window_with_or_without_the_signature():
    shadow = Shadow()
    into_the_window(shadow)
    for n, digest in [(0, b"\x00" * 32), (1, b"\x01" * 32)]:  # channel 2: signed 1, 0 not revoked
        intent, _ = shadow.begin(Intent(0, SIGN_REMOTE, peer_id(), 2, n, digest, point(n), conn=9))
        shadow.finish(intent.op_id, SIGNED)
    (a, b) = crash(shadow, None, conn=None)
    assert [(e.dbid, e.index, e.reply_forwarded) for e in (a, b)] == [(1, 1, False), (2, 1, False)]
    assert "process ended" in a.detail and "had not been sent" in a.detail


def test_no_crash_is_flagged_outside_the_window():
    shadow = Shadow()
    step(shadow, request(SIGN, 0))
    assert crash(shadow, None) == []  # commitment 0 revokes nothing
    normal_flow(shadow)  # the peer revoked 0 after commitment 1
    assert crash(shadow, None) == [] and crash(shadow, None, conn=None) == []
    assert Shadow().connection_ended(1, [], None) == []


def test_an_identical_retry_after_the_crash_resolves_it():
    shadow = Shadow()
    op_id = into_the_window(shadow)
    (ev,) = crash(shadow, op_id)
    predicted, final = step(shadow, request(SIGN, 1), conn=2, seq=0)
    assert predicted == [] and final == [ev]
    assert (ev.status, ev.outcome_time_ns) == (RESOLVED, 2000) and "the same contents" in ev.detail
    assert ev.request_digest == ev.shadow_digest and shadow.crashes_open() == 0
    assert step(shadow, request(REVOCATION, 0), conn=2, seq=1) == ([], [])  # nothing left to resolve


def test_the_peers_revocation_resolves_it():
    shadow = Shadow()
    op_id = into_the_window(shadow)
    (ev,) = crash(shadow, None)
    assert step(shadow, request(POINT, 2), conn=2, seq=0) == ([], [])  # not evidence either way
    assert ev.status == POSSIBLE
    _, final = step(shadow, request(REVOCATION, 0), conn=2, seq=1)
    assert final == [ev] and ev.status == RESOLVED and "the peer revoked 0" in ev.detail
    assert op_id and ev.reply_forwarded is False


@pytest.mark.parametrize("outcome", [SIGNED, REJECTED, GUARD_REFUSED, UNANSWERED])
def test_a_changed_retry_after_the_crash_confirms_it_and_is_named(outcome):
    shadow = Shadow()
    op_id = into_the_window(shadow)
    (ev,) = crash(shadow, op_id)
    htlc = dict(channel_messages()[(SIGN, 1)].fields["htlcs"][0], amount=4_000_000)
    predicted, final = step(shadow, request(SIGN, 1, htlcs=[htlc]), conn=2, seq=0, outcome=outcome)
    assert predicted == [RETRY_CHANGED, DOUBLE_SIGNED] and final[-1] is ev
    assert ev.status == CONFIRMED and "other contents" in ev.detail and "it had lost 1" in ev.detail
    assert "retry_changed, double_signed" in ev.detail
    assert ev.request_digest == final[0].request_digest != ev.shadow_digest
    if outcome != SIGNED:  # e.g. the signer's refusal closes the client: no second warning for that signature
        assert crash(shadow, op_id, conn=2) == [] and crash(shadow, op_id, conn=None) == []
    else:  # stock hsmd signed the retry: the node holds that one now, and a crash before 0 is revoked is new
        (again,) = crash(shadow, None, conn=2)
        assert again.op_id == final[0].op_id != op_id


def test_a_new_crash_after_a_resolved_one_is_flagged_again():
    shadow = Shadow()
    into_the_window(shadow)
    crash(shadow, None)
    step(shadow, request(SIGN, 1), conn=2, seq=0)  # resolved; the identical retry is the signature now
    (again,) = crash(shadow, None, conn=2, time_ns=9000)
    assert again.status == POSSIBLE and again.op_id == shadow.channel(peer_id(), 1).current_counterparty_op_id
    assert [e.status for e in shadow.events] == [RESOLVED, POSSIBLE]


def test_crash_events_replay_identically_and_survive_a_snapshot():
    live, records = Shadow(), []

    def do(msg, conn, seq, outcome=SIGNED):
        intent, _ = live.begin(intent_from_request(msg, peer_id(), 1, conn=conn, seq=seq, time_ns=seq))
        records.append(intent_record(intent))
        live.finish(intent.op_id, outcome, seq)
        records.append(outcome_record(intent.op_id, outcome, seq))

    for seq, (name, index) in enumerate([(POINT, 0), (POINT, 1), (SIGN, 0), (VALIDATE, 0), (SIGN, 1)]):
        do(request(name, index), 1, seq)
    op_id = live.channel(peer_id(), 1).current_counterparty_op_id
    live.connection_ended(77, [op_id], 1, peer_id(), 1)
    records.append(connection_end_record(77, [op_id], 1, peer_id(), 1))
    live.restart()
    records.append(restart_record(0))
    snap_at, snap = len(records), msgpack.unpackb(msgpack.packb(shadow_to_snapshot(live), use_bin_type=True), raw=False)
    assert shadow_to_snapshot(load_shadow(None, records)) == shadow_to_snapshot(live)
    do(request(SIGN, 1), 2, 0)
    assert [(e.kind, e.status) for e in live.events] == [(CRASHED_IN_WINDOW, RESOLVED)]
    for replayed in (load_shadow(None, records), load_shadow(snap, records[snap_at:])):
        assert shadow_to_snapshot(replayed) == shadow_to_snapshot(live)
        assert [(e.kind, e.status, e.reply_forwarded, e.detail) for e in replayed.events] == [
            (e.kind, e.status, e.reply_forwarded, e.detail) for e in live.events]


def test_snapshots_of_the_first_layout_still_load_and_keep_their_bytes():
    """Snapshots written before crashed_in_window: 19 channel fields, 13 event fields."""
    shadow = Shadow()
    normal_flow(shadow)
    step(shadow, request(SIGN, 1, feerate=7), seq=20)
    snap = shadow_to_snapshot(shadow)
    old = dict(snap, channels=[rec[:19] for rec in snap["channels"]], events=[rec[:13] for rec in snap["events"]])
    back = shadow_from_snapshot(old)
    assert back.channel(peer_id(), 1).current_counterparty_op_id is None
    assert shadow_to_snapshot(back) == old  # nothing added while the new fields hold their defaults
    with pytest.raises(ValueError, match="18 fields; expected 19 to 20"):
        shadow_from_snapshot(dict(snap, channels=[snap["channels"][0][:18]]))
