"""What reading a damaged WAL costs: `hsmproxy state` on a log with a flipped bit.

    .venv/bin/python bench/bench_wal_damage.py [--runs 3] [--records 1000000]

Prints one table (medians of --runs runs): the time to recover (scan, verify, replay into the
shadow) a log of --records records with one bit flipped at 1%, 50% and 99% of it, against the
baseline of recovering the same log undamaged, measured in the same run. Past the damage nothing
is replayed, but every later record is looked for and verified (that is how damage is told from
a torn tail), so a damaged log costs at most what an undamaged one does.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wal import write_log  # noqa: E402

from proxy.trio.shadow_recovery import recover  # noqa: E402
from proxy.core.wal_format import RECORD_HEADER  # noqa: E402


def timed_recovery(directory: str) -> tuple[float, float, int, int]:
    """(wall s, CPU s, records replayed, records after the damage)."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    _, recovery = recover(directory, repair=False)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = recovery.damage[0].valid_after if recovery.damage else 0
    return elapsed, cpu, recovery.record_count, after


def flip_at(clean: bytes, fraction: float) -> bytes:
    """The log with one bit flipped in the payload of the record that starts at ``fraction`` of it."""
    target, pos = int(len(clean) * fraction), 16
    while True:
        length = RECORD_HEADER.unpack_from(clean, pos)[0]
        if pos >= target:
            break
        pos += RECORD_HEADER.size + length
    damaged = bytearray(clean)
    damaged[pos + RECORD_HEADER.size + 1] ^= 0x08
    return bytes(damaged)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    root = tempfile.mkdtemp(prefix=".bench-wal-damage-", dir=str(Path(__file__).resolve().parent.parent))
    try:
        write_log(root, args.records)
        log = os.path.join(root, "wal-0.log")
        with open(log, "rb") as f:
            clean = f.read()
        cases = [("undamaged (baseline)", clean)] + [(f"bit flipped at {p:.0%}", flip_at(clean, p)) for p in (0.01, 0.5, 0.99)]
        samples: dict[str, list] = {name: [] for name, _ in cases}
        for _ in range(args.runs):  # interleaved, so machine load hits every row alike
            for name, data in cases:
                with open(log, "wb") as f:
                    f.write(data)
                samples[name].append(timed_recovery(root))
        table = Table(title=f"Recovery of a {args.records:,}-record log, damaged or not (median of {args.runs})")
        for col in ("log", "records replayed", "records verified after the damage", "wall s", "CPU s", "CPU vs baseline"):
            table.add_column(col, justify="right")
        base_cpu = statistics.median(s[1] for s in samples[cases[0][0]])
        for name, _ in cases:
            rows = samples[name]
            cpu = statistics.median(s[1] for s in rows)
            table.add_row(name, f"{rows[0][2]:,}", f"{rows[0][3]:,}", f"{statistics.median(s[0] for s in rows):.2f}",
                          f"{cpu:.2f}", f"{cpu / base_cpu:.2f}x")
        console.print(table)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
