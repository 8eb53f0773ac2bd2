"""What one chaos run leaves behind, gathered into plain data that the judge reads.

Sources (all read after the processes are gone): the proxy's WAL (the recovered shadow and the
intent/outcome records), the simulated signer's persisted channel records, each node
incarnation's exit status and ``--json`` summary, and each proxy incarnation's trace: the frames
it relayed, the signer's status messages and the faults it injected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import wire
from faults.engine import FaultEvent
from proxy.core.digest import digest_of_request
from proxy.core.shadow import load_shadow
from sim.signer_core import ChannelRecord

# The tags VLS (and our simulated signer) put in the description of a refusal.
_POLICY_TAG = re.compile(r"policy-[a-z0-9-]+")


@dataclass(frozen=True)
class InjectedFault:
    """A fault the proxy injected (as its trace recorded it), and the incarnation of the run
    whose proxy injected it: events of different incarnations are different events."""

    incarnation: int
    event: FaultEvent

    def to_json(self) -> dict:
        return {"incarnation": self.incarnation, **self.event.to_json()}


def policy_tags(text: str) -> list[str]:
    return _POLICY_TAG.findall(text or "")


@dataclass(frozen=True)
class SignedCommitment:
    """A counterparty commitment the signer signed (its success reply was seen)."""

    dbid: int
    index: int
    digest: str
    incoming_htlcs: tuple[tuple[str, int], ...] = ()  # (payment hash hex, amount msat) offered by the peer
    incarnation: int = 0


@dataclass
class Incarnation:
    """One start of the node (in wrapper mode also of the proxy and the signer)."""

    number: int
    exit_code: int | None  # None: still running when the runner gave up on it
    summary: dict | None = None  # what ``sim-node --json`` printed (None: it printed nothing)
    faults: list[FaultEvent] = field(default_factory=list)  # injected by this incarnation's proxy
    killed_by_runner: bool = False  # the runner's watchdog ended a node that made no progress


@dataclass
class RunEvidence:
    scenario: str
    seed: int
    discipline: str
    attacker: bool
    validating: bool
    signer_policy: str
    incarnations: list[Incarnation] = field(default_factory=list)
    workload_done: bool = False  # the node finished every payment of its workload
    node_stuck: bool = False  # the node reported it cannot go on (its signer refuses)
    divergences: list[dict] = field(default_factory=list)  # Divergence.to_jsonable() of the recovered shadow
    signer_rejections: list[str] = field(default_factory=list)
    signed: list[SignedCommitment] = field(default_factory=list)
    shadow_channels: dict[int, dict] = field(default_factory=dict)  # dbid -> shadow counters
    signer_channels: dict[int, dict] | None = None  # dbid -> signer's persisted counters (None: not readable)
    unanswered: list[dict] = field(default_factory=list)  # requests the node got no answer for (TraceFacts)
    answered_twice: list[dict] = field(default_factory=list)  # requests answered more often than asked
    requests: int = 0
    runner_errors: list[str] = field(default_factory=list)

    @property
    def faults(self) -> list[InjectedFault]:
        return [InjectedFault(inc.number, event) for inc in self.incarnations for event in inc.faults]

    @property
    def restarts(self) -> int:
        return max(0, len(self.incarnations) - 1)


# --- adapters from the artefacts --------------------------------------------------------------

COUNTER_KEYS = ("next_counterparty_commit_num", "next_counterparty_revoke_num", "next_holder_commit_num")


def shadow_evidence(snapshot, records: list) -> tuple[dict[int, dict], list[dict]]:
    """From a WAL's snapshot and records: (channels by dbid, divergence events), replayed exactly
    as the proxy replays them when it starts."""
    shadow = load_shadow(snapshot, records)
    channels = {ch.dbid: ch.to_jsonable() for ch in shadow.channels.values()}
    return channels, [ev.to_jsonable() for ev in shadow.events]


def signer_channels_from_records(records: list[ChannelRecord]) -> dict[int, dict]:
    """The simulated signer's persisted channel records (``sim.signer_store.read_channels``) ->
    its counters by dbid, under the names the proxy's shadow uses."""
    out = {}
    for rec in records:
        state = rec.policy_state
        point = state.current_counterparty_point
        out[rec.dbid] = {k: getattr(state, k) for k in COUNTER_KEYS} | {
            "current_counterparty_point": point.hex() if point is not None else None}
    return out


# --- the proxy's trace: every frame it relayed, per incarnation --------------------------------

