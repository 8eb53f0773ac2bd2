"""The shadow's vocabulary and values: intent kinds, divergence kinds, outcomes, statuses, and the
``Intent``, ``Divergence`` and ``ChannelShadow`` they describe.

The names are part of the interface: logs, metrics, the WAL, `hsmproxy state` and the control
API carry them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from proxy.core.shadow.views import channel_jsonable, divergence_jsonable

# Intent kinds: the hsmd requests that carry a channel index.
SIGN_REMOTE = "sign_remote_commitment"  # 19
VALIDATE_HOLDER = "validate_holder_commitment"  # 35
REVOKE_HOLDER = "revoke_holder_commitment"  # 40
VALIDATE_REVOCATION = "validate_revocation"  # 36
GET_POINT = "get_per_commitment_point"  # 18

# Divergence kinds.
RETRY_CHANGED = "retry_changed"
INDEX_REGRESSED = "index_regressed"
INDEX_SKIPPED = "index_skipped"
REVOCATION_MISMATCH = "revocation_mismatch"
DOUBLE_SIGNED = "double_signed"
SIGNER_REJECTED = "signer_rejected"
NODE_BEHIND_AFTER_RESTART = "node_behind_after_restart"
# The node's connection or process ended after the signer signed counterparty commitment N and
# before the peer's revocation of N-1 was seen: the node may be one commitment behind its signer.
CRASHED_IN_WINDOW = "crashed_in_window"
DIVERGENCE_KINDS = (
    RETRY_CHANGED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    REVOCATION_MISMATCH,
    DOUBLE_SIGNED,
    SIGNER_REJECTED,
    NODE_BEHIND_AFTER_RESTART,
    CRASHED_IN_WINDOW,
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
# The evidence is incomplete: a crash inside the window (until the node shows what it kept), or a
# signature compared with a request in doubt (the signer may never have seen that one).
POSSIBLE = "possible"
RESOLVED = "resolved"  # a crashed_in_window the node's next requests showed to be harmless
STATUSES = (PREDICTED, CONFIRMED, REFUTED, PREVENTED, UNKNOWN, POSSIBLE, RESOLVED)


class IntentError(ValueError):
    """A request that should carry a channel index lacks what the shadow needs."""


class Intent(NamedTuple):
    """What one request asks of the signer, reduced to what the shadow compares (no secrets).

    A named tuple: the WAL replays millions of these at start-up, and tuples build fastest.
    The field order is the WAL's record format: add fields at the end only."""

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
    # Added later (snapshots leave them out at their defaults, so older snapshots stay the same):
    in_doubt: bool = False  # compared with a request in doubt: at most possible, never confirmed
    reply_forwarded: bool | None = None  # crashed_in_window: had the signature been forwarded to the node?

    def to_jsonable(self) -> dict:
        return divergence_jsonable(self)


class ChannelShadow:
    """VLS's EnforcementState fields for one channel, with digests in place of commitment infos."""

    # The order is the snapshot's record order (on disk): add fields at the end only.
    __slots__ = (
        "peer_id", "dbid",
        "next_counterparty_commit_num", "next_counterparty_revoke_num",
        "current_counterparty_point", "current_counterparty_digest",
        "previous_counterparty_point", "previous_counterparty_digest",
        "current_counterparty_funding", "previous_counterparty_funding",
        "next_holder_commit_num", "pending_holder_digest", "current_holder_digest",
        "max_point_handed_out",
        "last_conn", "last_request_kind", "last_request_index", "last_request_time_ns", "requests",
        "current_counterparty_op_id",
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
        self.current_counterparty_op_id: int | None = None  # the request whose signature is C-1's

    def to_jsonable(self) -> dict:
        return channel_jsonable(self)
