"""Invariants, the amount lost, and the outcome of one run: plain functions of ``RunEvidence``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from chaos.evidence import COUNTER_KEYS, RunEvidence
from chaos.scenarios import CONVERGED, ENFORCE, FUNDS_LOST, INVARIANT_VIOLATED, REFUSED, STUCK, Expectation
from sim.node import WAL

# Divergence statuses that mean "did not happen" (or, for a crash in the window, did no harm).
_HARMLESS = frozenset({"refuted", "prevented", "resolved"})
_CRASHED_IN_WINDOW = "crashed_in_window"
# Faults after which a request may legitimately stay unanswered: crashes end what is in flight,
# and a duplicated request's second reply answers the node's next request (the conversation is
# one reply out of step until the node gives up and restarts).
_DISRUPTIVE = frozenset({"kill-node", "kill-signer", "crash-proxy", "drop", "disconnect", "hold", "duplicate"})


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def to_json(self) -> dict:
        return {"invariant": self.invariant, "detail": self.detail}


def _signed_twice(ev: RunEvidence) -> dict[tuple[int, int], set[str]]:
    digests: dict[tuple[int, int], set[str]] = defaultdict(set)
    for sc in ev.signed:
        digests[(sc.dbid, sc.index)].add(sc.digest)
    return {k: v for k, v in digests.items() if len(v) > 1}


def no_double_sign_when_enforcing(ev: RunEvidence) -> list[Violation]:
    if not (ev.validating and ev.signer_policy == ENFORCE):
        return []
    out = [Violation("enforcing-signer-never-double-signs",
                     f"channel {dbid} commitment {index} signed with {len(d)} different digests")
           for (dbid, index), d in sorted(_signed_twice(ev).items())]
    out += [Violation("enforcing-signer-never-double-signs",
                      f"proxy confirmed double_signed on channel {d.get('dbid')} commitment {d.get('index')}")
            for d in ev.divergences if d.get("kind") == "double_signed" and d.get("status") == "confirmed"]
    return out


def wal_node_converges(ev: RunEvidence) -> list[Violation]:
    if ev.discipline != WAL or ev.attacker:
        return []
    out = []
    if ev.node_stuck or not ev.workload_done:
        why = "reported stuck" if ev.node_stuck else f"did not finish its workload after {ev.restarts} restart(s)"
        out.append(Violation("wal-node-never-stuck", f"the WAL node {why}"))
    for d in ev.divergences:
        # A crash in the window the node has not come back from yet says nothing of its discipline.
        if d.get("status") not in _HARMLESS and not (d.get("kind") == _CRASHED_IN_WINDOW and d.get("status") == "possible"):
            out.append(Violation("wal-node-never-diverges",
                                 f"{d.get('kind')} ({d.get('status')}) on channel {d.get('dbid')} index {d.get('index')}: "
                                 f"{d.get('detail', '')}"))
    return out


def shadow_matches_signer(ev: RunEvidence) -> list[Violation]:
    if ev.signer_channels is None:
        return []  # a signer whose state we cannot read (stock hsmd keeps none)
    out = []
    for dbid, shadow in sorted(ev.shadow_channels.items()):
        signer = ev.signer_channels.get(dbid)
        if signer is None:
            out.append(Violation("shadow-equals-signer", f"channel {dbid} is in the proxy's shadow but not in the signer's state"))
            continue
        for key in COUNTER_KEYS:
            if shadow.get(key) is not None and shadow.get(key) != signer.get(key):
                out.append(Violation("shadow-equals-signer",
                                     f"channel {dbid} {key}: proxy's recovered shadow {shadow.get(key)}, signer {signer.get(key)}"))
    return out


def requests_accounted(ev: RunEvidence) -> list[Violation]:
    """Every request got exactly one answer, or a fault explains why not: a crash in the same
    incarnation (what was in flight dies with it), or a verdict on that very message."""
    disrupted = {inc.number for inc in ev.incarnations if any(f.action in _DISRUPTIVE for f in inc.faults)}
    disrupted |= {inc.number for inc in ev.incarnations if inc.killed_by_runner}
    out = []
    for u in ev.unanswered:
        if u["incarnation"] not in disrupted and u.get("verdict") != "Hold":
            out.append(Violation("every-request-answered",
                                 f"{u['message']} (connection {u['conn_id']}, request {u['seq']}, incarnation "
                                 f"{u['incarnation']}) got no answer and no fault explains it"))
    for t in ev.answered_twice:
        out.append(Violation("every-request-answered",
                             f"{t['message']} (connection {t['conn_id']}, request {t['seq']}, incarnation "
                             f"{t['incarnation']}) was answered {t['replies']} times"))
    return out


INVARIANTS = (no_double_sign_when_enforcing, wal_node_converges, shadow_matches_signer, requests_accounted)
# The names the checks above report (metrics series exist for each from the start).
INVARIANT_NAMES = ("enforcing-signer-never-double-signs", "wal-node-never-stuck", "wal-node-never-diverges",
                   "shadow-equals-signer", "every-request-answered")


def check_invariants(ev: RunEvidence) -> list[Violation]:
    out = [Violation("runner", e) for e in ev.runner_errors]
    for invariant in INVARIANTS:
        out.extend(invariant(ev))
    return out


def funds_lost_msat(ev: RunEvidence) -> int:
    """What an attacker peer gains. A compromised node leaks every signature it gets; when the
    signer signed commitment N twice, the attacker publishes the earlier N, and the incoming HTLCs
    that only the later N holds (already forwarded onward, as in the write-up) are lost."""
    if not ev.attacker:
        return 0
    versions: dict[tuple[int, int], list] = defaultdict(list)
    for sc in ev.signed:
        if all(sc.digest != other.digest for other in versions[(sc.dbid, sc.index)]):
            versions[(sc.dbid, sc.index)].append(sc)
    lost = 0
    for signed in versions.values():
        final = signed[-1]
        best = 0
        for leaked in signed[:-1]:
            published = {h for h, _ in leaked.incoming_htlcs}
            best = max(best, sum(amount for h, amount in final.incoming_htlcs if h not in published))
        lost += best
    return lost


def classify(ev: RunEvidence, violations: list[Violation], lost_msat: int) -> str:
    if violations:
        return INVARIANT_VIOLATED
    if lost_msat > 0:
        return FUNDS_LOST
    if ev.workload_done and not ev.node_stuck:
        return CONVERGED
    if ev.attacker:
        return REFUSED  # the attack did not get through
    return STUCK


def expectation_misses(exp: Expectation, outcome: str, divergences: list[dict], rejections: list[str],
                       lost_msat: int) -> list[str]:
    """Why a run did not show what its scenario promises (empty when it did). ``divergences``
    are the run's events (kind and status)."""
    flagged = [d["kind"] for d in divergences if d.get("status") not in _HARMLESS]
    resolved = [d["kind"] for d in divergences if d.get("status") == "resolved"]
    misses = []
    if outcome != exp.outcome:
        misses.append(f"outcome {outcome}, expected {exp.outcome}")
    for kind in exp.divergence_kinds:
        if kind not in flagged:
            misses.append(f"no {kind} divergence flagged")
    for kind in exp.resolved_kinds:
        if kind not in resolved:
            misses.append(f"no {kind} divergence flagged and resolved")
    if exp.absent_divergences and flagged:
        misses.append(f"divergences flagged: {', '.join(sorted(set(flagged)))}")
    for tag in exp.signer_rejections:
        if tag not in rejections:
            misses.append(f"signer did not refuse with {tag}")
    if exp.funds_lost != (lost_msat > 0):
        misses.append(f"funds lost {lost_msat} msat, expected {'some' if exp.funds_lost else 'none'}")
    return misses
