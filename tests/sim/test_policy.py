"""The simulated signer's VLS rules, one by one: each tag refuses, and with the filter set to
warn the same operation goes ahead (VLS's semantics), recording the warning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import bolt3, crypto
from sim.policy import (HOLDER_NOT_REVOKED, OPTIONAL_FAIL_FAST, POLICY_OTHER, PREVIOUS_REVOKED, RETRY_SAME,
                        REVOKE_NEW_COMMITMENT_SIGNED, ChannelPolicy, CommitmentInfo, PolicyError, PolicyFilter)

SEED = b"\x42" * 32  # the counterparty's shachain seed


def point(n):
    return bolt3.commitment_point(SEED, n)


def secret(n):
    return bolt3.commitment_secret(SEED, n)


def info(tag: str = "A", remote: bool = True) -> CommitmentInfo:
    return CommitmentInfo(remote, 1000, 2000, ((5, tag, 500),), (), 253)


def warn(tag):
    return PolicyFilter.parse([f"{tag}:warn"])


def advanced(rounds: int, policy_filter=None) -> ChannelPolicy:
    """A channel after the opening (0) and ``rounds`` full lockstep rounds."""
    p = ChannelPolicy(policy_filter=policy_filter)
    p.sign_counterparty_commitment(0, point(0), info("0"))
    p.validate_holder_commitment(0, info("0", False), True)
    for k in range(1, rounds + 1):
        p.sign_counterparty_commitment(k, point(k), info(str(k)))
        p.validate_holder_commitment(k, info(str(k), False), True)
        p.revoke_holder_commitment(k - 1)
        p.validate_counterparty_revocation(k - 1, secret(k - 1))
    return p


def test_a_normal_lockstep_run_is_accepted_and_counts_up():
    p = advanced(20)
    s = p.state
    assert (s.next_counterparty_commit_num, s.next_counterparty_revoke_num, s.next_holder_commit_num) == (21, 20, 21)
    assert p.take_warnings() == []


def test_identical_retry_is_accepted_and_changes_nothing():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("4"))
    before = p.state.to_json()
    p.sign_counterparty_commitment(4, point(4), info("4"))
    assert p.state.to_json() == before


# --- policy-commitment-retry-same ---

def test_retry_same_refuses_changed_info():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("H1"))
    with pytest.raises(PolicyError) as exc:
        p.sign_counterparty_commitment(4, point(4), info("H1+H2"))
    assert exc.value.tag == RETRY_SAME and "changed info" in exc.value.message


def test_retry_same_refuses_changed_point():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("4"))
    with pytest.raises(PolicyError) as exc:
        p.sign_counterparty_commitment(4, point(99), info("4"))
    assert exc.value.tag == RETRY_SAME and "changed point" in exc.value.message


def test_retry_same_warn_signs_but_keeps_the_first_info():
    p = advanced(3, warn(RETRY_SAME))
    p.sign_counterparty_commitment(4, point(4), info("H1"))
    p.sign_counterparty_commitment(4, point(4), info("H1+H2"))  # goes ahead
    assert any(RETRY_SAME in w for w in p.take_warnings())
    assert p.state.current_counterparty_commit_info == info("H1")  # VLS's record no longer matches what it signed


def test_retry_same_on_holder_side_refuses_changed_info_of_current_commitment():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.validate_holder_commitment(3, info("other", False), True)
    assert exc.value.tag == RETRY_SAME
    advanced(3, warn(RETRY_SAME)).validate_holder_commitment(3, info("other", False), True)


def test_pending_holder_commitment_may_be_revalidated_with_other_contents():
    p = advanced(3)
    p.validate_holder_commitment(4, info("x", False), True)
    p.validate_holder_commitment(4, info("y", False), True)  # overwrite until revoked
    assert p.state.next_holder_commit_info == info("y", False)


# --- policy-commitment-previous-revoked ---

def test_previous_revoked_refuses_signing_two_ahead():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("4"))
    with pytest.raises(PolicyError) as exc:
        p.sign_counterparty_commitment(5, point(5), info("5"))  # 3 not revoked yet
    assert exc.value.tag == PREVIOUS_REVOKED


def test_previous_revoked_refuses_resigning_an_older_index():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.sign_counterparty_commitment(2, point(2), info("2"))
    assert exc.value.tag == PREVIOUS_REVOKED


def test_previous_revoked_refuses_retry_once_previous_is_revoked():
    p = advanced(3)  # R revoked 2, so 3 cannot be re-signed even identically
    with pytest.raises(PolicyError) as exc:
        p.sign_counterparty_commitment(3, point(3), info("3"))
    assert exc.value.tag == PREVIOUS_REVOKED


def test_previous_revoked_refuses_bad_revocation_secret_and_wrong_index():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("4"))
    with pytest.raises(PolicyError) as exc:
        p.validate_counterparty_revocation(3, crypto.sha256(b"bogus"))
    assert exc.value.tag == PREVIOUS_REVOKED
    with pytest.raises(PolicyError) as exc:
        p.validate_counterparty_revocation(9, secret(9))
    assert exc.value.tag == PREVIOUS_REVOKED
    p.validate_counterparty_revocation(3, secret(3))
    p.validate_counterparty_revocation(3, secret(3))  # a retry is idempotent


def test_previous_revoked_warn_lets_the_signing_go_ahead():
    p = advanced(3, warn(PREVIOUS_REVOKED))
    p.sign_counterparty_commitment(4, point(4), info("4"))
    p.sign_counterparty_commitment(5, point(5), info("5"))
    assert any(PREVIOUS_REVOKED in w for w in p.take_warnings())
    assert p.state.next_counterparty_commit_num == 6


# --- policy-commitment-holder-not-revoked ---

def test_holder_not_revoked_refuses_validating_a_revoked_commitment():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.validate_holder_commitment(1, info("1", False), True)
    assert exc.value.tag == HOLDER_NOT_REVOKED
    q = advanced(3, warn(HOLDER_NOT_REVOKED))
    q.validate_holder_commitment(1, info("1", False), True)
    assert any(HOLDER_NOT_REVOKED in w for w in q.take_warnings())


# --- policy-revoke-new-commitment-signed ---

def test_revoke_new_commitment_signed_refuses_revoking_without_a_validated_next():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.revoke_holder_commitment(3)  # 4 never validated
    assert exc.value.tag == REVOKE_NEW_COMMITMENT_SIGNED
    with pytest.raises(PolicyError) as exc:
        p.revoke_holder_commitment(7)  # far ahead, like the capture's out-of-order revoke
    assert exc.value.tag == REVOKE_NEW_COMMITMENT_SIGNED
    p.revoke_holder_commitment(2)  # re-revoking an old one is idempotent


def test_revoke_new_commitment_signed_refuses_bad_counterparty_signatures():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.validate_holder_commitment(4, info("4", False), signatures_ok=False)
    assert exc.value.tag == REVOKE_NEW_COMMITMENT_SIGNED
    q = advanced(3, warn(REVOKE_NEW_COMMITMENT_SIGNED))
    q.validate_holder_commitment(4, info("4", False), signatures_ok=False)
    assert q.state.next_holder_commit_info == info("4", False)


# --- policy-optional-fail-fast and policy-other ---

def test_optional_fail_fast_refuses_points_too_far_ahead():
    p = advanced(3)
    p.get_per_commitment_point(5)
    with pytest.raises(PolicyError) as exc:
        p.get_per_commitment_point(6)
    assert exc.value.tag == OPTIONAL_FAIL_FAST
    advanced(3, warn(OPTIONAL_FAIL_FAST)).get_per_commitment_point(6)


def test_policy_other_refuses_a_holder_commitment_from_the_future():
    p = advanced(3)
    with pytest.raises(PolicyError) as exc:
        p.validate_holder_commitment(9, info("9", False), True)
    assert exc.value.tag == POLICY_OTHER
    q = advanced(3, warn(POLICY_OTHER))
    q.validate_holder_commitment(9, info("9", False), True)
    assert any(POLICY_OTHER in w for w in q.take_warnings())


# --- filter semantics ---

def test_filter_first_match_wins_prefixes_and_default_error():
    f = PolicyFilter.parse(["policy-commitment-retry-same:error", "policy-commitment-*:warn"])
    assert f.action(RETRY_SAME) == "error"
    assert f.action(PREVIOUS_REVOKED) == "warn"
    assert f.action(REVOKE_NEW_COMMITMENT_SIGNED) == "error"
    assert PolicyFilter.permissive().action("anything") == "warn"
    with pytest.raises(ValueError, match="TAG:warn"):
        PolicyFilter.parse(["policy-commitment-retry-same"])


def test_a_refused_operation_leaves_the_state_untouched():
    p = advanced(3)
    p.sign_counterparty_commitment(4, point(4), info("H1"))
    before = p.state.to_json()
    with pytest.raises(PolicyError):
        p.sign_counterparty_commitment(4, point(4), info("H2"))
    assert p.state.to_json() == before


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["sign", "validate", "revoke", "revocation"]), st.integers(0, 8)), max_size=25))
def test_any_sequence_keeps_the_index_invariants(ops):
    """Whatever a (possibly compromised) node asks, accepted operations keep VLS's invariants:
    C-2 <= R <= C-1 once signing started, and never two different commitments signed at one index."""
    p = advanced(1)
    signed: dict[int, CommitmentInfo] = {}
    for op, n in ops:
        try:
            if op == "sign":
                i = info(f"{n}-{len(signed) % 2}")
                p.sign_counterparty_commitment(n, point(n), i)
                assert signed.setdefault(n, i) == i, f"signed two different commitments at index {n}"
            elif op == "validate":
                p.validate_holder_commitment(n, info(str(n), False), True)
            elif op == "revoke":
                p.revoke_holder_commitment(n)
            else:
                p.validate_counterparty_revocation(n, secret(n))
        except PolicyError:
            pass
        s = p.state
        assert s.next_counterparty_commit_num - 2 <= s.next_counterparty_revoke_num <= s.next_counterparty_commit_num - 1
        assert s.next_holder_commit_num >= 1
