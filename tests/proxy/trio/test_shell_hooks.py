"""HookChain: order, first decisive verdict wins, missing methods are skipped; observers that fail
are switched off, deciders that fail fail closed."""

import pytest
import trio

from proxy.core.hooks import (
    REPLY_AFTER,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    ConnContext,
    Drop,
    Exchange,
    FailClosed,
    Forward,
    HookChain,
    Replace,
)


class Recorder:
    def __init__(self, name, log, verdict=None):
        self.name, self.log, self.verdict = name, log, verdict

    async def on_request(self, ex, point):
        self.log.append((self.name, point, type(ex.verdict).__name__))
        return self.verdict


class OnlyConnections:
    def __init__(self, log):
        self.log = log

    async def on_connection(self, conn, event):
        self.log.append((conn.conn_id, event))


def _exchange():
    return Exchange(conn=ConnContext(conn_id=1, role="master"), seq=0, request_raw=b"\x00\x0b")


async def test_first_decisive_verdict_wins_and_all_hooks_run_in_order():
    log = []
    chain = HookChain([Recorder("a", log, Forward()), Recorder("b", log, Drop()), Recorder("c", log, Replace(b"x"))])
    ex = _exchange()
    assert await chain.request(ex, REQUEST_BEFORE) == Drop()
    assert [name for name, *_ in log] == ["a", "b", "c"]
    assert log[2][2] == "Drop"  # later hooks see the decision
    log.clear()
    assert await chain.request(ex, REQUEST_AFTER) == Forward()
    assert [point for _, point, _ in log] == [REQUEST_AFTER] * 3


async def test_hooks_without_a_method_are_skipped():
    log = []
    chain = HookChain([OnlyConnections(log)])
    assert await chain.reply(_exchange(), REPLY_AFTER) == Forward()
    await chain.connection(ConnContext(conn_id=7, role="client", dbid=3), "opened")
    assert log == [(7, "opened")]


async def test_a_hook_returning_a_non_verdict_is_an_error():
    chain = HookChain([Recorder("bad", [], "drop please")])
    with pytest.raises(TypeError, match="not a Verdict"):
        with trio.fail_after(5):
            await chain.request(_exchange(), REQUEST_BEFORE)


async def test_start_is_called_once_per_hook_that_has_it():
    started = []

    class Server:
        async def start(self, nursery):
            started.append(nursery)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await HookChain([Server(), OnlyConnections([])]).start(nursery)
    assert started == [nursery]


# ---- failures: observers are switched off, deciders fail closed ----------------------------------


class Raises:
    def __init__(self, name, log, *, observer=False):
        self.name, self.log = name, log
        if observer:
            self.observer = True

    async def on_request(self, ex, point):
        self.log.append((self.name, point))
        raise OSError(28, "No space left on device")


class Told:
    observer = True

    def __init__(self):
        self.failures = []

    async def on_hook_failed(self, failure):
        self.failures.append(failure)


async def test_an_observer_that_raises_is_switched_off_and_reported_once(caplog):
    log, told = [], Told()
    observer = Raises("trace", log, observer=True)
    chain = HookChain([Recorder("faults", log, Drop()), observer, told])
    with trio.fail_after(5):
        assert await chain.request(_exchange(), REQUEST_BEFORE) == Drop()  # the decision stands
        assert await chain.request(_exchange(), REQUEST_BEFORE) == Drop()
    assert [entry[0] for entry in log] == ["faults", "trace", "faults"]  # not called again
    assert chain.switched_off == [observer]
    assert [(f.hook, f.where, f.switched_off, f.failed_closed) for f in told.failures] == [
        ("Raises", REQUEST_BEFORE, True, False)]
    assert len([r for r in caplog.records if "switched off" in r.getMessage()]) == 1


async def test_a_decider_that_raises_before_forwarding_fails_closed_and_stays_on():
    log, told = [], Told()
    decider = Raises("wal", log)
    later = Recorder("metrics", log)
    chain = HookChain([decider, later, told])
    ex = _exchange()
    with trio.fail_after(5):
        verdict = await chain.request(ex, REQUEST_BEFORE)
        assert type(verdict) is FailClosed and "No space left" in verdict.description
        assert ex.verdict is verdict and log[-1] == ("metrics", REQUEST_BEFORE, "FailClosed")  # later hooks see it
        assert await chain.request(ex, REQUEST_AFTER) == Forward()  # elsewhere: logged, the relay goes on
        assert type(await chain.request(_exchange(), REQUEST_BEFORE)) is FailClosed  # never switched off
    assert chain.switched_off == []
    assert [(f.where, f.failed_closed) for f in told.failures] == [
        (REQUEST_BEFORE, True), (REQUEST_AFTER, False), (REQUEST_BEFORE, True)]


async def test_a_decider_failing_overrules_an_earlier_forwarding_verdict():
    chain = HookChain([Recorder("faults", [], Replace(b"x")), Raises("wal", [])])
    with trio.fail_after(5):
        assert type(await chain.request(_exchange(), REQUEST_BEFORE)) is FailClosed


async def test_an_observer_failing_to_hear_of_a_failure_is_switched_off_without_going_round():
    class Deaf(Told):
        async def on_hook_failed(self, failure):
            raise RuntimeError("cannot count")

    deaf = Deaf()
    chain = HookChain([Raises("trace", [], observer=True), deaf])
    with trio.fail_after(5):
        await chain.request(_exchange(), REQUEST_BEFORE)
    assert len(chain.switched_off) == 2 and chain.switched_off[1] is deaf


async def test_a_hook_with_points_is_called_only_there():
    log = []

    class BeforeOnly(Recorder):
        points = (REQUEST_BEFORE,)

    chain = HookChain([BeforeOnly("shadow", log)])
    with trio.fail_after(5):
        await chain.request(_exchange(), REQUEST_BEFORE)
        await chain.request(_exchange(), REQUEST_AFTER)
    assert [point for _, point, _ in log] == [REQUEST_BEFORE]
    assert chain.watches(REQUEST_BEFORE) and not chain.watches(REQUEST_AFTER) and not chain.watches(REPLY_AFTER)
    assert HookChain([Recorder("all", [])]).watches(REQUEST_AFTER)
