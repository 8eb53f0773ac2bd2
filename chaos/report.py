"""Reports of a chaos session: the final rich tables, ``--json``, ``--junit``, and the live view."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from xml.etree import ElementTree

from rich.console import Group
from rich.table import Table
from rich.text import Text

from chaos.cln.judge import CYCLE_OUTCOMES
from chaos.cln.result import CycleResult
from chaos.cln.sweep import SweepReport
from chaos.result import RunResult
from chaos.scenarios import BUILTIN, OUTCOMES

REPORT_VERSION = 1


def summary(results: list[RunResult]) -> dict:
    outcomes = Counter(r.outcome for r in results)
    return {
        "runs": len(results),
        "failed": sum(1 for r in results if not r.ok),
        "outcomes": {o: outcomes.get(o, 0) for o in OUTCOMES},
        "faults": sum(len(r.faults) for r in results),
        "restarts": sum(r.restarts for r in results),
        "divergences": sum(len(r.divergence_kinds) for r in results),
        "funds_lost_msat": sum(r.funds_lost_msat for r in results),
        "duration_s": round(sum(r.duration_s for r in results), 3),
    }


def report_json(results: list[RunResult], meta: dict | None = None) -> dict:
    return {"version": REPORT_VERSION, **(meta or {}), "summary": summary(results), "runs": [r.to_json() for r in results]}


def write_text(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, results: list[RunResult], meta: dict | None = None) -> None:
    write_text(path, json.dumps(report_json(results, meta), indent=2) + "\n")


def junit_xml(results: list[RunResult], suite_name: str = "hsmproxy.chaos") -> str:
    """One testcase per run; a run that violated an invariant or missed its scenario's promise fails,
    with the reproduce command in the message."""
    suite = ElementTree.Element("testsuite", name=suite_name, tests=str(len(results)),
                       failures=str(sum(1 for r in results if not r.ok)), errors="0",
                       time=f"{sum(r.duration_s for r in results):.3f}")
    for r in results:
        case = ElementTree.SubElement(suite, "testcase", classname=f"chaos.{r.scenario}", name=f"seed-{r.seed}",
                             time=f"{r.duration_s:.3f}")
        if not r.ok:
            reasons = [f"{v['invariant']}: {v['detail']}" for v in r.violations] + r.misses
            failure = ElementTree.SubElement(case, "failure", message=f"{r.outcome}: {'; '.join(reasons)[:500]}",
                                    type=r.outcome)
            failure.text = "\n".join([*reasons, f"reproduce: {r.reproduce}",
                                      f"fault trace hash: {r.fault_trace_hash}"])
        out = ElementTree.SubElement(case, "system-out")
        out.text = json.dumps({"outcome": r.outcome, "faults": r.fault_plan, "reproduce": r.reproduce})
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: str, results: list[RunResult]) -> None:
    write_text(path, junit_xml(results))


_OUTCOME_STYLE = {"converged": "green", "stuck": "yellow", "refused": "cyan", "funds_lost": "bold red",
                  "invariant_violated": "bold white on red"}


def _outcome(text: str) -> Text:
    return Text(text, style=_OUTCOME_STYLE.get(text, ""))


_WHEN = {
    "request.before_forward": "before the signer saw the request",
    "request.after_forward": "while the signer had the request",
    "reply.before_forward": "after the signer answered, before the node saw it",
    "reply.after_forward": "after the node got the answer",
}


def describe_faults(r: RunResult) -> str:
    if not r.faults:
        return "no fault injected"
    return "; ".join(f"{f['action']} at {f['message'].removeprefix('hsmd_')} {_WHEN.get(f['point'], f['point'])}"
                     for f in r.faults)


def narrate(r: RunResult) -> str:
    """What one run showed, in a sentence built from its evidence."""
    bits = [describe_faults(r)]
    if r.restarts:
        bits.append(f"{r.restarts} restart(s)")
    flagged = r.flagged
    bits.append(f"the proxy flagged {', '.join(flagged)}" if flagged else "the proxy flagged nothing")
    bits.append(f"the signer refused ({', '.join(r.signer_rejections)})" if r.signer_rejections else "the signer refused nothing")
    if r.funds_lost_msat:
        bits.append(f"{r.funds_lost_msat:,} msat lost to a stale commitment")
    bits.append(f"outcome: {r.outcome}")
    return "; ".join(bits)


def stories_table(results: list[RunResult]) -> Table:
    """The built-in scenarios, one row per run: what it showed against what it promises."""
    table = Table(title="hsmproxy chaos: the write-up's stories", show_lines=True)
    table.add_column("scenario", no_wrap=True)
    table.add_column("what happened", ratio=1)
    table.add_column("check", no_wrap=False)
    for r in results:
        who = r.signer if not r.signer_policy else f"{r.signer}, retry-same {r.signer_policy}"
        verdict = Text(f"ok: {r.outcome}", style=_OUTCOME_STYLE.get(r.outcome, "")) if r.ok else Text(
            "FAIL: " + "; ".join(r.misses + [v["detail"] for v in r.violations]), style="bold red")
        table.add_row(Text.assemble((r.scenario, "bold"), "\n", (who, "dim")), narrate(r), verdict)
    return table


def campaign_table(results: list[RunResult], title: str = "hsmproxy chaos campaign") -> Table:
    """Outcome counts, faults, restarts and divergences: one column per scenario (and the total)."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.scenario, []).append(r)
    if len(groups) > 1:
        groups["total"] = list(results)
    table = Table(title=title)
    table.add_column("")
    for name in groups:
        table.add_column(name, justify="right")
    sums = {name: summary(rs) for name, rs in groups.items()}
    table.add_row("runs", *(str(s["runs"]) for s in sums.values()))
    for outcome in OUTCOMES:
        table.add_row(_outcome(outcome), *(str(s["outcomes"][outcome]) for s in sums.values()))
    for key in ("faults", "restarts", "divergences", "funds_lost_msat"):
        table.add_row(key.replace("_", " "), *(f"{s[key]:,}" for s in sums.values()))
    table.add_row(Text("failed", style="bold"), *(Text(str(s["failed"]), style="bold red" if s["failed"] else "green")
                                                   for s in sums.values()))
    return table


