"""The simulated signer's validation: VLS's enforcement state and index rules (reference vls.md §1).

Sans-IO: plain objects, no clocks or files. Each rule raises ``PolicyError(tag, ...)`` unless
the filter says ``warn`` for its tag, in which case the warning is recorded and the operation
carries on as if the check had passed (VLS's semantics). State changes happen only after
every check of an operation has run, so a refused request leaves the state untouched.

Numbers are Core Lightning commitment numbers (count up from 0). H = next holder commitment
number, C = next counterparty commitment number, R = next counterparty revoke number.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from .bolt3 import SecretStore, ShachainError
from .crypto import pubkey_of

RETRY_SAME = "policy-commitment-retry-same"
PREVIOUS_REVOKED = "policy-commitment-previous-revoked"
HOLDER_NOT_REVOKED = "policy-commitment-holder-not-revoked"
REVOKE_NEW_COMMITMENT_SIGNED = "policy-revoke-new-commitment-signed"
OPTIONAL_FAIL_FAST = "policy-optional-fail-fast"
POLICY_OTHER = "policy-other"
RECOMPOSED_MISMATCH = "policy-commitment"
HTLC_OTHER = "policy-htlc-other"
FEE_RANGE = "policy-commitment-fee-range"


class PolicyError(Exception):
    def __init__(self, tag: str, message: str):
        super().__init__(f"{tag}: {message}")
        self.tag = tag
        self.message = message


@dataclass(frozen=True)
class FilterRule:
    tag: str
    is_prefix: bool
    action: str  # "error" | "warn"

    def matches(self, tag: str) -> bool:
        return tag.startswith(self.tag) if self.is_prefix else tag == self.tag


class PolicyFilter:
    """Ordered rules, first match wins, default error (VLS's PolicyFilter)."""

    def __init__(self, rules: list[FilterRule] | None = None):
        self.rules = list(rules or [])

    @classmethod
    def parse(cls, specs: list[str]) -> "PolicyFilter":
        """``["policy-commitment-retry-same:warn", "policy-commitment-*:error"]``."""
        rules = []
        for spec in specs:
            tag, sep, action = spec.rpartition(":")
            if not sep or action not in ("warn", "error") or not tag:
                raise ValueError(f"policy filter {spec!r}: expected TAG:warn or TAG:error (a trailing * makes TAG a prefix)")
            is_prefix = tag.endswith("*")
            rules.append(FilterRule(tag.rstrip("*"), is_prefix, action))
        return cls(rules)

    @classmethod
    def permissive(cls) -> "PolicyFilter":
        return cls([FilterRule("", True, "warn")])

    def action(self, tag: str) -> str:
        for rule in self.rules:
            if rule.matches(tag):
                return rule.action
        return "error"


@dataclass(frozen=True)
class CommitmentInfo:
    """What VLS's retry comparison looks at (CommitmentInfo2): values and HTLCs, no keys or sigs.
    HTLCs are (value_sat, payment_hash hex, cltv) tuples, sorted, seen from the broadcaster."""

    is_counterparty_broadcaster: bool
    to_broadcaster_sat: int
    to_countersigner_sat: int
    offered_htlcs: tuple
    received_htlcs: tuple
    feerate_per_kw: int

    def to_json(self) -> dict:
        d = asdict(self)
        d["offered_htlcs"] = [list(h) for h in self.offered_htlcs]
        d["received_htlcs"] = [list(h) for h in self.received_htlcs]
        return d

    @classmethod
    def from_json(cls, d: dict | None) -> "CommitmentInfo | None":
        if d is None:
            return None
        d = dict(d)
        d["offered_htlcs"] = tuple(tuple(h) for h in d["offered_htlcs"])
        d["received_htlcs"] = tuple(tuple(h) for h in d["received_htlcs"])
        return cls(**d)


@dataclass
class EnforcementState:
    next_holder_commit_num: int = 0
    next_counterparty_commit_num: int = 0
    next_counterparty_revoke_num: int = 0
    current_counterparty_point: bytes | None = None
    previous_counterparty_point: bytes | None = None
    current_counterparty_commit_info: CommitmentInfo | None = None
    previous_counterparty_commit_info: CommitmentInfo | None = None
    current_holder_commit_info: CommitmentInfo | None = None
    next_holder_commit_info: CommitmentInfo | None = None
    counterparty_secrets: SecretStore = field(default_factory=SecretStore)

    def to_json(self) -> dict:
        hexed = lambda b: None if b is None else b.hex()  # noqa: E731
        info = lambda i: None if i is None else i.to_json()  # noqa: E731
        return {
            "next_holder_commit_num": self.next_holder_commit_num,
            "next_counterparty_commit_num": self.next_counterparty_commit_num,
            "next_counterparty_revoke_num": self.next_counterparty_revoke_num,
            "current_counterparty_point": hexed(self.current_counterparty_point),
            "previous_counterparty_point": hexed(self.previous_counterparty_point),
            "current_counterparty_commit_info": info(self.current_counterparty_commit_info),
            "previous_counterparty_commit_info": info(self.previous_counterparty_commit_info),
            "current_holder_commit_info": info(self.current_holder_commit_info),
            "next_holder_commit_info": info(self.next_holder_commit_info),
            "counterparty_secrets": self.counterparty_secrets.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "EnforcementState":
        unhex = lambda s: None if s is None else bytes.fromhex(s)  # noqa: E731
        return cls(
            d["next_holder_commit_num"], d["next_counterparty_commit_num"], d["next_counterparty_revoke_num"],
            unhex(d["current_counterparty_point"]), unhex(d["previous_counterparty_point"]),
            CommitmentInfo.from_json(d["current_counterparty_commit_info"]),
            CommitmentInfo.from_json(d["previous_counterparty_commit_info"]),
            CommitmentInfo.from_json(d["current_holder_commit_info"]),
            CommitmentInfo.from_json(d["next_holder_commit_info"]),
            SecretStore.from_json(d["counterparty_secrets"]),
        )


class ChannelPolicy:
    """One channel's enforcement state plus the filter; every method is one signer operation."""

    def __init__(self, state: EnforcementState | None = None, policy_filter: PolicyFilter | None = None):
        self.state = state or EnforcementState()
        self.filter = policy_filter or PolicyFilter()
        self.warnings: list[str] = []

    def check(self, ok: bool, tag: str, message: str) -> None:
        if ok:
            return
        if self.filter.action(tag) == "warn":
            self.warnings.append(f"policy failed: {tag} {message}")
            return
        raise PolicyError(tag, message)

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out

    # --- counterparty commitments (hsmd 19) ---

    def sign_counterparty_commitment(self, num: int, point: bytes, info: CommitmentInfo) -> None:
        s = self.state
        C, R = s.next_counterparty_commit_num, s.next_counterparty_revoke_num
        self.check(num <= R + 1, PREVIOUS_REVOKED,
                   f"invalid attempt to sign counterparty commit_num {num} with next_counterparty_revoke_num {R}")
        if num + 1 == C:  # a retry of the latest signed index must carry the same inputs
            self.check(s.current_counterparty_point is not None and s.current_counterparty_point == point, RETRY_SAME,
                       f"retry of sign_counterparty_commitment {num} with changed point: "
                       f"prev {_hex(s.current_counterparty_point)} != new {point.hex()}")
            self.check(s.current_counterparty_commit_info == info, RETRY_SAME,
                       f"retry of sign_counterparty_commitment {num} with changed info")
        new_next = num + 1
        bound = R + 1 if new_next == 1 else R + 2
        self.check(new_next >= bound, PREVIOUS_REVOKED,
                   f"next_counterparty_commit_num {new_next} too small relative to next_counterparty_revoke_num {R}")
        self.check(new_next in (C, C + 1), PREVIOUS_REVOKED,
                   f"invalid progression: {C} to {new_next}")
        if new_next == C + 1:
            s.previous_counterparty_point, s.current_counterparty_point = s.current_counterparty_point, point
            s.previous_counterparty_commit_info, s.current_counterparty_commit_info = s.current_counterparty_commit_info, info
            s.next_counterparty_commit_num = new_next

    # --- counterparty revocations (hsmd 36) ---

    def validate_counterparty_revocation(self, num: int, secret: bytes) -> None:
        s = self.state
        C, R = s.next_counterparty_commit_num, s.next_counterparty_revoke_num
        self.check(num in (R, R - 1), PREVIOUS_REVOKED,
                   f"invalid counterparty revoke_num {num} with next_counterparty_revoke_num {R}")
        if num == C - 1:
            expected = s.current_counterparty_point
        elif num == C - 2:
            expected = s.previous_counterparty_point
        else:
            expected = None
        self.check(expected is not None, PREVIOUS_REVOKED,
                   f"no counterparty point for commit_num {num} (next_counterparty_commit_num {C})")
        self.check(expected is None or pubkey_of(secret) == expected, PREVIOUS_REVOKED,
                   f"revocation secret for {num} does not match the counterparty point")
        store = copy.deepcopy(s.counterparty_secrets)
        if num == R:
            try:
                store.insert(num, secret)
            except ShachainError as exc:
                self.check(False, PREVIOUS_REVOKED, str(exc))
        new_next = num + 1
        self.check(C - 2 <= new_next <= C - 1, PREVIOUS_REVOKED,
                   f"next_counterparty_revoke_num {new_next} out of range for next_counterparty_commit_num {C}")
        self.check(new_next in (R, R + 1), PREVIOUS_REVOKED, f"invalid revoke progression: {R} to {new_next}")
        if new_next == R + 1:
            s.counterparty_secrets = store
            s.next_counterparty_revoke_num = new_next
            if new_next >= C - 1:
                s.previous_counterparty_commit_info = None

    # --- holder commitments (hsmd 35, 40, 18) ---

    def validate_holder_commitment(self, num: int, info: CommitmentInfo, signatures_ok: bool) -> None:
        s = self.state
        H = s.next_holder_commit_num
        self.check(num + 2 > H, HOLDER_NOT_REVOKED, f"can't validate revoked commitment_number {num}, next_holder_commit_num is {H}")
        self.check(num <= H, POLICY_OTHER, f"invalid next holder commitment number: {num} > {H}")
        self.check(signatures_ok, REVOKE_NEW_COMMITMENT_SIGNED, f"counterparty signatures on holder commitment {num} do not verify")
        if num + 1 == H:
            self.check(s.current_holder_commit_info == info, RETRY_SAME, f"retry holder commitment {num} with changed info")
            return
        if num == H:
            if num == 0:  # activate_initial_commitment: commitment 0 becomes current at once
                s.current_holder_commit_info = info
                s.next_holder_commit_info = None
                s.next_holder_commit_num = 1
            else:
                s.next_holder_commit_info = info

    def revoke_holder_commitment(self, num: int) -> None:
        """hsmd 40 revoke_commitment_tx(num): releases secret num and point num+2."""
        s = self.state
        H = s.next_holder_commit_num
        advancing = num + 1 == H
        if advancing:
            self.check(s.next_holder_commit_info is not None, REVOKE_NEW_COMMITMENT_SIGNED,
                       f"cannot revoke commitment_number {num}: no validated holder commitment {num + 1}")
        new_h = H + 1 if advancing else H
        self.check(num + 2 <= new_h, REVOKE_NEW_COMMITMENT_SIGNED,
                   f"cannot revoke commitment_number {num} when next_holder_commit_num is {H}")
        self.check(num + 2 <= new_h + 1, OPTIONAL_FAIL_FAST, f"point {num + 2} requested too far ahead of {new_h}")
        if advancing and s.next_holder_commit_info is not None:
            s.current_holder_commit_info, s.next_holder_commit_info = s.next_holder_commit_info, None
            s.next_holder_commit_num = new_h

    def release_holder_secret(self, num: int) -> None:
        """get_per_commitment_secret (hsmd 18 below version 6 also returns secret num): never mutates."""
        H = self.state.next_holder_commit_num
        self.check(num + 2 <= H, REVOKE_NEW_COMMITMENT_SIGNED,
                   f"cannot revoke commitment_number {num} when next_holder_commit_num is {H}")

    def get_per_commitment_point(self, num: int) -> None:
        H = self.state.next_holder_commit_num
        self.check(num <= H + 1, OPTIONAL_FAIL_FAST, f"get_per_commitment_point {num} too far ahead of next_holder_commit_num {H}")


def _hex(b: bytes | None) -> str:
    return "none" if b is None else b.hex()
