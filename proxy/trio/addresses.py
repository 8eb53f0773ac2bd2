"""Where the proxy listens and connects: one address grammar, and one way to listen on a Unix path.

Used by `serve` (``--listen``, ``--connect``), the control API and ``/metrics`` (``--control``,
``--metrics``) and their clients, so every spelling works everywhere:

    unix:PATH, /PATH, ./PATH         a Unix socket
    tcp:HOST:PORT, HOST:PORT         TCP; HOST may be a name, an IPv4 or [IPv6] address
    :PORT, PORT                      TCP on 127.0.0.1

A Unix socket file is created 0600 (whoever can connect can ask for signatures, or change the
fault rules). A socket file left by a process that is gone is replaced; one that a live process
listens on is not: two proxies on one path would each take the other's clients, and the first to
stop would delete the other's socket.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT = 1.0  # a listener with a full backlog keeps a connect waiting; then refuse, not guess


class AddressError(ValueError):
    """An address that cannot be used: not in the grammar, or its path or port is taken."""


@dataclass(frozen=True)
class Address:
    kind: str  # "unix" | "tcp"
    host: str = LOOPBACK
    port: int = 0
    path: str = ""

    @classmethod
    def unix(cls, path: str) -> "Address":
        return cls("unix", path=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> "Address":
        return cls("tcp", host=host, port=port)

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self)


def is_loopback(address: Address) -> bool:
    """Only this machine can reach it: a Unix socket, localhost or a loopback IP."""
    if address.kind == "unix" or address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> Address:
    """An :class:`Address` from any spelling of the grammar above; :class:`AddressError` names the bad text."""
    spec = text.strip()
    if spec.startswith("unix:"):
        if not spec[5:]:
            raise AddressError(f"address {text!r} needs a path after 'unix:', e.g. unix:/run/hsmproxy.sock")
        return Address.unix(spec[5:])
    if spec.startswith(("/", "./")):
        return Address.unix(spec)
    host, sep, port = spec.removeprefix("tcp:").rpartition(":")
    if not sep:
        host, port = "", spec
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (port.isascii() and port.isdigit()) or not _is_host(host):
        raise AddressError(
            f"address {text!r} is not unix:PATH or [tcp:]HOST:PORT "
            "(e.g. unix:/run/hsmproxy.sock, tcp:127.0.0.1:7701, [::1]:8475)"
        )
    if int(port) > 65535:
        raise AddressError(f"address {text!r}: port {int(port)} is out of range 0-65535")
    return Address.tcp(host or LOOPBACK, int(port))


def _is_host(host: str) -> bool:
    if ":" in host:  # only an IPv6 address may hold colons (not "udp:1.2.3.4")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return not any(c in host for c in "[]/ ")


class UnixListener:
    """A listening Unix socket, created 0600, and the file it made.

    A file already at the path is replaced only if it is a socket that nobody listens on (left
    by a process that is gone). :meth:`remove_file` deletes the file only while it is still the
    one this listener listens on: after a restart a newer process may own the path.
    """

    def __init__(self, path: str, backlog: int = 64):
        self.path = path
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # 0600 from the start: no moment in which others may connect
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise AddressError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        created = os.stat(path)
        self._identity = (created.st_dev, created.st_ino)
        sock.listen(backlog)
        self.sock = sock

    def remove_file(self) -> None:
        """Delete the socket file, unless another process has the path now. Call before ``close``."""
        if self._still_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close(self) -> None:
        self.remove_file()
        self.sock.close()

    def _still_ours(self) -> bool:
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        if (now.st_dev, now.st_ino) != self._identity:
            return False
        # The same inode number is not proof: some filesystems hand a freed one out again at
        # once. Proof is a connection to the path that arrives here (we are stopping: whatever
        # else waits in the backlog would be dropped anyway).
        name = b"\0hsmproxy-probe-" + os.urandom(8).hex().encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)
            try:
                probe.bind(name)
                probe.connect(self.path)
                self.sock.setblocking(False)
                while True:
                    conn, peer = self.sock.accept()
                    conn.close()
                    if peer == name:
                        return True
            except OSError:  # nothing (more) here: the connection went elsewhere, or we are closed
                return False


def _clear_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AddressError(f"unix:{path}: a file that is not a socket is in the way; remove it or pick another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a stale file from a process that is gone
    except OSError as exc:  # e.g. no permission, or a backlog so full that the connect timed out
        raise AddressError(f"unix:{path}: cannot tell whether another process listens there ({exc}); "
                           "pick another path") from None
    else:
        raise AddressError(f"unix:{path}: another process is already listening there; "
                           "stop it or pick another path")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class TcpListener:
    """A listening TCP socket (``.sock``), the counterpart of :class:`UnixListener`."""

    def __init__(self, addr: Address, backlog: int = 64):
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr.host, addr.port))
        except OSError as exc:
            sock.close()
            raise AddressError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
        sock.listen(backlog)
        self.sock = sock

    def close(self) -> None:
        self.sock.close()


def open_listener(address: Address, backlog: int = 64) -> UnixListener | TcpListener:
    """A listening socket at ``address``; ``close()`` also removes a Unix socket file while it
    is still ours. :class:`AddressError` names an address that cannot be listened on."""
    if address.kind == "unix":
        return UnixListener(address.path, backlog)
    return TcpListener(address, backlog)
