#!/usr/bin/env python3
"""Fault injection costs: what the engine adds per message, and control API latency under load.

Table 1, the engine's decision per message at one point (medians of --runs runs), on the
captured channeld traffic. Baseline in the same run: an engine with no rules.
Table 2, the full fault hook through the relay's HookChain for one exchange (4 points).
Table 3, control API round trips (GET /health, POST a rule, DELETE it; a new connection
each, as `hsmproxy faults` makes them) on 127.0.0.1: idle (the
baseline) and while a relay loop decides messages flat out with 20 messages held.

Usage: .venv/bin/python bench/bench_faults.py [--runs 5] [--messages 20000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import wire  # noqa: E402
from proxy.addons.control_api import add_fault_routes  # noqa: E402
from proxy.trio.addresses import Address  # noqa: E402
from proxy.trio.http_server import HttpServer, RouteTable  # noqa: E402
from faults.engine import FaultEngine, FaultEvent, Observation  # noqa: E402
from proxy.addons.fault_hook import FaultHook  # noqa: E402
from faults.plan import parse_one_line  # noqa: E402
from proxy.addons.fault_runtime import FaultRuntime  # noqa: E402
from proxy.core.hooks import REPLY_AFTER, REPLY_BEFORE, REQUEST_AFTER, REQUEST_BEFORE, ConnContext, Exchange, HookChain  # noqa: E402

EXCHANGES = json.loads((ROOT / "tests" / "fixtures" / "channeld_exchanges.json").read_text())["exchanges"]
DECODED = [(wire.decode(bytes.fromhex(e["request"])), bytes.fromhex(e["request"]),
            wire.decode(bytes.fromhex(e["reply"])), bytes.fromhex(e["reply"])) for e in EXCHANGES]

PLANS = {
    "no rules (baseline)": "",
    "1 rule, other message": "$hsmd_init",
    "1 rule, this traffic, spent": "$hsmd_check_outpoint",
    "20 rules, other messages": "; ".join(f"$hsmd_sign_invoice*{i + 1} name=r{i}" for i in range(20)),
    # Engine only (table 1): these delays are decided, not slept.
    "20 rules, predicates + p": "; ".join(f"~commitment ms=1 p=0.5 count=all commit_num>={i} name=r{i}" for i in range(20)),
}


def engine_for(plan: str, seed=1) -> FaultEngine:
    return FaultEngine(parse_one_line(plan) if plan else [], seed=seed)


def observations(n: int):
    out = []
    for i in range(n):
        req, req_raw, rep, rep_raw = DECODED[i % len(DECODED)]
        out.append(Observation(REQUEST_BEFORE, "client:1:a", "client", i, req, None, req_raw, dbid=1))
    return out


def bench_engine(plan: str, obs, runs: int) -> float:
    """ns per decide(), median over runs."""
    samples = []
    for _ in range(runs):
        engine = engine_for(plan)
        start = time.perf_counter_ns()
        for o in obs:
            engine.decide(o)
        samples.append((time.perf_counter_ns() - start) / len(obs))
    return statistics.median(samples)


def bench_hook(plan: str | None, n: int, runs: int) -> float:
    """µs per exchange (4 hook points) through HookChain, median over runs; None: no hook."""
    conn = ConnContext(conn_id=3, role="client", peer_id=bytes.fromhex("02" + "11" * 32), dbid=1)

    async def one_run() -> float:
        chain = HookChain([] if plan is None else [FaultHook(FaultRuntime(engine_for(plan), allowed=True))])
        start = time.perf_counter_ns()
        for i in range(n):
            req, req_raw, rep, rep_raw = DECODED[i % len(DECODED)]
            ex = Exchange(conn=conn, seq=i, request_raw=req_raw, request=req)
            await chain.request(ex, REQUEST_BEFORE)
            await chain.request(ex, REQUEST_AFTER)
            ex.reply_raw, ex.reply = rep_raw, rep
            await chain.reply(ex, REPLY_BEFORE)
            await chain.reply(ex, REPLY_AFTER)
        return (time.perf_counter_ns() - start) / n / 1000

    # Delays in the plans would sleep: the hook bench uses the plans without delay rules.
    return statistics.median(trio.run(one_run) for _ in range(runs))


CLIENT_SCRIPT = """
import json, sys, time
sys.path.insert(0, ".")
from hsmproxy.control_client import ControlClient
client, n, out = ControlClient(sys.argv[1]), int(sys.argv[2]), []
for i in range(n):
    start = time.perf_counter()
    if i % 3 == 0:
        client.health()
    elif i % 3 == 1:
        client.add(f"$hsmd_init name=b{i}")
    else:
        client.remove(f"b{i - 1}")
    out.append((time.perf_counter() - start) * 1000)
