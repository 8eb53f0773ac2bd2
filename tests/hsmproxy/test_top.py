"""``hsmproxy top``: quantiles as Prometheus computes them, and a real frame from a real server."""

from __future__ import annotations

import sys

import pytest
import trio
from rich.console import Console

from proxy.trio.addresses import parse_address
from proxy.trio.http_server import HttpServer, RouteTable
from hsmproxy.commands.top import Snapshot, parse_metrics, quantile, render
from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import add_metrics_route


def _metrics_with_traffic() -> Metrics:
    metrics = Metrics()
    for seconds in (0.0002, 0.0003, 0.0004, 0.003):
        metrics.roundtrip("hsmd_sign_remote_commitment_tx", seconds)
    metrics.frame("node_to_signer", None, bytes.fromhex("0012000000000000002a"))
    metrics.divergences.labels(kind="retry_changed").inc()
    metrics.signer_up.set(1)
    return metrics


def test_quantile_interpolates_like_prometheus():
    series = parse_metrics(_metrics_with_traffic().exposition()[0].decode())
    # 4 observations: 3 in (0.00025, 0.0005], 1 in (0.0025, 0.005]; rank of p50 is 2.
    p50 = quantile(series, "hsmproxy_signer_roundtrip_seconds", 0.5, family="commitment")
    assert p50 == pytest.approx(0.00025 + 0.00025 * (2 - 1) / (3 - 1))
    p99 = quantile(series, "hsmproxy_signer_roundtrip_seconds", 0.99, family="commitment")
    assert 0.0025 < p99 <= 0.005
    assert quantile(series, "hsmproxy_wal_sync_seconds", 0.5) is None


def test_render_shows_channels_divergences_and_latency():
    series = parse_metrics(_metrics_with_traffic().exposition()[0].decode())
    snapshot = Snapshot(
        taken=1.0,
        series=series,
        health={"faults_enabled": True, "seed": 7},
        state={"channels": [{"peer_id": "02" + "ab" * 32, "dbid": 3, "next_counterparty_commit_num": 5,
                             "next_counterparty_revoke_num": 4, "next_holder_commit_num": 5}]},
        divergences=[{"kind": "retry_changed", "peer_id": "02" + "ab" * 32, "dbid": 3, "index": 4}],
    )
    console = Console(record=True, width=140)
    console.print(render(snapshot, None))
    text = console.export_text()
    for expected in ("signer: up", "ENABLED", "seed: 7", "retry_changed", "hsmd_get_per_commitment_point",
                     "signer: commitment", "µs", "02abababab"):
        assert expected in text, expected


async def test_top_once_against_a_running_server():
    routes = RouteTable()
    add_metrics_route(routes, _metrics_with_traffic())
    server = HttpServer(routes)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve, parse_address("127.0.0.1:0"))
            result = await trio.run_process(
                [sys.executable, "-m", "hsmproxy.cli", "top", "--once", "--control", f"127.0.0.1:{bound.port}"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "hsmproxy top" in out and "retry_changed: 1" in out
    assert "no /shadow/state at this address" in out  # this server has no /shadow routes


async def test_top_names_an_unreachable_proxy():
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "hsmproxy.cli", "top", "--once", "--control", "127.0.0.1:1"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 1
    assert b"127.0.0.1:1" in result.stderr and b"Traceback" not in result.stderr


async def test_top_names_a_bad_address():
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "hsmproxy.cli", "top", "--once", "--control", "localhost:http"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 2
    assert b"'localhost:http' is not unix:PATH" in result.stderr and b"Traceback" not in result.stderr
