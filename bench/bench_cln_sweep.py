"""Crash sweeps against real Core Lightning: crash cycles per second, and where a cycle's time goes.

    LIGHTNINGD=... BITCOIND=... .venv/bin/python bench/bench_cln_sweep.py [--repeat 3] [--cycles '*@reply.before_forward:*']

Each repeat builds a fresh network (bitcoind, two nodes, one channel) and runs:

* the sweep's cycles named by --cycles (default: every request at reply.before_forward on both
  nodes, 12 cycles; ``--cycles all`` for the whole sweep), timing each phase;
* the baseline, on a second network built the same way but with lightning_hsmd directly behind
  lightningd (no proxy): the same number of crash cycles where the bench itself SIGKILLs
  lightningd right after a payment starts, then restarts, reconnects, pays again both ways and
  waits until no HTLC is in flight. That is what Core Lightning costs by itself.

Rows are medians over every cycle of every repeat (phases) or over the repeats (rates). Target of
issue 13: at least 0.3 crash cycles per second on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos.cln.judge import AFTER_RESTART, DRIVE, FULFIL  # noqa: E402
from chaos.cln.network import Network, find_binaries  # noqa: E402
from chaos.cln.points import parse_selector  # noqa: E402
from chaos.cln.sweep import Sweep, SweepConfig  # noqa: E402
from hsmproxy.control_client import ControlClient  # noqa: E402

PHASES = ("arm", "fire", "dead", "restart", "restart.proxy_lock_wait", "restart.proxy_start", "reconnect",
          "pay_again", "settle", "judge")
EXPLAIN = {
    "arm": "add the kill-node rule through the control API",
    "fire": "drive payments until lightningd is killed",
    "dead": "lightningd reaped, its subdaemons and plugins gone",
    "restart": "lightningd started again until RPC answers, synced",
    "restart.proxy_lock_wait": "  of which: new proxy waits for the old one's WAL",
    "restart.proxy_start": "  of which: proxy start (interpreter, imports, WAL replay)",
    "reconnect": "connect; channel CHANNELD_NORMAL on both sides",
    "pay_again": "two payments after the restart, both ways at once",
    "settle": "no HTLC in flight; interrupted payments resolved",
    "judge": "read both WALs, channel views, judge",
}


def sweep_once(root: Path, binaries, selectors, timeout: float):
    config = SweepConfig(binaries=binaries, control=ControlClient, selectors=selectors, timeout=timeout,
                         workdir=root, keep="none")
    return Sweep(config).run()


def baseline_once(root: Path, binaries, cycles: int, timeout: float) -> tuple[float, list[dict[str, float]]]:
    """(set-up s, phase timings per cycle) of crash cycles without the proxy."""
    started = time.monotonic()
    network = Network(root / "baseline", binaries, proxied=False, timeout=timeout)
    timings = []
    try:
        network.start()
        network.wait_payment(network.start_payment("l1", 400_000_000, FULFIL, "warm_up"), timeout)
        setup = time.monotonic() - started
        for number in range(cycles):
            name = ("l1", "l2")[number % 2]
            node, peer = network.nodes[name], network.peer_of(name)
            laps, clock = {}, time.monotonic()

            def lap(what: str) -> None:
                nonlocal clock
                now = time.monotonic()
                laps[what] = now - clock
                clock = now

            node.note_incarnation()
            network.start_payment(name, 1_000_000 + number, FULFIL, DRIVE)
            node.kill()
            lap("fire")
            node.wait_dead(timeout)
            node.wait_incarnation_gone(timeout)
            lap("dead")
            node.start(network.port(), timeout)
            lap("restart")
            network.connect(name)
            network.wait_normal(timeout)
            lap("reconnect")
            again = [network.start_payment(payer, 2_000_000 + number, FULFIL, AFTER_RESTART) for payer in (name, peer.name)]
            for payment in again:
                network.wait_payment(payment, timeout)
            lap("pay_again")
            network.wait_settled(timeout)
            lap("settle")
            timings.append(laps)
    finally:
        network.stop()
    return setup, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="fresh networks per variant (default 3)")
    parser.add_argument("--cycles", default="*@reply.before_forward:*",
                        help="which crash cycles (a --cycle selector, or 'all'; default every request at "
                             "reply.before_forward on both nodes)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    binaries = find_binaries()
    selectors = [] if args.cycles == "all" else [parse_selector(args.cycles)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cln-sweep-"))
    proxied: list[dict[str, float]] = []
    plain: list[dict[str, float]] = []
    rates, setups, base_setups, counts = [], [], [], []
    try:
        for i in range(args.repeat):
            sweep = sweep_once(tmp / f"sweep-{i}", binaries, selectors, args.timeout)
            proxied += [r.timings_s for r in sweep.results]
            rates.append(sweep.cycles_per_s)
            setups.append(sweep.setup_s)
            counts.append(len(sweep.results))
            setup, timings = baseline_once(tmp / f"base-{i}", binaries, len(sweep.results), args.timeout)
            plain += timings
            base_setups.append(setup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(samples, key):
        values = [s[key] for s in samples if key in s]
        return statistics.median(values) if values else None

    table = Table(title=f"crash cycle against real Core Lightning: median s per phase ({len(proxied)} cycles over "
                        f"{args.repeat} sweeps; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f})")
    for col in ("phase", "through hsmproxy", "baseline: no proxy", "what"):
        table.add_column(col, justify="right" if "proxy" in col else "left")
    for phase in PHASES:
        with_proxy, without = med(proxied, phase), med(plain, phase)
        table.add_row(phase, "-" if with_proxy is None else f"{with_proxy:.3f}", "-" if without is None else f"{without:.3f}",
                      EXPLAIN[phase])
    whole = [sum(v for k, v in t.items() if "." not in k) for t in proxied]
    whole_base = [sum(t.values()) for t in plain]
    table.add_row("cycle", f"{statistics.median(whole):.3f}", f"{statistics.median(whole_base):.3f}", "sum of the phases")
    table.add_row("set-up", f"{statistics.median(setups):.1f}", f"{statistics.median(base_setups):.1f}",
                  "bitcoind, 2 nodes, channel, warm-up payments")
    Console(width=150).print(table)
    print(f"crash cycles per second (median of {args.repeat} sweeps of {statistics.median(counts):.0f} cycles): "
          f"{statistics.median(rates):.2f} through hsmproxy; "
          f"{1 / statistics.median(whole_base):.2f} for Core Lightning alone (baseline). Target: 0.3.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
