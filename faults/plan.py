"""Fault plans: rules as data, read from a TOML file or from a one-line form, validated on load.

A rule is (match, point, action). Plans never touch IO beyond reading the TOML text they are
given; ``load_plan`` is the one helper that opens a file. Every error is a ``PlanError`` that
names the rule, the key and what to do, and suggests the closest name for misspelt ones.
"""

from __future__ import annotations

import difflib
import os
import re
from signal import SIGKILL, Signals
import tomllib
from dataclasses import dataclass, field

import wire
from wire.conversation import (
    BEFORE_FORWARD_POINTS,
    POINTS,
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    REQUEST_POINTS,
    ROLE_CLIENT,
    ROLE_MASTER,
    ROLE_SOCKET,
)
from wire.families import FAMILY_OF_REQUEST

POINT_ALIASES = {
    "req": REQUEST_BEFORE,
    "request": REQUEST_BEFORE,
    "sent": REQUEST_AFTER,
    "reply": REPLY_BEFORE,
    "replied": REPLY_AFTER,
}

# Actions that change what is forwarded (or close the connection) are verdicts for the relay,
# which only *.before_forward points take; the others the fault hook does itself, anywhere.
VERDICT_ACTIONS = frozenset({"drop", "duplicate", "corrupt", "hold", "reject", "disconnect"})
SIDE_EFFECT_ACTIONS = frozenset({"delay", "kill-node", "kill-signer", "crash-proxy"})
ACTIONS = tuple(sorted(VERDICT_ACTIONS | SIDE_EFFECT_ACTIONS))
CORRUPT_MODES = ("bitflip", "wrong-sig", "stale", "other-channel")
ROLES = (ROLE_MASTER, ROLE_CLIENT, ROLE_SOCKET)  # the connections that carry requests (not fd 0)

# One-line prefixes, mirroring Core Lightning's dev-disconnect (see docs/faults.md for the table).
PREFIXES: dict[str, tuple[str, str]] = {
    "-": ("disconnect", REQUEST_BEFORE),
    "+": ("disconnect", REPLY_BEFORE),  # the signer got it and acted; the node never hears
    "$": ("drop", REQUEST_BEFORE),
    "0": ("hold", REQUEST_BEFORE),
    "~": ("delay", REQUEST_BEFORE),
    "&": ("duplicate", REQUEST_BEFORE),
    "%": ("corrupt", REPLY_BEFORE),
    "?": ("reject", REQUEST_BEFORE),
    "!": ("kill-node", REPLY_BEFORE),
    "^": ("kill-signer", REQUEST_AFTER),
    "#": ("crash-proxy", REPLY_BEFORE),
}

class PlanError(ValueError):
    """A fault plan that cannot be used; the message says which rule, which key and what to do."""


def _is_status(name: str) -> bool:
    return name.startswith("status_") or name.startswith("hsmstatus_")


def is_reply_name(name: str) -> bool:
    return name.endswith("_reply") or name.endswith("_resp") or "_reply_" in name


def _request_names() -> list[str]:
    return [n for n in wire.SPECS_BY_NAME if not _is_status(n) and not is_reply_name(n)]


def _families() -> dict[str, frozenset[str]]:
    """Named groups so a rule can say "all signing requests" without listing them: ``all``,
    ``signing``, and the codec's partition of requests by the part of the node's life they
    belong to (wire.families: init, channel, commitment, close, onchain, wallet, ...), the same
    groups the metrics use."""
    requests = _request_names()
    families = {
        "all": frozenset(requests),
        "signing": frozenset(n for n in requests if n.startswith("hsmd_sign_") or n.endswith("_sig_req")),
    }
    for name, family in FAMILY_OF_REQUEST.items():
        families[family] = families.get(family, frozenset()) | {name}
    return families


FAMILIES: dict[str, frozenset[str]] = _families()


