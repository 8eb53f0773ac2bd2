"""The trio shell of a chaos run: real node, proxy (wrapper mode, with a WAL) and signer processes.

One run = one data directory. Each *incarnation* starts ``hsmproxy sim-node``, which starts its
signer exactly as lightningd starts hsmd: through a two-line script that execs ``hsmproxy wrap``
around the real signer. Faults fire inside the proxy at exact protocol points (kill-node at
``reply.before_forward`` of the Nth signing request, ...). When the node dies, the runner waits
until every process of the incarnation is gone, reads the faults that fired from the proxy's
trace, drops their rules, and starts the next incarnation on the same directories: the restart
an operator (or systemd) does. Then it gathers the evidence (WAL, signer state, traces) and
judges it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from chaos.evidence import Incarnation, RunEvidence, shadow_evidence, signer_channels_from_records, trace_facts
from chaos.result import RunResult, judge_run
from chaos.scenarios import ENFORCE, WARN, Expectation
from chaos.windows import windows_from_traces
from forkserver.launch import cli_prefix, write_script
from forkserver.server import ForkServer
from proxy.addons.trace import TraceFollower, TraceFormatError, read_trace
from proxy.core.wal_format import WalError
from proxy.trio.children import live_processes
from proxy.trio.subdaemon import wait_process
from proxy.trio.wal_store import read_state
from sim.node import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from sim.node_cmd import read_summary
from sim.policy import RETRY_SAME
from sim.signer_store import read_channels


@dataclass(frozen=True)
class RunSpec:
    scenario: str
    seed: int
    discipline: str
    attacker: bool
    faults: tuple[str, ...]  # one-line rules, each with a unique name=
    updates: int
    reproduce: str
    expectation: Expectation | None = None
    signer: str | None = None  # an hsmd-compatible executable; None: our simulated validating signer
    signer_validates: bool = True
    signer_policy: str = ENFORCE
    pretend_crash_at: int | None = None
    max_incarnations: int = 4
    incarnation_timeout: float = 30.0  # a node that makes no progress this long is killed and restarted
    extra_wrap_args: tuple[str, ...] = ()

    @property
    def signer_label(self) -> str:
        return "sim-signer" if self.signer is None else os.path.basename(self.signer)


def hsmproxy_argv() -> list[str]:
    """How to run our own CLI from a child process: this interpreter, this checkout."""
    return cli_prefix()


def start_fork_server() -> ForkServer:
    """A fork server for the runs' node, proxy and signer processes (see ``forkserver``)."""
    return ForkServer([sys.executable, "-m", "hsmproxy.fork_server"])


def _rule_name(line: str) -> str:
    for word in line.split():
        if word.startswith("name="):
            return word[5:]
    raise ValueError(f"chaos fault rule {line!r} has no name=; the runner needs it to know which rules fired")


_VERSIONS: dict[str, bytes] = {}


