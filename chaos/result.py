"""One run's result: the judged evidence in the shape of the JSON report, and its trace hash."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field

from chaos.evidence import InjectedFault, RunEvidence
from chaos.judge import check_invariants, classify, expectation_misses, funds_lost_msat
from chaos.scenarios import INVARIANT_VIOLATED, Expectation

_HARMLESS = ("refuted", "prevented")


def fault_trace_hash(faults: list[InjectedFault], seed: int) -> str:
    """One hash over every fault the run injected. Events on one connection are in their order;
    connections are combined by name (and proxy incarnation), never by wall-clock interleaving."""
    chains: dict[tuple[int, str], bytes] = {}
    for f in faults:
        key = (f.incarnation, f.event.conn_key)
        event = json.dumps(f.to_json(), sort_keys=True, separators=(",", ":")).encode()
        chains[key] = hashlib.sha256(chains.get(key, bytes(32)) + event).digest()
    h = hashlib.sha256(f"hsmproxy-chaos-trace-v1|{seed}".encode())
    for (incarnation, conn), chain in sorted(chains.items()):
        h.update(f"{incarnation}|{conn}".encode() + b"\0" + chain)
    return h.hexdigest()


@dataclass
class RunResult:
    scenario: str
    seed: int
    outcome: str
    divergences: list[dict]
    signer_rejections: list[str]
    funds_lost_msat: int
    fault_trace_hash: str
    reproduce: str
    violations: list[dict] = field(default_factory=list)
    expected: str | None = None  # the scenario's expected outcome (None in campaigns)
    misses: list[str] = field(default_factory=list)  # how the run differed from its scenario's promise
    faults: list[dict] = field(default_factory=list)
    restarts: int = 0
    discipline: str = ""
    signer: str = ""
    signer_policy: str = ""
    fault_plan: str = ""
    duration_s: float = 0.0
    workdir: str | None = None
    # The sequence diagram's critical windows (diagrams.sequence.Sequence), cut from the traces
    # before the run's directory went; only for --html. Not in the JSON report.
    windows: list = field(default_factory=list)
    windows_note: str = ""  # why there are none

    @property
    def ok(self) -> bool:
        return self.outcome != INVARIANT_VIOLATED and not self.misses

    @property
    def divergence_kinds(self) -> list[str]:
        return [d["kind"] for d in self.divergences if d.get("status") not in _HARMLESS]

    @property
    def flagged(self) -> list[str]:
        """What the proxy flagged, once each: the kind, with its status unless it is confirmed."""
        return list(dict.fromkeys(d["kind"] if d.get("status") == "confirmed" else f"{d['kind']} ({d.get('status')})"
                                  for d in self.divergences if d.get("status") not in _HARMLESS))

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario, "seed": self.seed, "outcome": self.outcome, "ok": self.ok,
            "expected_outcome": self.expected, "expectation_misses": self.misses,
            "divergences": self.divergences, "signer_rejections": self.signer_rejections,
            "funds_lost_msat": self.funds_lost_msat, "fault_trace_hash": self.fault_trace_hash,
            "reproduce": self.reproduce, "invariant_violations": self.violations, "faults": self.faults,
            "fault_plan": self.fault_plan, "restarts": self.restarts, "discipline": self.discipline,
            "signer": self.signer, "signer_policy": self.signer_policy, "duration_s": round(self.duration_s, 3),
            "workdir": self.workdir,
        }


def reproduce_command(argv: list[str]) -> str:
    return shlex.join(["hsmproxy", "chaos", *argv])


def judge_run(ev: RunEvidence, expectation: Expectation | None, reproduce: str, signer: str,
              fault_plan: str = "", duration_s: float = 0.0, workdir: str | None = None) -> RunResult:
    violations = check_invariants(ev)
    lost = funds_lost_msat(ev)
    outcome = classify(ev, violations, lost)
    divergences = [{k: d.get(k) for k in ("kind", "status", "dbid", "index", "detail")} for d in ev.divergences]
    result = RunResult(
        scenario=ev.scenario, seed=ev.seed, outcome=outcome, divergences=divergences,
        signer_rejections=list(dict.fromkeys(ev.signer_rejections)), funds_lost_msat=lost,
        fault_trace_hash=fault_trace_hash(ev.faults, ev.seed), reproduce=reproduce,
        violations=[v.to_json() for v in violations], faults=[f.to_json() for f in ev.faults],
        restarts=ev.restarts, discipline=ev.discipline, signer=signer, signer_policy=ev.signer_policy,
        fault_plan=fault_plan, duration_s=duration_s, workdir=workdir,
    )
    if expectation is not None:
        result.expected = expectation.outcome
        result.misses = expectation_misses(expectation, outcome, result.divergences, result.signer_rejections, lost)
    return result
