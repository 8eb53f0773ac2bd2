"""Crash sweeps against real Core Lightning (chaos/cln, ``hsmproxy chaos --lightningd``).

The sans-IO parts (crash points, trace reading, judging, reports) and the command's errors are
tested always and fast; the sweep itself needs lightningd, bitcoind and pyln-testing
(tests/cln.py says how to get them) and is skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from xml.etree import ElementTree

import pytest
from rich.console import Console

import wire
from chaos import report
from chaos.cln import network as cln_network
from chaos.cln.judge import (
    AFTER_RESTART, COMPLETE, CONVERGED, DRIVE, FAIL, FAILED, FULFIL, INVARIANT_VIOLATED, NOT_REACHED, PENDING, STUCK,
    ChannelView, CycleFacts, Payment, judge,
)
from chaos.cln.points import CrashPoint, CrashPointError, parse_selector, select_points, sweep_points
from chaos.cln.result import CycleResult
from chaos.cln.sweep import SweepReport, replay_command
from chaos.cln.traces import FiredFault, channel_requests, fired_faults
from faults.plan import POINTS, parse_one_line
from tests.cln import BITCOIND, LIGHTNINGD, cln_env, needs_cln
from tests.paths import CHANNELD_EXCHANGES, ROOT

WINDOW = "hsmd_sign_remote_commitment_tx@reply.before_forward:l1"


# ---- crash points -------------------------------------------------------------------------------

def test_a_cycle_spec_names_message_point_and_node_and_takes_the_usual_aliases():
    full = parse_selector(WINDOW)
    assert full.exact == CrashPoint("l1", "hsmd_sign_remote_commitment_tx", "reply.before_forward")
    assert full.exact.spec == WINDOW
    short = parse_selector("sign_remote_commitment_tx@reply:2")
    assert (short.message, short.point, short.node) == ("hsmd_sign_remote_commitment_tx", "reply.before_forward", "l2")
    every_l2 = parse_selector("*@*:l2")
    assert every_l2.message is None and every_l2.point is None and every_l2.node == "l2"
    both_nodes = parse_selector("hsmd_revoke_commitment_tx@replied")
    assert both_nodes.node is None and both_nodes.point == "reply.after_forward"


@pytest.mark.parametrize("text,said", [
    ("hsmd_sign_remote_comitment_tx@reply:l1", "did you mean hsmd_sign_remote_commitment_tx"),
    ("hsmd_sign_tx_reply@reply:l1", "not a request hsmd receives"),
    ("hsmd_sign_remote_commitment_tx@later:l1", "unknown point 'later'"),
    ("hsmd_sign_remote_commitment_tx@reply:l3", "unknown node 'l3'"),
    ("@reply:l1", "give MESSAGE[@POINT][:NODE]"),
])
def test_a_bad_cycle_spec_says_what_is_wrong(text, said):
    with pytest.raises(CrashPointError) as caught:
        parse_selector(text)
    assert said in str(caught.value) and text in str(caught.value)


def test_the_sweep_is_every_request_of_each_node_at_the_four_points_and_selectors_pick_from_it():
    requests = {"l1": ["hsmd_sign_remote_commitment_tx", "hsmd_validate_revocation"], "l2": ["hsmd_validate_commitment_tx"]}
    every = sweep_points(requests)
    assert len(every) == 3 * 4
    assert every[:4] == [CrashPoint("l1", "hsmd_sign_remote_commitment_tx", p) for p in POINTS]
    assert select_points(requests, []) == every
    assert select_points(requests, [parse_selector("*@reply:*")]) == [
        CrashPoint("l1", "hsmd_sign_remote_commitment_tx", "reply.before_forward"),
        CrashPoint("l1", "hsmd_validate_revocation", "reply.before_forward"),
        CrashPoint("l2", "hsmd_validate_commitment_tx", "reply.before_forward"),
    ]
    # A replay names a cycle exactly: it runs even if this session's warm-up did not see it.
    unseen = select_points(requests, [parse_selector("hsmd_sign_penalty_to_us@sent:l2")])
    assert unseen == [CrashPoint("l2", "hsmd_sign_penalty_to_us", "request.after_forward")]
    # Selectors that overlap run each cycle once.
    twice = select_points(requests, [parse_selector("*@*:l2"), parse_selector("hsmd_validate_commitment_tx@req:l2")])
    assert len(twice) == 4


@pytest.mark.parametrize("point", POINTS)
def test_the_fault_rule_of_a_crash_point_is_kill_node_at_that_point_on_the_channel(point):
    cp = CrashPoint("l2", "hsmd_validate_revocation", point)
    [rule] = parse_one_line(cp.fault_line(dbid=7, name="sweep-3"))
    assert (rule.name, rule.action, rule.point, rule.dbid, rule.role) == ("sweep-3", "kill-node", point, 7, "client")
    assert rule.request_types == frozenset({wire.lookup("hsmd_validate_revocation").type})


def test_the_replay_command_runs_exactly_that_cycle():
    cp = CrashPoint("l1", "hsmd_sign_remote_commitment_tx", "reply.before_forward")
    line = replay_command(("--lightningd", "/opt/cln/bin/lightningd", "--bitcoind", "/usr/bin/bitcoind"), cp)
    assert line == ("hsmproxy chaos --lightningd /opt/cln/bin/lightningd --bitcoind /usr/bin/bitcoind "
                    f"--cycle {WINDOW}")
    assert parse_selector(line.split("--cycle ")[1]).exact == cp


# ---- traces -------------------------------------------------------------------------------------

def _exchanges() -> dict[str, bytes]:
    data = json.loads(CHANNELD_EXCHANGES.read_text())
    return {e["name"]: bytes.fromhex(e["request"]) for e in data["exchanges"]}


def _frame(raw: bytes, seq: int, t: int, *, dbid=1, role="client", conn_id=5) -> dict:
    return {"kind": "frame", "dir": "request", "seq": seq, "t": t, "raw": raw,
            "conn": {"conn_id": conn_id, "role": role, "dbid": dbid}}


def test_the_requests_of_a_channel_are_read_from_a_trace_in_the_order_first_seen():
    real = _exchanges()
    records = [
        {"kind": "header", "format": "hsmproxy-trace", "version": 1, "t": 0},
        _frame(real["hsmd_check_outpoint"], 1, 10),  # before the warm-up: left out
        _frame(real["hsmd_sign_remote_commitment_tx"], 2, 100),
        _frame(real["hsmd_validate_revocation"], 3, 110),
        _frame(real["hsmd_sign_remote_commitment_tx"], 4, 120),
        _frame(real["hsmd_validate_commitment_tx"], 5, 130, dbid=2),  # another channel
        _frame(real["hsmd_revoke_commitment_tx"], 6, 140, role="master", dbid=None),  # not channeld
        {"kind": "frame", "dir": "request", "seq": 7, "t": 150, "raw": None, "redacted": True,
         "conn": {"conn_id": 5, "role": "client", "dbid": 1}, "msg": {"name": "hsmd_sign_penalty_to_us", "fields": {}}},
        {"kind": "frame", "dir": "reply", "seq": 7, "t": 151, "raw": b"\x00\x0c", "conn": {"role": "client", "dbid": 1}},
    ]
    assert channel_requests(records, dbid=1, since_ns=100) == [
        "hsmd_sign_remote_commitment_tx", "hsmd_validate_revocation", "hsmd_sign_penalty_to_us"]


def test_the_fired_fault_knows_the_commitment_of_the_request_it_hit_even_before_its_frame():
    real = _exchanges()
    commit_num = wire.decode(real["hsmd_sign_remote_commitment_tx"]).fields["commit_num"]
    fault = {"kind": "fault", "event": {"rule": "sweep-1", "action": "kill-node", "point": "request.before_forward",
                                        "connection": "client:1:02ab#1", "seq": 4, "message": "hsmd_sign_remote_commitment_tx"}}
    records = [
        _frame(real["hsmd_validate_revocation"], 4, 1, conn_id=3),  # an earlier connection, same seq
        fault,  # at request.before_forward the fault is recorded before the frame
        _frame(real["hsmd_sign_remote_commitment_tx"], 4, 2, conn_id=8),
    ]
    assert fired_faults(records, dbid=1) == [
        FiredFault("sweep-1", "kill-node", "request.before_forward", "hsmd_sign_remote_commitment_tx", 4, commit_num)]


# ---- judging ------------------------------------------------------------------------------------

TOTAL = 1_000_000_000


def _side(node: str, to_us: int, state="CHANNELD_NORMAL", htlcs=()) -> ChannelView:
    return ChannelView(node, state, True, to_us, TOTAL, list(htlcs))


def _pay(payer, amount, status, kind=FULFIL, phase=DRIVE, invoice=None, **kw) -> Payment:
    payee = "l2" if payer == "l1" else "l1"
    if invoice is None and kind == FULFIL:
        invoice = "paid" if status == COMPLETE else "unpaid"
    return Payment(payer, payee, amount, kind, phase, "00" * 32, status=status, invoice_status=invoice, **kw)


def _facts(payments, l1, l2, *, before=(600_000_000, 400_000_000), sides=None) -> CycleFacts:
    return CycleFacts(True, True, sides or [_side("l1", l1), _side("l2", l2)], payments,
                      {"l1": before[0], "l2": before[1]})


def test_a_cycle_converges_when_the_channel_is_back_payments_resolved_and_the_ledger_adds_up():
    payments = [_pay("l1", 1_000_000, FAILED, interrupted=True), _pay("l1", 2_000_000, COMPLETE, phase=AFTER_RESTART),
                _pay("l2", 1_500_000, COMPLETE, phase=AFTER_RESTART)]
    assert judge(_facts(payments, 599_500_000, 400_500_000)) == (CONVERGED, [])


def test_a_payment_pending_with_no_htlc_left_is_stuck():
    payments = [_pay("l1", 1_000_000, PENDING, interrupted=True, stranded=True),
                _pay("l1", 2_000_000, COMPLETE, phase=AFTER_RESTART)]
    outcome, reasons = judge(_facts(payments, 598_000_000, 402_000_000))
    assert outcome == STUCK
    assert reasons == ["drive payment l1->l2 1000000 msat (fulfil) still pending with no HTLC in flight on either "
                       "side: nothing is left that could complete or fail it"]


def test_a_channel_not_back_or_htlcs_in_flight_are_stuck_and_the_sum_is_not_judged_while_htlcs_fly():
    outcome, reasons = judge(_facts([], 0, 0, sides=[_side("l1", 0, "CHANNELD_AWAITING_LOCKIN"),
                                                   _side("l2", 0, htlcs=[{"direction": "in", "amount_msat": 5, "state": "X"}])]))
    assert outcome == STUCK
    assert reasons[0] == "l1: channel CHANNELD_AWAITING_LOCKIN" and "1 HTLC(s) still in flight" in reasons[1]
    assert not any("add up" in r for r in reasons)


def test_balances_that_do_not_add_up_or_move_without_a_payment_violate_the_ledger():
    outcome, reasons = judge(_facts([], 600_000_000, 399_999_000))
    assert outcome == INVARIANT_VIOLATED
    assert "balances do not add up: l1 600000000 + l2 399999000 = 999999000 msat, the channel holds 1000000000" in reasons
    moved = judge(_facts([_pay("l1", 1_000_000, FAILED)], 599_000_000, 401_000_000))
    assert moved[0] == INVARIANT_VIOLATED
    assert moved[1] == ["l1's balance is 599000000 msat; the completed payments say 600000000 (off by -1000000)",
                        "l2's balance is 401000000 msat; the completed payments say 400000000 (off by +1000000)"]


def test_payer_and_payee_must_agree_and_a_hash_nobody_knows_cannot_complete():
    disagree = _pay("l1", 1_000_000, FAILED, invoice="paid")
    impossible = _pay("l2", 1_000_000, COMPLETE, kind=FAIL)
    outcome, reasons = judge(_facts([disagree, impossible], 601_000_000, 399_000_000))
    assert outcome == INVARIANT_VIOLATED
    assert "the payer says failed, the payee's invoice is paid" in reasons[0]
    assert "completed although nobody knows its preimage" in reasons[1]


def test_a_fault_that_never_fired_is_not_reached_and_a_payment_after_the_restart_must_complete():
    assert judge(CycleFacts(False, True, [], [], {}))[0] == NOT_REACHED
    failed_after = [_pay("l2", 1_500_000, FAILED, phase=AFTER_RESTART)]
    outcome, reasons = judge(_facts(failed_after, 600_000_000, 400_000_000))
    assert outcome == STUCK and "did not complete after the restart: failed" in reasons[0]
    assert judge(CycleFacts(True, False, [], [], {}))[0] == STUCK


# ---- reports ------------------------------------------------------------------------------------

def _result(outcome=CONVERGED, divergences=(), **kw) -> CycleResult:
    cp = CrashPoint("l1", "hsmd_sign_remote_commitment_tx", "reply.before_forward")
    return CycleResult(cp.message, cp.point, cp.node, outcome, replay_command(("--lightningd", "L"), cp),
                       divergences=list(divergences), fired=FiredFault("sweep-1", "kill-node", cp.point,
                                                                       "hsmd_sign_tx_reply", 40, 9), **kw)


DOUBLE = [{"node": "l1", "kind": "retry_changed", "status": "confirmed", "dbid": 1, "index": 9, "detail": "x"},
          {"node": "l1", "kind": "double_signed", "status": "confirmed", "dbid": 1, "index": 9, "detail": "y"}]


def test_the_json_report_has_one_run_per_cycle_with_the_fields_campaigns_use():
    stuck = _result(STUCK, DOUBLE, reasons=["drive payment ... still pending"],
                    payments=[_pay("l1", 1_000_000, PENDING, interrupted=True, stranded=True)])
    fine = _result(CONVERGED, [{"node": "l2", "kind": "double_signed", "status": "refuted", "dbid": 1, "index": 3,
                                "detail": ""},
                               {"node": "l2", "kind": "crashed_in_window", "status": "resolved", "dbid": 1,
                                "index": 4, "detail": ""}])
    sweep = SweepReport([stuck, fine], {"l1": ["hsmd_sign_remote_commitment_tx"]}, 12.0, 20.0, 8.0, "/tmp/x",
                        "v26.06.6", {"dbid": {"l1": 1, "l2": 1}})
    data = report.sweep_report_json(sweep, {"command": "hsmproxy chaos --lightningd L"})
    assert data["kind"] == "cln-sweep" and data["version"] == report.REPORT_VERSION
    assert data["summary"]["cycles"] == 2 and data["summary"]["failed"] == 1
    assert data["summary"]["outcomes"]["stuck"] == 1 and data["summary"]["cycles_per_s"] == 0.25
    first = data["runs"][0]
    assert {k: first[k] for k in ("message", "point", "node", "outcome", "divergence_kinds")} == {
        "message": "hsmd_sign_remote_commitment_tx", "point": "reply.before_forward", "node": "l1",
        "outcome": "stuck", "divergence_kinds": ["retry_changed", "double_signed"]}
    assert first["replay"].endswith(f"--cycle {WINDOW}") and first["ok"] is False
    assert first["fired"]["index"] == 9 and first["payments"][0]["stranded"] is True
    assert "killed after hsmd answered, before channeld saw the reply to hsmd_sign_remote_commitment_tx " \
           "(commitment 9)" in first["what_happened"]
    assert data["runs"][1]["divergence_kinds"] == []  # a refuted prediction, a harmless crash: none
    assert len(data["runs"][1]["divergences"]) == 2  # but both are listed
    json.dumps(data)


def test_fail_on_fails_a_converged_cycle_with_a_confirmed_divergence_of_those_kinds():
    assert _result(CONVERGED, DOUBLE).ok
    assert not _result(CONVERGED, DOUBLE, fail_on=frozenset({"double_signed"})).ok
    assert _result(CONVERGED, DOUBLE, fail_on=frozenset({"index_regressed"})).ok


def test_junit_has_a_testcase_per_cycle_and_a_failure_with_the_replay_command():
    results = [_result(STUCK, DOUBLE, reasons=["payment stuck"]), _result(CONVERGED)]
    suite = ElementTree.fromstring(report.sweep_junit_xml(results))
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert cases[0].get("classname") == "chaos.cln-sweep.l1"
    assert cases[0].get("name") == "hsmd_sign_remote_commitment_tx@reply.before_forward"
    failure = cases[0].find("failure")
    assert failure.get("type") == "stuck" and f"--cycle {WINDOW}" in failure.text
    assert cases[1].find("failure") is None


def test_the_table_shows_each_cycle():
    sweep = SweepReport([_result(STUCK, DOUBLE, payments=[_pay("l1", 1_000_000, PENDING, interrupted=True)])],
                        {}, 1.0, 2.0, 1.0, None)
    console = Console(width=200, record=True)
    console.print(report.sweep_final_view(sweep))
    text = console.export_text()
    assert "sign_remote_commitment_tx" in text and "fulfil l1->l2: pending" in text
    assert "retry_changed(confirmed), double_signed(confirmed)" in text and "cycles that did not converge" in text


# ---- finding what the sweep needs ---------------------------------------------------------------

def _fake(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_binaries_come_from_options_then_environment_then_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ld, bd = _fake(bin_dir, "lightningd"), _fake(bin_dir, "bitcoind")
    _fake(bin_dir, "bitcoin-cli")
    _fake(bin_dir, "lightning_hsmd")
    found = cln_network.find_binaries(environ={"PATH": str(bin_dir)})
    assert (str(found.lightningd), str(found.bitcoind), found.signer.name) == (ld, bd, "lightning_hsmd")
    with pytest.raises(cln_network.SweepSetupError, match="bitcoind not found: give --bitcoind PATH, set \\$BITCOIND"):
        cln_network.find_binaries(ld, environ={"PATH": str(tmp_path)})
    with pytest.raises(cln_network.SweepSetupError, match="LIGHTNINGD='/nope' is not an executable file"):
        cln_network.find_binaries(environ={"PATH": str(bin_dir), "LIGHTNINGD": "/nope"})
    other = _fake(tmp_path, "remote_hsmd_socket")
    assert str(cln_network.find_binaries(signer=other, environ={"PATH": str(bin_dir)}).signer) == other
    with pytest.raises(cln_network.SweepSetupError, match="--signer '/nope' is not an executable file"):
        cln_network.find_binaries(signer="/nope", environ={"PATH": str(bin_dir)})
    (bin_dir / "lightning_hsmd").unlink()
    with pytest.raises(cln_network.SweepSetupError, match="no lightning_hsmd beside .* give it with --signer PATH"):
        cln_network.find_binaries(environ={"PATH": str(bin_dir)})


def test_without_pyln_testing_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyln.testing", None)
    for name in ("TEST_NETWORK", "RUST"):  # load_pyln sets them for pyln-testing: restored afterwards
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    with pytest.raises(cln_network.SweepSetupError, match=r"pip install 'hsmproxy\[cln\]'"):
        cln_network.load_pyln()


def _hsmproxy(*args: str, env: dict | None = None, timeout: float = 60, left: list | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in its own process group; whatever it leaves behind (on a timeout too) is killed,
    after being listed in ``left`` (processes whose command line mentions ``left[0]``)."""
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "hsmproxy.cli", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        if left:
            left[1:] = _processes_mentioning(left[0])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_a_missing_lightningd_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIGHTNINGD", "BITCOIND")}
    env["PATH"] = str(tmp_path)  # nothing there
    done = _hsmproxy("chaos", "--lightningd", env=env)
    assert done.returncode == 2
    assert "lightningd not found: give --lightningd PATH, set $LIGHTNINGD, or put it on PATH" in done.stderr
    done = _hsmproxy("chaos", "--lightningd", str(tmp_path / "lightningd"), env=env)
    assert done.returncode == 2 and "is not an executable file" in done.stderr
    assert "Traceback" not in done.stderr


