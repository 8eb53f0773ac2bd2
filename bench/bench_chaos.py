"""Chaos campaign throughput: processes forked from the fork server against exec'd ones.

    .venv/bin/python bench/bench_chaos.py [--repeat 3] [--seeds 50] [--jobs 2] [--before DIR]

Every row is the median of --repeat measurements taken in this run (wall seconds; CPU seconds
of the process tree). The baselines (a bare interpreter, one CLI start) and the "before" rows
(`--no-fork-server`: every node, proxy and signer process exec'd, as before the fork server;
with --before DIR also the code checked out in DIR, e.g. the main branch) are measured in the
same run, interleaved with the rest, so a busy machine shifts all rows alike. The load average
is printed at the start and the end: the machine may be shared. Target of issue 14:
`hsmproxy chaos --seeds 1..50 --jobs 2` at 2 runs/s or more on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLI = [sys.executable, "-m", "hsmproxy.cli"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv: list[str], checkout: Path = ROOT) -> tuple[float, float]:
    """(wall s, CPU s of the whole process tree) of one command run from ``checkout``."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=checkout, env=env)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def chaos(args: list[str], checkout: Path = ROOT) -> tuple[float, float]:
    return timed([*CLI, "chaos", "--no-live", *args], checkout)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="measurements per row (median; default 3)")
    parser.add_argument("--seeds", type=int, default=50, help="seeds per campaign measurement (default 50)")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs for the campaign rows (default 2)")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also run the campaign with the code checked out in DIR (e.g. a worktree of main)")
    args = parser.parse_args()
    if args.before is not None and not (args.before / "hsmproxy" / "cli.py").is_file():
        parser.error(f"--before {args.before}: no hsmproxy/cli.py there; give the root of an hsmproxy checkout")
    from rich.console import Console
    from rich.table import Table

    load_start = _load()
    campaign = f"campaign: {args.seeds} seeds, --jobs {args.jobs}"
    rows: dict[str, list[tuple[float, float]]] = {}
    for i in range(args.repeat):
        first = 1 + i * args.seeds  # a fresh seed range each time: no run is a replay of another
        seeds = ["--seeds", f"{first}..{first + args.seeds - 1}", "--jobs", str(args.jobs)]
        measure = {
            "baseline: bare interpreter (python -c pass)": lambda: timed([sys.executable, "-c", "pass"]),
            "baseline: one CLI start (sim-signer --version)": lambda: timed([*CLI, "sim-signer", "--version"]),
            "story run wal-fix, exec'd (--no-fork-server)": lambda: chaos(
                ["--scenario", "wal-fix", "--no-fork-server"]),
            "story run wal-fix, fork server": lambda: chaos(["--scenario", "wal-fix"]),
            f"{campaign}, exec'd (--no-fork-server)": lambda: chaos([*seeds, "--no-fork-server"]),
            f"{campaign}, fork server": lambda: chaos(seeds),
        }
        if args.before is not None:
            measure[f"{campaign}, code in {args.before}"] = lambda: chaos(seeds, args.before)
        for name, fn in measure.items():
            rows.setdefault(name, []).append(fn())
            print(f"  {name}: {rows[name][-1][0]:.2f} s (load {_load()})", file=sys.stderr)

    table = Table(title=f"chaos throughput (median of {args.repeat}; {os.cpu_count()} cores; "
                        f"load average 1/5/15 min {load_start} at the start, {_load()} at the end)")
    for col in ("what", "wall s", "CPU s", "per second"):
        table.add_column(col, justify="left" if col == "what" else "right")
    wall = {name: statistics.median(s[0] for s in samples) for name, samples in rows.items()}
    for name, samples in rows.items():
        cpu = statistics.median(s[1] for s in samples)
        rate = f"{args.seeds / wall[name]:.2f} runs/s" if name.startswith("campaign") else f"{1 / wall[name]:.2f}/s"
        table.add_row(name, f"{wall[name]:.2f}", f"{cpu:.2f}", rate)
    Console().print(table)
    before, after = wall[f"{campaign}, exec'd (--no-fork-server)"], wall[f"{campaign}, fork server"]
    print(f"fork server: {args.seeds / after:.2f} runs/s against {args.seeds / before:.2f} exec'd, "
          f"{before / after:.1f}x" + (f"; {wall[f'{campaign}, code in {args.before}'] / after:.1f}x the code in "
                                      f"{args.before}" if args.before is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
