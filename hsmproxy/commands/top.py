"""``hsmproxy top``: a live terminal view of a running proxy, for people without Grafana.

It polls the proxy's HTTP server (``/metrics``, ``/health``, ``/shadow/state``,
``/shadow/divergences``) and draws traffic, signer latency, proxy overhead, WAL health, each
channel's shadow state and the latest divergences. ``--once`` prints one frame and exits.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from hsmproxy.control_client import ControlClient, ControlError
from hsmproxy.control_token import TokenError, resolve_token
from proxy.trio.addresses import AddressError

Series = dict[tuple[str, frozenset], float]


def configure(parser) -> None:
    parser.add_argument(
        "--control", "--metrics", dest="address", default="127.0.0.1:8475", metavar="ADDR",
        help="the proxy's control/metrics address: HOST:PORT or unix:PATH (default 127.0.0.1:8475)",
    )
    parser.add_argument("--token", help="bearer token, if the proxy's control API requires one; every user can "
                        "read a command line, so prefer --token-file or $HSMPROXY_CONTROL_TOKEN (used when "
                        "neither option is given)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="read the bearer token from FILE (not readable by group or others: chmod 600)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")


@dataclass
class Snapshot:
    """Everything one refresh read from the proxy (the parts it does not serve stay None)."""

    taken: float
    series: Series = field(default_factory=dict)
    health: dict | None = None
    state: dict | None = None
    divergences: list | None = None


def parse_metrics(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def total(series: Series, name: str, **match) -> float:
    want = set(match.items())
    return sum(v for (n, labels), v in series.items() if n == name and want <= labels)


def by_label(series: Series, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), value in series.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def quantile(series: Series, name: str, q: float, **match) -> float | None:
    """Quantile from cumulative histogram buckets, interpolated as Prometheus does."""
    want = set(match.items())
    buckets: dict[float, float] = {}
    for (n, labels), value in series.items():
        if n == f"{name}_bucket" and want <= labels:
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    if not buckets or buckets.get(math.inf, 0) == 0:
        return None
    bounds = sorted(buckets)
    rank = q * buckets[math.inf]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def render(now: Snapshot, before: Snapshot | None):
    """A rich renderable of one snapshot; rates come from the difference to ``before``."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    s = now.series
    elapsed = (now.taken - before.taken) if before else 0.0

    def rate(name: str, **match) -> str:
        if not before or elapsed <= 0:
            return f"{total(s, name, **match):,.0f} total"
        return f"{(total(s, name, **match) - total(before.series, name, **match)) / elapsed:,.1f}/s"

    health = now.health or {}
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"signer: {'[green]up[/green]' if total(s, 'hsmproxy_signer_up') else '[red]down[/red]'}",
        f"faults: {'[yellow]ENABLED[/yellow]' if health.get('faults_enabled') or total(s, 'hsmproxy_faults_enabled') else 'off'}",
        f"seed: {health.get('seed', '-')}",
        f"channels: {total(s, 'hsmproxy_channels_tracked'):.0f} tracked, "
        f"{total(s, 'hsmproxy_channels_diverged'):.0f} diverged",
    )

    traffic = Table(title="traffic", expand=True)
    traffic.add_column("message")
    traffic.add_column("node→signer", justify="right")
    traffic.add_column("signer→node", justify="right")
    types = by_label(s, "hsmproxy_messages_total", "type")
    for name in sorted(types, key=types.get, reverse=True)[:8]:
        traffic.add_row(
            name,
            rate("hsmproxy_messages_total", type=name, direction="node_to_signer"),
            rate("hsmproxy_messages_total", type=name, direction="signer_to_node"),
        )
    traffic.add_row("[dim]parse failures[/dim]", rate("hsmproxy_parse_failures_total"), "")

    latency = Table(title="latency", expand=True)
    for column in ("what", "p50", "p99"):
        latency.add_column(column, justify="right" if column != "what" else "left")
    families = by_label(s, "hsmproxy_signer_roundtrip_seconds_count", "family")
    for family in sorted(f for f, count in families.items() if count):
        latency.add_row(
            f"signer: {family}",
            _seconds(quantile(s, "hsmproxy_signer_roundtrip_seconds", 0.5, family=family)),
            _seconds(quantile(s, "hsmproxy_signer_roundtrip_seconds", 0.99, family=family)),
        )
    latency.add_row(
        "added by proxy",
        _seconds(quantile(s, "hsmproxy_proxy_added_latency_seconds", 0.5)),
        _seconds(quantile(s, "hsmproxy_proxy_added_latency_seconds", 0.99)),
    )
    latency.add_row(
        f"WAL sync ({rate('hsmproxy_wal_syncs_total')}, {rate('hsmproxy_wal_appends_total')} appends)",
        _seconds(quantile(s, "hsmproxy_wal_sync_seconds", 0.5)),
        _seconds(quantile(s, "hsmproxy_wal_sync_seconds", 0.99)),
    )

    channels = Table(title="channels (shadow state)", expand=True)
    for column in ("peer", "dbid", "next counterparty commit", "next counterparty revoke", "next holder commit"):
        channels.add_column(column, justify="left" if column == "peer" else "right")
    for channel in ((now.state or {}).get("channels") or [])[:20]:
        channels.add_row(
            str(channel.get("peer_id", ""))[:16] + "…",
            str(channel.get("dbid", "")),
            str(channel.get("next_counterparty_commit_num", "")),
            str(channel.get("next_counterparty_revoke_num", "")),
            str(channel.get("next_holder_commit_num", "")),
        )
    if now.state is None:
        channels.caption = "no /shadow/state at this address: point --control at the proxy's control API to see channels"

    diverged = Table(title="latest divergences", expand=True)
    for column in ("kind", "peer", "dbid", "index"):
        diverged.add_column(column)
    events = now.divergences or []
    for event in events[-8:]:
        style = "bold red" if event.get("kind") in ("double_signed", "retry_changed") else ""
        diverged.add_row(
            f"[{style}]{event.get('kind')}[/{style}]" if style else str(event.get("kind")),
            str(event.get("peer_id", ""))[:16] + "…",
            str(event.get("dbid", "")),
            str(event.get("index", "")),
        )
    kinds = by_label(s, "hsmproxy_divergences_total", "kind")
    diverged.caption = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(kinds.items()) if v) or "none"

    return Panel(Group(head, traffic, latency, channels, diverged), title="hsmproxy top", subtitle="Ctrl-C to quit")


