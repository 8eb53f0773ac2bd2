"""What each intent kind means to the shadow, as data: one ``KindRule`` per kind in ``RULES``
(the request that carries it, its index field, the reply that means success, and how it is read,
predicted and applied), and what an outcome makes of a predicted divergence (``EVENT_STATUS``).

Numbering follows VLS (``../shared/reference/vls.md`` §1): C = next counterparty commit num,
R = next counterparty revoke num, H = next holder commit num. ``None`` means "not seen yet":
a proxy started in the middle of a channel's life anchors on the first successful request
instead of reporting every index as skipped.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from proxy.core.digest import digest_of_request, funding_outpoint
from proxy.core.shadow.model import (
    CONFIRMED,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    NODE_BEHIND_AFTER_RESTART,
    POSSIBLE,
    PREVENTED,
    REFUTED,
    REJECTED,
    RETRY_CHANGED,
    REVOCATION_MISMATCH,
    REVOKE_HOLDER,
    SIGN_REMOTE,
    SIGNED,
    UNANSWERED,
    UNKNOWN,
    VALIDATE_HOLDER,
    VALIDATE_REVOCATION,
    ChannelShadow,
    Intent,
    IntentError,
)

# (divergence kind, the shadow's digest, detail): a divergence the request would cause if signed.
Prediction = tuple[str, bytes | None, str]
# (digest, point, funding outpoint) read from a request's fields.
Reading = tuple[bytes | None, bytes | None, bytes | None]


class KindRule(NamedTuple):
    """How the shadow treats one intent kind."""

    request: str  # the hsmd request that carries it
    index_field: str  # the request field that holds the channel index
    success_reply: str  # the reply that means "the signer did it"; anything else is a refusal
    read: Callable[[dict], Reading]  # what the shadow keeps of the request's fields
    # The divergences the request would cause if signed; the flag says whether it comes from
    # another client connection than the channel's last request (a re-created client).
    predict: Callable[[ChannelShadow, Intent, bool], list[Prediction]]
    apply: Callable[[ChannelShadow, Intent], None]  # advance the shadow once the signer succeeded
    # Whether the channel has moved past an intent of this kind at this index: an intent in
    # doubt there (sent before the proxy stopped, never answered) no longer matters.
    moved_past: Callable[[ChannelShadow, Intent], bool]


def _read_nothing(fields: dict) -> Reading:
    return None, None, None  # the index is all these requests carry for the shadow


# --- sign_remote_commitment: C advances; the latest two commitments are kept ------------------


def _read_sign_remote(fields: dict) -> Reading:
    return digest_of_request(fields, with_point=True), fields["remote_per_commit"], funding_outpoint(fields["tx"]["tx"])


def _predict_sign_remote(ch: ChannelShadow, it: Intent, recreated: bool) -> list[Prediction]:
    C, R = ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num
    if C is None:
        return []
    n = it.index
    out: list[Prediction] = []
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
    return out


def _apply_sign_remote(ch: ChannelShadow, it: Intent) -> None:
    n, C = it.index, ch.next_counterparty_commit_num
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
        ch.current_counterparty_op_id = it.op_id
        ch.next_counterparty_commit_num = n + 1
        if ch.next_counterparty_revoke_num is None:
            ch.next_counterparty_revoke_num = max(n - 1, 0)
    elif n == C - 1:
        # A signed retry: the node now holds these contents; the event keeps the old digest.
        ch.current_counterparty_digest = it.digest
        ch.current_counterparty_point = it.point
        ch.current_counterparty_op_id = it.op_id
    elif n == C - 2:  # what the signer signed there last, even if it was unknown or revoked
        ch.previous_counterparty_digest = it.digest
        ch.previous_counterparty_point = it.point
    # Older indices move nothing: VLS stores nothing for them.


def _past_sign_remote(ch: ChannelShadow, it: Intent) -> bool:
    C = ch.next_counterparty_commit_num
    return C is not None and C - 1 > it.index  # a later counterparty commitment was signed


def _other_funding(ch: ChannelShadow, it: Intent, C: int) -> bool:
    """Whether a signing request at C-1 or C-2 is for another funding outpoint than the one signed."""
    if it.funding is None:
        return False
    known = ch.current_counterparty_funding if it.index == C - 1 else (
        ch.previous_counterparty_funding if it.index == C - 2 else None)
    return known is not None and known != it.funding


# --- validate_commitment_tx (holder): H advances to the validated commitment ----------------


def _read_validate_holder(fields: dict) -> Reading:
    return digest_of_request(fields, with_point=False), None, None


def _predict_validate_holder(ch: ChannelShadow, it: Intent, recreated: bool) -> list[Prediction]:
    H = ch.next_holder_commit_num
    if H is None:
        return []
    n = it.index
    out: list[Prediction] = []
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
    return out


def _apply_validate_holder(ch: ChannelShadow, it: Intent) -> None:
    n, H = it.index, ch.next_holder_commit_num
    if n == 0 and (H is None or H == 0):
        ch.current_holder_digest, ch.pending_holder_digest = it.digest, None  # activate the initial commitment
        ch.next_holder_commit_num = 1
    elif H is None or n == H:
        ch.pending_holder_digest = it.digest
        ch.next_holder_commit_num = n
    elif n > H:
        ch.pending_holder_digest, ch.next_holder_commit_num = it.digest, n
    _hand_out_point(ch, n + 1)


def _past_validate_holder(ch: ChannelShadow, it: Intent) -> bool:
    H = ch.next_holder_commit_num
    return H is not None and H - 1 > it.index  # a later holder commitment is current


# --- revoke_commitment_tx (holder): the validated successor becomes current ------------------


def _predict_revoke_holder(ch: ChannelShadow, it: Intent, recreated: bool) -> list[Prediction]:
    H = ch.next_holder_commit_num
    if H is None:
        return []
    n = it.index
    if n + 1 > H:
        return [(REVOCATION_MISMATCH, None, f"revoking holder commitment {n} before {n + 1} was validated")]
    if n + 1 == H and ch.pending_holder_digest is None:
        return [(REVOCATION_MISMATCH, None, f"revoking holder commitment {n} with no validated successor")]
    if n + 2 < H and recreated:
        return [(NODE_BEHIND_AFTER_RESTART, None,
                 f"new client revokes holder commitment {n}; the signer already revoked {H - 2}")]
    return []


def _apply_revoke_holder(ch: ChannelShadow, it: Intent) -> None:
    n, H = it.index, ch.next_holder_commit_num
    if H is None or n + 1 >= H:
        ch.current_holder_digest = ch.pending_holder_digest
        ch.pending_holder_digest = None
        ch.next_holder_commit_num = n + 2
    _hand_out_point(ch, n + 2)


def _past_revoke_holder(ch: ChannelShadow, it: Intent) -> bool:
    H = ch.next_holder_commit_num
    return H is not None and H >= it.index + 2  # that revocation (or a later one) was answered


# --- validate_revocation (counterparty): R advances; the secret must match the point ---------


def _read_validate_revocation(fields: dict) -> Reading:
    try:
        point = _point_from_secret(fields["per_commitment_secret"])
    except ValueError:
        point = b""  # not a valid scalar: matches no point
    return None, point, None


def _point_from_secret(secret: bytes) -> bytes:
    # The per-commitment point is secret*G; the shadow keeps the point, never the secret.
    # coincurve is imported on first use: its ~9 ms would land on `hsmproxy wrap`'s start,
    # which is on lightningd's start-up path.
    from coincurve import PrivateKey

    return PrivateKey(secret).public_key.format(compressed=True)


def _predict_validate_revocation(ch: ChannelShadow, it: Intent, recreated: bool) -> list[Prediction]:
    C, R = ch.next_counterparty_commit_num, ch.next_counterparty_revoke_num
    if R is None:
        return []
    n = it.index
    out: list[Prediction] = []
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
    return out


def _counterparty_point(ch: ChannelShadow, n: int) -> bytes | None:
    C = ch.next_counterparty_commit_num
    if C is None:
        return None
    if n == C - 1:
        return ch.current_counterparty_point
    if n == C - 2:
        return ch.previous_counterparty_point
    return None


def _apply_validate_revocation(ch: ChannelShadow, it: Intent) -> None:
    n, R = it.index, ch.next_counterparty_revoke_num
    if R is None or n >= R:
        ch.next_counterparty_revoke_num = n + 1
    C = ch.next_counterparty_commit_num
    if C is not None and ch.next_counterparty_revoke_num >= C - 1:
        # The previous commitment is revoked: its info is no longer needed (VLS clears it too).
        ch.previous_counterparty_digest = None


def _past_validate_revocation(ch: ChannelShadow, it: Intent) -> bool:
    R = ch.next_counterparty_revoke_num
    return R is not None and R > it.index


# --- get_per_commitment_point: only the highest point handed out is kept ---------------------


def _predict_get_point(ch: ChannelShadow, it: Intent, recreated: bool) -> list[Prediction]:
    H, n = ch.next_holder_commit_num, it.index
    if H is not None and recreated and n + 1 < H:
        return [(NODE_BEHIND_AFTER_RESTART, None,
                 f"new client asks for point {n}; the signer's current holder commitment is {H - 1}")]
    return []


def _apply_get_point(ch: ChannelShadow, it: Intent) -> None:
    _hand_out_point(ch, it.index)


def _past_get_point(ch: ChannelShadow, it: Intent) -> bool:
    return ch.max_point_handed_out is not None and ch.max_point_handed_out >= it.index


def _hand_out_point(ch: ChannelShadow, n: int) -> None:
    if ch.max_point_handed_out is None or n > ch.max_point_handed_out:
        ch.max_point_handed_out = n


# --- the tables ---------------------------------------------------------------------------------

RULES: dict[str, KindRule] = {
    SIGN_REMOTE: KindRule("hsmd_sign_remote_commitment_tx", "commit_num", "hsmd_sign_tx_reply",
                          _read_sign_remote, _predict_sign_remote, _apply_sign_remote, _past_sign_remote),
    VALIDATE_HOLDER: KindRule("hsmd_validate_commitment_tx", "commit_num", "hsmd_validate_commitment_tx_reply",
                              _read_validate_holder, _predict_validate_holder, _apply_validate_holder,
                              _past_validate_holder),
    REVOKE_HOLDER: KindRule("hsmd_revoke_commitment_tx", "commit_num", "hsmd_revoke_commitment_tx_reply",
                            _read_nothing, _predict_revoke_holder, _apply_revoke_holder, _past_revoke_holder),
    VALIDATE_REVOCATION: KindRule("hsmd_validate_revocation", "revoke_num", "hsmd_validate_revocation_reply",
                                  _read_validate_revocation, _predict_validate_revocation, _apply_validate_revocation,
                                  _past_validate_revocation),
    GET_POINT: KindRule("hsmd_get_per_commitment_point", "n", "hsmd_get_per_commitment_point_reply",
                        _read_nothing, _predict_get_point, _apply_get_point, _past_get_point),
}
KIND_BY_REQUEST = {rule.request: kind for kind, rule in RULES.items()}
SUCCESS_REPLY = {kind: rule.success_reply for kind, rule in RULES.items()}

# What an outcome makes of a predicted divergence:
#     outcome -> (status of a double_signed prediction, status of any other prediction)
# A refused double signature did not happen; any other prediction was still what the node asked.
# A prediction that compares with a request in doubt is at most possible (``IN_DOUBT_STATUS``):
# the signer may never have seen that request, so "signed twice" or "retried" is not proven.
EVENT_STATUS = {
    SIGNED: (CONFIRMED, CONFIRMED),
    REJECTED: (REFUTED, CONFIRMED),
    GUARD_REFUSED: (PREVENTED, PREVENTED),
    UNANSWERED: (UNKNOWN, UNKNOWN),
}
IN_DOUBT_STATUS = {CONFIRMED: POSSIBLE}


def intent_from_request(
    msg, peer_id: bytes | None, dbid: int | None, *, conn: int = 0, seq: int = 0, time_ns: int = 0
) -> Intent | None:
    """The Intent of a decoded request on a client connection, or None if it carries no index.

    ``peer_id``/``dbid`` come from the connection's context (the hsmd_client_hsmfd that created it).
    The op_id is 0 here; ``Shadow.begin`` assigns the real one.
    """
    kind = KIND_BY_REQUEST.get(msg.name)
    if kind is None or peer_id is None or dbid is None:
        return None
    rule, fields = RULES[kind], msg.fields
    try:
        index = fields[rule.index_field]
        digest, point, funding = rule.read(fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise IntentError(f"{msg.name} from peer {peer_id.hex()} dbid {dbid}: cannot read {exc}") from exc
    return Intent(0, kind, bytes(peer_id), int(dbid), int(index), digest, point, conn, seq, time_ns, funding)
