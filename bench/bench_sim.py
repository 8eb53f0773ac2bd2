"""Commitment updates per second: node + our simulated signer, real processes, real sockets.

Each configuration runs ``hsmproxy sim-node`` on a fresh data directory for --updates
commitment updates and reads the dance's own rate from its JSON summary (start-up excluded).
The baseline, measured in the same run, is the bare hsmd round trip over the same kind of
socket (get_per_commitment_point, which the signer answers without touching its state), so
the table says how many round-trip-equivalents one update costs. Medians of --runs runs.

    .venv/bin/python bench/bench_sim.py [--updates 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wire  # noqa: E402
from sim.node import NAIVE, WAL, init_request  # noqa: E402
from sim.node_cmd import read_summary  # noqa: E402
from sim.signer_link import SignerProcess  # noqa: E402
from wire import permissions  # noqa: E402

SIGNER = [sys.executable, "-m", "hsmproxy.cli", "sim-signer"]
CONFIGS = [
    ("naive, fsync", ["--discipline", NAIVE]),
    ("wal, fsync", ["--discipline", WAL]),
    ("naive, no signer fsync", ["--discipline", NAIVE, "--signer-arg=--no-fsync"]),
    ("wal, no signer fsync", ["--discipline", WAL, "--signer-arg=--no-fsync"]),
]


def round_trips_per_s(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        signer = SignerProcess(SIGNER, Path(d))
        try:
            signer.master.request(init_request())
            client = signer.client(bytes.fromhex("02" + "11" * 32), 1, permissions.CHANNELD)
            request = wire.build("hsmd_get_per_commitment_point", n=0)
            started = time.perf_counter()
            for _ in range(n):
                client.request(request)
            return n / (time.perf_counter() - started)
        finally:
            signer.close()


def updates_per_s(args: list[str], updates: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMPROXY_SIM_")}
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-m", "hsmproxy.cli", "sim-node", "--data-dir", d, "--updates", str(updates),
                              "--json", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"sim-node failed ({out.returncode}): {out.stderr[-1000:]}")
        return read_summary(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=130)
    baseline = statistics.median(round_trips_per_s(500) for _ in range(args.runs))
    table = Table(title=f"sim-node + sim-signer, {args.updates} updates, median of {args.runs} runs")
    for col in ("configuration", "updates/s", "signer requests/update", "round trips/s (baseline)", "update = N round trips"):
        table.add_column(col, justify="right" if col != "configuration" else "left")
    table.add_row("baseline: get_per_commitment_point", "", "1", f"{baseline:.0f}", "1")
    for name, extra in CONFIGS:
        results = [updates_per_s(extra, args.updates) for _ in range(args.runs)]
        rate = statistics.median(r["updates_per_s"] for r in results)
        r = results[0]
        requests = (r["commitments_signed"] + r["htlc_txs_signed"] + 3 * r["updates_this_run"]) / r["updates_this_run"]
        table.add_row(name, f"{rate:.1f}", f"{requests:.1f}", f"{baseline:.0f}", f"{baseline / rate:.0f}")
    console.print(table)
    console.print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
