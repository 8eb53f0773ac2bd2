"""The HTTP server of the control API and ``/metrics``: HTTP/1.1 + JSON on trio, parsed by h11,
serving a route table others add to.

Every request is answered within a bound: reading the request, running the handler and writing
the answer each run under a deadline, and handlers are expected not to wait on the relay (the
fault routes only touch in-memory state). A handler that overruns gets a 503, never a hang.

Listens on a loopback address or on a Unix socket created 0600 (``proxy.trio.addresses``). Any other host needs
``allow_remote`` and a token; with a token set every request must carry
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from proxy.trio.addresses import Address, AddressError, UnixListener

MAX_BODY = 1 << 20


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self):
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the request body is not valid JSON") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, data, status: int = 200) -> "Response":
        return cls(status, (json.dumps(data, indent=None, sort_keys=False) + "\n").encode())

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> "Response":
        return cls(status, text.encode(), content_type)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[Response]]


class RouteTable:
    """Method + path pattern -> handler. ``{name}`` segments become ``request.params[name]``.

    Other parts of the proxy register their own routes here (the metrics engineer adds
    ``GET /metrics``), so one server answers everything.
    """

    def __init__(self):
        self._routes: list[tuple[str, tuple[str, ...], Handler, str]] = []

    def add(self, method: str, pattern: str, handler: Handler, summary: str = "") -> None:
        segments = tuple(s for s in pattern.split("/") if s)
        for m, segs, _, _ in self._routes:
            if m == method and segs == segments:
                raise ValueError(f"route {method} {pattern} is registered twice")
        self._routes.append((method.upper(), segments, handler, summary))

    def route(self, method: str, pattern: str, summary: str = ""):
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler, summary)
            return handler

        return decorate

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        parts = tuple(s for s in path.split("/") if s)
        allowed = []
        for m, segs, handler, _ in self._routes:
            params = _match(segs, parts)
            if params is None:
                continue
            if m == method:
                return handler, params
            allowed.append(m)
        if allowed:
            raise HTTPError(405, f"{method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}")
        raise HTTPError(404, f"no such endpoint {path}; GET / lists the endpoints")

    def listing(self) -> list[dict]:
        return [{"method": m, "path": "/" + "/".join(segs), "summary": s} for m, segs, _, s in self._routes]


def _match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params = {}
    for p, actual in zip(pattern, parts):
        if p.startswith("{") and p.endswith("}"):
            params[p[1:-1]] = actual
        elif p != actual:
            return None
    return params


def _parse_target(target: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(target)
    return unquote(split.path) or "/", dict(parse_qsl(split.query))


class HttpServer:
    """Serves one :class:`RouteTable` over HTTP/1.1 (h11), on TCP or a Unix socket."""

    def __init__(
        self,
        routes: RouteTable,
        token: str | None = None,
        handler_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ):
        self.routes = routes
        self.token = token
        self.handler_timeout = handler_timeout
        self.read_timeout = read_timeout
        self.address: Address | None = None
        routes.add("GET", "/", self._index, "this list of endpoints")

    async def _index(self, request: Request) -> Response:
        return Response.json({"endpoints": self.routes.listing()})

    # --- listening --------------------------------------------------------------------------
    async def serve(self, address: Address, allow_remote: bool = False, *, task_status=trio.TASK_STATUS_IGNORED):
        """Listen and serve until cancelled; ``task_status.started`` gets the bound address.

        An address that cannot be listened on raises :class:`AddressError` naming it.
        """
        if not address.is_loopback and not (allow_remote and self.token):
            raise AddressError(
                f"refusing to serve the control API on {address}: it is not a loopback address; "
                "pass --control-allow-remote and --control-token TOKEN to bind there"
            )
        unix = None
        if address.kind == "unix":
            unix = UnixListener(address.path, backlog=16)
            # trio closes its listener when serving stops; a copy of the fd keeps the socket open
            # until unix.close() has checked that the file is still ours
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(unix.sock.dup()))]
            bound = address
        else:
            try:
                listeners = await trio.open_tcp_listeners(address.port, host=address.host)
            except OSError as exc:
                raise AddressError(f"cannot listen on {address}: {exc.strerror or exc}") from None
            bound = Address.tcp(address.host, listeners[0].socket.getsockname()[1])
        self.address = bound
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(bound)
                for listener in listeners:
                    nursery.start_soon(trio.serve_listeners, self.handle_stream, [listener])
        finally:
            if unix is not None:
                unix.close()  # removes the file only if still ours: a newer server may have the path now

    # --- one connection ---------------------------------------------------------------------
    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                with trio.move_on_after(self.read_timeout) as read_scope:
                    request = await self._read_request(conn, stream)
                if read_scope.cancelled_caught or request is None:
                    return
                response = await self._respond(request)
                keep_alive = await self._send(conn, stream, response)
                if not keep_alive or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        except _BadRequest as exc:
            try:
                with trio.move_on_after(self.read_timeout):
                    await self._send(conn, stream, Response.json({"error": str(exc)}, exc.status))
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                pass
        finally:
            with trio.move_on_after(0.5):
                await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream) -> Request | None:
        head = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequest(exc.error_status_hint, f"malformed HTTP request: {exc}") from None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _BadRequest(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                path, query = _parse_target(head.target.decode("ascii", "replace"))
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), path, query, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, request: Request) -> Response:
        if self.token is not None:
            supplied = request.headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {self.token}".encode()):
                return Response.json({"error": "missing or wrong token: send 'Authorization: Bearer TOKEN'"}, 401)
        try:
            handler, request.params = self.routes.resolve(request.method, request.path)
            with trio.move_on_after(self.handler_timeout) as scope:
                response = await handler(request)
            if scope.cancelled_caught:
                return Response.json({"error": f"{request.method} {request.path} did not finish within {self.handler_timeout} s"}, 503)
            return response
        except HTTPError as exc:
            return Response.json({"error": exc.message}, exc.status)

    async def _send(self, conn: h11.Connection, stream, response: Response) -> bool:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("cache-control", "no-store"),
        ]
        # One write for the whole answer: separate small writes would wait on delayed ACKs.
        data = b"".join(
            conn.send(event)
            for event in (h11.Response(status_code=response.status, headers=headers), h11.Data(data=response.body), h11.EndOfMessage())
        )
        with trio.move_on_after(self.read_timeout) as scope:
            await stream.send_all(data)
        return not scope.cancelled_caught


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
