"""The fault hook through the relay's HookChain: verdicts, holds, delays and real signals."""

import json
import signal
import sys
import textwrap

import pytest
import trio

import wire
from faults.engine import FaultEngine
from proxy.addons.fault_hook import CRASH_EXIT_CODE, FaultHook
from faults.plan import parse_one_line
from proxy.addons.fault_runtime import FaultRuntime
from proxy.core.hooks import (
    REPLY_AFTER, REPLY_BEFORE, REQUEST_AFTER, REQUEST_BEFORE, ConnContext, Disconnect, Drop, Duplicate, Exchange,
    Forward, Hold, HookChain, Refuse, Replace,
)
from tests.paths import CHANNELD_EXCHANGES

EXCHANGES = json.loads(CHANNELD_EXCHANGES.read_text())["exchanges"]
SIGN_REMOTE = EXCHANGES[3]  # hsmd_sign_remote_commitment_tx, commit_num 1
CHANNEL = ConnContext(conn_id=5, role="client", peer_id=bytes.fromhex("02" + "22" * 32), dbid=1, permissions=0x1f, parent_id=0)


def exchange(ex=SIGN_REMOTE, seq=0, conn=CHANNEL):
    raw = bytes.fromhex(ex["request"])
    return Exchange(conn=conn, seq=seq, request_raw=raw, request=wire.decode(raw))


def with_reply(ex_obj, ex=SIGN_REMOTE):
    ex_obj.reply_raw = bytes.fromhex(ex["reply"])
    ex_obj.reply = wire.decode(ex_obj.reply_raw)
    return ex_obj


def chain(line, **kw):
    runtime = FaultRuntime(FaultEngine(parse_one_line(line), seed=1), allowed=True)
    return runtime, HookChain([FaultHook(runtime, **kw)])


async def all_points(hooks, ex):
    verdicts = [await hooks.request(ex, REQUEST_BEFORE), await hooks.request(ex, REQUEST_AFTER)]
    with_reply(ex)
    verdicts += [await hooks.reply(ex, REPLY_BEFORE), await hooks.reply(ex, REPLY_AFTER)]
    return verdicts


@pytest.mark.parametrize(
    "line, expected",
    [
        ("$hsmd_sign_remote_commitment_tx", [Drop(), Forward(), Forward(), Forward()]),
        ("&hsmd_sign_remote_commitment_tx", [Duplicate(), Forward(), Forward(), Forward()]),
        ("&hsmd_sign_remote_commitment_tx@reply", [Forward(), Forward(), Duplicate(), Forward()]),
        ("-hsmd_sign_remote_commitment_tx", [Disconnect(), Forward(), Forward(), Forward()]),
        ("+hsmd_sign_remote_commitment_tx", [Forward(), Forward(), Disconnect(), Forward()]),
        ("?hsmd_sign_remote_commitment_tx description=nope", [Refuse("nope"), Forward(), Forward(), Forward()]),
        ("$hsmd_sign_remote_commitment_tx dbid=2", [Forward()] * 4),
        ("$hsmd_sign_remote_commitment_tx commit_num==2", [Forward()] * 4),
    ],
)
async def test_verdicts_at_their_points(line, expected):
    runtime, hooks = chain(line)
    assert await all_points(hooks, exchange()) == expected
    fired = [e.point for e in runtime.engine.events]
    assert fired == [p for p, v in zip((REQUEST_BEFORE, REQUEST_AFTER, REPLY_BEFORE, REPLY_AFTER), expected) if v != Forward()]


async def test_corrupt_replaces_the_reply_with_a_flipped_copy():
    runtime, hooks = chain("%hsmd_sign_remote_commitment_tx")
    verdicts = await all_points(hooks, exchange())
    replace = verdicts[2]
    assert isinstance(replace, Replace) and replace.raw != bytes.fromhex(SIGN_REMOTE["reply"])
    assert len(replace.raw) == len(SIGN_REMOTE["reply"]) // 2