def failures_view(results: list[RunResult]):
    """The failed runs and why (``replay_lines`` has their commands)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    table = Table(title="failed runs", title_style="bold red")
    for col in ("scenario", "seed", "outcome", "why"):
        table.add_column(col, overflow="fold")
    for r in failed:
        why = "; ".join([f"{v['invariant']}: {v['detail']}" for v in r.violations] + r.misses)
        table.add_row(r.scenario, str(r.seed), _outcome(r.outcome), why)
    return table


def replay_lines(results: list[RunResult]) -> list[str]:
    """One line per failed run with the command that replays it (print with soft_wrap: never cut)."""
    return [f"replay seed {r.seed}: {r.reproduce}" for r in results if not r.ok]


def final_view(results: list[RunResult]):
    parts = []
    stories = [r for r in results if r.scenario in BUILTIN]
    if stories and len(stories) == len(results) and len(results) <= 12:
        parts.append(stories_table(results))
    else:
        parts.append(campaign_table(results))
    failed = failures_view(results)
    if failed is not None:
        parts.append(failed)
    return Group(*parts)


class LiveProgress:
    """Counters for the rich live view: runs done, running, faults, divergences, outcomes."""

    def __init__(self, total: int):
        self.total = total
        self.done: list[RunResult] = []
        self.running = 0
        self.started = time.monotonic()

    def on_start(self, job) -> None:
        self.running += 1

    def on_result(self, result: RunResult) -> None:
        self.running -= 1
        self.done.append(result)

    def __rich__(self):
        s = summary(self.done)
        elapsed = time.monotonic() - self.started
        rate = len(self.done) / elapsed if elapsed > 0 else 0.0
        head = Text.assemble(
            ("chaos ", "bold"), f"{len(self.done)}/{self.total} runs", f"  running {self.running}",
            f"  faults {s['faults']}", f"  restarts {s['restarts']}", f"  divergences {s['divergences']}",
            f"  {rate:.2f} runs/s  ",
            *[(f"{o} {n}  ", _OUTCOME_STYLE.get(o, "")) for o, n in s["outcomes"].items() if n],
        )
        failed = [r for r in self.done if not r.ok][-3:]
        lines = [Text(f"FAILED {r.scenario} seed {r.seed}: {r.reproduce}", style="bold red") for r in failed]
        return Group(head, *lines)


# ---- crash sweeps against real Core Lightning (chaos/cln) ---------------------------------------

SWEEP_KIND = "cln-sweep"


def sweep_summary(report: SweepReport) -> dict:
    results = report.results
    outcomes = Counter(r.outcome for r in results)
    kinds = Counter(f"{d['kind']}({d['status']})" for r in results for d in r.divergences)
    return {
        "cycles": len(results),
        "failed": sum(1 for r in results if not r.ok),
        "outcomes": {o: outcomes.get(o, 0) for o in CYCLE_OUTCOMES},
        "divergences": dict(sorted(kinds.items())),
        "setup_s": round(report.setup_s, 3),
        "cycles_s": round(report.cycles_s, 3),
        "cycles_per_s": round(report.cycles_per_s, 3),
        "wall_s": round(report.wall_s, 3),
    }


def sweep_report_json(report: SweepReport, meta: dict | None = None) -> dict:
    """The campaign report's shape (``version``, ``summary``, ``runs``), one run per crash cycle."""
    return {
        "version": REPORT_VERSION, "kind": SWEEP_KIND, **(meta or {}),
        "lightningd_version": report.lightningd_version, "channel": report.channel,
        "requests": report.requests, "directory": report.directory,
        "summary": sweep_summary(report), "runs": [r.to_json() for r in report.results],
    }


