"""Judging one crash cycle against real Core Lightning, from plain data (sans-IO).

What must hold after lightningd was killed at a crash point and restarted:

* the channel is back to ``CHANNELD_NORMAL`` on both sides, connected;
* every payment completed or failed cleanly; none is pending past its timeout, the payments made
  after the restart completed (the channel carries payments again), and the payer and the payee
  agree (the payer has the preimage exactly when the payee's invoice is paid);
* the balances add up. Core Lightning's ``to_us_msat`` is a ledger: an offered HTLC stays in the
  offerer's balance until it is removed (a fulfilled one is then deducted, a failed one never
  was), a received one is credited when it is removed fulfilled, and the commitment fee is never
  in it (it only comes off the funder's output when a commitment transaction is built). So once
  no HTLC is in flight on either side, ``to_us(l1) + to_us(l2) == total_msat`` (the funding
  amount), and each side's balance moved by exactly the payments that completed.
  (While HTLCs are in flight the two sides remove them at different moments, so the sum only
  holds at rest: the sweep waits for that before judging.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Outcomes of a crash cycle (the names are part of the JSON report).
CONVERGED = "converged"  # everything above holds
STUCK = "stuck"  # the channel, a payment or the node did not come back within the timeout
INVARIANT_VIOLATED = "invariant_violated"  # balances or payment states disagree
NOT_REACHED = "not_reached"  # the driven payments never made that request: the fault never fired
ERROR = "error"  # the sweep itself failed (its reason says how); says nothing about Core Lightning
CYCLE_OUTCOMES = (CONVERGED, STUCK, INVARIANT_VIOLATED, NOT_REACHED, ERROR)

# Payment kinds and phases.
FULFIL, FAIL = "fulfil", "fail"  # to an invoice of the payee / to a hash nobody knows (the payee fails it)
DRIVE, AFTER_RESTART = "drive", "after_restart"
COMPLETE, FAILED, PENDING, ABSENT = "complete", "failed", "pending", "absent"


@dataclass
class Payment:
    payer: str
    payee: str
    amount_msat: int
    kind: str
    phase: str
    payment_hash: str
    status: str = PENDING  # the payer's sendpay status; absent: the payer has no record of it
    invoice_status: str | None = None  # the payee's invoice (fulfil payments): paid, unpaid
    interrupted: bool = False  # in flight when the fault fired
    error: str = ""
    label: str | None = None  # the payee's invoice label (fulfil payments)
    stranded: bool = False  # pending while no HTLC is in flight on either side: nothing can resolve it
    later: str = ""  # what became of a stuck payment by the end of the sweep

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ChannelView:
    """One side of the channel, as ``listpeerchannels`` shows it."""

    node: str
    state: str
    connected: bool
    to_us_msat: int
    total_msat: int
    htlcs: list[dict] = field(default_factory=list)  # direction, amount_msat, state

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CycleFacts:
    fired: bool
    restarted: bool
    sides: list[ChannelView]  # both sides, after the cycle settled (empty: the node is not up)
    payments: list[Payment]
    balance_before: dict[str, int]  # to_us_msat of each node before the cycle
    notes: list[str] = field(default_factory=list)  # what went wrong on the way (timeouts, ...)


def expected_balances(before: dict[str, int], payments: list[Payment]) -> dict[str, int]:
    after = dict(before)
    for p in payments:
        if p.status == COMPLETE:
            after[p.payer] -= p.amount_msat
            after[p.payee] += p.amount_msat
    return after


def judge(facts: CycleFacts) -> tuple[str, list[str]]:
    """The cycle's outcome and the reasons it is not ``converged``."""
    if not facts.fired:
        return NOT_REACHED, facts.notes or ["the driven payments never made the request: the fault never fired"]
    stuck: list[str] = list(facts.notes)
    broken: list[str] = []
    if not facts.restarted:
        return STUCK, stuck or ["the killed lightningd did not start again"]
    for side in facts.sides:
        if side.state != "CHANNELD_NORMAL" or not side.connected:
            stuck.append(f"{side.node}: channel {side.state}{'' if side.connected else ', peer not connected'}")
        if side.htlcs:
            stuck.append(f"{side.node}: {len(side.htlcs)} HTLC(s) still in flight: "
                         + ", ".join(f"{h.get('direction')} {h.get('amount_msat')} {h.get('state')}" for h in side.htlcs))
    for p in facts.payments:
        what = f"{p.phase} payment {p.payer}->{p.payee} {p.amount_msat} msat ({p.kind})"
        if p.status == PENDING and p.stranded:
            stuck.append(f"{what} still pending with no HTLC in flight on either side: nothing is left that "
                         "could complete or fail it")
        elif p.status == PENDING:
            stuck.append(f"{what} still pending past its timeout")
        elif p.phase == AFTER_RESTART and p.status != COMPLETE:
            stuck.append(f"{what} did not complete after the restart: {p.status} {p.error}".rstrip())
        if p.kind == FAIL and p.status == COMPLETE:
            broken.append(f"{what} completed although nobody knows its preimage")
        if p.kind == FULFIL and p.invoice_status is not None and p.status in (COMPLETE, FAILED, ABSENT):
            if (p.status == COMPLETE) != (p.invoice_status == "paid"):
                broken.append(f"{what}: the payer says {p.status}, the payee's invoice is {p.invoice_status}")
    settled = facts.sides and all(not side.htlcs for side in facts.sides)
    if settled:
        broken += balance_problems(facts)
    if broken:
        return INVARIANT_VIOLATED, broken + stuck
    if stuck:
        return STUCK, stuck
    return CONVERGED, []


def balance_problems(facts: CycleFacts) -> list[str]:
    problems = []
    totals = {side.total_msat for side in facts.sides}
    if len(totals) != 1:
        problems.append(f"the two sides disagree on the channel total: {sorted(totals)}")
        return problems
    total = totals.pop()
    held = {side.node: side.to_us_msat for side in facts.sides}
    if sum(held.values()) != total:
        problems.append("balances do not add up: " + " + ".join(f"{n} {v}" for n, v in sorted(held.items()))
                        + f" = {sum(held.values())} msat, the channel holds {total}")
    expected = expected_balances(facts.balance_before, facts.payments)
    for node, value in sorted(held.items()):
        if node in expected and expected[node] != value:
            problems.append(f"{node}'s balance is {value} msat; the completed payments say {expected[node]} "
                            f"(off by {value - expected[node]:+d})")
    return problems
