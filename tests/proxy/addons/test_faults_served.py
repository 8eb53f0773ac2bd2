"""Faults and the control API in socket mode: a real `hsmproxy serve` process in front of a
signer listening on a Unix socket."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from hsmproxy.control_client import ControlClient, ControlError
from proxy.trio.addresses import parse_address
from tests.serve_harness import REPLY, REQUEST, connect_when_ready, signer_server, start_serve, unix_listen

pytestmark = pytest.mark.timeout(60)


async def control_when_ready(client: ControlClient, proc) -> dict:
    while True:
        try:
            return await trio.to_thread.run_sync(client.health)
        except ControlError:
            assert proc.poll() is None, proc.stderr.read()
            await trio.sleep(0.05)


async def exchange(stream, timeout=0.5):
    await stream.send_all(REQUEST)
    got = b""
    with trio.move_on_after(timeout):
        while len(got) < len(REPLY):
            data = await stream.receive_some(len(REPLY) - len(got))
            if not data:
                return "eof"
            got += data
    return got if got else "timeout"


async def test_control_api_is_up_before_any_node_connects_and_drives_faults(tmp_path: Path):
    up = trio.SocketListener(trio.socket.from_stdlib_socket(unix_listen(tmp_path / "signer.sock")))
    control = f"unix:{tmp_path / 'control.sock'}"
    listen = f"unix:{tmp_path / 'proxy.sock'}"
    proc = start_serve(listen, f"unix:{tmp_path / 'signer.sock'}", "--enable-faults", "--control", control,
                       "--faults=$hsmd_sign_remote_commitment_tx*2 role=socket", "--fault-seed", "3")
    received: list = []
    client = ControlClient(control, timeout=2)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(signer_server, up, received)
                # no node has connected yet: the control API answers all the same
                health = await control_when_ready(client, proc)
                assert health["faults_enabled"] and health["seed"] == 3 and health["rules"] == 1
                stream = await connect_when_ready(parse_address(listen), proc)
                assert await exchange(stream) == REPLY
                assert await exchange(stream) == "timeout"  # the 2nd was dropped
                assert await exchange(stream) == REPLY
                # rules change at run time: hold the next one, release it through the API
                await trio.to_thread.run_sync(client.add, "0hsmd_sign_remote_commitment_tx")
                async with trio.open_nursery() as waiting:
                    result = {}

                    async def node():
                        result["reply"] = await exchange(stream, timeout=10)

                    waiting.start_soon(node)
                    held = []
                    while not held:
                        held = await trio.to_thread.run_sync(client.held)
                    assert "reply" not in result
                    await trio.to_thread.run_sync(client.release)
                assert result["reply"] == REPLY
                events = await trio.to_thread.run_sync(client.events)
                assert [e["action"] for e in events["events"]] == ["drop", "hold"]
                await stream.aclose()
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert "FAULT INJECTION ENABLED: seed 3, 1 rule(s)" in proc.stderr.read()
    assert received.count(REQUEST) == 3  # the dropped one never reached the signer


async def test_control_operations_stay_bounded_while_the_proxy_is_busy(tmp_path: Path):
    """Toxiproxy's API hangs under traffic (#159, #412, #558); every operation here must answer
    within 2 s while three nodes hammer the proxy, faults fire, and a message is held."""
    up = trio.SocketListener(trio.socket.from_stdlib_socket(unix_listen(tmp_path / "signer.sock")))
    control = f"unix:{tmp_path / 'control.sock'}"
    listen = f"unix:{tmp_path / 'proxy.sock'}"
    proc = start_serve(listen, f"unix:{tmp_path / 'signer.sock'}", "--enable-faults", "--control", control,
                       "--faults=~hsmd_sign_remote_commitment_tx ms=1 p=0.3 count=all")
    client = ControlClient(control, timeout=5)
    finished = []
    try:
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                await nursery.start(signer_server, up, [])
                await control_when_ready(client, proc)
                streams = [await connect_when_ready(parse_address(listen), proc) for _ in range(4)]
                done = trio.Event()

                async def busy(stream):
                    while not done.is_set():
                        assert await exchange(stream, timeout=5) == REPLY

                for stream in streams[:3]:
                    nursery.start_soon(busy, stream)
                # The fourth node's next request is held for the whole run.
                await trio.to_thread.run_sync(client.add, "0hsmd_sign_remote_commitment_tx name=hold connection=socket#3")
                nursery.start_soon(exchange, streams[3], 30)

                def operate(i):
                    for op in (client.health, client.rules, client.held, lambda: client.add(f"&hsmd_init name=x{i}"),
                               lambda: client.remove(f"x{i}"), client.trace, lambda: client.events(10),
                               lambda: client.enable(i % 2 == 0)):
                        op()
                        finished.append(op)

                async with trio.open_nursery() as operators:
                    for i in range(4):
                        operators.start_soon(trio.to_thread.run_sync, operate, i)
                assert len(await trio.to_thread.run_sync(client.held)) == 1
                await trio.to_thread.run_sync(client.release)
                done.set()
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    # Every operation finished while a message was held and three connections were busy (how fast
    # is bench/bench_faults.py's business: a timed assertion here would measure the machine's load).
    assert len(finished) == 32
