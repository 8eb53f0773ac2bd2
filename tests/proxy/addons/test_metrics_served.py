"""`hsmproxy serve --metrics`: a real proxy process exports what it relayed."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from proxy.trio.addresses import parse_address
from tests.serve_harness import REPLY, REQUEST, connect_when_ready, round_trips, signer_server, start_serve, unix_listen
from tests.prometheus_server import free_port

pytestmark = pytest.mark.timeout(60)


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_serve_exports_traffic_latency_and_connections(tmp_path: Path):
    up = trio.SocketListener(trio.socket.from_stdlib_socket(unix_listen(tmp_path / "signer.sock")))
    listen = f"unix:{tmp_path / 'proxy.sock'}"
    port = free_port()
    received: list = []
    proc = start_serve(listen, f"unix:{tmp_path / 'signer.sock'}", "--metrics", f"127.0.0.1:{port}")
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(signer_server, up, received)
                stream = await connect_when_ready(parse_address(listen), proc)
                await round_trips(stream, 7)
                await stream.send_all(b"\x00\x00\x00\x03\x00\x12\xff")  # a malformed request, forwarded anyway
                samples = {}
                while samples.get(("hsmproxy_parse_failures_total", (("type", "hsmd_get_per_commitment_point"),))) != 1:
                    await trio.sleep(0.05)
                    samples = await trio.to_thread.run_sync(scrape, port)
                await stream.aclose()
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    request_name = "hsmd_sign_remote_commitment_tx"
    assert samples[("hsmproxy_messages_total", (("direction", "node_to_signer"), ("type", request_name)))] == 7
    assert samples[("hsmproxy_messages_total", (("direction", "signer_to_node"), ("type", "hsmd_sign_tx_reply")))] == 7
    assert samples[("hsmproxy_signer_roundtrip_seconds_count", (("family", "commitment"),))] == 7
    assert samples[("hsmproxy_proxy_added_latency_seconds_count", (("direction", "node_to_signer"),))] == 8
    assert samples[("hsmproxy_connections_total", (("role", "socket"),))] == 1
    assert samples[("hsmproxy_message_bytes_total", (("direction", "node_to_signer"),))] == 7 * len(REQUEST) + 7
    assert samples[("hsmproxy_signer_up", ())] == 1
    assert received.count(REQUEST) == 7 and REPLY
