"""The metrics hook through the relay's HookChain, and /metrics served by the real control server."""

from __future__ import annotations

import socket

import trio

import wire
from proxy.trio.addresses import parse_address
from proxy.trio.http_server import HttpServer, RouteTable
from proxy.core.hooks import (
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    ConnContext,
    Exchange,
    HookChain,
)
from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import MetricsHook, add_metrics_route

G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def sample(metrics: Metrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def exchange(chain: HookChain, conn: ConnContext, request: bytes, reply: bytes, t0: int) -> None:
    ex = Exchange(conn=conn, seq=0, request_raw=request)
    try:
        ex.request = wire.decode(request)
    except wire.DecodeError:
        pass
    ex.request_received_ns = t0
    await chain.request(ex, REQUEST_BEFORE)
    ex.request_forwarded_ns = t0 + 20_000  # 20 µs in the proxy
    await chain.request(ex, REQUEST_AFTER)
    ex.reply_raw = reply
    ex.reply = wire.decode(reply)
    ex.reply_received_ns = t0 + 2_020_000  # signer took 2 ms
    await chain.reply(ex, REPLY_BEFORE)
    ex.reply_forwarded_ns = t0 + 2_030_000
    await chain.reply(ex, REPLY_AFTER)


async def test_hook_counts_frames_latency_connections_and_exits():
    metrics = Metrics()
    chain = HookChain([MetricsHook(metrics)])
    master = ConnContext(1, "master")
    client = ConnContext(2, "client", peer_id=G, dbid=7, permissions=0x1BF)
    with trio.fail_after(5):
        await chain.connection(master, "opened")
        await chain.connection(client, "opened")
        await exchange(chain, client, bytes.fromhex("0012000000000000002a"), bytes.fromhex("0076") + G + b"\x00", 0)
        await exchange(chain, client, bytes.fromhex("0012ff"), bytes.fromhex("0076") + G + b"\x00", 10**9)
        await chain.connection(client, "closed")
        await chain.signer_exit(242)
    # the malformed request keeps the name its type claims
    assert sample(metrics, "hsmproxy_messages_total", direction="node_to_signer", type="hsmd_get_per_commitment_point") == 2
    assert sample(metrics, "hsmproxy_messages_total", direction="node_to_signer", type="unknown") == 0
    assert sample(metrics, "hsmproxy_parse_failures_total", type="hsmd_get_per_commitment_point") == 1
    assert sample(metrics, "hsmproxy_messages_total", direction="signer_to_node",
                  type="hsmd_get_per_commitment_point_reply") == 2
    assert sample(metrics, "hsmproxy_signer_roundtrip_seconds_count", family="commitment") == 1
    assert sample(metrics, "hsmproxy_signer_roundtrip_seconds_bucket", family="commitment", le="0.0025") == 1
    assert sample(metrics, "hsmproxy_signer_roundtrip_seconds_bucket", family="commitment", le="0.001") == 0
    assert sample(metrics, "hsmproxy_proxy_added_latency_seconds_count", direction="node_to_signer") == 2
    assert sample(metrics, "hsmproxy_proxy_added_latency_seconds_bucket", direction="node_to_signer", le="2.5e-05") == 2
    assert sample(metrics, "hsmproxy_requests_in_flight") == 0
    assert sample(metrics, "hsmproxy_connections_open", role="client") == 0
    assert sample(metrics, "hsmproxy_connections_total", role="client") == 1
    assert sample(metrics, "hsmproxy_signer_exits_total") == 1
    assert sample(metrics, "hsmproxy_signer_last_exit_status") == 242
    assert sample(metrics, "hsmproxy_signer_up") == 0


async def test_metrics_route_serves_the_text_format_over_real_http():
    metrics = Metrics()
    metrics.divergences.labels(kind="retry_changed").inc()
    routes = RouteTable()
    add_metrics_route(routes, metrics)
    server = HttpServer(routes)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve, parse_address("127.0.0.1:0"))
            port = bound.port
            response = await trio.to_thread.run_sync(_http_get, port, "/metrics")
            nursery.cancel_scope.cancel()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/plain; version=" in head.lower()
    assert b'hsmproxy_divergences_total{kind="retry_changed"} 1.0' in body


def _http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
