"""The sans-IO fault decision engine: an observed message in, the faults to inject out.

No clocks, no sockets, no global randomness. Every random draw is a hash of (seed, rule,
connection, per-connection sequence number, point), so a decision depends only on the seed and
on the order of messages within each connection, never on how tasks were scheduled. Counters
(the Nth occurrence, how many times a rule fired) are kept per connection for the same reason.

Every injected fault is a ``FaultEvent``; events fold into one hash chain per connection, and
the run's fault-trace hash combines the chains in connection-key order.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field

import wire
from wire.conversation import REPLY_BEFORE, REPLY_POINTS, REQUEST_POINTS, ROLE_CLIENT, ROLE_MASTER

from faults.corrupt import wrong_signatures
from faults.plan import PlanError, Rule, VERDICT_ACTIONS

_EMPTY_HASH = bytes(32)


@dataclass(frozen=True)
class Observation:
    """What the engine sees of one message at one point; built by the relay hook."""

    point: str
    conn_key: str
    role: str
    seq: int
    request: wire.Message | None
    reply: wire.Message | None = None
    raw: bytes = b""  # the bytes at this point: the request for request.*, the reply for reply.*
    dbid: int | None = None
    peer: bytes | None = None


@dataclass(frozen=True)
class FaultEvent:
    """One injected fault: which rule did what, where, to which message. The one fault record
    type: the engine's hash chains, the control API, the trace and chaos evidence all carry it."""

    rule: str
    action: str
    point: str
    conn_key: str
    seq: int
    message: str
    detail: str = ""

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "action": self.action,
            "point": self.point,
            "connection": self.conn_key,
            "seq": self.seq,
            "message": self.message,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict) -> "FaultEvent":
        """The inverse of ``to_json`` (a trace's ``fault`` record holds ``to_json()``)."""
        return cls(str(data["rule"]), str(data["action"]), str(data["point"]), str(data["connection"]),
                   int(data["seq"]), str(data["message"]), str(data.get("detail") or ""))

    def digest_input(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Decision:
    rule: Rule
    event: FaultEvent
    delay_ms: int = 0
    replacement: bytes | None = None  # corrupt: the bytes to forward instead

    @property
    def action(self) -> str:
        return self.rule.action


@dataclass
class _Counter:
    seen: int = 0
    fired: int = 0


def draw(seed: int, *parts) -> float:
    """A uniform number in [0, 1) fixed by the seed and the parts: the engine's only randomness."""
    text = "|".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64


def _field(msg: wire.Message | None, name: str):
    if msg is None:
        return None
    return msg.fields.get(name)


def connection_name(role: str, dbid: int | None = None, peer: bytes | None = None) -> str:
    """What a connection is, as fault events name it (``connection_key`` adds ``#n`` for the
    n-th connection of the same identity): ``client:DBID:PEER16`` or the role."""
    if role == ROLE_CLIENT:
        return f"client:{dbid}:{peer.hex()[:16] if peer else '-'}"
    return role


class FaultEngine:
    """Holds the rules, the per-connection counters, the reply history and the fault trace."""

    def __init__(self, rules=(), seed: int = 0, enabled: bool = True, max_events: int = 10_000):
        self.seed = seed
        self.enabled = enabled
        self._rules: OrderedDict[str, Rule] = OrderedDict()
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._identities: dict[tuple, int] = {}
        self._chains: dict[str, bytes] = {}
        self._last_reply: dict[tuple[str, int], bytes] = {}  # (conn, reply type) -> raw
        self._latest_by_type: dict[int, OrderedDict[str, bytes]] = {}  # reply type -> conn -> raw
        self._candidates: dict[tuple[str, int | None], tuple[Rule, ...]] = {}  # (point, request type) -> rules
        self.keeps_replies = False
        self.events: list[FaultEvent] = []
        self.event_count = 0
        self._max_events = max_events
        for rule in rules:
            self.add_rule(rule)

    # --- rules -----------------------------------------------------------------------------
    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def add_rule(self, rule: Rule) -> Rule:
        if rule.name in self._rules:
            raise PlanError(f"a rule named {rule.name!r} exists already; remove it first or pick another name")
        self._rules[rule.name] = rule
        self._rules_changed()
        return rule

    def remove_rule(self, name: str) -> Rule:
        try:
            rule = self._rules.pop(name)
        except KeyError:
            raise KeyError(f"no rule named {name!r}; rules: {', '.join(self._rules) or '(none)'}") from None
        for key in [k for k in self._counters if k[0] == name]:
            del self._counters[key]
        self._rules_changed()
        return rule

    def clear(self) -> int:
        n = len(self._rules)
        self._rules.clear()
        self._counters.clear()
        self._rules_changed()
        return n

    def _rules_changed(self) -> None:
        self._candidates.clear()
        # Replies are remembered only while a rule may swap one in (corrupt stale/other-channel):
        # such a rule works from the replies seen after it was added.
        self.keeps_replies = any(r.action == "corrupt" and r.mode in ("stale", "other-channel") for r in self._rules.values())

    @property
    def active(self) -> bool:
        """Whether any decision can come out: the hook's fast path when not."""
        return self.enabled and bool(self._rules)

    # --- connections -----------------------------------------------------------------------
    def connection_key(self, role: str, dbid: int | None = None, peer: bytes | None = None) -> str:
        """A name for a connection that is the same in every run of the same workload.

        The proxy's conn_id depends on accept order; this key depends only on what the
        connection is (role, dbid, peer) and how many such connections came before it.
        """
        identity = (role, dbid, peer)
        n = self._identities.get(identity, 0)
        self._identities[identity] = n + 1
        key = connection_name(role, dbid, peer)
        return key if n == 0 else f"{key}#{n}"

    # --- decisions -------------------------------------------------------------------------
    def decide(self, obs: Observation) -> list[Decision]:
        decisions: list[Decision] = []
        if self.enabled and self._rules:
            verdict_taken = False
            for rule in self._candidates_for(obs):
                if not self._matches(rule, obs):
                    continue
                counter = self._counters.setdefault((rule.name, obs.conn_key), _Counter())
                counter.seen += 1
                if counter.seen < rule.nth or (rule.count is not None and counter.fired >= rule.count):
                    continue
                if rule.probability < 1.0 and draw(self.seed, rule.name, obs.conn_key, obs.seq, obs.point, "p") >= rule.probability:
                    continue
                if rule.action in VERDICT_ACTIONS and verdict_taken:
                    continue  # one verdict per message: the earlier rule wins
                decision = self._decision(rule, obs)
                if decision is None:
                    continue
                counter.fired += 1
                verdict_taken = verdict_taken or rule.action in VERDICT_ACTIONS
                self._record(decision.event)
                decisions.append(decision)
        if obs.point == REPLY_BEFORE and obs.reply is not None and self.keeps_replies:
            self._remember_reply(obs)
        return decisions


    def _candidates_for(self, obs: Observation) -> tuple[Rule, ...]:
        """The rules that can match at this point for this request type, in registration order
        (cached: most messages then cost one dict lookup however many rules there are)."""
        key = (obs.point, obs.request.type if obs.request is not None else None)
        rules = self._candidates.get(key)
        if rules is None:
            rules = tuple(
                r for r in self._rules.values()
                if r.point == obs.point
                and (r.reply_types or not r.request_types or key[1] in r.request_types)
            )
            self._candidates[key] = rules
        return rules

    def _matches(self, rule: Rule, obs: Observation) -> bool:
        if rule.point != obs.point:
            return False
        if rule.role is not None and rule.role != obs.role:
            return False
        if rule.action == "reject" and obs.role == ROLE_MASTER:
            return False  # the relay forwards instead (hsmd exits rather than refuse the master)
        if rule.connection is not None and rule.connection != obs.conn_key:
            return False
        if rule.dbid is not None and rule.dbid != obs.dbid:
            return False
        if rule.peer is not None and rule.peer != obs.peer:
            return False
        if rule.request_types or rule.reply_types:
            by_request = obs.request is not None and obs.request.type in rule.request_types
            by_reply = obs.reply is not None and obs.reply.type in rule.reply_types
            if not (by_request or by_reply):
                return False
        elif obs.request is None and obs.point in REQUEST_POINTS:
            return False  # undecodable bytes only match rules that ask for nothing in particular
        for predicate in rule.where:
            value = _field(obs.request, predicate.field)
            if value is None:
                value = _field(obs.reply, predicate.field)
            if not predicate.holds(value):
                return False
        return True

    def _decision(self, rule: Rule, obs: Observation) -> Decision | None:
        msg = obs.reply if obs.point in REPLY_POINTS and obs.reply is not None else obs.request
        name = msg.name if msg is not None else "undecodable"
        delay_ms = 0
        replacement = None
        detail = ""
        if rule.action == "delay":
            jitter = 0
            if rule.jitter_ms:
                jitter = round((2 * draw(self.seed, rule.name, obs.conn_key, obs.seq, obs.point, "jitter") - 1) * rule.jitter_ms)
            delay_ms = max(0, rule.delay_ms + jitter)
            detail = f"ms={delay_ms}"
        elif rule.action == "corrupt":
            replacement = self._corrupted(rule, obs)
            if replacement is None:
                return None  # nothing to corrupt with yet (no earlier reply): try again next time
            detail = f"mode={rule.mode} sha256={hashlib.sha256(replacement).hexdigest()[:16]}"
        event = FaultEvent(rule.name, rule.action, obs.point, obs.conn_key, obs.seq, name, detail)
        return Decision(rule=rule, event=event, delay_ms=delay_ms, replacement=replacement)

    def _corrupted(self, rule: Rule, obs: Observation) -> bytes | None:
        raw = obs.raw
        if rule.mode == "bitflip":
            if len(raw) <= 2:
                return None
            # Flip a bit after the type, so the message stays "that message" but carries wrong data.
            position = 2 + int(draw(self.seed, rule.name, obs.conn_key, obs.seq, obs.point, "byte") * (len(raw) - 2))
            bit = int(draw(self.seed, rule.name, obs.conn_key, obs.seq, obs.point, "bit") * 8)
            out = bytearray(raw)
            out[position] ^= 1 << bit
            return bytes(out)
        if rule.mode == "wrong-sig":
            msg = obs.reply if obs.point in REPLY_POINTS else obs.request
            if msg is None:
                return None
            return wrong_signatures(msg, f"{self.seed}|{rule.name}|{obs.conn_key}|{obs.seq}|{obs.point}".encode())
        if obs.reply is None:
            return None
        if rule.mode == "stale":
            # A well-formed but old answer of the same kind on this connection: a stale
            # per-commitment point, a signature over an earlier commitment.
            earlier = self._last_reply.get((obs.conn_key, obs.reply.type))
            return earlier if earlier is not None and earlier != raw else None
        # other-channel: the latest answer of the same kind given to another connection.
        others = self._latest_by_type.get(obs.reply.type, {})
        for conn_key in reversed(others):
            if conn_key != obs.conn_key and others[conn_key] != raw:
                return others[conn_key]
        return None

    def _remember_reply(self, obs: Observation) -> None:
        self._last_reply[(obs.conn_key, obs.reply.type)] = obs.raw
        latest = self._latest_by_type.setdefault(obs.reply.type, OrderedDict())
        latest.pop(obs.conn_key, None)
        latest[obs.conn_key] = obs.raw

    # --- trace -----------------------------------------------------------------------------
    def _record(self, event: FaultEvent) -> None:
        previous = self._chains.get(event.conn_key, _EMPTY_HASH)
        self._chains[event.conn_key] = hashlib.sha256(previous + event.digest_input()).digest()
        self.event_count += 1
        self.events.append(event)
        if len(self.events) > self._max_events:
            del self.events[: len(self.events) - self._max_events]

    @property
    def trace_hash(self) -> str:
        """One hash over every connection's event chain; the same seed and workload give the same hash."""
        h = hashlib.sha256(b"hsmproxy-fault-trace-v1")
        for conn_key in sorted(self._chains):
            h.update(conn_key.encode() + b"\0" + self._chains[conn_key])
        return h.hexdigest()

    def status(self) -> dict:
        return {
            "enabled": self.enabled,
            "seed": self.seed,
            "rules": len(self._rules),
            "events": self.event_count,
            "trace_hash": self.trace_hash,
        }