async def test_hold_waits_for_release():
    runtime, hooks = chain("0hsmd_sign_remote_commitment_tx")
    verdict = await hooks.request(exchange(), REQUEST_BEFORE)
    assert isinstance(verdict, Hold) and list(runtime.held) == [1]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            released = trio.Event()

            async def relay_waits():
                await verdict.release.wait()
                released.set()

            nursery.start_soon(relay_waits)
            await trio.sleep(0.05)
            assert not released.is_set()
            assert runtime.release() == [1]
            await released.wait()
    assert runtime.held == {}


async def test_delay_sleeps_inside_the_hook(autojump_clock):
    runtime, hooks = chain("~hsmd_sign_remote_commitment_tx ms=150")
    start = trio.current_time()
    with trio.fail_after(5):
        assert await hooks.request(exchange(), REQUEST_BEFORE) == Forward()
    assert trio.current_time() - start == pytest.approx(0.15)  # trio's MockClock: exactly the delay


@pytest.mark.parametrize("action, who, sig", [("!", "node", signal.SIGKILL), ("^", "signer", signal.SIGTERM)])
async def test_kill_signals_the_configured_process(action, who, sig):
    with trio.fail_after(10):
        victim = await trio.lowlevel.open_process(["sleep", "30"])
        bystander = await trio.lowlevel.open_process(["sleep", "30"])
        try:
            pids = {"node_pid": lambda: bystander.pid, "signer_pid": lambda: bystander.pid}
            pids[f"{who}_pid"] = lambda: victim.pid
            extra = "" if sig == signal.SIGKILL else " signal=TERM"
            runtime, hooks = chain(f"{action}hsmd_sign_remote_commitment_tx{extra}", **pids)
            await all_points(hooks, exchange())
            assert await victim.wait() == -sig
            assert bystander.poll() is None
        finally:
            for p in (victim, bystander):
                if p.poll() is None:
                    p.kill()
                    await p.wait()


async def test_kill_without_a_known_process_is_logged_not_raised(caplog):
    runtime, hooks = chain("!hsmd_sign_remote_commitment_tx")
    await all_points(hooks, exchange())
    assert "no node process is known" in caplog.text


async def test_crash_proxy_exits_at_once():
    script = textwrap.dedent(f"""
        import json, trio, wire
        from faults.engine import FaultEngine
        from proxy.addons.fault_hook import FaultHook
        from faults.plan import parse_one_line
        from proxy.addons.fault_runtime import FaultRuntime
        from proxy.core.hooks import ConnContext, Exchange, HookChain
        raw = bytes.fromhex({SIGN_REMOTE["request"]!r})
        ex = Exchange(conn=ConnContext(1, "client", dbid=1), seq=0, request_raw=raw, request=wire.decode(raw))
        hooks = HookChain([FaultHook(FaultRuntime(FaultEngine(parse_one_line("#hsmd_sign_remote_commitment_tx@req")), allowed=True))])
        async def main():
            try:
                await hooks.request(ex, "request.before_forward")
            finally:
                print("cleanup ran")
        trio.run(main)
        print("still alive")
    """)
    with trio.fail_after(30):
        result = await trio.run_process([sys.executable, "-c", script], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == CRASH_EXIT_CODE
    assert result.stdout == b""  # no finally blocks, no cleanup
    assert b"crash-proxy: exiting now" in result.stderr


async def test_no_rules_costs_nothing_and_changes_nothing():
    runtime, hooks = chain("$hsmd_init")
    runtime.engine.clear()
    assert await all_points(hooks, exchange()) == [Forward()] * 4


async def test_injected_faults_feed_the_metrics():
    from proxy.addons.metrics import Metrics

    metrics = Metrics()
    runtime, hooks = chain("0hsmd_sign_remote_commitment_tx; ~hsmd_sign_remote_commitment_tx@reply ms=1")
    runtime.attach_metrics(metrics)
    verdicts = await all_points(hooks, exchange())
    text = metrics.registry.get_sample_value
    assert text("hsmproxy_faults_injected_total", {"action": "hold", "point": "request.before_forward"}) == 1
    assert text("hsmproxy_faults_injected_total", {"action": "delay", "point": "reply.before_forward"}) == 1
    assert text("hsmproxy_faults_enabled") == 1 and text("hsmproxy_held_messages") == 1
    runtime.release()
    assert text("hsmproxy_held_messages") == 0 and isinstance(verdicts[0], Hold)
