"""hsmproxy's Prometheus metrics: one registry, every metric defined here, bounded labels.

The proxy, the shadow state, the WAL, the fault engine and the chaos runner record through
``Metrics``; ``exposition()`` renders the text format for ``/metrics``. Labels are bounded:
message names come from the codec's closed set (unknown types collapse to "unknown"),
families from ``wire.families``; per-channel detail is opt-in and capped.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import wire
from wire.conversation import BEFORE_FORWARD_POINTS
from wire.families import family_of

from proxy.core.relay import WHOLE_FRAME_LIMIT

# The *_created series double every counter's cardinality and no dashboard uses them.
disable_created_metrics()

# 50 µs to 10 s: a local hsmd answers in tens of µs, a remote VLS in ms, a stuck one never.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# What the proxy itself adds: 5 µs to 100 ms.
OVERHEAD_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.1,
)
WAL_SYNC_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

NODE_TO_SIGNER = "node_to_signer"
SIGNER_TO_NODE = "signer_to_node"


def message_label(message: "wire.Message | None", raw: bytes = b"") -> str:
    """The message name for a label: from the decoded message, else from the type the frame
    claims (a malformed known type keeps its name), else "unknown" (bounded cardinality)."""
    if message is not None:
        return message.name if message.known else "unknown"
    if len(raw) >= 2:
        spec = wire.SPECS_BY_TYPE.get(int.from_bytes(raw[:2], "big"))
        if spec is not None:
            return spec.name
    return "unknown"


class Metrics:
    """All of hsmproxy's metrics on one registry (a fresh one per instance, so tests do not share)."""

    def __init__(self, *, channel_detail: int = 0, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.channel_detail_cap = channel_detail
        self._detailed_channels: set[str] = set()

        self.build_info = Gauge(
            "hsmproxy_build_info", "Build information (value is always 1)", ["version", "python"], registry=r
        )
        self.build_info.labels(version=_version(), python=platform.python_version()).set(1)

        self.messages = Counter(
            "hsmproxy_messages_total", "hsmd messages relayed, by direction and message name",
            ["direction", "type"], registry=r,
        )
        self.message_bytes = Counter(
            "hsmproxy_message_bytes_total", "Bytes of hsmd frames relayed, by direction", ["direction"], registry=r
        )
        self.parse_failures = Counter(
            "hsmproxy_parse_failures_total",
            "Frames that did not decode (forwarded unchanged anyway), by message name", ["type"], registry=r,
        )
        self.parse_failures.labels(type="unknown")  # a series from the start: "no failures" is 0, not absent
        self.long_frames = Counter(
            "hsmproxy_long_frames_total",
            f"Frames longer than the relay holds ({WHOLE_FRAME_LIMIT >> 20} MiB): decided on by their first "
            f"{WHOLE_FRAME_LIMIT >> 20} MiB, the rest forwarded as it arrived, by direction", ["direction"], registry=r,
        )
        self.requests_paused = Counter(
            "hsmproxy_requests_paused_total",
            "Times a node's requests had to wait because too many were unanswered (--max-unanswered): the "
            "proxy stopped reading from the node until the signer answered (backpressure, nothing dropped), by role",
            ["role"], registry=r,
        )
        self.framing_lost = Counter(
            "hsmproxy_framing_lost_total",
            "Connections that lost framing and fell back to a raw byte relay", ["role"], registry=r,
        )
        self.signer_roundtrip = Histogram(
            "hsmproxy_signer_roundtrip_seconds",
            "Time from forwarding a request to the signer until its reply arrived, by request family",
            ["family"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.proxy_overhead = Histogram(
            "hsmproxy_proxy_added_latency_seconds",
            "Time a frame spent inside the proxy (read to forwarded), by direction",
            ["direction"], buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.requests_in_flight = Gauge(
            "hsmproxy_requests_in_flight", "Requests forwarded to the signer and not yet answered", registry=r
        )
        self.connections = Counter(
            "hsmproxy_connections_total", "Connections opened, by role (master, client, status, socket)",
            ["role"], registry=r,
        )
        self.connections_open = Gauge(
            "hsmproxy_connections_open", "Connections currently open, by role", ["role"], registry=r
        )
        self.signer_up = Gauge("hsmproxy_signer_up", "1 while the signer process or connection is alive", registry=r)
        self.signer_exits = Counter("hsmproxy_signer_exits_total", "Signer exits", registry=r)
        self.signer_exit_status = Gauge(
            "hsmproxy_signer_last_exit_status",
            "Exit status of the signer's last exit (128+N for signal N); -1 while it has not exited", registry=r,
        )
        self.signer_exit_status.set(-1)
        # the proxy's own hooks
        self.hook_failures = Counter(
            "hsmproxy_hook_failures_total",
            "Exceptions raised by relay hooks, by hook; an observer (metrics, trace) is switched off at its first",
            ["hook"], registry=r,
        )
        self.failed_closed = Counter(
            "hsmproxy_failed_closed_total",
            "Messages not forwarded because a deciding hook failed on them (e.g. the WAL could not make a "
            "request durable), by point",
            ["point"], registry=r,
        )
        for point in BEFORE_FORWARD_POINTS:  # series from the start, so the first failure is an increase
            self.failed_closed.labels(point=point)
        # shadow state
        self.divergences = Counter(
            "hsmproxy_divergences_total", "Divergence events detected by the shadow state, by kind",
            ["kind"], registry=r,
        )
        self.divergences_in_doubt = Counter(
            "hsmproxy_divergences_in_doubt_total",
            "Divergences against a request in doubt after a proxy restart (the signer may never have seen it): "
            "at most possible, so counted here instead of hsmproxy_divergences_total, by kind",
            ["kind"], registry=r,
        )
        self.crashed_in_window_open = Gauge(
            "hsmproxy_crashed_in_window_open",
            "Channels whose node ended inside the crash window (counterparty commitment N signed, N-1 not "
            "revoked) and has not shown yet whether it kept N (crashed_in_window events still possible)",
            registry=r,
        )
        self.guard_refusals = Counter(
            "hsmproxy_guard_refusals_total", "Requests refused by --guard before they reached the signer",
            ["kind"], registry=r,
        )
        self.channels_tracked = Gauge("hsmproxy_channels_tracked", "Channels in the shadow state", registry=r)
        self.channels_diverged = Gauge(
            "hsmproxy_channels_diverged", "Channels with at least one divergence event", registry=r
        )
        self.channel_commit_num = Gauge(
            "hsmproxy_channel_next_counterparty_commit_num",
            "Per-channel detail (opt-in, at most --channel-detail channels)", ["channel"], registry=r,
        )
        # faults
        self.faults = Counter(
            "hsmproxy_faults_injected_total", "Faults injected, by action and point", ["action", "point"], registry=r
        )
        self.faults_enabled = Gauge("hsmproxy_faults_enabled", "1 when fault injection is enabled", registry=r)
        self.held_messages = Gauge("hsmproxy_held_messages", "Messages held by a hold fault", registry=r)
        # write-ahead log
        self.wal_appends = Counter("hsmproxy_wal_appends_total", "Records appended to the WAL", registry=r)
        self.wal_syncs = Counter("hsmproxy_wal_syncs_total", "fdatasync calls of the WAL (group commits)", registry=r)
        self.wal_sync_seconds = Histogram(
            "hsmproxy_wal_sync_seconds", "Duration of one WAL fdatasync", buckets=WAL_SYNC_BUCKETS, registry=r
        )
        self.wal_bytes = Counter("hsmproxy_wal_bytes_total", "Bytes appended to the WAL", registry=r)
        self.wal_checkpoints = Counter("hsmproxy_wal_checkpoints_total", "WAL checkpoints written", registry=r)
        self.wal_recovered = Counter(
            "hsmproxy_wal_recovered_records_total", "WAL records replayed at start-up", registry=r
        )
        self.wal_cut_tails = Counter(
            "hsmproxy_wal_cut_tails_total", "Invalid WAL tails (torn or corrupt) cut at start-up", registry=r
        )
        # chaos sessions
        self.chaos_runs = Counter(
            "hsmproxy_chaos_runs_total", "Chaos runs finished, by scenario and outcome", ["scenario", "outcome"], registry=r
        )
        self.chaos_invariant_violations = Counter(
            "hsmproxy_chaos_invariant_violations_total", "Invariant violations found by chaos runs", ["invariant"],
            registry=r,
        )
        self.chaos_funds_lost_msat = Counter(
            "hsmproxy_chaos_funds_lost_msat_total", "Funds lost in chaos runs (msat)", ["scenario"], registry=r
        )

    # -- recording helpers used by the relay hook ------------------------------------------

    def frame(self, direction: str, message: "wire.Message | None", raw: bytes, tail: int = 0) -> None:
        """One relayed frame (``tail``: a long frame's body bytes after ``raw``, its prefix); a
        frame that did not decode is also a parse failure."""
        name = message_label(message, raw)
        self.messages.labels(direction=direction, type=name).inc()
        self.message_bytes.labels(direction=direction).inc(len(raw) + tail + wire.HEADER_LEN)
        if tail:
            self.long_frames.labels(direction=direction).inc()
        if message is None:
            self.parse_failures.labels(type=name).inc()

    def roundtrip(self, request_name: str | None, seconds: float) -> None:
        self.signer_roundtrip.labels(family=family_of(request_name)).observe(seconds)

    def channel_detail(self, channel: str, next_counterparty_commit_num: int) -> None:
        """Per-channel gauge, only for the first ``channel_detail_cap`` channels seen (opt-in)."""
        if channel not in self._detailed_channels:
            if len(self._detailed_channels) >= self.channel_detail_cap:
                return
            self._detailed_channels.add(channel)
        self.channel_commit_num.labels(channel=channel).set(next_counterparty_commit_num)

    def exposition(self) -> tuple[bytes, str]:
        """The text format for ``/metrics`` and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hsmproxy")
    except PackageNotFoundError:
        return "unknown"
