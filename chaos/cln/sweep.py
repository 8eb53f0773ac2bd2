"""A crash sweep against real Core Lightning.

One bitcoind, two nodes and one channel serve the whole sweep; only the crashed node restarts.

1. Warm-up: an HTLC add/fulfil and an add/fail in each direction. The requests each node's
   channeld sent to hsmd during it (read from the node's trace) are the crash points' messages:
   the list is what this lightningd does, not a list written down here.
2. For every (node, request, point): arm a kill-node rule in that node's proxy through its
   control API, drive payments until it fires (lightningd is SIGKILLed at exactly that point),
   restart the node without the rule, reconnect, let the interrupted payments resolve, pay
   again both ways with other amounts, wait until no HTLC is in flight, and judge
   (``chaos.cln.judge``): channel normal, payments resolved, balances add up; plus what each
   proxy's shadow (its WAL) flagged in the cycle.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from chaos.cln.judge import (
    AFTER_RESTART, COMPLETE, DRIVE, ERROR, FAIL, FAILED, FULFIL, PENDING, CycleFacts, judge,
)
from chaos.cln.network import Binaries, Network, NodeStartError, SweepSetupError
from chaos.cln.points import NODES, CrashPoint, Selector, select_points
from chaos.cln.result import CycleResult
from chaos.cln.traces import FiredFault, channel_requests, fired_faults, trace_records
from chaos.windows import windows_from_traces
from proxy.addons.trace import TraceFormatError

WARM_UP_BALANCE_MSAT = 400_000_000  # l1 -> l2 first, so both sides have an output (and penalty sigs)
# How payments are driven until the armed fault fires: (the crashed node pays?, kind). The first
# two make every request of the dance on both sides; the fails add the fail path.
DRIVE_PLAN = ((True, FULFIL), (False, FULFIL), (True, FAIL), (False, FAIL))


class FaultControl(Protocol):
    """What the sweep needs of a proxy's control API (``hsmproxy.control_client.ControlClient``)."""

    def add(self, line: str) -> list[dict]: ...

    def remove(self, name: str) -> None: ...


@dataclass
class SweepConfig:
    binaries: Binaries
    control: Callable[[str], FaultControl]  # control API address -> client
    selectors: list[Selector] = field(default_factory=list)
    timeout: float = 30.0  # for lightningd to die, start, and get its channel back to normal
    payment_timeout: float = 10.0  # for a payment to resolve once the channel is normal again
    workdir: Path | None = None
    keep: str = "failed"  # failed, all, none: whether the nodes' logs, WALs and traces stay
    fail_on: frozenset[str] = frozenset()
    all_plugins: bool = False
    replay_argv: tuple[str, ...] = ()  # the options that name the binaries, for the replay commands
    windows: bool = False  # cut each cycle's critical windows from the traces (for --html)


@dataclass
class SweepReport:
    results: list[CycleResult]
    requests: dict[str, list[str]]
    setup_s: float
    wall_s: float
    cycles_s: float
    directory: str | None  # kept directory (None: removed)
    lightningd_version: str = ""
    channel: dict = field(default_factory=dict)

    @property
    def cycles_per_s(self) -> float:
        return len(self.results) / self.cycles_s if self.cycles_s > 0 else 0.0


def replay_command(argv: tuple[str, ...], cp: CrashPoint) -> str:
    return shlex.join(["hsmproxy", "chaos", *argv, "--cycle", cp.spec])


def _divergences(network: Network) -> dict[str, list[dict]]:
    return {name: node.shadow()["divergences"] for name, node in network.nodes.items()}


def _key(d: dict) -> tuple:
    return (d["kind"], d["dbid"], d["index"], d["op_id"])