@dataclass(frozen=True)
class Predicate:
    """``field op value``; value is an int, a bool, or bytes (written as hex)."""

    field: str
    op: str
    value: object

    def holds(self, actual) -> bool:
        if actual is None:
            return False
        value = self.value
        if isinstance(actual, (bytes, bytearray)) and isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                return False
        try:
            if self.op == "==":
                return actual == value
            if self.op == "!=":
                return actual != value
            if self.op == "<":
                return actual < value
            if self.op == "<=":
                return actual <= value
            if self.op == ">":
                return actual > value
            return actual >= value
        except TypeError:
            return False

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"


@dataclass(frozen=True)
class Rule:
    """One fault rule. ``request_types``/``reply_types`` empty means "any message"."""

    name: str
    action: str
    point: str
    request_types: frozenset[int] = frozenset()
    reply_types: frozenset[int] = frozenset()
    role: str | None = None
    connection: str | None = None  # a connection's stable name, as events show it (client:7:02ab..., socket#2)
    dbid: int | None = None
    peer: bytes | None = None
    where: tuple[Predicate, ...] = ()
    nth: int = 1  # first matching occurrence (per connection) that fires
    count: int | None = 1  # how many times it fires per connection; None = every time from nth on
    probability: float = 1.0
    delay_ms: int = 0
    jitter_ms: int = 0
    mode: str = "bitflip"  # corrupt
    signal: int = int(SIGKILL)  # kill-node / kill-signer
    description: str = "fault injected by hsmproxy"  # reject
    source: str = ""  # the text it came from, for listings

    def to_json(self) -> dict:
        names = sorted(wire.SPECS_BY_TYPE[t].name for t in self.request_types | self.reply_types if t in wire.SPECS_BY_TYPE)
        out = {
            "name": self.name,
            "action": self.action,
            "point": self.point,
            "messages": names,
            "role": self.role,
            "connection": self.connection,
            "dbid": self.dbid,
            "peer": self.peer.hex() if self.peer else None,
            "where": [str(p) for p in self.where],
            "nth": self.nth,
            "count": self.count,
            "probability": self.probability,
        }
        if self.action == "delay":
            out.update(ms=self.delay_ms, jitter_ms=self.jitter_ms)
        if self.action == "corrupt":
            out["mode"] = self.mode
        if self.action in ("kill-node", "kill-signer"):
            out["signal"] = Signals(self.signal).name
        if self.action == "reject":
            out["description"] = self.description
        if self.source:
            out["source"] = self.source
        return out


@dataclass
class Plan:
    rules: list[Rule] = field(default_factory=list)
    seed: int | None = None


# ---------------------------------------------------------------------------------------------
# Building rules from a key/value mapping (shared by TOML, the one-line form and the control API)

RULE_KEYS = (
    "name",
    "action",
    "point",
    "message",
    "messages",
    "family",
    "role",
    "connection",
    "dbid",
    "peer",
    "where",
    "nth",
    "count",
    "probability",
    "ms",
    "jitter_ms",
    "mode",
    "signal",
    "description",
)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_message(name, where: str) -> int:
    """A message name (with or without the ``hsmd_`` prefix) or number -> its type."""
    if isinstance(name, int) and not isinstance(name, bool):
        if name in wire.SPECS_BY_TYPE:
            return name
        raise PlanError(f"{where}: unknown message number {name}; see `hsmproxy decode --help` or hsmd_wire.csv")
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: a message must be a name such as 'hsmd_sign_remote_commitment_tx' or a number")
    if name.isdigit():
        return resolve_message(int(name), where)
    for candidate in (name, "hsmd_" + name):
        spec = wire.SPECS_BY_NAME.get(candidate)
        if spec is not None:
            if _is_status(spec.name):
                raise PlanError(f"{where}: {spec.name} is a status message; rules match requests and replies")
            return spec.type
    choices = [n for n in wire.SPECS_BY_NAME if not _is_status(n)]
    hint = _suggest(name, choices) or _suggest("hsmd_" + name, choices)
    raise PlanError(f"{where}: unknown message {name!r}{hint}; families of messages: {', '.join(FAMILIES)}")


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text, 0)
    except ValueError:
        return text  # hex for byte fields, compared as bytes at match time


