"""Round trips through the relay vs. the alternatives, over Unix sockets, in one run.

A signer process answers each captured ``hsmd_sign_remote_commitment_tx`` (1.1 KB framed) with
its captured ``hsmd_sign_tx_reply``. A blocking client does strict request -> reply round trips,
as lightningd and the subdaemons do, through each path in turn:

* direct          client -> signer
* hsmproxy serve  client -> `hsmproxy serve` with its default hooks (shadow state, ...) -> signer
* hsmproxy relay, parse, no hooks   the same shell and relay core (proxy.trio.socket_mode.serve),
                  every frame decoded, an empty hook list: the cost of the relay itself
* hsmproxy serve --no-parse   `hsmproxy serve` without decoding (and so without the shadow)
* socat           client -> socat UNIX-LISTEN,fork -> signer
* bare trio pump  client -> a minimal trio byte pump (receive_some/send_all) -> signer

Each run measures every path once (interleaved, so drift hits them alike); the table shows
the median over runs of round trips per second and of the p50/p99 latency. Ratios are against
the bare trio pump (rate) and direct (added latency).

    .venv/bin/python bench/bench_relay.py [--runs 5] [--round-trips 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAPTURE = REPO / "tests" / "vectors" / "hsmd-capture.jsonl"


def captured_pair() -> tuple[bytes, bytes]:
    records = [json.loads(line) for line in open(CAPTURE)]
    records = [r for r in records if r["kind"] == "msg" and r["conn"] != "status" and r["session"] == "main"]
    best = None
    for req, rep in zip(records, records[1:]):
        if req["name"] == "hsmd_sign_remote_commitment_tx" and rep["name"] == "hsmd_sign_tx_reply":
            pair = bytes.fromhex(req["framed_hex"]), bytes.fromhex(rep["framed_hex"])
            if best is None or abs(len(pair[0]) - 1100) < abs(len(best[0]) - 1100):
                best = pair
    assert best is not None, "no sign_remote_commitment_tx in the capture"
    return best


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError
        got += k
    return bytes(buf)


# ---- the processes ----------------------------------------------------------------------------------


def role_signer(path: str) -> None:
    request, reply = captured_pair()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    import threading

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    header = recv_exactly(conn, 4)
                    (length,) = struct.unpack(">I", header)
                    recv_exactly(conn, length)
                    conn.sendall(reply)
            except (EOFError, ConnectionResetError):
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def role_relay(listen: str, connect: str) -> None:
    """The relay shell with parsing on and no hooks, on the same sockets `hsmproxy serve` uses."""
    import functools

    import trio

    from proxy.core.hooks import HookChain
    from proxy.trio.addresses import open_listener, parse_address
    from proxy.trio.socket_mode import serve

    listener = open_listener(parse_address(f"unix:{listen}"))
    trio.run(functools.partial(serve, listener.sock, parse_address(f"unix:{connect}"), HookChain([]), decode=True))


def role_pump(listen: str, connect: str) -> None:
    import trio

    async def pump(src, dst):
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        await dst.send_eof()

    async def handle(down):
        up = await trio.open_unix_socket(connect)
        async with down, up:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, down, up)
                nursery.start_soon(pump, up, down)

    async def main():
        sock = trio.socket.socket(socket.AF_UNIX)
        await sock.bind(listen)
        sock.listen(16)
        await trio.serve_listeners(handle, [trio.SocketListener(sock)])

    trio.run(main)


# ---- measuring ------------------------------------------------------------------------------------


def wait_for_socket(path: str, proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before listening on {path}")
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {path} after {timeout}s")


def measure(path: str, request: bytes, reply_len: int, n: int, warmup: int) -> tuple[float, list[int]]:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    try:
        for _ in range(warmup):
            sock.sendall(request)
            recv_exactly(sock, reply_len)
        lat = []
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(n):
            t0 = clock()
            sock.sendall(request)
            recv_exactly(sock, reply_len)
            lat.append(clock() - t0)
        elapsed = (clock() - start) / 1e9
    finally:
        sock.close()
    return n / elapsed, lat


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its live children (socat serves from a forked child)."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return total
    return total + sum(cpu_seconds(c) for c in children)


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--role", choices=["signer", "pump", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "signer":
        role_signer(*args.paths)
        return 0
    if args.role == "pump":
        role_pump(*args.paths)
        return 0
    if args.role == "relay":
        role_relay(*args.paths)
        return 0

    request, reply = captured_pair()
    here = tempfile.mkdtemp(prefix="bench-relay-")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    signer_path = f"{here}/signer.sock"
    procs: list[subprocess.Popen] = []
    modes: dict[str, str] = {"direct": signer_path}
    middle: dict[str, int] = {}  # path name -> pid of the process in the middle

    def start(name: str, argv: list[str], listen: str) -> None:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_socket(listen, proc)
        modes[name] = listen
        if name != "direct":
            middle[name] = proc.pid

    try:
        start("direct", [py, __file__, "--role", "signer", signer_path], signer_path)
        start("hsmproxy serve", [py, "-m", "hsmproxy.cli", "serve", "--listen", f"unix:{here}/proxy.sock",
                                 "--connect", f"unix:{signer_path}"], f"{here}/proxy.sock")
        start("hsmproxy relay, parse, no hooks", [py, __file__, "--role", "relay", f"{here}/relay.sock",
                                                 signer_path], f"{here}/relay.sock")
        start("hsmproxy serve --no-parse", [py, "-m", "hsmproxy.cli", "serve", "--no-parse", "--listen",
                                            f"unix:{here}/raw.sock", "--connect", f"unix:{signer_path}"],
              f"{here}/raw.sock")
        if shutil.which("socat"):
            start("socat", ["socat", f"UNIX-LISTEN:{here}/socat.sock,fork", f"UNIX-CONNECT:{signer_path}"],
                  f"{here}/socat.sock")
        start("bare trio pump", [py, __file__, "--role", "pump", f"{here}/pump.sock", signer_path],
              f"{here}/pump.sock")

        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in modes}
        for run in range(args.runs):
            for name, path in modes.items():
                pid = middle.get(name)
                cpu_before = cpu_seconds(pid) if pid else 0.0
                rate, lat = measure(path, request, len(reply), args.round_trips, args.warmup)
                cpu = (cpu_seconds(pid) - cpu_before) / (args.round_trips + args.warmup) * 1e6 if pid else 0.0
                results[name].append((rate, percentile(lat, 0.50) / 1e3, percentile(lat, 0.99) / 1e3, cpu))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(here, ignore_errors=True)

    med = {name: tuple(statistics.median(r[i] for r in rows) for i in range(4)) for name, rows in results.items()}
    pump_rate = med["bare trio pump"][0]
    direct = med["direct"]
    print_table(med, pump_rate, direct, args, len(request), len(reply))
    return 0


def print_table(med, pump_rate, direct, args, req_len, rep_len) -> None:
    title = (f"Round trips over Unix sockets: {req_len}-byte hsmd_sign_remote_commitment_tx -> {rep_len}-byte "
             f"hsmd_sign_tx_reply; median of {args.runs} runs x {args.round_trips} round trips")
    headers = ["path", "round trips/s", "p50 µs", "p99 µs", "rate vs bare pump", "added p50 µs", "added p99 µs",
               "middle CPU µs/rt"]
    rows = []
    for name, (rate, p50, p99, cpu) in med.items():
        rows.append([name, f"{rate:,.0f}", f"{p50:.1f}", f"{p99:.1f}", f"{rate / pump_rate:.2f}x",
                     "-" if name == "direct" else f"{p50 - direct[1]:+.1f}",
                     "-" if name == "direct" else f"{p99 - direct[2]:+.1f}",
                     "-" if name == "direct" else f"{cpu:.1f}"])
    show_table(title, headers, rows)


def show_table(title: str, headers: list[str], rows: list[list[str]], left: int = 1) -> None:
    """A table on the terminal (rich when installed); the first ``left`` columns left-aligned."""
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, head in enumerate(headers):
            table.add_column(head, justify="left" if i < left else "right")
        for row in rows:
            table.add_row(*row)
        Console(width=160).print(table)
    except ImportError:
        print(title)
        for row in [headers, *rows]:
            print("  ".join(f"{c:>18}" for c in row))


if __name__ == "__main__":
    sys.exit(main())
