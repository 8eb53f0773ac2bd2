"""The shadow against real channel messages: the normal flow stays silent, and every divergence
kind comes out of the exchange that causes it."""

from __future__ import annotations

import msgpack
import pytest

from proxy.core.digest import commitment_digest, tx_outputs
from proxy.core.shadow import (
    CONFIRMED,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    NODE_BEHIND_AFTER_RESTART,
    OUTCOMES,
    PREVENTED,
    REFUTED,
    REJECTED,
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
    Shadow,
    intent_from_request,
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
    # The same contents as the one in doubt is a plain retry.
    shadow2 = Shadow()
    normal_flow(shadow2)
    shadow2.begin(intent_from_request(first, peer_id(), 1, conn=1, seq=30))
    shadow2.restart()
    assert step(shadow2, first, conn=2, seq=0) == ([], [])
