"""Memory of `hsmproxy serve` under loads that used to grow it without bound (issue 12 item 3).

Real processes on Unix sockets: a signer that reads everything and answers nothing, `hsmproxy
serve` in front of it, and a node that sends

* N tiny requests without waiting for answers (``hsmd_get_per_commitment_point``, 14 bytes
  framed), N = 1M and 3M: before the cap on unanswered requests, each one left an exchange in
  the relay's pending queue;
* on 3 connections, 100 MiB each of one frame announced as 2^27-1 bytes (never finished):
  before piecewise forwarding, each frame was buffered whole.

The node writes until everything is sent or the proxy stops taking its bytes (backpressure: no
progress for ``--stall`` seconds while the proxy uses no CPU), then the proxy's peak and current RSS (VmHWM, VmRSS from
/proc) are read. Each load gets a fresh proxy. ``--baseline TREE`` runs a second source tree
(e.g. an export of main before the fix) side by side in the same run.

    .venv/bin/python bench/bench_memory.py [--runs 3] [--baseline /tmp/old-tree] [--loads 1M,3M,huge]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relay import show_table, wait_for_socket  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PCP = bytes.fromhex("0000000a00120000000000000000")  # hsmd_get_per_commitment_point(0), framed
HUGE_LENGTH = (1 << 27) - 1
MiB = 1 << 20


# ---- the signer: reads everything, answers nothing ----------------------------------------------


def role_sink(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)

    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


# ---- the node -----------------------------------------------------------------------------------


def send_until_stalled(sock: socket.socket, chunks, stall: float, busy) -> int:
    """Send the chunks; stop early when the proxy takes nothing for ``stall`` seconds while it
    is idle (``busy()`` says whether it used CPU since the last call): then it has stopped
    reading on purpose (backpressure), not fallen behind. Bytes sent."""
    sock.settimeout(stall)
    sent = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            try:
                n = sock.send(view)
            except socket.timeout:
                if busy():
                    continue
                return sent
            view = view[n:]
            sent += n
    return sent


def tiny_requests(count: int, batch: int = 4096):
    block = PCP * batch
    full, rest = divmod(count, batch)
    for _ in range(full):
        yield block
    if rest:
        yield PCP * rest


def huge_frame_start(body_bytes: int, chunk: int = MiB):
    yield HUGE_LENGTH.to_bytes(4, "big") + b"\x00\x12"
    left = body_bytes - 2
    piece = bytes(chunk)
    while left > 0:
        yield piece[: min(chunk, left)]
        left -= chunk


# ---- measuring ------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of ``pid`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, quiet: float = 0.5, timeout: float = 600.0) -> None:
    """Until the proxy has used no CPU for ``quiet`` seconds (it has dealt with what it took)."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


def run_load(tree: Path, load: str, here: str, stall: float) -> tuple[int, int, int, int]:
    """One fresh signer + proxy from ``tree`` under ``load``: (VmHWM, VmRSS, bytes sent, bytes offered)."""
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    signer_path, proxy_path = f"{here}/signer.sock", f"{here}/proxy.sock"
    for path in (signer_path, proxy_path):
        if os.path.exists(path):
            os.unlink(path)
    procs = []
    try:
        signer = subprocess.Popen([sys.executable, __file__, "--role", "sink", signer_path], env=env)
        procs.append(signer)
        wait_for_socket(signer_path, signer)
        proxy = subprocess.Popen([sys.executable, "-m", "hsmproxy.cli", "serve", "--listen", f"unix:{proxy_path}",
                                  "--connect", f"unix:{signer_path}"], env=env, cwd=here,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proxy)
        wait_for_socket(proxy_path, proxy)
        if load == "huge":
            conns, offered = 3, 3 * (100 * MiB + 4)
            streams = [huge_frame_start(100 * MiB) for _ in range(conns)]
        else:
            count = {"1M": 1_000_000, "3M": 3_000_000}[load]
            conns, offered = 1, count * len(PCP)
            streams = [tiny_requests(count)]
        socks = []
        for _ in range(conns):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(proxy_path)
            socks.append(sock)
        sent = [0] * conns
        last_ticks = [cpu_ticks(proxy.pid)] * conns

        def node(i: int) -> None:
            def busy() -> bool:
                now = cpu_ticks(proxy.pid)
                moved, last_ticks[i] = now != last_ticks[i], now
                return moved

            sent[i] = send_until_stalled(socks[i], streams[i], stall, busy)

        threads = [threading.Thread(target=node, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_idle(proxy.pid)
        mem = proc_status(proxy.pid)
        for sock in socks:
            sock.close()
        return mem["VmHWM"], mem["VmRSS"], sum(sent), offered
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", metavar="TREE", help="another source tree to measure side by side (before)")
    parser.add_argument("--loads", default="1M,3M,huge")
    parser.add_argument("--stall", type=float, default=3.0,
                        help="seconds without progress after which the node stops writing (backpressure)")
    parser.add_argument("--role", choices=["sink"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sink":
        role_sink(*args.paths)
        return 0

    trees = {"this tree": REPO}
    if args.baseline:
        trees = {"baseline": Path(args.baseline).resolve(), **trees}
    loads = args.loads.split(",")
    here = tempfile.mkdtemp(prefix="bench-memory-")
    results: dict[tuple[str, str], list[tuple[int, int, int, int]]] = {}
    try:
        for run in range(args.runs):
            for load in loads:
                for name, tree in trees.items():  # side by side: drift hits both alike
                    results.setdefault((load, name), []).append(run_load(tree, load, here, args.stall))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        shutil.rmtree(here, ignore_errors=True)
    print_table(results, args.runs)
    return 0


LOAD_NAMES = {
    "1M": "1M tiny unanswered requests",
    "3M": "3M tiny unanswered requests",
    "huge": "3 conns x 100 MiB of a (2^27-1)-byte frame",
}


def print_table(results, runs: int) -> None:
    title = f"RSS of the `hsmproxy serve` process (median of {runs} runs; a fresh proxy per load)"
    headers = ["load", "tree", "peak RSS (VmHWM) MB", "RSS after MB", "node bytes taken", "of offered"]
    rows = []
    for (load, name), values in results.items():
        hwm, rss, sent, offered = (statistics.median(v[i] for v in values) for i in range(4))
        rows.append([LOAD_NAMES.get(load, load), name, f"{hwm / 1e6:,.0f}", f"{rss / 1e6:,.0f}", f"{sent:,.0f}",
                     f"{offered:,.0f}"])
    show_table(title, headers, rows, left=2)


if __name__ == "__main__":
    sys.exit(main())