def write_sweep_json(path: str, report: SweepReport, meta: dict | None = None) -> None:
    write_text(path, json.dumps(sweep_report_json(report, meta), indent=2) + "\n")


def _cycle_reasons(r: CycleResult) -> list[str]:
    return r.reasons + [f"confirmed {d['kind']} flagged by {d['node']}'s proxy at commitment {d['index']}"
                        for d in r.failing_divergences]


def sweep_junit_xml(results: list[CycleResult], suite_name: str = "hsmproxy.chaos.cln-sweep") -> str:
    """One testcase per crash cycle (``chaos.cln-sweep.<node>`` / ``<message>@<point>``); a cycle
    that did not converge (or flagged a --fail-on kind) fails, with its replay command."""
    suite = ElementTree.Element("testsuite", name=suite_name, tests=str(len(results)),
                                failures=str(sum(1 for r in results if not r.ok)), errors="0",
                                time=f"{sum(r.duration_s for r in results):.3f}")
    for r in results:
        case = ElementTree.SubElement(suite, "testcase", classname=f"chaos.{SWEEP_KIND}.{r.node}",
                                      name=f"{r.message}@{r.point}", time=f"{r.duration_s:.3f}")
        if not r.ok:
            reasons = _cycle_reasons(r)
            failure = ElementTree.SubElement(case, "failure", message=f"{r.outcome}: {'; '.join(reasons)[:500]}",
                                             type=r.outcome)
            failure.text = "\n".join([*reasons, f"replay: {r.replay}"])
        out = ElementTree.SubElement(case, "system-out")
        out.text = json.dumps({"outcome": r.outcome, "divergence_kinds": r.divergence_kinds, "fault": r.fault,
                               "replay": r.replay})
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_sweep_junit(path: str, results: list[CycleResult]) -> None:
    write_text(path, sweep_junit_xml(results))


_CYCLE_OUTCOME_STYLE = {**_OUTCOME_STYLE, "not_reached": "dim", "error": "bold magenta"}


def _interrupted(r: CycleResult) -> str:
    shown = [f"{p.kind} {p.payer}->{p.payee}: {p.status}" for p in r.payments if p.interrupted]
    return "; ".join(shown) or ("none in flight" if r.fired else "")


def sweep_table(report: SweepReport, title: str = "hsmproxy chaos: crash sweep against Core Lightning") -> Table:
    """One row per crash cycle: where lightningd was killed, what became of the payment in
    flight, the outcome, and what the proxies flagged."""
    table = Table(title=title)
    for column, justify in (("node", "left"), ("request", "left"), ("point", "left"), ("commit", "right"),
                            ("interrupted payment", "left"), ("outcome", "left"), ("proxy flagged", "left"),
                            ("s", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for r in report.results:
        flagged = ", ".join(f"{d['kind']}({d['status']})" for d in r.divergences) or "-"
        index = r.fired.index if r.fired is not None and r.fired.index is not None else ""
        table.add_row(r.node, r.message.removeprefix("hsmd_"), r.point, str(index), _interrupted(r),
                      Text(r.outcome, style=_CYCLE_OUTCOME_STYLE.get(r.outcome, "")), flagged, f"{r.duration_s:.1f}")
    return table


def sweep_failures_view(results: list[CycleResult]):
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    table = Table(title="cycles that did not converge", title_style="bold red")
    for column in ("crash point", "outcome", "why"):
        table.add_column(column, overflow="fold")
    for r in failed:
        table.add_row(r.spec, Text(r.outcome, style=_CYCLE_OUTCOME_STYLE.get(r.outcome, "")), "; ".join(_cycle_reasons(r)))
    return table


def sweep_final_view(report: SweepReport):
    parts = [sweep_table(report)]
    failed = sweep_failures_view(report.results)
    if failed is not None:
        parts.append(failed)
    return Group(*parts)


def sweep_replay_lines(results: list[CycleResult]) -> list[str]:
    return [f"replay {r.spec}: {r.replay}" for r in results if not r.ok]
