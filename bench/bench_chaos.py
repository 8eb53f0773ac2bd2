"""Chaos campaign throughput, and where a crash-and-restart run spends its time.

    .venv/bin/python bench/bench_chaos.py [--repeat 3] [--seeds 12] [--jobs 2]

Every row is the median of --repeat measurements taken in this run (wall seconds; CPU seconds
of the process tree where it is meaningful). The baselines (a bare interpreter, one CLI start,
one node incarnation without the proxy) are measured in the same run, interleaved with the
rest, so a busy machine shifts all rows alike. Target of issue 7: at least 2 crash-and-restart
runs per second on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "hsmproxy.cli"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv: list[str], **kw) -> tuple[float, float]:
    """(wall s, CPU s of the whole process tree) of one command."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, **kw)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def _script(path: Path, argv: list[str]) -> Path:
    path.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in argv) + ' "$@"\n')
    path.chmod(0o700)
    return path


def node_incarnation(tmp: Path, with_proxy: bool, updates: int) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(dir=tmp))
    signer = _script(work / "sim.sh", [*CLI, "sim-signer"])
    if with_proxy:
        signer = _script(work / "wrap.sh", [*CLI, "wrap", "--signer", str(signer), "--wal-dir", str(work / "wal"),
                                            "--trace", str(work / "t.mp"), "--enable-faults", "--fault-seed", "1", "--"])
    try:
        return timed([*CLI, "sim-node", "--data-dir", str(work / "node"), "--updates", str(updates),
                      "--discipline", "wal", "--signer", str(signer), "--json"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chaos(args: list[str]) -> tuple[float, float]:
    return timed([*CLI, "chaos", "--no-live", *args])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="measurements per row (median; default 3)")
    parser.add_argument("--seeds", type=int, default=12, help="seeds per campaign measurement (default 12)")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs for the campaign rows (default 2)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    rows: dict[str, list[tuple[float, float]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    try:
        for i in range(args.repeat):
            first = 1000 + i * args.seeds  # a fresh seed range each time: no run is a replay of another
            measure = {
                "baseline: bare interpreter (python -c pass)": lambda: timed([sys.executable, "-c", "pass"]),
                "baseline: one CLI start (sim-signer --version)": lambda: timed([*CLI, "sim-signer", "--version"]),
                "baseline: node incarnation, no proxy (3 updates)": lambda: node_incarnation(tmp, False, 3),
                "node incarnation through the proxy (3 updates)": lambda: node_incarnation(tmp, True, 3),
                "story run: wal-fix (crash + restart)": lambda: chaos(["--scenario", "wal-fix"]),
                f"campaign: {args.seeds} seeds, --jobs {args.jobs}": lambda: chaos(
                    ["--seeds", f"{first}..{first + args.seeds - 1}", "--jobs", str(args.jobs)]),
            }
            for name, fn in measure.items():
                rows.setdefault(name, []).append(fn())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title=f"chaos throughput (median of {args.repeat}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f})")
    for col in ("what", "wall s", "CPU s", "per second"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for name, samples in rows.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        rate = f"{args.seeds / wall:.2f} runs/s" if name.startswith("campaign") else f"{1 / wall:.2f}/s"
        table.add_row(name, f"{wall:.2f}", f"{cpu:.2f}", rate)
    Console().print(table)
    med = {name: statistics.median(s[1] for s in samples) for name, samples in rows.items()}
    start = med["baseline: one CLI start (sim-signer --version)"]
    bare = med["baseline: node incarnation, no proxy (3 updates)"]
    proxied = med["node incarnation through the proxy (3 updates)"]
    story = med["story run: wal-fix (crash + restart)"]
    print(f"Where the time goes (CPU s): one interpreter start with our imports {start:.2f}; a node incarnation "
          f"without the proxy {bare:.2f} (node + signer + the signer's --version check); the proxy adds "
          f"{proxied - bare:.2f} (its interpreter, its --version pass-through to the signer, decoding, WAL fsyncs, "
          f"trace); a crash-and-restart story run {story:.2f} (2 incarnations, the session's own start, evidence "
          f"and judgement). Interpreter starts alone are about {100 * 5 * start / proxied:.0f}% of a proxied incarnation.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
