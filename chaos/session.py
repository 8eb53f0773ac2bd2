"""A chaos session: many runs with bounded parallelism, a live view, metrics, the final report."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live

from chaos.campaign import run_jobs
from chaos.judge import INVARIANT_NAMES
from chaos.report import LiveProgress, final_view, replay_lines
from chaos.result import RunResult
from chaos.runner import RunSpec, UnfinishedRun, run_spec, start_fork_server
from chaos.scenarios import OUTCOMES
from proxy.addons.metrics import Metrics
from proxy.addons.metrics_hook import add_metrics_route
from proxy.trio.addresses import AddressError, parse_address
from proxy.trio.http_server import HttpServer, RouteTable


class Session:
    def __init__(self, specs: list[RunSpec], jobs: int = 1, workdir: Path | None = None, keep: str = "failed",
                 live: bool = False, metrics_address: str | None = None, meta: dict | None = None, console=None,
                 windows: bool = False, fork_server: bool = True):
        self.specs = specs
        self.use_fork_server = fork_server  # False: every process of every run is exec'd
        self.jobs = jobs
        self.workdir = workdir
        self.keep = keep
        self.live = live
        self.metrics_address = metrics_address
        self.windows = windows  # each result carries its critical windows (for --html)
        self.meta = dict(meta or {})
        self.progress = LiveProgress(len(specs))
        self.metrics = None
        self.console = console if console is not None else Console()
        self.interrupted: str | None = None  # the signal that stopped the session ("SIGINT", "SIGTERM")
        self.finished: list[RunResult] = []  # in the order they finished
        self.unfinished: list[UnfinishedRun] = []  # runs the interruption stopped midway
        self.start_failure: str | None = None  # why the session could not start (a --metrics it cannot serve)

    def _record(self, result: RunResult) -> None:
        self.finished.append(result)
        self.progress.on_result(result)
        if self.metrics is not None:
            self.metrics.chaos_runs.labels(scenario=result.scenario, outcome=result.outcome).inc()
            for v in result.violations:
                self.metrics.chaos_invariant_violations.labels(invariant=v["invariant"]).inc()
            if result.funds_lost_msat:
                self.metrics.chaos_funds_lost_msat.labels(scenario=result.scenario).inc(result.funds_lost_msat)
        if not self.live and not result.ok:
            print(f"hsmproxy chaos: FAILED {result.scenario} seed {result.seed}: {result.outcome}; "
                  f"reproduce: {result.reproduce}", file=sys.stderr)

    async def run(self) -> list[RunResult]:
        """Every run's result, in spec order. Ctrl-C (SIGINT) or SIGTERM (a test's timeout,
        systemd, kill) stops the session instead: each run kills its own process group on the
        way out, so nothing is left behind; then ``interrupted`` names the signal, ``finished``
        holds the runs that ended and ``unfinished`` the ones that were stopped, and the
        results returned are the finished ones."""
        started = trio.current_time()
        runs = trio.CancelScope()
        results: list[RunResult] = []
        # The receiver stays installed until the runs have cleaned up: a second Ctrl-C while
        # they do must not turn into a KeyboardInterrupt in the middle of that.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as watcher:
                watcher.start_soon(self._stop_on_signal, signals, runs)
                try:
                    with runs:
                        results = await self._run_all()
                finally:
                    watcher.cancel_scope.cancel()
        self.wall_s = trio.current_time() - started
        if self.interrupted:
            return list(self.finished)
        return results

    async def _run_all(self) -> list[RunResult]:
        fork_server = start_fork_server() if self.use_fork_server and self.specs else None
        try:
            return await self._run_with(fork_server)
        finally:
            if fork_server is not None:
                fork_server.close()

    async def _run_with(self, fork_server) -> list[RunResult]:
        async def one(spec: RunSpec) -> RunResult:
            return await run_spec(spec, self.workdir, self.keep, unfinished=self.unfinished, windows=self.windows,
                                  fork_server=fork_server)

        async with trio.open_nursery() as nursery:
            if self.metrics_address:
                try:
                    address = await nursery.start(self._serve_metrics)
                except AddressError as exc:  # said in one line by the command, not raised through the nurseries
                    self.start_failure = f"--metrics {self.metrics_address}: {exc}"
                    return []
                print(f"hsmproxy chaos: metrics on {address}", file=sys.stderr)
            if self.live:
                nursery.start_soon(self._live)
            results = await run_jobs(self.specs, one, self.jobs, on_result=self._record, on_start=self.progress.on_start)
            nursery.cancel_scope.cancel()
        return results

    async def _stop_on_signal(self, signals, runs: trio.CancelScope) -> None:
        async for signum in signals:
            if self.interrupted is None:
                self.interrupted = signal.Signals(signum).name
                runs.cancel()

    async def _live(self) -> None:
        with Live(self.progress, console=self.console, refresh_per_second=4, transient=True):
            await trio.sleep_forever()

    async def _serve_metrics(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        address = parse_address(self.metrics_address)
        if not address.is_loopback:
            raise AddressError("not a loopback address: serve metrics on 127.0.0.1:PORT, [::1]:PORT or unix:PATH")
        self.metrics = Metrics()
        # Every series a dashboard shows exists from the start: "no funds lost" is 0, not absent.
        for scenario in {spec.scenario for spec in self.specs}:
            self.metrics.chaos_funds_lost_msat.labels(scenario=scenario)
            for outcome in OUTCOMES:
                self.metrics.chaos_runs.labels(scenario=scenario, outcome=outcome)
        for invariant in INVARIANT_NAMES:
            self.metrics.chaos_invariant_violations.labels(invariant=invariant)
        routes = RouteTable()
        add_metrics_route(routes, self.metrics)
        await HttpServer(routes).serve(address, task_status=task_status)

    def print_final(self, results: list[RunResult]) -> None:
        self.console.print(final_view(results))
        for line in replay_lines(results):
            self.console.print(line, soft_wrap=True, highlight=False, markup=False, style="bold red")
        wall = getattr(self, "wall_s", 0.0)
        if wall > 0:
            self.console.print(f"{len(results)} run(s) in {wall:.1f} s with --jobs {self.jobs}: "
                               f"{len(results) / wall:.2f} runs/s")
        self.meta["wall_s"] = round(wall, 3)
