"""`hsmproxy serve` as a real process between a client and a signer listening on a socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import wire
from proxy.trio.addresses import AddressError, parse_address
from proxy.trio.socket_mode import check_listen_address
from proxy.addons.trace import read_trace
from tests import ld_harness as h
from tests.prometheus_server import free_port
from tests.serve_harness import (
    REPLY,
    REQUEST,
    connect_when_ready,
    receive_exactly,
    round_trips,
    signer_server,
    start_serve,
    unix_listen,
)

pytestmark = pytest.mark.timeout(60)


async def signer_listener(tmp_path: Path, kind: str) -> tuple[trio.SocketListener, str, str]:
    """A listener for the signer, and (--connect, --listen) of the same kind for the proxy."""
    if kind == "unix":
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(unix_listen(tmp_path / "signer.sock")))
        return listener, f"unix:{tmp_path / 'signer.sock'}", f"unix:{tmp_path / 'proxy.sock'}"
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, f"tcp:127.0.0.1:{listener.socket.getsockname()[1]}", f"tcp:127.0.0.1:{free_port()}"


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_concurrent_connections_each_get_their_own_upstream(tmp_path: Path, kind: str):
    up_listener, connect, listen = await signer_listener(tmp_path, kind)
    trace = tmp_path / "serve.trace"
    received: list = []
    proc = start_serve(listen, connect, "--trace", str(trace))
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(signer_server, up_listener, received)
                streams = [await connect_when_ready(parse_address(listen), proc) for _ in range(3)]
                async with trio.open_nursery() as clients:
                    for stream in streams:
                        clients.start_soon(round_trips, stream, 20)
                await streams[0].send_all(b"\x00\x00\x00\x09garb")  # a partial frame, then close
                for stream in streams:
                    await stream.aclose()
                with trio.fail_after(5):
                    while received.count(b"\x00\x00\x00\x09garb") < 1 or received.count(b"") < 2:
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert received.count(REQUEST) == 60
    records = list(read_trace(str(trace)))
    frames = [r for r in records if r["kind"] == "frame"]
    assert sum(1 for r in frames if r["dir"] == "request") == 60 == sum(1 for r in frames if r["dir"] == "reply")
    assert len({r["conn"]["conn_id"] for r in frames}) == 3
    assert all(r["conn"]["role"] == "socket" for r in frames)
    if kind == "unix":
        assert not os.path.exists(tmp_path / "proxy.sock")  # removed on SIGTERM


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_a_109_without_an_fd_carrier_leaves_the_next_replies_intact(tmp_path: Path, kind: str):
    """A signer on a socket that cannot (TCP) or does not pass fds answers hsmd_client_hsmfd
    with a bare 109: the byte after it is the next reply's length, not a carrier (issue 12 item 4)."""
    client_hsmfd = wire.frame(wire.encode(wire.build("hsmd_client_hsmfd", id=bytes.fromhex("02") + bytes(32),
                                                     dbid=5, permissions=8)))
    reply_109 = wire.frame(b"\x00\x6d")

    async def handle(stream):
        reader = wire.FrameReader()
        async with stream:
            while data := await stream.receive_some(65536):
                for body in reader.bodies(data):
                    await stream.send_all(reply_109 if body[:2] == b"\x00\x09" else REPLY)

    up_listener, connect, listen = await signer_listener(tmp_path, kind)
    proc = start_serve(listen, connect)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, handle, [up_listener])
                stream = await connect_when_ready(parse_address(listen), proc)
                await stream.send_all(client_hsmfd)
                assert await receive_exactly(stream, len(reply_109)) == reply_109
                for _ in range(2):
                    await stream.send_all(REQUEST)
                    assert await receive_exactly(stream, len(REPLY)) == REPLY
                await stream.aclose()
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_addresses_are_checked_with_a_clear_message():
    assert parse_address("unix:/run/x.sock").path == "/run/x.sock"
    assert (parse_address("tcp:[::1]:7701").host, parse_address("tcp:[::1]:7701").port) == ("::1", 7701)
    for bad in ["tcp:localhost", "udp:1.2.3.4:5"]:
        with pytest.raises(AddressError, match=r"is not unix:PATH or \[tcp:\]HOST:PORT"):
            parse_address(bad)
    with pytest.raises(AddressError, match="port 99999 is out of range"):
        parse_address("tcp:host:99999")
    done = _serve_once("--listen", "nowhere", "--connect", "unix:/x")
    assert done.returncode == 2 and "'nowhere' is not unix:PATH or [tcp:]HOST:PORT" in done.stderr


def _serve_once(*args: str) -> subprocess.CompletedProcess:
    """`hsmproxy serve` that is expected to stop at start-up."""
    return subprocess.run([sys.executable, "-m", "hsmproxy.cli", "serve", *args],
                          capture_output=True, text=True, env=h.child_env(), timeout=30)



