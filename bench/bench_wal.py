"""WAL and shadow benchmarks: group commit, recovery time, memory per channel.

    .venv/bin/python bench/bench_wal.py [--runs 3] [--records 1000000] [--channels 100000] [--dir DIR]

Prints three tables (medians of --runs runs, each with its baseline measured in the same run):
1. durable WAL records per second with 1, 8 and 64 channels appending concurrently through the
   trio group-commit shell, against a baseline of one write+fdatasync per record (what a WAL
   without group commit costs on this disk);
2. recovery time (scan + checksum + replay into the shadow) of a log of --records records,
   against the baseline of reading the file;
3. memory per tracked channel with --channels channels (tracemalloc), against the bare
   dict of keys.
The WAL directory defaults to a temporary directory on the same file system as the repository
(not tmpfs: fdatasync has to mean something).
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
import tracemalloc
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.core.shadow import (
    REVOKE_HOLDER,
    SIGNED,
    SIGN_REMOTE,
    VALIDATE_HOLDER,
    VALIDATE_REVOCATION,
    Intent,
    Shadow,
    intent_record,
    outcome_record,
    shadow_to_snapshot,
)
from proxy.trio.group_commit import GroupCommitWal
from proxy.trio.shadow_recovery import recover
from proxy.trio.wal_store import WalStore

PEER = b"\x02" * 33
FUNDING = os.urandom(36)


def sign_intent(dbid: int, n: int) -> Intent:
    return Intent(0, SIGN_REMOTE, PEER, dbid, n, os.urandom(32), b"\x03" + os.urandom(32), conn=dbid, seq=n,
                  time_ns=time.time_ns(), funding=FUNDING)


# --- 1. group commit ---------------------------------------------------------------------------


def baseline_sync_per_record(directory: str, records: int) -> float:
    store, _ = WalStore.open(directory)
    started = time.perf_counter()
    for n in range(records):
        store.write_durably(store.encode(intent_record(sign_intent(1, n))))
    elapsed = time.perf_counter() - started
    store.close()
    return records / elapsed


def group_commit_rate(directory: str, channels: int, per_channel: int) -> tuple[float, float]:
    async def main():
        store, _ = WalStore.open(directory)
        shadow = Shadow()
        wal = GroupCommitWal(store, lambda: shadow_to_snapshot(shadow), checkpoint_every=10**9)

        async def channel(dbid):
            for n in range(per_channel):
                intent, _ = shadow.begin(sign_intent(dbid, n))
                await wal.append(intent_record(intent))
                shadow.finish(intent.op_id, SIGNED)
                await wal.append(outcome_record(intent.op_id, SIGNED, 0))

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for dbid in range(channels):
                nursery.start_soon(channel, dbid)
        elapsed = time.perf_counter() - started
        store.close()
        records = 2 * channels * per_channel
        return records / elapsed, records / wal.syncs

    return trio.run(main)


# --- 2. recovery -------------------------------------------------------------------------------


def write_log(directory: str, records: int, channels: int = 1000) -> int:
    """A log of realistic records: per channel, sign N / peer revokes N-1, intent then outcome."""
    store, _ = WalStore.open(directory)
    shadow = Shadow()
    chunk: list[bytes] = []
    written = 0
    n = 0
    while written < records:
        for dbid in range(channels):
            if written >= records:
                break
            if n >= 1 and written + 4 <= records:
                kinds = [(SIGN_REMOTE, n), (VALIDATE_REVOCATION, n - 1)]
            else:
                kinds = [(SIGN_REMOTE, n)]
            for kind, index in kinds:
                if kind == SIGN_REMOTE:
                    intent = Intent(0, kind, PEER, dbid, index, os.urandom(32), b"\x03" + index.to_bytes(32, "big"),
                                    dbid, index, time.time_ns(), FUNDING)
                else:
                    intent = Intent(0, kind, PEER, dbid, index, None, b"\x03" + index.to_bytes(32, "big"),
                                    dbid, index, time.time_ns())
                intent, _ = shadow.begin(intent)
                shadow.finish(intent.op_id, SIGNED)
                chunk.append(store.encode(intent_record(intent)))
                chunk.append(store.encode(outcome_record(intent.op_id, SIGNED, time.time_ns())))
                written += 2
        n += 1
        if len(chunk) > 50_000:
            store.write_durably(b"".join(chunk))
            chunk.clear()
    store.write_durably(b"".join(chunk))
    store.close()
    assert not shadow.events, "the benchmark workload must be honest"
    return os.path.getsize(os.path.join(directory, "wal-0.log"))


def recovery_time(directory: str) -> tuple[float, float, int, float]:
    """(wall s, baseline wall s, channels, CPU s): CPU time is what a busy machine distorts least."""
    path = os.path.join(directory, "wal-0.log")
    started = time.perf_counter()
    with open(path, "rb") as f:
        f.read()
    baseline = time.perf_counter() - started
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    shadow, _ = recover(directory, repair=False)  # what the proxy and `hsmproxy state` run
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return elapsed, baseline, len(shadow.channels), cpu


# --- 3. memory -------------------------------------------------------------------------------


def memory_per_channel(channels: int) -> tuple[float, float]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keys = {(os.urandom(33), dbid): None for dbid in range(channels)}
    bare = (tracemalloc.get_traced_memory()[0] - before) / channels
    peers = list(keys)
    del keys
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    shadow = Shadow()
    for peer, dbid in peers:
        # A channel in full swing: two counterparty commitments, a revocation, holder side current.
        for intent in (
            Intent(0, SIGN_REMOTE, peer, dbid, 7, os.urandom(32), b"\x03" + os.urandom(32), dbid,
                   funding=os.urandom(36)),
            Intent(0, VALIDATE_REVOCATION, peer, dbid, 6, None, b"\x03" + os.urandom(32), dbid),
            Intent(0, SIGN_REMOTE, peer, dbid, 8, os.urandom(32), b"\x03" + os.urandom(32), dbid,
                   funding=os.urandom(36)),
            Intent(0, VALIDATE_HOLDER, peer, dbid, 8, os.urandom(32), None, dbid),
            Intent(0, REVOKE_HOLDER, peer, dbid, 7, None, None, dbid),
        ):
            intent, _ = shadow.begin(intent)
            shadow.finish(intent.op_id, SIGNED)
    del peers
    gc.collect()
    used = (tracemalloc.get_traced_memory()[0] - before) / channels
    tracemalloc.stop()
    assert len(shadow.channels) == channels and not shadow.events
    return used, bare


# --- report ------------------------------------------------------------------------------------


def group_commit_table(args, fresh):
    from rich.table import Table

    table = Table(title=f"1. Durable WAL records/s (median of {args.runs})")
    for col in ("channels", "records/s (group commit)", "records per fdatasync", "vs 1 channel",
                "baseline: 1 fdatasync per record, records/s", "vs baseline"):
        table.add_column(col, justify="right")
    shapes = ((1, 400), (8, 150), (64, 40))
    samples: dict[int, list] = {c: [] for c, _ in shapes}
    baselines = []
    for _ in range(args.runs):  # interleaved, so machine load hits every column alike
        baselines.append(baseline_sync_per_record(fresh(), 400))
        for channels, per_channel in shapes:
            samples[channels].append(group_commit_rate(fresh(), channels, per_channel))
    base = statistics.median(baselines)
    one = statistics.median(r for r, _ in samples[1])
    for channels, _ in shapes:
        rate = statistics.median(r for r, _ in samples[channels])
        per_sync = statistics.median(p for _, p in samples[channels])
        table.add_row(str(channels), f"{rate:,.0f}", f"{per_sync:.1f}", f"{rate / one:.1f}x",
                      f"{base:,.0f}", f"{rate / base:.1f}x")
    return table


def recovery_table(args, fresh):
    from rich.table import Table

    table = Table(title=f"2. Recovery of a {args.records:,}-record log (median of {args.runs})")
    for col in ("records", "log size", "recovery s (wall)", "recovery s (CPU)", "baseline: read file s",
                "channels", "target"):
        table.add_column(col, justify="right")
    d = fresh()
    size = write_log(d, args.records)
    results = [recovery_time(d) for _ in range(args.runs)]
    elapsed = statistics.median(r[0] for r in results)
    cpu = statistics.median(r[3] for r in results)
    table.add_row(f"{args.records:,}", f"{size / 2**20:,.1f} MiB", f"{elapsed:.2f}", f"{cpu:.2f}",
                  f"{statistics.median(r[1] for r in results):.3f}", f"{results[0][2]:,}",
                  ("OK" if elapsed < 10 else "MISSED") + " (< 10 s wall)")
    shutil.rmtree(d)
    return table


def memory_table(args, fresh):
    from rich.table import Table

    table = Table(title=f"3. Memory per tracked channel at {args.channels:,} channels (median of {args.runs})")
    for col in ("channels", "bytes per channel (shadow)", "baseline: bare (peer, dbid) key", "target"):
        table.add_column(col, justify="right")
    mem = [memory_per_channel(args.channels) for _ in range(args.runs)]
    used = statistics.median(m[0] for m in mem)
    table.add_row(f"{args.channels:,}", f"{used:,.0f}", f"{statistics.median(m[1] for m in mem):,.0f}",
                  ("OK" if used < 2048 else "MISSED") + " (< 2 KiB)")
    return table


TABLES = {"group": group_commit_table, "recovery": recovery_table, "memory": memory_table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--only", choices=tuple(TABLES), action="append",
                        help="run only these tables (repeatable); default: all three")
    parser.add_argument("--dir", default=None,
                        help="where to put the WAL (default: a temporary directory next to the repository)")
    args = parser.parse_args()
    from rich.console import Console

    console = Console()
    # Shared machines skew every number here: say how busy this one was.
    console.print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    root = tempfile.mkdtemp(prefix=".bench-wal-", dir=args.dir or str(Path(__file__).resolve().parent.parent))
    try:
        for name, make_table in TABLES.items():
            if not args.only or name in args.only:
                console.print(make_table(args, lambda: tempfile.mkdtemp(dir=root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
