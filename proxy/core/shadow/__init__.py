"""The proxy's shadow of every channel: VLS's index counters, kept from the hsmd conversation.

Sans-IO: no sockets, no clocks, no randomness. The shell turns a request into an ``Intent``
(``intent_from_request``), calls ``Shadow.begin(intent)`` before forwarding it (which predicts
divergences), and ``Shadow.finish(op_id, outcome)`` when the signer's answer is known (which
advances the state only on success, and confirms or refutes the prediction); also
``Shadow.restart()`` when the proxy starts again and ``Shadow.connection_ended(...)`` when the
node's side of a connection went away. Everything the shadow does is a function of those calls,
so replaying the WAL's records of them rebuilds exactly the same shadow and divergence events.

    model        the vocabulary (intent kinds, divergence kinds, outcomes, statuses) and the
                 values: Intent, Divergence, ChannelShadow
    transitions  what each intent kind reads, predicts and applies: one table row per kind
    machine      Shadow: begin, finish, restart, connection_ended
    snapshot     the shadow as a snapshot for a checkpoint, and back
    records      the WAL's records of the shadow's inputs, and replay
    views        JSON for `hsmproxy state`, the control API and the trace

This package's names are importable from here (``from proxy.core.shadow import Shadow``).
"""

from proxy.core.shadow.machine import Shadow
from proxy.core.shadow.model import (
    CONFIRMED,
    CRASHED_IN_WINDOW,
    DIVERGENCE_KINDS,
    DOUBLE_SIGNED,
    GET_POINT,
    GUARD_REFUSED,
    INDEX_REGRESSED,
    INDEX_SKIPPED,
    NODE_BEHIND_AFTER_RESTART,
    OUTCOMES,
    POSSIBLE,
    PREDICTED,
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
    STATUSES,
    UNANSWERED,
    UNKNOWN,
    VALIDATE_HOLDER,
    VALIDATE_REVOCATION,
    ChannelShadow,
    Divergence,
    Intent,
    IntentError,
)
from proxy.core.shadow.records import (
    CONNECTION_END_RECORD,
    INTENT_RECORD,
    OUTCOME_RECORD,
    RESTART_RECORD,
    apply_record,
    connection_end_record,
    intent_record,
    load_shadow,
    outcome_record,
    restart_record,
)
from proxy.core.shadow.snapshot import shadow_from_snapshot, shadow_to_snapshot
from proxy.core.shadow.transitions import SUCCESS_REPLY, intent_from_request
from proxy.core.shadow.views import divergences_jsonable, shadow_jsonable

__all__ = [
    "CONFIRMED",
    "CONNECTION_END_RECORD",
    "CRASHED_IN_WINDOW",
    "DIVERGENCE_KINDS",
    "DOUBLE_SIGNED",
    "GET_POINT",
    "GUARD_REFUSED",
    "INDEX_REGRESSED",
    "INDEX_SKIPPED",
    "INTENT_RECORD",
    "NODE_BEHIND_AFTER_RESTART",
    "OUTCOMES",
    "OUTCOME_RECORD",
    "POSSIBLE",
    "PREDICTED",
    "PREVENTED",
    "REFUTED",
    "REJECTED",
    "RESOLVED",
    "RESTART_RECORD",
    "RETRY_CHANGED",
    "REVOCATION_MISMATCH",
    "REVOKE_HOLDER",
    "SIGNED",
    "SIGNER_REJECTED",
    "SIGN_REMOTE",
    "STATUSES",
    "SUCCESS_REPLY",
    "UNANSWERED",
    "UNKNOWN",
    "VALIDATE_HOLDER",
    "VALIDATE_REVOCATION",
    "ChannelShadow",
    "Divergence",
    "Intent",
    "IntentError",
    "Shadow",
    "apply_record",
    "connection_end_record",
    "divergences_jsonable",
    "intent_from_request",
    "intent_record",
    "load_shadow",
    "outcome_record",
    "restart_record",
    "shadow_from_snapshot",
    "shadow_jsonable",
    "shadow_to_snapshot",
]
