"""The sans-IO half of chaos sessions: schedules, evidence, invariants, outcomes, reports, plumbing."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from xml.etree import ElementTree

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

import wire
from chaos import campaign
from chaos import report
from chaos import schedule
from chaos.evidence import (InjectedFault, Incarnation, RunEvidence, SignedCommitment, signer_channels_from_records,
                            trace_facts)
from chaos.judge import check_invariants, classify, funds_lost_msat
from chaos.result import fault_trace_hash, judge_run
from chaos.runner import Runner, RunSpec
from chaos.scenarios import BUILTIN, CONVERGED, FUNDS_LOST, INVARIANT_VIOLATED, REFUSED, STUCK, WARN, scenario_named
from chaos.session import Session
from faults.engine import FaultEngine, FaultEvent
from faults.plan import parse_one_line
from hsmproxy.commands import chaos as chaos_command
from proxy.addons.fault_hook import FaultHook
from proxy.addons.fault_runtime import FaultRuntime
from proxy.addons.trace import TraceHook, read_trace
from proxy.core.hooks import ConnContext, Exchange
from sim.node import NAIVE, WAL
from sim.policy import EnforcementState
from sim.signer_core import ChannelRecord
from tests.paths import CHANNELD_EXCHANGES

FIXTURE = str(CHANNELD_EXCHANGES)
H1, H2 = "11" * 32, "22" * 32


# --- schedules ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**40))
def test_every_schedule_is_a_valid_plan_with_a_crash(seed):
    faults = schedule.schedule_for(seed)
    assert faults == schedule.schedule_for(seed)  # a seed names one schedule
    assert 1 <= len(faults) <= 3 and faults[0].crashes
    rules = parse_one_line(schedule.plan_line(faults))  # the proxy's own plan parser accepts it
    assert [r.name for r in rules] == [f.name for f in faults]
    assert [r.action for r in rules] == [f.action for f in faults]


def test_schedules_cover_every_crash_action_and_point():
    seen = {(f.action, f.point) for s in range(400) for f in schedule.schedule_for(s)}
    for action in schedule.CRASHES:
        assert {p for a, p in seen if a == action} == set(schedule.POINTS), action
    assert {a for a, _ in seen} == set(schedule.ACTIONS)
    window = sum(1 for s in range(400) if schedule.schedule_for(s)[0].line().startswith("!hsmd_sign_remote_commitment_tx")
                 and schedule.schedule_for(s)[0].point == "reply")
    assert 100 <= window <= 170  # about a third of the seeds open the write-up's crash window


# --- seeds and shards --------------------------------------------------------------------------

def test_parse_seeds_and_errors():
    assert campaign.parse_seeds("1..50") == range(1, 51)
    assert campaign.parse_seeds("17") == range(17, 18)
    for bad in ("", "a..b", "5..1", "1..", "-3..4"):
        with pytest.raises(ValueError, match="--seeds"):
            campaign.parse_seeds(bad)


@given(st.integers(0, 1000), st.integers(0, 300), st.integers(1, 9))
def test_shards_are_disjoint_and_cover_the_range(first, width, n):
    seeds = range(first, first + width)
    parts = [campaign.shard_seeds(seeds, (i, n)) for i in range(1, n + 1)]
    flat = sorted(s for p in parts for s in p)
    assert flat == list(seeds)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_parse_shard_errors():
    assert campaign.parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "1/0", "x", "1-4"):
        with pytest.raises(ValueError, match="--shard"):
            campaign.parse_shard(bad)


# --- evidence of the three stories, judged ------------------------------------------------------

def _ev(**kw) -> RunEvidence:
    base = dict(scenario="honest-crash", seed=0, discipline=NAIVE, attacker=False, validating=True,
                signer_policy="enforce", incarnations=[Incarnation(0, -9), Incarnation(1, 1)])
    base.update(kw)
    return RunEvidence(**base)


def _div(kind, status):
    return {"kind": kind, "status": status, "dbid": 1, "index": 1, "detail": ""}


def _sc(index, digest, *htlcs, inc=0):
    return SignedCommitment(1, index, digest, tuple(htlcs), inc)


KILL = FaultEvent("crash-window", "kill-node", "reply.before_forward", "client:1:02aa", 3, "hsmd_sign_tx_reply")


def test_honest_crash_with_validating_signer_is_stuck():
    ev = _ev(divergences=[_div("crashed_in_window", "confirmed"), _div("retry_changed", "confirmed"),
                          _div("double_signed", "refuted"), _div("signer_rejected", "confirmed")],
             signer_rejections=["policy-commitment-retry-same"], node_stuck=True,
             signed=[_sc(0, "a0"), _sc(1, "a1", (H1, 5000))])
    ev.incarnations[0].faults.append(KILL)
    result = judge_run(ev, BUILTIN["honest-crash"].expectation(True), "hsmproxy chaos --scenario honest-crash", "sim")
    assert (result.outcome, result.misses, result.ok) == (STUCK, [], True)
    assert "double_signed" not in result.divergence_kinds  # refuted: the signer did not sign twice


def test_honest_crash_with_stock_hsmd_shows_double_signed():
    ev = _ev(validating=False, workload_done=True, divergences=[_div("crashed_in_window", "confirmed"),
                                                                _div("retry_changed", "confirmed"),
                                                                _div("double_signed", "confirmed")],
             signed=[_sc(1, "a1", (H1, 5000)), _sc(1, "b1", (H1, 5000), (H2, 7000), inc=1)])
    result = judge_run(ev, BUILTIN["honest-crash"].expectation(False), "r", "lightning_hsmd")
    assert result.outcome == CONVERGED and result.ok  # an honest peer steals nothing; the window is open
    assert "double_signed" in result.divergence_kinds


def test_pretend_crash_warn_loses_h2_and_enforce_refuses():
    signed_twice = [_sc(1, "a1", (H1, 5_000_000)), _sc(1, "b1", (H1, 5_000_000), (H2, 7_000_000))]
    ev = _ev(scenario="pretend-crash", attacker=True, signer_policy=WARN, signed=signed_twice,
             divergences=[_div("retry_changed", "confirmed"), _div("double_signed", "confirmed")])
    assert funds_lost_msat(ev) == 7_000_000
    result = judge_run(ev, BUILTIN["pretend-crash"].expectation(True, WARN), "r", "sim")
    assert (result.outcome, result.funds_lost_msat, result.ok) == (FUNDS_LOST, 7_000_000, True)

    refused = _ev(scenario="pretend-crash", attacker=True, signed=signed_twice[:1],
                  signer_rejections=["policy-commitment-retry-same"],
                  divergences=[_div("retry_changed", "confirmed"), _div("double_signed", "refuted")])
    result = judge_run(refused, BUILTIN["pretend-crash"].expectation(True), "r", "sim")
    assert (result.outcome, result.funds_lost_msat, result.ok) == (REFUSED, 0, True)


def test_enforcing_signer_that_signs_twice_violates_an_invariant():
    ev = _ev(scenario="pretend-crash", attacker=True, signed=[_sc(1, "a1", (H1, 5)), _sc(1, "b1", (H1, 5), (H2, 7))])
    violations = check_invariants(ev)
    assert [v.invariant for v in violations] == ["enforcing-signer-never-double-signs"]
    assert classify(ev, violations, funds_lost_msat(ev)) == INVARIANT_VIOLATED


RESOLVED_CRASH = _div("crashed_in_window", "resolved")


def test_wal_fix_converges_and_a_stuck_or_diverging_wal_node_is_a_violation():
    ok = _ev(scenario="wal-fix", discipline=WAL, workload_done=True, signed=[_sc(1, "a1"), _sc(1, "a1", inc=1)],
             divergences=[RESOLVED_CRASH])
    assert check_invariants(ok) == [] and judge_run(ok, BUILTIN["wal-fix"].expectation(True), "r", "sim").ok
    stuck = replace(ok, workload_done=False, node_stuck=True)
    assert [v.invariant for v in check_invariants(stuck)] == ["wal-node-never-stuck"]
    diverged = replace(ok, divergences=[_div("index_regressed", "confirmed"), _div("double_signed", "refuted")])
    assert [v.invariant for v in check_invariants(diverged)] == ["wal-node-never-diverges"]
    failed = judge_run(diverged, BUILTIN["wal-fix"].expectation(True), "hsmproxy chaos --scenario wal-fix", "sim")
    assert failed.outcome == INVARIANT_VIOLATED and not failed.ok


def test_the_crash_in_the_window_is_expected_in_both_crash_stories():
    wal = BUILTIN["wal-fix"].expectation(True)
    base = _ev(scenario="wal-fix", discipline=WAL, workload_done=True)
    # Not flagged at all, or never resolved: the story did not show what it promises.
    assert judge_run(base, wal, "r", "sim").misses == ["no crashed_in_window divergence flagged and resolved"]
    still_open = replace(base, divergences=[_div("crashed_in_window", "possible")])
    assert check_invariants(still_open) == []  # a crash the node has not come back from says nothing of its WAL
    assert "no crashed_in_window divergence flagged and resolved" in judge_run(still_open, wal, "r", "sim").misses
    # The WAL node came back and re-signed differently: that is a divergence of the node.
    lost = replace(base, divergences=[_div("crashed_in_window", "confirmed")])
    assert [v.invariant for v in check_invariants(lost)] == ["wal-node-never-diverges"]
    resolved = judge_run(replace(base, divergences=[RESOLVED_CRASH]), wal, "r", "sim")
    assert resolved.ok and "the proxy flagged crashed_in_window (resolved)" in report.narrate(resolved)

    honest = BUILTIN["honest-crash"].expectation(True)
    ev = _ev(divergences=[_div("retry_changed", "confirmed"), _div("double_signed", "refuted"),
                          _div("signer_rejected", "confirmed")],
             signer_rejections=["policy-commitment-retry-same"], node_stuck=True)
    assert judge_run(ev, honest, "r", "sim").misses == ["no crashed_in_window divergence flagged"]
    ev = replace(ev, divergences=[_div("crashed_in_window", "confirmed"), *ev.divergences])
    result = judge_run(ev, honest, "r", "sim")
    assert result.ok and "flagged crashed_in_window, retry_changed, signer_rejected;" in report.narrate(result)


def test_shadow_must_equal_signer_state():
    signer = signer_channels_from_records([ChannelRecord(bytes.fromhex("02" * 33), 1, policy_state=EnforcementState(
        next_holder_commit_num=2, next_counterparty_commit_num=3, next_counterparty_revoke_num=1,
        current_counterparty_point=bytes.fromhex("03" * 33)))])
    assert signer == {1: {"next_counterparty_commit_num": 3, "next_counterparty_revoke_num": 1,
                          "next_holder_commit_num": 2, "current_counterparty_point": "03" * 33}}
    shadow = {1: {"next_counterparty_commit_num": 3, "next_counterparty_revoke_num": 1, "next_holder_commit_num": None}}
    assert check_invariants(_ev(shadow_channels=shadow, signer_channels=signer, node_stuck=True)) == []
    behind = {1: dict(shadow[1], next_counterparty_commit_num=2)}
    (v,) = check_invariants(_ev(shadow_channels=behind, signer_channels=signer))
    assert v.invariant == "shadow-equals-signer" and "next_counterparty_commit_num" in v.detail


def test_unanswered_requests_must_be_explained_by_a_fault():
    lost = {"incarnation": 1, "conn_id": 4, "seq": 2, "message": "hsmd_validate_revocation", "verdict": "Forward",
            "replies": 0}
    ev = _ev(unanswered=[dict(lost, incarnation=0)])
    assert [v.invariant for v in check_invariants(ev)] == ["every-request-answered"]
    ev.incarnations[0].faults.append(KILL)  # in flight when the node was killed: accounted for
    assert check_invariants(ev) == []
    ev.unanswered.append(lost)  # incarnation 1 had no fault
    assert len(check_invariants(ev)) == 1
    # a duplicated request's extra reply answers the node's next request: that one is accounted for
    ev.incarnations[1].faults.append(replace(KILL, action="duplicate", point="request.before_forward"))
    assert check_invariants(ev) == []


def _args(*argv):
    parser = argparse.ArgumentParser()
    chaos_command.configure(parser)
    return chaos_command.build_specs(parser.parse_args(list(argv)))


def test_cli_builds_stories_campaigns_and_shards():
    stories = _args()
    assert [(s.scenario, s.signer_policy) for s in stories] == [
        ("honest-crash", "enforce"), ("pretend-crash", "enforce"), ("pretend-crash", "warn"), ("wal-fix", "enforce")]
    assert stories[2].reproduce == "hsmproxy chaos --scenario pretend-crash --seeds 1..1 --signer-policy warn"
    shard = _args("--seeds", "1..10", "--shard", "2/3", "--discipline", "naive")
    assert [s.seed for s in shard] == [2, 5, 8] and {s.discipline for s in shard} == {"naive"}
    assert shard[0].reproduce == "hsmproxy chaos --seeds 2..2 --discipline naive"
    assert shard[0].faults == tuple(f.line() for f in schedule.schedule_for(2))
    with pytest.raises(ValueError, match="--shard splits a seed range"):
        _args("--shard", "1/2")
    with pytest.raises(ValueError, match="external --signer keeps its own"):
        _args("--signer", "/bin/true", "--signer-policy", "warn")


# --- faults and the trace hash -------------------------------------------------------------------

def _sign_exchange():
    sign = next(e for e in _channeld() if e["name"] == "hsmd_sign_remote_commitment_tx")
    request, reply = bytes.fromhex(sign["request"]), bytes.fromhex(sign["reply"])
    return request, reply


async def test_injected_faults_come_back_from_the_trace(tmp_path):
    """The proxy's own pieces, wired as ``hsmproxy wrap --trace`` wires them: every fault the
    hook injects is a trace record, and the evidence reads back the very events the engine made."""
    engine = FaultEngine(parse_one_line("~hsmd_sign_remote_commitment_tx@sent name=slow ms=1; "
                                        "!hsmd_sign_remote_commitment_tx name=crash-window"), seed=7)
    runtime = FaultRuntime(engine, allowed=True)
    trace = TraceHook(str(tmp_path / "t.mp"))
    runtime.listeners.append(trace.fault)
    hook = FaultHook(runtime)  # no node pid: kill-node logs instead of signalling
    ctx = ConnContext(5, "client", peer_id=bytes.fromhex("02" + "ab" * 32), dbid=1, permissions=1, parent_id=0)
    request, reply = _sign_exchange()
    with trio.fail_after(10):
        await hook.on_connection(ctx, "opened")
        ex = Exchange(ctx, 0, request, wire.decode(request))
        for point in ("request.before_forward", "request.after_forward"):
            await hook.on_request(ex, point)
        ex.reply_raw, ex.reply = reply, wire.decode(reply)
        await hook.on_reply(ex, "reply.before_forward")
    trace.close()

    facts = trace_facts(list(read_trace(str(tmp_path / "t.mp"))), incarnation=2)
    assert facts.faults == engine.events and [f.rule for f in facts.faults] == ["slow", "crash-window"]
    assert [f.to_json() for f in RunEvidence("campaign", 7, WAL, False, True, "enforce",
                                             [Incarnation(2, -9, faults=facts.faults)]).faults] == [
        {"incarnation": 2, **engine.events[0].to_json()}, {"incarnation": 2, **engine.events[1].to_json()}]


def _runner(tmp_path) -> Runner:
    spec = RunSpec(scenario="campaign", seed=1, discipline=WAL, attacker=False, faults=(), updates=1, reproduce="r")
    return Runner(spec, tmp_path / "run")


def test_a_damaged_trace_keeps_the_faults_before_the_damage_and_is_a_runner_error(tmp_path):
    runner = _runner(tmp_path)
    trace = TraceHook(str(runner.dirs.trace(0)))
    trace.fault(KILL)
    trace.close()
    with open(runner.dirs.trace(0), "ab") as f:
        f.write(b"\xc1")  # never a msgpack byte
    ev = _ev(incarnations=[Incarnation(0, -9)])
    runner._read_trace(ev.incarnations[0], ev)
    assert ev.incarnations[0].faults == [KILL]  # it fired: its rule must not fire again
    assert len(ev.runner_errors) == 1 and "trace of incarnation 0" in ev.runner_errors[0]
    missing = Incarnation(1, -9)
    runner._read_trace(missing, ev)  # the proxy never started: no trace, no fault, no error
    assert missing.faults == [] and len(ev.runner_errors) == 1


def test_trace_hash_ignores_interleaving_across_connections_but_not_events():
    a = InjectedFault(0, FaultEvent("f1", "delay", "request.before_forward", "master", 1, "hsmd_init", "ms=3"))
    b = InjectedFault(0, FaultEvent("f2", "kill-node", "reply.before_forward", "client:1:02", 4,
                                    "hsmd_sign_remote_commitment_tx"))
    c = replace(b, event=replace(b.event, seq=5))
    assert fault_trace_hash([a, b], 7) == fault_trace_hash([b, a], 7)
    assert len({fault_trace_hash([a, b], 7), fault_trace_hash([a, c], 7), fault_trace_hash([a, b], 8),
                fault_trace_hash([a, replace(b, incarnation=1)], 7)}) == 4


def test_trace_hash_and_fault_json_keep_their_format():
    """Reports compare hashes across versions: the value for fixed faults must not change."""
    a = InjectedFault(0, FaultEvent("f1", "delay", "request.before_forward", "master", 1, "hsmd_init", "ms=3"))
    b = InjectedFault(1, FaultEvent("f2", "kill-node", "reply.before_forward", "client:1:02", 4, "hsmd_sign_tx_reply"))
    assert fault_trace_hash([a, b], 7) == "205e2c1b7cc0affb162f66ccaacd8bbb102f70195992d43cf9cd2d0972806352"
    assert list(a.to_json().items()) == [
        ("incarnation", 0), ("rule", "f1"), ("action", "delay"), ("point", "request.before_forward"),
        ("connection", "master"), ("seq", 1), ("message", "hsmd_init"), ("detail", "ms=3")]


# --- the proxy's real trace, read back -----------------------------------------------------------

def _channeld():
    with open(FIXTURE) as f:
        return json.load(f)["exchanges"]


def _with_htlcs(raw: bytes, htlcs) -> bytes:
    msg = wire.decode(raw)
    fields = dict(msg.fields, htlcs=htlcs)
    return wire.encode(wire.build(msg.name, **fields))


async def test_trace_facts_from_a_real_trace_file(tmp_path):
    """Write a trace with the proxy's TraceHook from real hsmd exchanges: commitment 1 signed
    twice with different HTLC sets, one request left unanswered, one refusal on the status socket."""
    sign = next(e for e in _channeld() if e["name"] == "hsmd_sign_remote_commitment_tx"
                and wire.decode(bytes.fromhex(e["request"])).fields["commit_num"] == 1)
    raw1, reply = bytes.fromhex(sign["request"]), bytes.fromhex(sign["reply"])
    h1 = wire.decode(raw1).fields["htlcs"][0]
    h2 = dict(h1, payment_hash=bytes(32), amount=7_000_000, side=1)
    raw2 = _with_htlcs(raw1, [h1, h2])
    ctx = ConnContext(5, "client", peer_id=bytes.fromhex("02" + "ab" * 32), dbid=1, permissions=1, parent_id=0)
    hook = TraceHook(str(tmp_path / "t.mp"))
    await hook.on_connection(ctx, "opened")
    for seq, raw in enumerate((raw1, raw2)):
        ex = Exchange(ctx, seq, raw, wire.decode(raw))
        await hook.on_request(ex, "request.before_forward")
        ex.reply_raw, ex.reply = reply, wire.decode(reply)
        await hook.on_reply(ex, "reply.before_forward")
    await hook.on_request(Exchange(ctx, 2, raw1, wire.decode(raw1)), "request.before_forward")  # no reply
    bad = wire.encode(wire.build("hsmstatus_client_bad_request", id=ctx.peer_id,
                                 description="policy-commitment-retry-same: retry 1 differs", msg=raw2))
    await hook.on_status(ctx, bad, wire.decode(bad))
    hook.close()

    facts = trace_facts(list(read_trace(str(tmp_path / "t.mp"))), incarnation=3)
    assert facts.requests == 3 and facts.rejections == ["policy-commitment-retry-same"]
    assert [(u["seq"], u["incarnation"]) for u in facts.unanswered] == [(2, 3)]
    assert [s.index for s in facts.signed] == [1, 1] and facts.signed[0].digest != facts.signed[1].digest
    ev = _ev(attacker=True, signer_policy=WARN, signed=facts.signed)
    assert funds_lost_msat(ev) == 7_000_000  # H2 is only in the second signature of commitment 1


async def test_a_refused_request_is_matched_whatever_form_the_trace_kept(tmp_path):
    """A refused request with no reply is accounted for by the refusal on the status socket: kept
    whole when it holds no secret, matched by digest when the trace could keep only a redacted
    view (a secret in it) or its type and length (it did not decode)."""
    ctx = ConnContext(5, "client", peer_id=bytes.fromhex("02" + "ab" * 32), dbid=1, permissions=1, parent_id=0)
    clean = wire.encode(wire.build("hsmd_get_per_commitment_point", n=3))
    secret = wire.encode(wire.build("hsmd_check_future_secret", n=5, commitment_secret=bytes(range(32))))
    undecodable = secret[:-1]
    hook = TraceHook(str(tmp_path / "t.mp"))
    for seq, raw in enumerate((clean, secret, undecodable)):
        msg = wire.decode(raw) if raw is not undecodable else None
        await hook.on_request(Exchange(ctx, seq, raw, msg), "request.before_forward")
        bad = wire.encode(wire.build("hsmstatus_client_bad_request", id=ctx.peer_id, description="no", msg=raw))
        await hook.on_status(ctx, bad, wire.decode(bad))
    other = wire.encode(wire.build("hsmd_get_per_commitment_point", n=4))
    await hook.on_request(Exchange(ctx, 3, other, wire.decode(other)), "request.before_forward")  # never answered
    hook.close()
    records = list(read_trace(str(tmp_path / "t.mp")))
    assert [r["raw"] is None for r in records if r.get("dir") == "request"] == [False, True, True, False]
    facts = trace_facts(records, incarnation=0)
    assert facts.requests == 4 and [u["seq"] for u in facts.unanswered] == [3]


# --- reports ------------------------------------------------------------------------------------

def _results():
    ok = judge_run(_ev(scenario="wal-fix", discipline=WAL, workload_done=True, divergences=[RESOLVED_CRASH]),
                   BUILTIN["wal-fix"].expectation(True), "hsmproxy chaos --scenario wal-fix", "sim")
    bad_ev = _ev(scenario="campaign", seed=42, discipline=WAL, workload_done=False)
    bad_ev.incarnations[0].faults.append(KILL)
    bad = judge_run(bad_ev, None, "hsmproxy chaos --seeds 42..42", "sim", fault_plan="!x")
    return ok, bad


def test_json_report_has_the_issue_keys(tmp_path):
    ok, bad = _results()
    path = tmp_path / "r.json"
    report.write_json(str(path), [ok, bad], {"command": "chaos"})
    data = json.loads(path.read_text())
    assert data["summary"]["runs"] == 2 and data["summary"]["failed"] == 1
    for run in data["runs"]:
        for key in ("scenario", "seed", "outcome", "divergences", "signer_rejections", "funds_lost_msat",
                    "fault_trace_hash", "reproduce"):
            assert key in run
        assert run["outcome"] in ("converged", "stuck", "funds_lost", "refused", "invariant_violated")
    assert data["runs"][1]["reproduce"] == "hsmproxy chaos --seeds 42..42"
    assert data["runs"][1]["faults"] == [{"incarnation": 0, "rule": "crash-window", "action": "kill-node",
                                          "point": "reply.before_forward", "connection": "client:1:02aa", "seq": 3,
                                          "message": "hsmd_sign_tx_reply", "detail": ""}]
    assert data["runs"][1]["invariant_violations"][0]["invariant"] == "wal-node-never-stuck"


def test_junit_marks_the_failed_run_with_its_seed_and_reproduce_command():
    ok, bad = _results()
    suite = ElementTree.fromstring(report.junit_xml([ok, bad]).split("?>", 1)[1])
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert cases[1].get("name") == "seed-42" and "hsmproxy chaos --seeds 42..42" in failure.text


def test_rich_tables_render_outcomes_and_failures():
    ok, bad = _results()
    console = Console(record=True, width=200)
    console.print(report.final_view([ok, bad]))
    text = console.export_text()
    assert "campaign" in text and "wal-fix" in text and "failed runs" in text
    assert report.replay_lines([ok, bad]) == ["replay seed 42: hsmproxy chaos --seeds 42..42"]
    console = Console(record=True, width=200)
    console.print(report.final_view([ok]))
    assert "write-up's stories" in console.export_text()
    progress = report.LiveProgress(2)
    progress.on_start(None)
    progress.on_result(bad)
    console.print(progress)


# --- campaign plumbing with a fake run ---------------------------------------------------------

async def test_run_jobs_bounds_parallelism_keeps_order_and_reports_crashes():
    running, peak = 0, 0
    ok, _ = _results()

    async def fake(job):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.01 * (job.seed % 3))
        running -= 1
        if job.seed == 5:
            raise RuntimeError("boom")
        return replace(ok, seed=job.seed, scenario=job.scenario)

    jobs = [campaign.Job("campaign", s) for s in range(8)]
    seen = []
    with trio.fail_after(10):
        results = await campaign.run_jobs(jobs, fake, parallel=3, on_result=seen.append)
    assert [r.seed for r in results] == list(range(8)) and peak == 3 and len(seen) == 8
    crashed = results[5]
    assert crashed.outcome == INVARIANT_VIOLATED and "boom" in crashed.violations[0]["detail"] and not crashed.ok


def test_scenario_names():
    assert scenario_named("wal-fix").discipline == WAL
    with pytest.raises(ValueError, match="did you mean 'wal-fix'"):
        scenario_named("wal-fx")


async def test_session_serves_chaos_metrics_over_http():
    ok, bad = _results()
    session = Session([], metrics_address="127.0.0.1:0", console=Console(file=open(os.devnull, "w")))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(session._serve_metrics)
            session._record(ok)
            session._record(bad)
            stream = await trio.open_tcp_stream("127.0.0.1", address.port)
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := await stream.receive_some():
                body += chunk
            nursery.cancel_scope.cancel()
    text = body.decode()
    assert 'hsmproxy_chaos_runs_total{outcome="converged",scenario="wal-fix"} 1.0' in text
    assert 'hsmproxy_chaos_invariant_violations_total{invariant="wal-node-never-stuck"} 1.0' in text
