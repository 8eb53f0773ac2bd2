"""The control server: HTTP/1.1 + JSON on trio, parsed by h11, with a route table others add to.

Every request is answered within a bound: reading the request, running the handler and writing
the answer each run under a deadline, and handlers are expected not to wait on the relay (the
fault routes only touch in-memory state). A handler that overruns gets a 503, never a hang.

Listens on 127.0.0.1 by default, or on a Unix socket created 0600. Any other host needs
``allow_remote`` and a token; with a token set every request must carry
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import h11
import trio

MAX_BODY = 1 << 20
DEFAULT_PORT = 8474 + 1  # next to Toxiproxy's 8474, so both can run side by side


class ControlAddressError(ValueError):
    pass


@dataclass(frozen=True)
class ControlAddress:
    kind: str  # "tcp" | "unix"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.kind == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str) -> ControlAddress:
    """``unix:/path``, ``/path``, ``HOST:PORT``, ``tcp:HOST:PORT`` (as `serve` writes it), ``:PORT`` or ``PORT``."""
    text = text.strip().removeprefix("tcp:")
    if text.startswith("unix:") or text.startswith("/") or text.startswith("./"):
        path = text[5:] if text.startswith("unix:") else text
        if not path:
            raise ControlAddressError("control address 'unix:' needs a path, e.g. unix:/run/hsmproxy.sock")
        return ControlAddress("unix", path=path)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ControlAddressError(
            f"cannot read the control address {text!r}; give HOST:PORT (e.g. 127.0.0.1:8475) or unix:/path/to.sock"
        ) from None
    if not 0 <= number <= 65535:
        raise ControlAddressError(f"control port {number} is out of range 0-65535")
    return ControlAddress("tcp", host=host, port=number)


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
    from urllib.parse import parse_qsl, unquote, urlsplit

    split = urlsplit(target)
    return unquote(split.path) or "/", dict(parse_qsl(split.query))


class ControlServer:
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
        self.address: ControlAddress | None = None
        routes.add("GET", "/", self._index, "this list of endpoints")

    async def _index(self, request: Request) -> Response:
        return Response.json({"endpoints": self.routes.listing()})

    # --- listening --------------------------------------------------------------------------
    async def serve(self, address: ControlAddress, allow_remote: bool = False, *, task_status=trio.TASK_STATUS_IGNORED):
        """Listen and serve until cancelled; ``task_status.started`` gets the bound address."""
        if not address.is_loopback and not (allow_remote and self.token):
            raise ControlAddressError(
                f"refusing to serve the control API on {address}: it is not a loopback address; "
                "pass --control-allow-remote and --control-token TOKEN to bind there"
            )
        if address.kind == "unix":
            listeners = [await _unix_listener(address.path)]
            bound = address
        else:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host)
            port = listeners[0].socket.getsockname()[1]
            bound = ControlAddress("tcp", host=address.host, port=port)
        self.address = bound
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(bound)
                for listener in listeners:
                    nursery.start_soon(trio.serve_listeners, self.handle_stream, [listener])
        finally:
            if address.kind == "unix":
                try:
                    os.unlink(address.path)
                except OSError:
                    pass

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


async def _unix_listener(path: str) -> trio.SocketListener:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
        else:
            raise ControlAddressError(f"{path} exists and is not a socket; pick another control socket path")
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: only the proxy's user may control it
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)