async def signer_version(argv: list[str], key: str | None = None) -> bytes | None:
    """What `hsmproxy wrap --signer X -- --version` prints (cached per ``key``, by default the
    command line); None if it fails."""
    key = key or shlex.join(argv)
    if key not in _VERSIONS:
        done = await trio.run_process([*argv, "--version"], capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode != 0:
            return None
        _VERSIONS[key] = done.stdout
    return _VERSIONS[key]


class RunDirs:
    def __init__(self, root: Path):
        self.root = root
        self.node = root / "node"
        self.wal = root / "wal"
        self.logs = root / "logs"
        for d in (self.node, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    def trace(self, n: int) -> Path:
        return self.logs / f"trace-{n}.mp"


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group is left (zombies may have no reaper here)."""
    return any(int(fields[2]) == pgid for _, fields in live_processes())


async def _reap_group(pgid: int, grace: float = 5.0) -> None:
    """Wait for the incarnation's proxy and signer to finish (they exit when the node's sockets
    close); SIGKILL whatever is left after ``grace``. Only our own process group is touched."""
    deadline = trio.current_time() + grace
    while _group_alive(pgid):
        if trio.current_time() > deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = trio.current_time() + grace
        await trio.sleep(0.01)


# Faults after which the node can only wait: its request (or its answer) will never arrive, and
# the node waits for it as lightningd's hsm_sync_req waits, until the watchdog ends it.
STALLING_ACTIONS = frozenset({"drop", "hold"})
TRACE_POLL_S = 0.02


async def _until_the_node_stalls(trace: Path) -> None:
    """Return once the incarnation's proxy recorded a fault after which the node cannot go on."""
    follower = TraceFollower(str(trace))
    while True:
        try:
            records = follower.new_records()
        except TraceFormatError:
            await trio.sleep_forever()  # judged after the incarnation, from the whole file
        if any(isinstance(r, dict) and r.get("kind") == "fault" and r["event"].get("action") in STALLING_ACTIONS
               for r in records):
            return
        await trio.sleep(TRACE_POLL_S)


class Runner:
    def __init__(self, spec: RunSpec, root: Path, fork_server: ForkServer | None = None):
        self.spec = spec
        self.fork_server = fork_server  # None: every process is exec'd
        self.dirs = RunDirs(root)
        self._sim_signer = self.dirs.root / "sim-signer.sh"
        if spec.signer is None:
            write_script(self._sim_signer, [*hsmproxy_argv(), "sim-signer"], "our simulated validating signer")

    def _wrapper(self, n: int, rules: list[str], version: bytes | None) -> Path:
        """The node's --signer: the proxy in wrapper mode in front of the real signer."""
        real = self._real_signer
        argv = [*hsmproxy_argv(), "wrap", "--signer", real, "--wal-dir", str(self.dirs.wal),
                "--trace", str(self.dirs.trace(n)), "--enable-faults", "--fault-seed", str(self.spec.seed),
                *self.spec.extra_wrap_args]
        if rules:
            argv += ["--faults", "; ".join(rules)]
        path = self.dirs.root / f"hsmd-wrapper-{n}.sh"
        # lightningd (and sim-node) run `SIGNER --version` before every start and compare the
        # output; the wrapper would print the real signer's answer, which was asked once per
        # session and is answered by the script here, saving two interpreter starts per restart.
        write_script(path, [*argv, "--"], f"chaos {self.spec.scenario} seed {self.spec.seed}, incarnation {n}",
                     None if version is None else version.decode())
        return path

    @property
    def _real_signer(self) -> str:
        return self.spec.signer or str(self._sim_signer)

    def _node_argv(self, wrapper: Path) -> list[str]:
        s = self.spec
        argv = [*hsmproxy_argv(), "sim-node", "--data-dir", str(self.dirs.node), "--updates", str(s.updates),
                "--discipline", s.discipline, "--seed", str(s.seed), "--signer", str(wrapper), "--json"]
        if s.signer is None and s.signer_policy == WARN:
            argv += ["--policy-filter", f"{RETRY_SAME}:warn"]
        if s.attacker:
            argv += ["--attacker-peer"]
            if s.pretend_crash_at is not None:
                argv += ["--pretend-crash-at", str(s.pretend_crash_at)]
        return argv

    async def _incarnation(self, n: int, rules: list[str], version: bytes | None) -> Incarnation:
        argv = self._node_argv(self._wrapper(n, rules, version))
        out_path, err_path = self.dirs.logs / f"node-{n}.json", self.dirs.logs / f"node-{n}.log"
        env = dict(os.environ, HSMPROXY_CHAOS_INCARNATION=str(n))
        env.pop("HSMPROXY_SIM_CRASH_AT", None)
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(os.devnull, "rb") as devnull:
            if self.fork_server is not None:
                proc = await trio.to_thread.run_sync(functools.partial(
                    self.fork_server.spawn, argv[len(hsmproxy_argv()):], {0: devnull.fileno(), 1: out.fileno(),
                                                                         2: err.fileno()},
                    env=env, cwd=os.getcwd(), new_session=True))
            else:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=devnull, env=env, start_new_session=True)
        killed = False
        try:
            killed = await self._until_exit_or_stuck(n, proc)
            if killed:
                with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                    os.killpg(proc.pid, signal.SIGKILL)
                await wait_process(proc)
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    await wait_process(proc)
                await _reap_group(proc.pid)
        summary = read_summary(out_path.read_text(errors="replace"))
        return Incarnation(n, proc.returncode, summary, killed_by_runner=killed)

    async def _until_exit_or_stuck(self, n: int, proc) -> bool:
        """Wait for the node to exit; True when the watchdog must end it instead: it made no
        progress for the incarnation timeout, or (known at once, so not waited for) a fault fired
        after which it can only wait."""
        stuck = False
        with trio.move_on_after(self.spec.incarnation_timeout) as timeout:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal stuck
                    await _until_the_node_stalls(self.dirs.trace(n))
                    stuck = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await wait_process(proc)
                nursery.cancel_scope.cancel()
        return stuck or timeout.cancelled_caught

    def _read_trace(self, inc: Incarnation, ev: RunEvidence) -> None:
        """The incarnation's trace: the faults its proxy injected (into ``inc``), and the frames
        it relayed (into ``ev``)."""
        path = self.dirs.trace(inc.number)
        if not path.exists():
            return  # the proxy never started (the node died before its signer)
        records, damage = [], None
        try:
            for record in read_trace(str(path)):
                records.append(record)
        except TraceFormatError as exc:
            damage = exc
        facts = trace_facts(records, inc.number)
        inc.faults = facts.faults  # a fault recorded before any damage did fire
        if damage is not None:
            ev.runner_errors.append(f"trace of incarnation {inc.number}: {damage}")
            return  # the frames of a damaged trace cannot be accounted for
        ev.signed += facts.signed
        ev.signer_rejections += facts.rejections
        ev.unanswered += facts.unanswered
        ev.answered_twice += facts.answered_twice
        ev.requests += facts.requests

    async def run(self) -> RunEvidence:
        s = self.spec
        ev = RunEvidence(scenario=s.scenario, seed=s.seed, discipline=s.discipline, attacker=s.attacker,
                         validating=s.signer_validates, signer_policy=s.signer_policy)
        rules = list(s.faults)
        version = None
        if s.signer is None:  # an external signer is asked every time, as lightningd asks
            # every run has its own sim-signer script, all of them the same signer: asked once
            version = await signer_version([*hsmproxy_argv(), "wrap", "--signer", self._real_signer, "--"],
                                           key="our sim-signer")
        for n in range(s.max_incarnations):
            inc = await self._incarnation(n, rules, version)
            ev.incarnations.append(inc)
            self._read_trace(inc, ev)
            fired = {f.rule for f in inc.faults}
            rules = [r for r in rules if _rule_name(r) not in fired]
            # sim-node's exit codes
            if inc.exit_code == EXIT_OK:
                ev.workload_done = True
                break
            if inc.exit_code == EXIT_REFUSED:
                ev.node_stuck = True
                break
            if inc.exit_code == EXIT_USAGE:
                ev.runner_errors.append(f"sim-node refused its arguments: see {self.dirs.logs / f'node-{n}.log'}")
                break
        self._gather(ev)
        return ev

    def _gather(self, ev: RunEvidence) -> None:
        """What the run left on disk once every incarnation is over: the WAL and the signer's state."""
        if self.dirs.wal.is_dir():
            try:
                recovery = read_state(str(self.dirs.wal), repair=False)
                ev.shadow_channels, ev.divergences = shadow_evidence(recovery.snapshot, recovery.records)
            except WalError as exc:
                ev.runner_errors.append(f"the proxy's WAL: {exc}")
        if self.spec.signer is None:
            try:
                ev.signer_channels = signer_channels_from_records(read_channels(self.dirs.node))
            except ValueError as exc:
                ev.runner_errors.append(f"the simulated signer's state: {exc}")


