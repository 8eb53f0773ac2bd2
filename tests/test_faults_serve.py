"""Faults and the control API in socket mode: a real `hsmproxy serve` process in front of a
signer listening on a Unix socket."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from faults.client import ControlClient, ControlError
from proxy.socket_mode import parse_address
from tests.test_serve import REPLY, REQUEST, _unix_listen, connect_when_ready, signer_server, start_serve

pytestmark = pytest.mark.timeout(60)


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
    up = trio.SocketListener(trio.socket.from_stdlib_socket(_unix_listen(tmp_path / "signer.sock")))
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
                while True:  # no node has connected yet: the control API answers all the same
                    try:
                        health = await trio.to_thread.run_sync(client.health)
                        break
                    except ControlError:
                        assert proc.poll() is None, proc.stderr.read()
                        await trio.sleep(0.05)
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