def test_options_of_simulated_sessions_are_refused_with_a_sweep(tmp_path):
    done = _hsmproxy("chaos", "--lightningd", "--discipline", "naive", "--signer-policy", "warn", "--seeds", "1..3")
    assert done.returncode == 2
    assert "--seeds, --discipline, --signer-policy do not apply to a crash sweep" in done.stderr
    done = _hsmproxy("chaos", "--cycle", "hsmd_sign_remote_commitment_tx@reply:l9")
    assert done.returncode == 2 and "unknown node 'l9'" in done.stderr


# ---- against real Core Lightning ----------------------------------------------------------------

# The write-up's window; a request channeld never makes (hsmd_sign_invoice is lightningd's own), whose
# rule must be taken out again; then two more crash points on either node.
NEVER_SENT = "hsmd_sign_invoice@request.before_forward:l2"
SHORT_SWEEP = [WINDOW, NEVER_SENT, "hsmd_validate_commitment_tx@request.after_forward:l2",
               "hsmd_revoke_commitment_tx@reply.before_forward:l1"]


@needs_cln
def test_a_short_sweep_against_real_lightningd_flags_the_write_ups_double_signature(tmp_path):
    env = cln_env()
    out, junit, html, workdir = tmp_path / "sweep.json", tmp_path / "sweep.xml", tmp_path / "sweep.html", tmp_path / "w"
    args = ["chaos", "--lightningd", str(LIGHTNINGD), "--bitcoind", str(BITCOIND), "--json", str(out),
            "--junit", str(junit), "--html", str(html), "--workdir", str(workdir), "--keep", "all"]
    for spec in SHORT_SWEEP:
        args += ["--cycle", spec]
    left = [str(workdir)]
    done = _hsmproxy(*args, env=env, timeout=600, left=left)
    assert done.returncode in (0, 1), done.stderr[-4000:]
    assert left[1:] == []  # both nodes, bitcoind and every proxy are gone when the command returns
    data = json.loads(out.read_text())
    assert data["kind"] == "cln-sweep" and data["lightningd_version"].startswith("v")
    assert set(data["requests"]["l1"]) >= {"hsmd_sign_remote_commitment_tx", "hsmd_validate_commitment_tx",
                                           "hsmd_revoke_commitment_tx", "hsmd_validate_revocation"}
    runs = data["runs"]
    assert [f"{r['message']}@{r['point']}:{r['node']}" for r in runs] == SHORT_SWEEP
    assert done.returncode == 1  # not_reached is not a pass
    never = runs.pop(1)
    assert never["outcome"] == "not_reached" and never["fired"] is None and not never["ok"]
    assert [p["status"] for p in never["payments"]] == ["complete", "complete", "failed", "failed"]
    for r in runs:
        assert r["fired"] is not None and r["fired"]["action"] == "kill-node", r
        assert r["outcome"] in ("converged", "stuck"), r  # what Core Lightning did; never the sweep's own error
        assert r["replay"].endswith(f"--cycle {r['message']}@{r['point']}:{r['node']}")
        assert all(side["state"] == "CHANNELD_NORMAL" and not side["htlcs"] for side in r["channel"]), r
        assert sum(side["to_us_msat"] for side in r["channel"]) == data["channel"]["funding_msat"]
        assert [p["status"] for p in r["payments"] if p["phase"] == "after_restart"] == ["complete", "complete"]
        assert all(os.path.exists(trace) for trace in r["traces"]) and len(r["traces"]) == 2
    window = runs[0]
    # The write-up's window on real software: lightningd died after hsmd signed commitment N and
    # before it saw the signature; after the restart it signed N again with another HTLC, and
    # stock hsmd signed both. The proxy flags it, confirmed.
    flagged = {(d["node"], d["kind"], d["status"]) for d in window["divergences"]}
    assert {("l1", "retry_changed", "confirmed"), ("l1", "double_signed", "confirmed")} <= flagged, window
    assert {d["index"] for d in window["divergences"]} == {window["fired"]["index"]}
    assert {"retry_changed", "double_signed"} <= set(window["divergence_kinds"])
    for other in runs[1:]:  # a crash in the window there is at most a warning, and harmless
        assert set(other["divergence_kinds"]) <= {"crashed_in_window"}, other
        assert not [d for d in other["divergences"] if d["status"] == "confirmed"], other
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "4"
    # The HTML report: a section per cycle; each cycle whose fault fired has its critical window
    # drawn from the real proxy traces, the write-up's window with the changed re-sign in it.
    page = html.read_text()
    sections = re.split(r'<details class="run" id="cycle-\d+"', page)[1:]
    assert len(sections) == 4
    assert 'class="diagram"' not in sections[1]  # nothing fired: nothing to draw
    for section in sections[:1] + sections[2:]:
        assert 'class="diagram"' in section and "<svg" in section and "kill-node" in section
    assert "retry_changed" in sections[0] and "sign_remote_commitment_tx" in sections[0]
    assert (workdir.exists() and any(workdir.rglob("lightning-1/log")))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@needs_cln
def test_sigterm_stops_a_sweep_and_leaves_no_process_behind(tmp_path):
    workdir = tmp_path / "w"
    env = cln_env()
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "hsmproxy.cli", "chaos", "--lightningd", str(LIGHTNINGD),
                             "--bitcoind", str(BITCOIND), "--workdir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        for line in proc.stderr:  # until the first crash cycle is done
            if "[1/" in line:
                break
        proc.terminate()
        assert proc.wait(timeout=120) == 130
        assert _processes_mentioning(str(workdir)) == []
        said = proc.stderr.read()
        assert "hsmproxy chaos: interrupted: " in said and "Traceback" not in said
        assert "the sweep's directory was removed (--keep all keeps it)" in said
        assert list(workdir.iterdir()) == []  # a stopped sweep has no verdict: nothing kept
    finally:
        try:  # whatever the sweep left (its process group) goes, pass or fail
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