@dataclass(frozen=True)
class UnfinishedRun:
    """A run stopped before its end (Ctrl-C, SIGTERM): its directory, and whether it was kept."""

    scenario: str
    seed: int
    directory: Path
    kept: bool


async def run_spec(spec: RunSpec, workdir: Path | None = None, keep: str = "failed",
                   unfinished: list[UnfinishedRun] | None = None, windows: bool = False,
                   fork_server: ForkServer | None = None) -> RunResult:
    """Run one spec in ``workdir/<scenario>-<seed>`` (or a temporary directory) and judge it.

    ``keep``: "all", "failed" (the default: a failed run's directory stays for inspection) or "none".
    A run cancelled on the way (the session was interrupted) has no verdict: its directory (the
    signer's secret, the WAL, the traces) is removed once its processes are gone, unless ``keep``
    is "all"; either way it is added to ``unfinished``, so the session can say where it is.
    ``windows``: cut the sequence diagram's critical windows from the traces into the result
    (for the HTML report) while they still exist.
    ``fork_server``: start the run's processes through it instead of exec'ing them.
    """
    started = time.monotonic()
    if workdir is not None:
        root = workdir / f"{spec.scenario}-{spec.seed}-{spec.signer_policy}"
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix=f"hsmproxy-chaos-{spec.scenario}-{spec.seed}-"))
    runner = Runner(spec, root, fork_server)
    try:
        ev = await runner.run()
    except BaseException as exc:
        if isinstance(exc, Exception):
            raise  # the run crashed: reported as a failed run, its directory kept
        # Cancelled (maybe in a group, from a nursery inside the runner), or KeyboardInterrupt.
        # The runner has killed and reaped the run's process group on the way out: nothing
        # writes here any more.
        kept = keep == "all"
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
        if unfinished is not None:
            unfinished.append(UnfinishedRun(spec.scenario, spec.seed, root, kept))
        raise
    result = judge_run(ev, spec.expectation, spec.reproduce, spec.signer_label, fault_plan="; ".join(spec.faults),
                       duration_s=time.monotonic() - started, workdir=str(root))
    if windows:
        result.windows, result.windows_note = windows_from_traces([runner.dirs.trace(i.number) for i in ev.incarnations])
    if keep == "none" or (keep == "failed" and result.ok):
        shutil.rmtree(root, ignore_errors=True)
        result.workdir = None
    return result
