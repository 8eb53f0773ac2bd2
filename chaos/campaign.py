"""Campaign plumbing: seed ranges, shards, and running many runs with bounded parallelism.

``run_jobs`` is the only trio code here; the run function is passed in, so tests drive the
plumbing with a fake run and the CLI with the real process runner.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from chaos.result import RunResult
from chaos.scenarios import INVARIANT_VIOLATED

_SEEDS = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?$")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SEEDS = 1_000_000


@dataclass(frozen=True)
class Job:
    scenario: str  # a built-in scenario's name, or "campaign"
    seed: int


def parse_seeds(text: str) -> range:
    """``A..B`` (both included) or a single seed ``A``."""
    m = _SEEDS.match(text or "")
    if not m:
        raise ValueError(f"--seeds {text!r}: write a range as A..B (both included, e.g. 1..50) or one seed, e.g. 17")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    if last < first:
        raise ValueError(f"--seeds {text!r}: the range is empty; the first seed must not exceed the last (e.g. {last}..{first})")
    if last - first + 1 > MAX_SEEDS:
        raise ValueError(f"--seeds {text!r}: {last - first + 1} seeds is more than {MAX_SEEDS}; split it with --shard")
    return range(first, last + 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n``: this machine runs shard i of n (1-based, as in 1/4 .. 4/4)."""
    m = _SHARD.match(text or "")
    if not m:
        raise ValueError(f"--shard {text!r}: write i/n, e.g. 2/4 runs the second of four shards")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: i must be between 1 and n (n >= 1), e.g. 1/{max(n, 2)}")
    return i, n


def shard_seeds(seeds: range, shard: tuple[int, int] | None) -> list[int]:
    """Every n-th seed from the i-th: shards are disjoint, cover the range, and stay balanced."""
    if shard is None:
        return list(seeds)
    i, n = shard
    return list(seeds)[i - 1 :: n]


RunOne = Callable[[Job], Awaitable[RunResult]]
OnResult = Callable[[RunResult], None]
OnStart = Callable[[Job], None]


def _crashed_result(job, exc: BaseException, started: float) -> RunResult:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return RunResult(scenario=job.scenario, seed=job.seed, outcome=INVARIANT_VIOLATED, divergences=[],
                     signer_rejections=[], funds_lost_msat=0, fault_trace_hash="",
                     reproduce=getattr(job, "reproduce", ""),
                     violations=[{"invariant": "runner", "detail": f"the run itself failed: {detail}"}],
                     duration_s=time.monotonic() - started)


async def run_jobs(jobs: list, run_one: RunOne, parallel: int = 1, on_result: OnResult | None = None,
                   on_start: OnStart | None = None) -> list[RunResult]:
    """Run every job (anything with ``scenario`` and ``seed``: a ``Job`` or a ``RunSpec``), at most
    ``parallel`` at a time; results come back in job order.

    A run that raises is reported as a failed run (with its seed), never silently lost.
    """
    if parallel < 1:
        raise ValueError(f"--jobs {parallel}: give at least 1")
    limiter = trio.CapacityLimiter(parallel)
    results: list[RunResult | None] = [None] * len(jobs)

    async def one(index: int, job: Job) -> None:
        async with limiter:
            if on_start is not None:
                on_start(job)
            started = time.monotonic()
            try:
                result = await run_one(job)
            except Exception as exc:  # noqa: BLE001 - reported as a failed run with its seed
                result = _crashed_result(job, exc, started)
            results[index] = result
            if on_result is not None:
                on_result(result)

    async with trio.open_nursery() as nursery:
        for index, job in enumerate(jobs):
            nursery.start_soon(one, index, job)
    return [r for r in results if r is not None]
