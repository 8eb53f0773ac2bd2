"""A small blocking client for the control API (used by ``hsmproxy faults`` and by tests)."""

from __future__ import annotations

import http.client
import json
import socket

from proxy.trio.addresses import Address, parse_address


class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ControlClient:
    def __init__(self, address: str | Address, token: str | None = None, timeout: float = 5.0):
        self.address = parse_address(address) if isinstance(address, str) else address
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body=None) -> dict:
        if self.address.kind == "unix":
            conn = _UnixConnection(self.address.path, self.timeout)
        else:
            conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=self.timeout)
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        payload = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(0, f"cannot reach the control API at {self.address}: {exc}; is the proxy running with --control?") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"text": raw.decode("utf-8", "replace")}
        if response.status >= 400:
            raise ControlError(response.status, data.get("error", f"HTTP {response.status}"))
        return data

    # Conveniences named after the endpoints.
    def health(self) -> dict:
        return self.request("GET", "/health")

    def rules(self) -> list[dict]:
        return self.request("GET", "/faults/rules")["rules"]

    def add(self, line: str | None = None, rule: dict | None = None) -> list[dict]:
        body = {"line": line} if line is not None else {"rule": rule}
        return self.request("POST", "/faults/rules", body)["added"]

    def remove(self, name: str) -> None:
        self.request("DELETE", f"/faults/rules/{name}")

    def clear(self) -> int:
        return self.request("DELETE", "/faults/rules")["removed"]

    def enable(self, on: bool = True) -> None:
        self.request("POST", "/faults/enable" if on else "/faults/disable")

    def held(self) -> list[dict]:
        return self.request("GET", "/faults/held")["held"]

    def release(self, hold_id: int | None = None) -> list[int]:
        return self.request("POST", "/faults/release", {} if hold_id is None else {"id": hold_id})["released"]

    def events(self, limit: int = 100) -> dict:
        return self.request("GET", f"/faults/events?limit={limit}")

    def trace(self) -> dict:
        return self.request("GET", "/faults/trace")