_PREDICATE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*$")


def parse_predicate(text: str, where: str) -> Predicate:
    m = _PREDICATE_RE.match(text)
    if not m:
        raise PlanError(f"{where}: cannot read the condition {text!r}; write it as FIELD==VALUE (also != < <= > >=)")
    return Predicate(m.group(1), m.group(2), _parse_value(m.group(3)))


def _int(value, key: str, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise PlanError(f"{where}: {key} must be a whole number, got {value!r}")
    if value < minimum:
        raise PlanError(f"{where}: {key} must be at least {minimum}, got {value}")
    return value


def _signal_number(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(Signals(value))
    name = str(value).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(Signals[name])
    except KeyError:
        raise PlanError(f"{where}: unknown signal {value!r}{_suggest(name, Signals.__members__)}") from None


def _fields_of(types: frozenset[int]) -> set[str]:
    names: set[str] = set()
    for t in types:
        spec = wire.SPECS_BY_TYPE.get(t)
        if spec is None:
            continue
        names.update(f.name for f in spec.fields)
        reply = wire.SPECS_BY_NAME.get(spec.name + "_reply")
        if reply is not None:
            names.update(f.name for f in reply.fields)
    return names


_TEXT_KEYS = ("name", "action", "point", "family", "role", "mode", "description", "connection", "peer")


def rule_from_mapping(data: dict, default_name: str, source: str = "") -> Rule:
    """Validate one rule given as a mapping (TOML table, JSON object, or parsed one-line form)."""
    if not isinstance(data, dict):
        raise PlanError(f"rule {default_name!r}: a rule is a table of keys (action, message, point, ...)")
    name = str(data.get("name") or default_name)
    where = f"rule {name!r}"
    for key in data:
        if key not in RULE_KEYS:
            raise PlanError(f"{where}: unknown key {key!r}{_suggest(key, RULE_KEYS)}; known keys: {', '.join(RULE_KEYS)}")
    for key in _TEXT_KEYS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise PlanError(f"{where}: {key} must be a string, got {data[key]!r}")

    action = data.get("action")
    if action not in ACTIONS:
        raise PlanError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}{_suggest(action, ACTIONS)}")

    # Messages: names/numbers, and families; request names match the exchange, reply names its reply.
    request_types: set[int] = set()
    reply_types: set[int] = set()
    listed = []
    if "message" in data:
        listed.append(data["message"])
    if "messages" in data:
        if not isinstance(data["messages"], list):
            raise PlanError(f"{where}: messages must be a list of message names")
        listed.extend(data["messages"])
    for item in listed:
        t = resolve_message(item, where)
        (reply_types if is_reply_name(wire.SPECS_BY_TYPE[t].name) else request_types).add(t)
    if "family" in data:
        family = data["family"]
        if family not in FAMILIES:
            raise PlanError(f"{where}: unknown family {family!r}{_suggest(family, FAMILIES)}; families: {', '.join(FAMILIES)}")
        request_types.update(wire.SPECS_BY_NAME[n].type for n in FAMILIES[family])

    point = data.get("point")
    if point is None:
        point = REPLY_BEFORE if reply_types and not request_types else REQUEST_BEFORE
    point = POINT_ALIASES.get(point, point)
    if point not in POINTS:
        raise PlanError(f"{where}: point {point!r} is not one of {', '.join(POINTS)}{_suggest(point, POINTS)}")
    if reply_types and point in REQUEST_POINTS:
        raise PlanError(f"{where}: a reply message can only be matched at reply.* points, not {point}")
    if action in VERDICT_ACTIONS and point not in BEFORE_FORWARD_POINTS:
        raise PlanError(f"{where}: {action} changes what is forwarded, so it needs a *.before_forward point, not {point}")
    if action == "reject" and point != REQUEST_BEFORE:
        raise PlanError(f"{where}: reject answers a request as a refusing signer would, so its point is request.before_forward")

    role = data.get("role")
    if role is not None and role not in ROLES:
        raise PlanError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}{_suggest(role, ROLES)}")
    if action == "reject" and role == ROLE_MASTER:
        raise PlanError(f"{where}: the proxy never refuses the master connection (hsmd would exit instead); use drop, disconnect or kill-signer")
    dbid = _int(data["dbid"], "dbid", where) if data.get("dbid") is not None else None
    connection = data.get("connection")
    if connection is not None and (not isinstance(connection, str) or not connection):
        raise PlanError(f"{where}: connection must be a connection name as events show it, e.g. 'client:7:02ab12cd34ef5678'")
    peer = None
    if data.get("peer") is not None:
        try:
            peer = bytes.fromhex(str(data["peer"]))
        except ValueError:
            peer = b""
        if len(peer) != 33:
            raise PlanError(f"{where}: peer must be a 33-byte node id in hex (66 hex digits)")

    raw_where = data.get("where", [])
    if isinstance(raw_where, dict):
        predicates = tuple(Predicate(k, "==", v) for k, v in raw_where.items())
    elif isinstance(raw_where, str):
        predicates = (parse_predicate(raw_where, where),)
    elif isinstance(raw_where, list):
        predicates = tuple(p if isinstance(p, Predicate) else parse_predicate(str(p), where) for p in raw_where)
    else:
        raise PlanError(f"{where}: where must be a table {{field = value}} or a list of 'field==value' strings")
    known_fields = _fields_of(frozenset(request_types | reply_types))
    for p in predicates:
        if request_types | reply_types and p.field not in known_fields:
            raise PlanError(
                f"{where}: no field {p.field!r} in the named messages{_suggest(p.field, known_fields)}; "
                f"fields: {', '.join(sorted(known_fields)) or '(none)'}"
            )

    nth = _int(data.get("nth", 1), "nth", where, minimum=1)
    raw_count = data.get("count", 1)
    count = None if raw_count in ("all", 0, "0") else _int(raw_count, "count", where, minimum=1)
    probability = data.get("probability", 1.0)
    if isinstance(probability, bool) or not isinstance(probability, (int, float)):
        try:
            probability = float(probability)
        except (TypeError, ValueError):
            raise PlanError(f"{where}: probability must be a number between 0 and 1") from None
    if not 0.0 <= float(probability) <= 1.0:
        raise PlanError(f"{where}: probability must be between 0 and 1, got {probability}")

    delay_ms = _int(data.get("ms", 0), "ms", where)
    jitter_ms = _int(data.get("jitter_ms", 0), "jitter_ms", where)
    if action == "delay" and delay_ms == 0 and jitter_ms == 0:
        raise PlanError(f"{where}: delay needs ms (and optionally jitter_ms), e.g. ms = 500")
    if "ms" in data and action != "delay":
        raise PlanError(f"{where}: ms only applies to the delay action")
    mode = data.get("mode", "bitflip")
    if mode not in CORRUPT_MODES:
        raise PlanError(f"{where}: corrupt mode {mode!r} is not one of {', '.join(CORRUPT_MODES)}{_suggest(mode, CORRUPT_MODES)}")
    if "mode" in data and action != "corrupt":
        raise PlanError(f"{where}: mode only applies to the corrupt action")
    sig = _signal_number(data.get("signal", "SIGKILL"), where)
    if "signal" in data and action not in ("kill-node", "kill-signer"):
        raise PlanError(f"{where}: signal only applies to kill-node and kill-signer")
    description = str(data.get("description", "fault injected by hsmproxy"))

    return Rule(
        name=name,
        action=action,
        point=point,
        request_types=frozenset(request_types),
        reply_types=frozenset(reply_types),
        role=role,
        connection=connection,
        dbid=dbid,
        peer=peer,
        where=predicates,
        nth=nth,
        count=count,
        probability=float(probability),
        delay_ms=delay_ms,
        jitter_ms=jitter_ms,
        mode=mode,
        signal=sig,
        description=description,
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# TOML

def parse_toml(text: str, origin: str = "<plan>") -> Plan:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{origin}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in ("seed", "rule"):
            raise PlanError(f"{origin}: unknown top-level key {key!r}{_suggest(key, ('seed', 'rule'))}; use seed = N and [[rule]] tables")
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise PlanError(f"{origin}: seed must be a non-negative whole number")
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise PlanError(f"{origin}: write rules as [[rule]] tables")
    rules = [rule_from_mapping(t, f"rule{i + 1}", source=f"{origin}#{i + 1}") for i, t in enumerate(tables)]
    _check_unique(rules, origin)
    return Plan(rules=rules, seed=seed)


def _check_unique(rules: list[Rule], origin: str) -> None:
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise PlanError(f"{origin}: two rules are named {r.name!r}; give each a unique name")
        seen.add(r.name)


# ---------------------------------------------------------------------------------------------
# One-line form: <prefix><message>[*N][@point] [key=value ...] [field==value ...], rules split by ';' or ','

_LINE_RE = re.compile(r"^(?P<prefix>\S)(?P<message>[A-Za-z0-9_]+)(?:\*(?P<nth>\d+))?(?:@(?P<point>[a-z._]+))?$")
_SHORT_KEYS = {"p": "probability", "jitter": "jitter_ms", "times": "count"}


def parse_one_line(text: str, first_index: int = 1) -> list[Rule]:
    rules = []
    for i, chunk in enumerate(c.strip() for c in re.split(r"[;,]", text)):
        if not chunk:
            continue
        index = first_index + len(rules)
        head, *extras = chunk.split()
        prefix = head[0]
        if prefix not in PREFIXES:
            raise PlanError(
                f"fault {chunk!r}: unknown prefix {prefix!r}; prefixes: "
                + " ".join(f"{p}={a}" for p, (a, _) in PREFIXES.items())
            )
        m = _LINE_RE.match(head)
        if not m:
            raise PlanError(f"fault {chunk!r}: write it as <prefix><message>[*N][@point], e.g. -hsmd_sign_remote_commitment_tx*2")
        action, point = PREFIXES[prefix]
        target = m.group("message")
        data: dict = {"action": action, "point": m.group("point") or point}
        data["family" if target in FAMILIES else "message"] = target
        if m.group("nth"):
            data["nth"] = int(m.group("nth"))
        predicates = []
        for extra in extras:
            if any(op in extra for op in ("==", "!=", "<", ">")):
                predicates.append(extra)
                continue
            key, sep, value = extra.partition("=")
            if not sep:
                raise PlanError(f"fault {chunk!r}: cannot read {extra!r}; write key=value or field==value")
            key = _SHORT_KEYS.get(key, key)
            text_keys = ("peer", "name", "mode", "signal", "role", "description", "connection")
            data[key] = value if key in text_keys else _parse_value(value)
        if predicates:
            data["where"] = predicates
        if data.get("point") in POINT_ALIASES:
            data["point"] = POINT_ALIASES[data["point"]]
        rules.append(rule_from_mapping(data, f"rule{index}", source=chunk))
    if not rules:
        raise PlanError("empty fault plan: give a TOML file or rules such as -hsmd_sign_remote_commitment_tx*2")
    _check_unique(rules, "one-line plan")
    return rules


def load_plan(spec: str) -> Plan:
    """``spec`` is a path to a TOML plan, or rules in the one-line form."""
    if spec.endswith(".toml") or os.path.exists(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PlanError(f"cannot read the fault plan {spec!r}: {exc.strerror}; give a TOML file or one-line rules") from None
        return parse_toml(text, origin=spec)
    return Plan(rules=parse_one_line(spec))

