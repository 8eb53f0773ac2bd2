#!/usr/bin/env python3
"""Generate hsmproxy's Grafana dashboards (dashboards as code).

The panels are data below; this script writes the JSON that Grafana's provisioning loads, and
the JSON is committed. tests/dashboards/test_dashboards.py checks that the committed files are what this
script generates, that they are well-formed, and (with a real Prometheus) that every query
returns data. Usage: python dashboards/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def q(expr: str, legend: str = "") -> dict:
    return {"expr": expr, "legendFormat": legend}


def p99(metric: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[{RATE}])))"


def p50(metric: str, by: str = "") -> str:
    return p99(metric, by).replace("0.99", "0.5", 1)


OPERATOR = {
    "uid": "hsmproxy-operator",
    "title": "hsmproxy: operator",
    "description": "hsmd traffic, signer latency, proxy overhead, divergence and guard refusals, WAL health",
    "rows": [
        ("Traffic", [
            ("Messages per second by direction", "timeseries", "ops",
             [q(f"sum by (direction) (rate(hsmproxy_messages_total[{RATE}]))", "{{direction}}")]),
            ("Top message types", "timeseries", "ops",
             [q(f"topk(10, sum by (type) (rate(hsmproxy_messages_total[{RATE}])))", "{{type}}")]),
            ("Open connections by role", "timeseries", "short",
             [q("sum by (role) (hsmproxy_connections_open)", "{{role}}")]),
            ("Parse failures (forwarded anyway)", "timeseries", "ops",
             [q(f"sum by (type) (rate(hsmproxy_parse_failures_total[{RATE}]))", "{{type}}")]),
        ]),
        ("Signer", [
            ("Signer up", "stat", "short", [q("max(hsmproxy_signer_up)", "up")]),
            ("Signer round trip p50 / p99 by family", "timeseries", "s",
             [q(p50("hsmproxy_signer_roundtrip_seconds", "family"), "p50 {{family}}"),
              q(p99("hsmproxy_signer_roundtrip_seconds", "family"), "p99 {{family}}")]),
            ("Requests in flight", "timeseries", "short", [q("sum(hsmproxy_requests_in_flight)", "in flight")]),
            ("Signer exits and last exit status", "stat", "short",
             [q("sum(hsmproxy_signer_exits_total)", "exits"),
              q("max(hsmproxy_signer_last_exit_status)", "last status (-1: running)")]),
        ]),
        ("Proxy overhead", [
            ("Latency added by the proxy p50 / p99", "timeseries", "s",
             [q(p50("hsmproxy_proxy_added_latency_seconds", "direction"), "p50 {{direction}}"),
              q(p99("hsmproxy_proxy_added_latency_seconds", "direction"), "p99 {{direction}}")]),
        ]),
        ("Split-brain", [
            ("Divergence events by kind", "timeseries", "short",
             [q(f"sum by (kind) (increase(hsmproxy_divergences_total[{RATE}]))", "{{kind}}"),
              q(f"sum by (kind) (increase(hsmproxy_divergences_in_doubt_total[{RATE}]))", "{{kind}} (in doubt)")]),
            ("Guard refusals", "timeseries", "short",
             [q(f"sum by (kind) (increase(hsmproxy_guard_refusals_total[{RATE}]))", "{{kind}}")]),
            ("Nodes possibly behind their signer (crashed in the window, unresolved)", "timeseries", "short",
             [q("sum by (instance) (hsmproxy_crashed_in_window_open)", "{{instance}}")]),
            ("Channels tracked / diverged", "timeseries", "short",
             [q("sum(hsmproxy_channels_tracked)", "tracked"), q("sum(hsmproxy_channels_diverged)", "diverged")]),
            ("Fault injection enabled", "stat", "short", [q("max(hsmproxy_faults_enabled)", "enabled")]),
        ]),
        ("Write-ahead log", [
            ("WAL appends and syncs per second", "timeseries", "ops",
             [q(f"sum(rate(hsmproxy_wal_appends_total[{RATE}]))", "appends"),
              q(f"sum(rate(hsmproxy_wal_syncs_total[{RATE}]))", "syncs")]),
            ("WAL fdatasync p50 / p99", "timeseries", "s",
             [q(p50("hsmproxy_wal_sync_seconds"), "p50"), q(p99("hsmproxy_wal_sync_seconds"), "p99")]),
            ("WAL bytes per second", "timeseries", "Bps", [q(f"sum(rate(hsmproxy_wal_bytes_total[{RATE}]))", "bytes")]),
            ("WAL recovery", "stat", "short",
             [q("sum(hsmproxy_wal_recovered_records_total)", "recovered records"),
              q("sum(hsmproxy_wal_cut_tails_total)", "cut tails"),
              q("sum(hsmproxy_wal_checkpoints_total)", "checkpoints")]),
        ]),
    ],
}

CHAOS = {
    "uid": "hsmproxy-chaos",
    "title": "hsmproxy: chaos sessions",
    "description": "Chaos runs, injected faults, outcomes and divergences over time",
    "rows": [
        ("Runs", [
            ("Runs by outcome", "timeseries", "short",
             [q(f"sum by (outcome) (increase(hsmproxy_chaos_runs_total[{RATE}]))", "{{outcome}}")]),
            ("Runs by scenario", "timeseries", "short",
             [q(f"sum by (scenario) (increase(hsmproxy_chaos_runs_total[{RATE}]))", "{{scenario}}")]),
            ("Total runs and invariant violations", "stat", "short",
             [q("sum(hsmproxy_chaos_runs_total)", "runs"),
              q("sum(hsmproxy_chaos_invariant_violations_total)", "invariant violations")]),
            ("Funds lost (msat)", "stat", "short",
             [q("sum by (scenario) (hsmproxy_chaos_funds_lost_msat_total)", "{{scenario}}")]),
        ]),
        ("Faults", [
            ("Faults injected by action", "timeseries", "short",
             [q(f"sum by (action) (increase(hsmproxy_faults_injected_total[{RATE}]))", "{{action}}")]),
            ("Faults injected by point", "timeseries", "short",
             [q(f"sum by (point) (increase(hsmproxy_faults_injected_total[{RATE}]))", "{{point}}")]),
        ]),
        ("Divergences", [
            ("Divergences over time by kind", "timeseries", "short",
             [q(f"sum by (kind) (increase(hsmproxy_divergences_total[{RATE}]))", "{{kind}}")]),
            ("Signer rejections (signer_rejected divergences)", "timeseries", "short",
             [q(f"sum(increase(hsmproxy_divergences_total{{kind=\"signer_rejected\"}}[{RATE}]))", "rejected")]),
        ]),
    ],
}


def panel(panel_id: int, title: str, kind: str, unit: str, targets: list[dict], x: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12 if kind == "timeseries" else 6, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [{**t, "refId": chr(ord("A") + i), "datasource": DATASOURCE} for i, t in enumerate(targets)],
    }


def dashboard(spec: dict) -> dict:
    panels = []
    next_id = 1
    y = 0
    for row_title, row_panels in spec["rows"]:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        for title, kind, unit, targets in row_panels:
            width = 12 if kind == "timeseries" else 6
            if x + width > 24:
                x, y = 0, y + 8
            panels.append(panel(next_id, title, kind, unit, targets, x, y))
            next_id += 1
            x += width
        y += 8
    return {
        "uid": spec["uid"],
        "title": spec["title"],
        "description": spec["description"],
        "tags": ["hsmproxy", "lightning"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0,
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


DASHBOARDS = {"hsmproxy-operator.json": OPERATOR, "hsmproxy-chaos.json": CHAOS}


def render() -> dict[str, str]:
    return {name: json.dumps(dashboard(spec), indent=2) + "\n" for name, spec in DASHBOARDS.items()}


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote dashboards/{name}")


if __name__ == "__main__":
    main()