SIDE_REMOTE = 1  # hsm_htlc.side: the side that offered the HTLC; REMOTE-offered means incoming to us
_NOT_DELIVERED = frozenset({"Drop", "Disconnect", "Refuse"})
_REJECTION_STATUS = frozenset({"hsmstatus_client_bad_request", "status_fail"})


@dataclass
class TraceFacts:
    faults: list[FaultEvent] = field(default_factory=list)  # injected, in the order the proxy injected them
    signed: list[SignedCommitment] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    unanswered: list[dict] = field(default_factory=list)  # requests with fewer delivered replies than expected
    answered_twice: list[dict] = field(default_factory=list)
    requests: int = 0


def _incoming_htlcs(fields: dict) -> tuple[tuple[str, int], ...]:
    out = []
    for h in fields.get("htlcs") or []:
        if h.get("side") == SIDE_REMOTE:
            out.append((bytes(h["payment_hash"]).hex(), int(h["amount"])))
    return tuple(sorted(out))


def commitment_digest(msg: wire.Message) -> bytes:
    """What the proxy's shadow tells signed commitments apart by (the per-commitment point included)."""
    return digest_of_request(msg.fields, with_point=True)


def trace_facts(records, incarnation: int) -> TraceFacts:
    """The faults injected, signed counterparty commitments (with their incoming HTLCs), signer
    refusals, and the request/answer accounting of one proxy incarnation's trace records."""
    facts = TraceFacts()
    conns: dict[int, dict] = {}
    requests: dict[tuple[int, int], dict] = {}
    replies: dict[tuple[int, int], list[dict]] = {}
    # hsmd answers a bad client request on the status socket, with the request in it; the trace
    # keeps a digest of both (the bodies themselves only when they hold no secret)
    refused_requests: set[bytes] = set()
    for rec in records:
        kind = rec.get("kind")
        if kind == "fault":
            facts.faults.append(FaultEvent.from_json(rec["event"]))
            continue
        if kind == "conn":
            conns[rec["conn"]["conn_id"]] = rec["conn"]
            continue
        if kind != "frame":
            continue
        conn = rec["conn"]
        msg = None
        if rec.get("raw") is not None:
            try:
                msg = wire.decode(rec["raw"])
            except ValueError:
                msg = None
        shown = rec.get("msg") if isinstance(rec.get("msg"), dict) else {}  # a redacted frame's view
        name = msg.name if msg is not None else shown.get("name", "undecodable")
        if rec["dir"] == "status":
            if name in _REJECTION_STATUS:
                fields = msg.fields if msg is not None else shown.get("fields") or {}
                facts.rejections.extend(policy_tags(str(fields.get("description") or fields.get("desc") or "")))
            if rec.get("embedded_digest") is not None:
                refused_requests.add(bytes(rec["embedded_digest"]))
            continue
        key = (conn["conn_id"], rec["seq"])
        if rec["dir"] == "request":
            requests[key] = {"conn": conn, "seq": rec["seq"], "verdict": rec.get("verdict", "Forward"), "msg": msg,
                             "digest": rec.get("digest"), "name": name}
        elif rec["dir"] == "reply" and rec["seq"] is not None and rec["seq"] >= 0:
            replies.setdefault(key, []).append({"verdict": rec.get("verdict", "Forward"), "msg": msg})
    for key, req in requests.items():
        facts.requests += 1
        got = replies.get(key, [])
        delivered = [r for r in got if r["verdict"] not in _NOT_DELIVERED]
        expected = 0 if req["verdict"] in _NOT_DELIVERED else 2 if req["verdict"] == "Duplicate" else 1
        if len(got) > len(delivered):
            expected = 0  # a fault stopped the reply on its way to the node: accounted for
        if req["digest"] is not None and bytes(req["digest"]) in refused_requests:
            expected = min(expected, len(delivered))  # answered with a refusal on the status socket
        entry = {"incarnation": incarnation, "conn_id": key[0], "seq": key[1], "message": req["name"],
                 "verdict": req["verdict"], "replies": len(delivered)}
        if len(delivered) > max(expected, 1 if req["verdict"] == "Duplicate" else expected):
            facts.answered_twice.append(entry)
        elif len(delivered) < expected:
            facts.unanswered.append(entry)
        msg = req["msg"]
        if msg is not None and msg.name == "hsmd_sign_remote_commitment_tx":
            if any(r["msg"] is not None and r["msg"].name == "hsmd_sign_tx_reply" for r in got):
                conn = req["conn"]
                facts.signed.append(SignedCommitment(
                    int(conn.get("dbid") or 0), int(msg.fields["commit_num"]), commitment_digest(msg).hex(),
                    _incoming_htlcs(msg.fields), incarnation))
    return facts
