"""One address grammar for `serve`, the control API and /metrics; one Unix listener for all."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.trio.addresses import Address, AddressError, UnixListener, open_listener, parse_address


@pytest.mark.parametrize(
    "text,address",
    [
        # serve's spellings
        ("unix:/run/hsmd.sock", Address.unix("/run/hsmd.sock")),
        ("tcp:127.0.0.1:7701", Address.tcp("127.0.0.1", 7701)),
        ("tcp:[::1]:7701", Address.tcp("::1", 7701)),
        ("tcp:localhost:7701", Address.tcp("localhost", 7701)),
        # the control API's
        ("8475", Address.tcp("127.0.0.1", 8475)),
        (":8475", Address.tcp("127.0.0.1", 8475)),
        ("127.0.0.2:1", Address.tcp("127.0.0.2", 1)),
        ("[::1]:9", Address.tcp("::1", 9)),
        ("::1:9", Address.tcp("::1", 9)),
        ("/run/x.sock", Address.unix("/run/x.sock")),
        ("./x.sock", Address.unix("./x.sock")),
        (" unix:rel.sock ", Address.unix("rel.sock")),
        ("tcp::7701", Address.tcp("127.0.0.1", 7701)),
        ("0.0.0.0:0", Address.tcp("0.0.0.0", 0)),
    ],
)
def test_every_spelling_of_either_old_grammar_still_works(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text,message",
    [
        ("nowhere", r"'nowhere' is not unix:PATH or \[tcp:\]HOST:PORT"),
        ("localhost:http", "HOST:PORT"),
        ("tcp:localhost", "HOST:PORT"),
        ("udp:1.2.3.4:5", "HOST:PORT"),
        ("[::1:9", "HOST:PORT"),
        ("", "HOST:PORT"),
        ("unix:", "needs a path after 'unix:'"),
        ("tcp:host:99999", "port 99999 is out of range 0-65535"),
    ],
)
def test_bad_addresses_are_named(text, message):
    with pytest.raises(AddressError, match=message):
        parse_address(text)


def test_loopback():
    assert parse_address("unix:/x").is_loopback and parse_address("localhost:1").is_loopback
    assert parse_address("[::1]:9").is_loopback and parse_address("127.9.9.9:1").is_loopback
    assert not parse_address("10.0.0.1:80").is_loopback and not parse_address("example.com:80").is_loopback
    assert not parse_address("0.0.0.0:80").is_loopback


hosts = st.one_of(
    st.just("localhost"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
)
addresses = st.one_of(
    st.builds(Address.tcp, hosts, st.integers(0, 65535)),
    st.builds(Address.unix, st.from_regex(r"/[A-Za-z0-9_./-]{1,60}", fullmatch=True)),
)


@given(addresses)
def test_what_an_address_prints_reads_back_as_the_same_address(address):
    """Logs and `/health` show addresses; a user pastes them into --control or --connect."""
    assert parse_address(str(address)) == address
    if address.kind == "tcp":
        assert parse_address(f"tcp:{address}") == address


def _live(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def test_unix_listener_is_0600_and_replaces_a_stale_socket(tmp_path):
    path = tmp_path / "s.sock"
    _live(path).close()  # a socket file nobody listens on: a process that is gone
    listener = UnixListener(str(path))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        listener.close()
    assert not path.exists()


def test_unix_listener_refuses_a_live_socket_and_leaves_it(tmp_path):
    path = tmp_path / "s.sock"
    with _live(path) as live:
        inode = os.stat(path).st_ino
        with pytest.raises(AddressError, match=f"unix:{path}: another process is already listening there"):
            UnixListener(str(path))
        assert os.stat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            live.accept()[0].close()


def test_unix_listener_never_removes_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(AddressError, match="not a socket is in the way"):
        UnixListener(str(path))
    assert path.read_text() == "mine"


def test_a_socket_file_is_removed_only_while_it_is_ours(tmp_path):
    path = tmp_path / "s.sock"
    first = UnixListener(str(path))
    first.sock.close()  # the first process is gone...
    second = UnixListener(str(path))  # ...a second took the path over
    first.remove_file()  # the first's late clean-up must not take the second's socket away
    assert path.exists()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
    second.close()
    assert not path.exists()


def test_a_tcp_port_in_use_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(AddressError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_listener(Address.tcp("127.0.0.1", port))