class Sweep:
    def __init__(self, config: SweepConfig, on_cycle: Callable[[int, int, CycleResult], None] | None = None,
                 on_setup: Callable[[str], None] | None = None):
        self.config = config
        self.on_cycle = on_cycle or (lambda i, n, r: None)
        self.on_setup = on_setup or (lambda what: None)
        self.aborted: str | None = None  # why the remaining cycles cannot run
        # What an interrupted sweep leaves (read by the caller when run() raised KeyboardInterrupt).
        self.results: list[CycleResult] = []
        self.total = 0
        self.directory: str | None = None

    def _root(self) -> Path:
        if self.config.workdir is not None:
            self.config.workdir.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="sweep-", dir=self.config.workdir))
        return Path(tempfile.mkdtemp(prefix="hsmproxy-sweep-"))

    def run(self) -> SweepReport:
        started = time.monotonic()
        root = self._root()
        network = Network(root / "network", self.config.binaries, all_plugins=self.config.all_plugins,
                          timeout=self.config.timeout)
        results = self.results
        interrupted = False
        try:
            self.on_setup("starting bitcoind and two lightningd nodes, opening a channel")
            network.start()
            self.on_setup("warm-up payments: which requests does channeld make?")
            requests = self.warm_up(network)
            setup_s = time.monotonic() - started
            points = select_points(requests, self.config.selectors)
            self.total = len(points)
            cycles_started = time.monotonic()
            for i, cp in enumerate(points):
                result = self.cycle(network, cp, i) if self.aborted is None else self._not_run(cp)
                results.append(result)
                self.on_cycle(i, len(points), result)
            cycles_s = time.monotonic() - cycles_started
            self.recheck_stuck_payments(network, results, cycles_started)
            version = network.nodes["l1"].pyln.info.get("version", "")
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            network.stop()
            self.directory = str(root) if self._keep(results, interrupted) else None
            if self.directory is None:
                shutil.rmtree(root, ignore_errors=True)
        return SweepReport(results, requests, setup_s, time.monotonic() - started, cycles_s, self.directory, str(version),
                           {"channel_id": network.channel_id, "short_channel_id": network.scid,
                            "dbid": dict(network.dbid), "funding_msat": network.funding_msat})

    def _keep(self, results: list[CycleResult], interrupted: bool) -> bool:
        """--keep: all, none, or failed (a cycle that did not converge, or a sweep that could not
        set up). A stopped sweep has no verdict: its directory goes unless --keep all, as a
        stopped campaign run's does."""
        if self.config.keep in ("all", "none") or interrupted:
            return self.config.keep == "all"
        return not results or any(not r.ok for r in results)

    @staticmethod
    def recheck_stuck_payments(network: Network, results: list[CycleResult], since: float) -> None:
        """A payment a cycle found stuck, looked at again when the sweep is over (after more
        restarts of both nodes): still pending, or resolved after all."""
        for r in results:
            for p in r.payments:
                if p.status != PENDING:
                    continue
                status = p.status
                network.refresh(p)
                minutes = (time.monotonic() - since) / 60
                p.later = f"{p.status} at the end of the sweep ({minutes:.1f} min after the sweep's first cycle)"
                if p.status != status:
                    r.reasons.append(f"{p.phase} payment {p.payer}->{p.payee} {p.amount_msat} msat ended {p.status} "
                                     "later in the sweep, after more restarts")
                else:
                    r.reasons.append(f"{p.phase} payment {p.payer}->{p.payee} {p.amount_msat} msat was still pending "
                                     "at the end of the sweep")
                p.status = status  # the cycle's judgement stands; `later` says what came of it

    # ---- warm-up ----

    def warm_up(self, network: Network) -> dict[str, list[str]]:
        since = time.time_ns()
        plan = [("l1", WARM_UP_BALANCE_MSAT, FULFIL, COMPLETE), ("l2", 1_000_000, FULFIL, COMPLETE),
                ("l1", 1_000_000, FAIL, FAILED), ("l2", 1_000_000, FAIL, FAILED)]
        for payer, amount, kind, expected in plan:
            payment = network.start_payment(payer, amount, kind, "warm_up")
            network.wait_payment(payment, self.config.timeout)
            if payment.status != expected:
                raise SweepSetupError(f"warm-up payment {payer}->{payment.payee} {amount} msat ({kind}) ended "
                                      f"{payment.status}, not {expected}: {payment.error}; see the nodes' logs in "
                                      f"{network.root}")
        if not network.wait_settled(self.config.timeout):
            raise SweepSetupError(f"HTLCs still in flight after the warm-up; see the nodes' logs in {network.root}")
        network.find_dbids()
        requests = {}
        for name, node in network.nodes.items():
            try:
                requests[name] = channel_requests(trace_records(str(node.trace_path)), network.dbid[name], since)
            except (OSError, TraceFormatError) as exc:
                raise SweepSetupError(f"cannot read {name}'s trace {node.trace_path}: {exc}") from None
            if not requests[name]:
                raise SweepSetupError(f"{name}'s trace {node.trace_path} shows no request of the channel's channeld "
                                      "during the warm-up payments")
        return requests

    # ---- one crash cycle ----

    def _not_run(self, cp: CrashPoint) -> CycleResult:
        return CycleResult(cp.message, cp.point, cp.node, ERROR, replay_command(self.config.replay_argv, cp),
                           reasons=[f"not run: {self.aborted}"], fail_on=self.config.fail_on)

    def cycle(self, network: Network, cp: CrashPoint, number: int) -> CycleResult:
        started = time.monotonic()
        result = CycleResult(cp.message, cp.point, cp.node, ERROR, replay_command(self.config.replay_argv, cp),
                             fail_on=self.config.fail_on)
        # The killed node's trace holds its earlier cycles too: the diagram starts after them.
        first_record = self._records_in(network.nodes[cp.node].trace_path) + 1 if self.config.windows else None
        try:
            self._cycle(network, cp, number, result)
        except Exception as exc:  # the sweep's own failure: reported, and the sweep goes on if it can
            result.outcome = ERROR
            result.reasons.append(f"the sweep failed in this cycle: {type(exc).__name__}: {exc}")
            self._check_network(network)
        if self.config.windows:
            result.windows, result.windows_note = (
                windows_from_traces(result.traces, channel=network.dbid.get(cp.node), start=first_record)
                if result.traces
                else ([], "no sequence diagram: the fault never fired, nothing was killed"))
        result.duration_s = time.monotonic() - started
        return result

    def _check_network(self, network: Network) -> None:
        """After a cycle: can the next one run? One channel serves the sweep."""
        down = [n.name for n in network.nodes.values() if not n.is_up()]
        if down:
            self.aborted = f"lightningd {', '.join(down)} is not running"
            return
        views = [network.channel_view(n) for n in NODES]
        if any(v is None or v.state != "CHANNELD_NORMAL" for v in views):
            states = ", ".join(f"{n}: {v.state if v else 'no channel'}" for n, v in zip(NODES, views))
            self.aborted = f"the sweep's channel is not normal any more ({states})"

    def _cycle(self, network: Network, cp: CrashPoint, number: int, result: CycleResult) -> None:
        timeout = self.config.timeout
        node, peer = network.nodes[cp.node], network.peer_of(cp.node)
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            result.timings_s[name] = now - clock
            clock = now

        result.balance_before = {n: network.channel_view(n).to_us_msat for n in NODES}
        known = {n: {_key(d) for d in ds} for n, ds in _divergences(network).items()}
        rule = f"sweep-{number + 1}"
        result.fault = cp.fault_line(network.dbid[cp.node], rule)
        killed_trace = node.trace_path
        node.note_incarnation()
        control = self.config.control(node.control_address)
        control.add(result.fault)
        lap("arm")

        fired = False
        for i, (crashed_pays, kind) in enumerate(DRIVE_PLAN):
            payer = cp.node if crashed_pays else peer.name
            payment = network.start_payment(payer, 1_000_000 + 1_000 * number + i, kind, DRIVE)
            result.payments.append(payment)
            network.wait_payment(payment, timeout, stop=lambda: not node.is_up())
            if not node.is_up():
                fired = True
                break
            if payment.status not in (COMPLETE, FAILED):
                result.reasons.append(f"drive payment {payer}->{payment.payee} still {payment.status} after {timeout:.0f} s "
                                      "although nothing was killed")
                break
        lap("fire")
        if not fired:
            control.remove(rule)
            network.wait_settled(timeout)
            for p in result.payments:
                network.refresh(p)
            result.outcome, reasons = judge(CycleFacts(False, True, [], result.payments, result.balance_before,
                                                       result.reasons))
            result.reasons = reasons
            return

        for p in result.payments:
            p.interrupted = p.status not in (COMPLETE, FAILED)
        node.wait_dead(timeout)
        node.wait_incarnation_gone(timeout)
        lap("dead")
        result.traces.append(str(killed_trace))
        result.fired = self._fault_of(killed_trace, network.dbid[cp.node], rule)
        if result.fired is None:
            result.reasons.append(f"{cp.node}'s lightningd died, but its proxy's trace {killed_trace} has no fault "
                                  f"{rule}: something else ended it")

        restarted = True
        try:
            node.start(network.port(), timeout)
            result.timings_s.update({f"restart.{k}": v for k, v in node.start_timings().items()})
        except NodeStartError as exc:
            restarted = False
            result.reasons.append(str(exc))
            self.aborted = f"lightningd {cp.node} did not start again after {cp.spec}"
        result.traces.append(str(node.trace_path))
        lap("restart")
        sides = []
        if restarted:
            self._reconnect(network, cp.node, timeout)
            if not network.wait_normal(timeout):
                result.reasons.append(f"the channel was not back to CHANNELD_NORMAL and connected {timeout:.0f} s "
                                      "after the restart")
            payments_due = time.monotonic() + self.config.payment_timeout
            lap("reconnect")
            # Both ways at once: the channel must carry concurrent updates after the restart too.
            again = [network.start_payment(payer, amount, FULFIL, AFTER_RESTART)
                     for payer, amount in ((cp.node, 2_000_000 + 1_000 * number + 7),
                                           (peer.name, 1_500_000 + 1_000 * number + 3))]
            result.payments += again
            for payment in again:
                network.wait_payment(payment, max(0.0, payments_due - time.monotonic()))
            lap("pay_again")
            settled = network.wait_settled(max(0.0, payments_due - time.monotonic()))
            for p in result.payments:
                network.refresh(p)
                if p.status == PENDING and settled:
                    # The payments after the restart went through and no HTLC is left on either
                    # side: nothing can resolve it any more, so waiting out the timeout says nothing.
                    p.stranded = True
                else:
                    network.wait_payment(p, max(0.0, payments_due - time.monotonic()))
            lap("settle")
            sides = [v for v in (network.channel_view(n) for n in NODES) if v is not None]
        result.channel = sides
        after = _divergences(network)
        result.divergences = [{"node": n, **{k: d[k] for k in ("kind", "status", "dbid", "index", "detail")}}
                              for n in NODES for d in after[n] if _key(d) not in known[n]]
        facts = CycleFacts(True, restarted, sides, result.payments, result.balance_before, [])
        result.outcome, reasons = judge(facts)
        if result.fired is None:
            result.outcome = ERROR  # lightningd died of something other than the armed fault
        result.reasons = result.reasons + [r for r in reasons if r not in result.reasons]
        lap("judge")
        self._check_network(network)

    @staticmethod
    def _records_in(trace: Path | None) -> int:
        try:
            return len(trace_records(str(trace))) if trace is not None else 0
        except (OSError, TraceFormatError):
            return 0

    @staticmethod
    def _fault_of(trace: Path | None, dbid: int, rule: str) -> FiredFault | None:
        if trace is None:
            return None
        try:
            records = trace_records(str(trace))
        except (OSError, TraceFormatError):
            return None
        return next((f for f in fired_faults(records, dbid) if f.rule == rule), None)

    @staticmethod
    def _reconnect(network: Network, name: str, timeout: float) -> None:
        """The restarted node connects to its peer (the peer may be reconnecting at the same time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                network.connect(name)
                return
            except Exception:
                time.sleep(0.1)