def fetch(client: ControlClient) -> Snapshot:
    snapshot = Snapshot(taken=time.monotonic())
    snapshot.series = parse_metrics(client.request("GET", "/metrics").get("text", ""))
    for attr, path in (("health", "/health"), ("state", "/shadow/state"), ("divergences", "/shadow/divergences")):
        try:
            value = client.request("GET", path)
        except ControlError as exc:
            if exc.status != 404:
                raise
            continue
        if attr == "divergences" and isinstance(value, dict):
            value = value.get("divergences", [])
        setattr(snapshot, attr, value)
    return snapshot


def run(args) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    try:
        token = resolve_token(args.token, args.token_file, token_option="--token", file_option="--token-file")
    except TokenError as exc:
        print(f"hsmproxy top: {exc}", file=sys.stderr)
        return 2
    try:
        client = ControlClient(args.address, token=token, timeout=max(2.0, args.interval * 2))
    except AddressError as exc:
        print(f"hsmproxy top: --control: {exc}", file=sys.stderr)
        return 2
    try:
        previous = fetch(client)
        if args.once:
            console.print(render(previous, None))
            return 0
        with Live(render(previous, None), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                current = fetch(client)
                live.update(render(current, previous))
                previous = current
    except ControlError as exc:
        print(f"hsmproxy top: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