print(json.dumps(out))
"""


async def control_latency(requests: int, busy: bool) -> list[float]:
    runtime = FaultRuntime(engine_for("~commitment ms=1 count=all p=0.0"), allowed=True)
    routes = RouteTable()
    add_fault_routes(routes, runtime)
    obs = observations(len(DECODED))

    async def relay_loop():
        seq = 0
        while True:
            for o in obs:
                runtime.engine.decide(o)
            seq += 1
            await trio.lowlevel.checkpoint()

    async def held(i):
        await runtime.hold(FaultEvent("bench", "hold", REQUEST_BEFORE, "c", i, "m")).release.wait()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(HttpServer(routes).serve, Address.tcp("127.0.0.1", 0))
        if busy:
            nursery.start_soon(relay_loop)
            for i in range(20):
                nursery.start_soon(held, i)
        # The client is another process, as `hsmproxy faults` is: an in-process client thread
        # would measure GIL hand-offs with the busy relay loop instead of the server.
        result = await trio.run_process(
            [sys.executable, "-c", CLIENT_SCRIPT, str(bound), str(requests)], capture_stdout=True, cwd=str(ROOT)
        )
        latencies = json.loads(result.stdout)
        runtime.release()
        nursery.cancel_scope.cancel()
    return latencies


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    import logging

    logging.getLogger("hsmproxy.faults").setLevel(logging.ERROR)  # injected faults are logged: not here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    console = Console()

    obs = observations(args.messages)
    table = Table(title=f"engine.decide per message (median of {args.runs} runs x {args.messages} messages)")
    table.add_column("rules")
    table.add_column("ns / message", justify="right")
    table.add_column("vs baseline", justify="right")
    base = None
    for name, plan in PLANS.items():
        ns = bench_engine(plan, obs, args.runs)
        base = base or ns
        table.add_row(name, f"{ns:,.0f}", f"{ns / base:.1f}x")
    console.print(table)

    table = Table(title=f"fault hook per exchange, 4 points via HookChain (median of {args.runs} runs)")
    table.add_column("rules")
    table.add_column("µs / exchange", justify="right")
    table.add_column("vs baseline", justify="right")
    base = bench_hook(None, args.messages // 4, args.runs)
    table.add_row("no fault hook (baseline)", f"{base:.2f}", "1.0x")
    for name in ("no rules (baseline)", "1 rule, this traffic, spent", "20 rules, other messages"):
        us = bench_hook(PLANS[name], args.messages // 4, args.runs)
        table.add_row("fault hook, " + name.replace(" (baseline)", ""), f"{us:.2f}", f"{us / base:.1f}x")
    console.print(table)

    table = Table(title=f"control API round trip on 127.0.0.1 ({args.requests} requests: GET /health, POST a rule, DELETE it)")
    table.add_column("while")
    for col in ("p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for name, busy in (("idle (baseline)", False), ("relay deciding flat out, 20 held", True)):
        lat = trio.run(control_latency, args.requests, busy)
        table.add_row(name, f"{quantile(lat, 0.5):.2f}", f"{quantile(lat, 0.99):.2f}", f"{max(lat):.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
