"""The relay hook that feeds ``proxy.addons.metrics``, and the ``/metrics`` route of the HTTP server."""

from __future__ import annotations

from wire.conversation import NO_REPLY_TYPES
from wire.framing import HEADER_LEN

from proxy.core.hooks import (
    CONN_CLOSED,
    CONN_FRAMING_LOST,
    CONN_OPENED,
    CONN_REQUESTS_PAUSED,
    REPLY_AFTER,
    REPLY_BEFORE,
    REQUEST_AFTER,
    REQUEST_BEFORE,
    ROLE_MASTER,
    ROLE_SOCKET,
    ConnContext,
    Exchange,
    HookFailure,
    UnparsedFrame,
)
from proxy.addons.metrics import NODE_TO_SIGNER, SIGNER_TO_NODE, Metrics
from proxy.trio.http_server import Request, Response, RouteTable

_NS = 1e-9


class MetricsHook:
    """Counts frames, parse failures, connections and signer exits; times round trips and overhead.

    Register it last, so that the time it measures includes the hooks before it (the WAL sync is
    part of what the proxy adds).
    """

    observer = True  # it only counts: if it fails, the relay goes on without it

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._in_flight: dict[int, int] = {}  # conn_id -> requests awaiting a reply

    def _set_in_flight(self, conn_id: int, delta: int) -> None:
        count = max(0, self._in_flight.get(conn_id, 0) + delta)
        self._in_flight[conn_id] = count
        self.metrics.requests_in_flight.set(sum(self._in_flight.values()))

    async def on_request(self, ex: Exchange, point: str) -> None:
        m = self.metrics
        if point == REQUEST_BEFORE:
            m.frame(NODE_TO_SIGNER, ex.request, ex.request_raw, ex.request_tail)
        elif point == REQUEST_AFTER:
            if ex.request is None or ex.request.type not in NO_REPLY_TYPES:
                self._set_in_flight(ex.conn.conn_id, +1)
            if ex.request_received_ns is not None and ex.request_forwarded_ns is not None:
                m.proxy_overhead.labels(direction=NODE_TO_SIGNER).observe(
                    (ex.request_forwarded_ns - ex.request_received_ns) * _NS
                )

    async def on_reply(self, ex: Exchange, point: str) -> None:
        m = self.metrics
        if point == REPLY_BEFORE:
            self._set_in_flight(ex.conn.conn_id, -1)
            if ex.reply_raw is not None:
                m.frame(SIGNER_TO_NODE, ex.reply, ex.reply_raw, ex.reply_tail)
            if ex.reply_received_ns is not None and ex.request_forwarded_ns is not None:
                m.roundtrip(ex.request.name if ex.request is not None else None,
                            (ex.reply_received_ns - ex.request_forwarded_ns) * _NS)
        elif point == REPLY_AFTER:
            if ex.reply_received_ns is not None and ex.reply_forwarded_ns is not None:
                m.proxy_overhead.labels(direction=SIGNER_TO_NODE).observe(
                    (ex.reply_forwarded_ns - ex.reply_received_ns) * _NS
                )

    async def on_connection(self, conn: ConnContext, event: str) -> None:
        m = self.metrics
        if event == CONN_OPENED:
            m.connections.labels(role=conn.role).inc()
            m.connections_open.labels(role=conn.role).inc()
            if conn.role in (ROLE_MASTER, ROLE_SOCKET):
                m.signer_up.set(1)
        elif event == CONN_CLOSED:
            m.connections_open.labels(role=conn.role).dec()
            if self._in_flight.pop(conn.conn_id, 0):  # requests that will never be answered
                m.requests_in_flight.set(sum(self._in_flight.values()))
        elif event == CONN_FRAMING_LOST:
            m.framing_lost.labels(role=conn.role).inc()
        elif event == CONN_REQUESTS_PAUSED:
            m.requests_paused.labels(role=conn.role).inc()

    async def on_unparsed(self, frame: UnparsedFrame) -> None:
        """A long status frame (long requests and replies are exchanges)."""
        m = self.metrics
        m.long_frames.labels(direction=SIGNER_TO_NODE).inc()
        m.message_bytes.labels(direction=SIGNER_TO_NODE).inc(frame.length + HEADER_LEN)

    async def on_status(self, conn: ConnContext, raw: bytes, msg) -> None:
        self.metrics.frame(SIGNER_TO_NODE, msg, raw)

    async def on_signer_exit(self, status: int) -> None:
        self.metrics.signer_up.set(0)
        self.metrics.signer_exits.inc()
        self.metrics.signer_exit_status.set(status)

    async def on_hook_failed(self, failure: HookFailure) -> None:
        self.metrics.hook_failures.labels(hook=failure.hook).inc()
        if failure.failed_closed:
            self.metrics.failed_closed.labels(point=failure.where).inc()


def add_metrics_route(routes: RouteTable, metrics: Metrics) -> None:
    """Serve ``GET /metrics`` from an HTTP server's route table (the control API's, or a server of its own)."""

    async def serve_metrics(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(200, body, content_type)

    routes.add("GET", "/metrics", serve_metrics, "Prometheus metrics")
