"""One crash cycle's result, in the shape of the sweep's JSON report, and what Core Lightning did
in a sentence built from its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.cln.judge import AFTER_RESTART, CONVERGED, ChannelView, Payment
from chaos.cln.traces import FiredFault

# A prediction the signer or the guard made untrue, or a crash in the window that did no harm.
_HARMLESS = ("refuted", "prevented", "resolved")


@dataclass
class CycleResult:
    message: str
    point: str
    node: str
    outcome: str
    replay: str
    reasons: list[str] = field(default_factory=list)
    fault: str = ""  # the one-line rule armed through the control API
    fired: FiredFault | None = None
    divergences: list[dict] = field(default_factory=list)  # new in this cycle, with the node that flagged it
    payments: list[Payment] = field(default_factory=list)
    channel: list[ChannelView] = field(default_factory=list)  # both sides after the cycle
    balance_before: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    traces: list[str] = field(default_factory=list)
    fail_on: frozenset[str] = frozenset()
    windows: list = field(default_factory=list)  # as RunResult.windows: the cycle's critical windows, for --html
    windows_note: str = ""

    @property
    def spec(self) -> str:
        return f"{self.message}@{self.point}:{self.node}"

    @property
    def divergence_kinds(self) -> list[str]:
        return list(dict.fromkeys(d["kind"] for d in self.divergences if d.get("status") not in _HARMLESS))

    @property
    def failing_divergences(self) -> list[dict]:
        return [d for d in self.divergences if d["kind"] in self.fail_on and d.get("status") == "confirmed"]

    @property
    def ok(self) -> bool:
        return self.outcome == CONVERGED and not self.failing_divergences

    def to_json(self) -> dict:
        return {
            "message": self.message, "point": self.point, "node": self.node, "outcome": self.outcome,
            "divergence_kinds": self.divergence_kinds, "replay": self.replay, "ok": self.ok,
            "reasons": self.reasons, "fault": self.fault,
            "fired": None if self.fired is None else {"rule": self.fired.rule, "action": self.fired.action,
                                                      "point": self.fired.point, "message": self.fired.message,
                                                      "seq": self.fired.seq, "index": self.fired.index},
            "divergences": self.divergences, "payments": [p.to_json() for p in self.payments],
            "channel": [side.to_json() for side in self.channel], "balance_before_msat": self.balance_before,
            "what_happened": narrate(self), "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "duration_s": round(self.duration_s, 3), "traces": self.traces,
        }


# kill-node does not stop the message: the request channeld sent still reaches hsmd, as it would
# if lightningd died on its own at that moment.
_WHEN = {
    "request.before_forward": "as channeld sent",
    "request.after_forward": "while hsmd handled",
    "reply.before_forward": "after hsmd answered, before channeld saw the reply to",
    "reply.after_forward": "right after channeld got the reply to",
}


def narrate(r: CycleResult) -> str:
    """What Core Lightning did at this crash point."""
    if r.fired is None:
        return f"{r.node}'s channeld never sent {r.message} while the sweep drove payments: nothing was killed"
    at = f" (commitment {r.fired.index})" if r.fired.index is not None else ""
    bits = [f"{r.node}'s lightningd killed {_WHEN.get(r.point, r.point)} {r.message}{at}"]
    if "restart" in r.timings_s:
        bits.append(f"restarted in {r.timings_s['restart']:.1f} s")
    driven = [p for p in r.payments if p.interrupted]
    for p in driven:
        bits.append(f"the interrupted {p.kind} payment {p.payer}->{p.payee} ended {p.status}")
    again = [p for p in r.payments if p.phase == AFTER_RESTART]
    if again:
        bits.append("payments after the restart: " + ", ".join(f"{p.payer}->{p.payee} {p.status}" for p in again))
    states = {side.state for side in r.channel}
    if states:
        bits.append("channel " + "/".join(sorted(states)))
    flagged = [f"{d['kind']} ({d['status']}, {d['node']}, commitment {d['index']})" for d in r.divergences]
    bits.append("the proxy flagged " + ", ".join(flagged) if flagged else "the proxy flagged nothing")
    return "; ".join(bits)
