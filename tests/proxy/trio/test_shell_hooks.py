"""HookChain: order, first decisive verdict wins, missing methods are skipped."""

import pytest
import trio

from proxy.core.hooks import (
    REPLY_AFTER,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    ConnContext,
    Drop,
    Exchange,
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
