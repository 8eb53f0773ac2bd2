#!/usr/bin/env python3
"""Codec throughput: decodes and encodes per second for the messages that dominate hsmd traffic.

Prints a table of medians over several runs. Baselines measured in the same run:
- "located": the codec's own uncompiled path (what every decode would cost without compile);
- "construct Struct": a stock construct Struct of the same layout, compiled (the usual way).

Usage: .venv/bin/python bench/bench_wire.py [--runs 15] [--seconds 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import construct as c  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import wire  # noqa: E402

VECTORS = ROOT / "tests" / "vectors" / "hsmd-capture.jsonl"


def sample_bodies() -> dict[str, bytes]:
    records = [json.loads(line) for line in VECTORS.read_text().splitlines()]
    first = {}
    for r in records:
        if r["kind"] == "msg" and r["name"] and r["name"] not in first:
            first[r["name"]] = bytes.fromhex(r["hex"])
    # A ~1.1 KB sign_remote_commitment_tx: the capture's commitment with 8 more HTLCs.
    commit = wire.decode(next(bytes.fromhex(r["hex"]) for r in records if r.get("type") == 19 and "1 htlc" in r.get("note", "")))
    htlcs = list(commit.fields["htlcs"])
    for i in range(8):
        htlcs.append({"side": i % 2, "amount": 1_000_000 + i, "payment_hash": bytes([i]) * 32, "cltv_expiry": 500 + i})
    big = wire.encode(wire.build("hsmd_sign_remote_commitment_tx", **{**commit.fields, "htlcs": htlcs}))
    return {
        "hsmd_sign_remote_commitment_tx": big,
        "hsmd_sign_tx_reply": first["hsmd_sign_tx_reply"],
        "hsmd_client_hsmfd": first["hsmd_client_hsmfd"],
        "status_log": first["status_log"],
    }


def stock_construct_commitment() -> c.Construct:
    htlc = c.Struct("side" / c.Int8ub, "amount" / c.Int64ub, "payment_hash" / c.Bytes(32), "cltv_expiry" / c.Int32ub)
    return c.Struct(
        "type" / c.Int16ub,
        "tx" / c.Struct("tx" / c.Prefixed(c.Int32ub, c.GreedyBytes), "psbt" / c.Prefixed(c.Int32ub, c.GreedyBytes)),
        "remote_funding_key" / c.Bytes(33),
        "remote_per_commit" / c.Bytes(33),
        "option_static_remotekey" / c.Int8ub,
        "commit_num" / c.Int64ub,
        "htlcs" / c.PrefixedArray(c.Int16ub, htlc),
        "feerate" / c.Int32ub,
    ).compile()


def _batch_size(fn, seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds``."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 8:
            return max(1, int(batch * seconds / elapsed))
        batch *= 2


def rates(fns: dict, seconds: float, runs: int) -> dict:
    """Median calls per second of each function. The runs are interleaved (one batch of each
    function per round), so a noisy neighbour slows every function alike, not one of them."""
    batches = {name: _batch_size(fn, seconds) for name, fn in fns.items()}
    samples: dict = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            batch = batches[name]
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[name].append(batch / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def located_decode(body: bytes):
    spec = wire.SPECS_BY_TYPE[int.from_bytes(body[:2], "big")]
    io = BytesIO(body)
    io.seek(2)
    return spec.record.parse_located(io, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.1, help="length of one timed batch")
    args = parser.parse_args()

    bodies = sample_bodies()
    stock = stock_construct_commitment()
    commitment = bodies["hsmd_sign_remote_commitment_tx"]
    fns = {("stock", ""): lambda: stock.parse(commitment)}
    for name, body in bodies.items():
        message = wire.decode(body)
        assert wire.encode(message) == body
        fns[(name, "decode")] = lambda body=body: wire.decode(body)
        fns[(name, "encode")] = lambda message=message: wire.encode(message)
        fns[(name, "located")] = lambda body=body: located_decode(body)
    measured = rates(fns, args.seconds, args.runs)

    table = Table(title=f"hsmd codec, one core, median of {args.runs} interleaved runs")
    for column in ("message", "bytes", "decode/s", "µs/decode", "encode/s", "located decode/s", "compiled/located"):
        table.add_column(column, justify="right" if column != "message" else "left")
    for name, body in bodies.items():
        dec, enc, slow = (measured[(name, what)] for what in ("decode", "encode", "located"))
        table.add_row(name, str(len(body)), f"{dec:,.0f}", f"{1e6 / dec:.1f}", f"{enc:,.0f}", f"{slow:,.0f}", f"{dec / slow:.1f}x")
    console = Console(width=150)
    console.print(table)
    ours, theirs = measured[("hsmd_sign_remote_commitment_tx", "decode")], measured[("stock", "")]
    console.print(
        f"baseline, same run: stock compiled construct Struct of the same layout (no validation) "
        f"{theirs:,.0f}/s ({1e6 / theirs:.1f} µs); hsmproxy codec {ours:,.0f}/s ({1e6 / ours:.1f} µs), "
        f"{ours / theirs:.2f}x. Target: >= 50,000 decodes/s of the 1.1 KB commitment."
    )


if __name__ == "__main__":
    main()