@pytest.mark.parametrize("options", [("--guard",), ("--wal-dir", "WAL"), ("--guard", "--wal-dir", "WAL")])
def test_no_parse_with_guard_or_wal_dir_is_a_usage_error(tmp_path: Path, options):
    options = [str(tmp_path / o) if o == "WAL" else o for o in options]
    done = _serve_once("--listen", f"unix:{tmp_path / 'p.sock'}", "--connect", "unix:/x", "--no-parse", *options)
    assert done.returncode == 2, done.stderr
    named = " and ".join(o for o in options if o.startswith("--"))
    assert f"hsmproxy: {named} need" in done.stderr and "drop --no-parse" in done.stderr
    assert not (tmp_path / "WAL").exists()  # refused before anything was created

def test_a_live_listen_path_is_refused_and_left_alone(tmp_path: Path):
    path = tmp_path / "proxy.sock"
    with unix_listen(path) as live:
        inode = os.stat(path).st_ino
        done = _serve_once("--listen", f"unix:{path}", "--connect", "unix:/x")
        assert done.returncode == 2
        assert f"unix:{path}: another process is already listening there" in done.stderr
        assert os.stat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # still the first listener's
            live.accept()[0].close()


@pytest.mark.parametrize("option", ["--control", "--metrics"])
def test_an_http_address_that_cannot_be_used_is_a_clear_start_up_error(tmp_path: Path, option: str):
    """Issue 12 item 10: a control or metrics address in use gave a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        listen = tmp_path / "proxy.sock"
        done = _serve_once("--listen", f"unix:{listen}", "--connect", "unix:/x", option, f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
    assert not listen.exists()  # the --listen socket file is removed on the way out


def test_a_live_control_socket_path_is_refused(tmp_path: Path):
    control = tmp_path / "control.sock"
    with unix_listen(control):
        done = _serve_once("--listen", f"unix:{tmp_path / 'proxy.sock'}", "--connect", "unix:/x",
                           "--control", f"unix:{control}")
        assert control.exists()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"control API: unix:{control}: another process is already listening there" in done.stderr


async def test_metrics_alone_says_it_serves_metrics(tmp_path: Path):
    """Issue 12 item 10: `--metrics` alone logged "control API on ...", which it does not serve."""
    port = free_port()
    proc = start_serve(f"unix:{tmp_path / 'proxy.sock'}", f"unix:{tmp_path / 'signer.sock'}",
                       "--metrics", f"127.0.0.1:{port}")
    try:
        with trio.fail_after(20):
            line = ""
            while "on 127.0.0.1" not in line:
                line = await trio.to_thread.run_sync(proc.stderr.readline, abandon_on_cancel=True)
                assert line, "serve stopped before it said where it serves"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert line.strip() == f"hsmproxy: Prometheus metrics (GET /metrics only) on 127.0.0.1:{port}"
    assert "control API" not in proc.stderr.read()


async def test_an_unreachable_signer_closes_the_connection_and_serving_goes_on(tmp_path: Path):
    listen = f"unix:{tmp_path / 'proxy.sock'}"
    proc = start_serve(listen, f"unix:{tmp_path / 'nobody.sock'}")
    try:
        for _ in range(2):
            stream = await connect_when_ready(parse_address(listen), proc)
            with trio.fail_after(10):
                assert await stream.receive_some(10) == b""
            await stream.aclose()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert "cannot reach the signer at unix:" in proc.stderr.read()


# --- issue 12 item 10: a typo must not put signing on the network ---------------------------------

def test_only_loopback_listen_addresses_are_accepted_without_the_flag(caplog):
    for ok in ["unix:/run/hsmproxy.sock", "tcp:127.0.0.1:7701", "tcp:127.9.9.9:1", "[::1]:7701", "localhost:7701", ":7701"]:
        check_listen_address(parse_address(ok), allow_remote=False)
    assert not caplog.records
    for remote in ["tcp:0.0.0.0:7701", "tcp:[::]:7701", "10.0.0.5:7701", "tcp:signer.example:7701", "tcp:[::ffff:127.0.0.1]:1"]:
        with pytest.raises(AddressError, match=r"not a loopback address.*--listen-allow-remote"):
            check_listen_address(parse_address(remote), allow_remote=False)
    check_listen_address(parse_address("tcp:0.0.0.0:7701"), allow_remote=True)
    assert "REACHABLE FROM OTHER MACHINES" in caplog.text and "0.0.0.0:7701" in caplog.text


def test_serve_refuses_a_remote_listen_address_before_listening():
    port = free_port()
    done = _serve_once("--listen", f"tcp:0.0.0.0:{port}", "--connect", "unix:/x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--listen 0.0.0.0:{port}: not a loopback address" in done.stderr and "--listen-allow-remote" in done.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listened there, not even briefly


async def test_serve_listens_remotely_only_when_told_and_says_so(tmp_path: Path):
    port = free_port()
    proc = start_serve(f"tcp:0.0.0.0:{port}", f"unix:{tmp_path / 'signer.sock'}", "--listen-allow-remote")
    try:
        stream = await connect_when_ready(parse_address(f"127.0.0.1:{port}"), proc)
        with trio.fail_after(10):
            assert await stream.receive_some(10) == b""  # relayed: no signer there, so it is closed
        await stream.aclose()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert f"LISTENING ON 0.0.0.0:{port}, REACHABLE FROM OTHER MACHINES" in proc.stderr.read()
