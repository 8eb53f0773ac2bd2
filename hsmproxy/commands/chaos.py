"""``hsmproxy chaos``: the write-up's three stories, randomized campaigns with invariants, and
crash sweeps against real Core Lightning (``--lightningd``).

Node, proxy (wrapper mode, with a WAL) and signer run as real processes; faults fire inside the
proxy at exact points of the conversation; what was killed is restarted; the outcome is judged
from the WAL, the signer's persisted state and the proxy's traces (the frames it relayed and the
faults it injected). A sweep does the same with real lightningd nodes (chaos/cln).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import trio
from rich.console import Console

from chaos.campaign import parse_seeds, parse_shard, shard_seeds
from chaos.cln.network import SweepSetupError, find_binaries, load_pyln
from chaos.cln.points import CrashPointError, parse_selector
from chaos.cln.sweep import Sweep, SweepConfig
from chaos.report import (
    sweep_final_view, sweep_replay_lines, write_json, write_junit, write_sweep_json, write_sweep_junit,
)
from chaos.scenarios import BUILTIN, ENFORCE, WARN
from chaos.session import Session
from chaos.specs import CAMPAIGN_UPDATES, STORY_SEED, STORY_UPDATES, campaign_spec, scenario_spec
from hsmproxy.control_client import ControlClient
from proxy.core.shadow import DIVERGENCE_KINDS
from sim.node import NAIVE, WAL

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run node, proxy and signer as real processes, break things at exactly the wrong moments, and show "
        "what happens. With no arguments: the write-up's stories (honest-crash; pretend-crash with the signer's "
        "retry-same rule enforced and only warned; wal-fix), each checked against what it must show. "
        "With --seeds A..B: a campaign, one randomized fault schedule per seed (kills of node, signer and proxy "
        "at every point of the commitment dance, drops, delays, duplicates), invariants checked after each run. "
        "With --lightningd: a crash sweep against real Core Lightning (two nodes and one channel through "
        "pyln-testing; lightningd killed at every point of every hsmd request of the commitment dance, restarted, "
        "and checked). "
        "Exit status: 0 every run showed what it must, 1 a run violated an invariant or its scenario's promise "
        "(each is listed with the command that replays it), 2 usage (or a sweep that cannot start).")
    parser.epilog = "Scenarios: " + "; ".join(f"{s.name}: {s.story}" for s in BUILTIN.values())
    parser.add_argument("--scenario", action="append", choices=sorted(BUILTIN), metavar="NAME",
                        help=f"run this built-in scenario (repeatable): {', '.join(BUILTIN)}")
    parser.add_argument("--seeds", metavar="A..B",
                        help="seeds to run (both ends included). Without --scenario: a campaign of randomized fault "
                             "schedules; with it: the scenario once per seed (the seed drives the node's updates)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="runs in parallel (default 1)")
    parser.add_argument("--shard", metavar="I/N", help="run only shard I of N of the seeds (1-based), to split a range across machines")
    parser.add_argument("--signer", metavar="PATH",
                        help="an hsmd-compatible signer (e.g. lightning_hsmd) instead of our simulated validating signer")
    parser.add_argument("--signer-validates", action="store_true",
                        help="the --signer enforces VLS's commitment rules (a VLS stand-in); default: assume stock hsmd, "
                             "which signs whatever it is asked")
    parser.add_argument("--signer-policy", choices=("enforce", "warn"),
                        help="our simulated signer's policy-commitment-retry-same: enforce (VLS's default) or warn "
                             "(the unsafe fix the write-up refutes). Default: the stories run pretend-crash both ways")
    parser.add_argument("--discipline", choices=(WAL, NAIVE),
                        help="campaigns: how the node saves channel state (default wal; naive nodes may get stuck)")
    parser.add_argument("--updates", type=int, metavar="N", help="commitment updates per run (default 2 for stories, 3 for campaigns)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="a node that has not finished S seconds after a (re)start is killed and restarted (default 30; "
                             "at once when the proxy dropped or held its request, which it would wait for forever); "
                             "in a sweep: how long lightningd may take to die, start again and get its channel back")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the JSON report (a `runs` list) to FILE")
    parser.add_argument("--junit", metavar="FILE", help="write a JUnit XML report to FILE (one testcase per run)")
    parser.add_argument("--html", metavar="FILE",
                        help="write a self-contained HTML report to FILE (readable offline): the outcome table, plots, "
                             "and per run its faults, divergences, replay command and the sequence diagram of its "
                             "critical windows")
    parser.add_argument("--workdir", metavar="DIR", help="keep each run's data, WAL, traces and logs under DIR")
    parser.add_argument("--keep", choices=("failed", "all", "none"), default="failed",
                        help="which runs' directories to keep (default failed: their path is in the report). "
                             "On Ctrl-C the runs still going are stopped and their directories removed, "
                             "unless --keep all (then their paths are printed); exit status 130. A sweep keeps "
                             "its one directory (nodes' logs, WALs, traces) by the same rules")
    parser.add_argument("--metrics", metavar="ADDR",
                        help="serve /metrics (hsmproxy_chaos_* counters) on HOST:PORT (loopback) or unix:/path while running")
    parser.add_argument("--no-live", action="store_true", help="no live view (it is off anyway when stdout is not a terminal)")
    parser.add_argument("--no-fork-server", dest="fork_server", action="store_false",
                        help="exec a new interpreter for every node, proxy and signer process instead of forking them "
                             "from a fork server that imported everything once (the processes are real and separate "
                             "either way; this is slower, for comparison or if the fork server fails)")
    sweep = parser.add_argument_group(
        "crash sweeps against real Core Lightning (docs/cln.md; needs pyln-testing: pip install 'hsmproxy[cln]')")
    sweep.add_argument("--lightningd", nargs="?", const="", metavar="PATH",
                       help="run a crash sweep with this lightningd (v26.06 or newer); without PATH: $LIGHTNINGD or "
                            "PATH. Its lightning_hsmd goes behind the proxy unless --signer names another hsmd")
    sweep.add_argument("--bitcoind", metavar="PATH", help="the bitcoind for the sweep (default: $BITCOIND or PATH)")
    sweep.add_argument("--cycle", action="append", metavar="MESSAGE[@POINT][:NODE]",
                       help="run only these crash cycles (repeatable), e.g. "
                            "hsmd_sign_remote_commitment_tx@reply.before_forward:l1 (the form the report's replay "
                            "commands use); a part left out or * means all")
    sweep.add_argument("--payment-timeout", type=float, default=10.0, metavar="S",
                       help="a payment still pending S seconds after the channel is normal again is stuck (default 10); "
                            "one pending with no HTLC left in flight on either side is stuck at once")
    sweep.add_argument("--fail-on", metavar="KINDS", default="",
                       help="comma-separated divergence kinds that fail a cycle when a proxy confirms one "
                            "(default: none, they are reported)")
    sweep.add_argument("--all-plugins", action="store_true",
                       help="start every built-in plugin of lightningd (default: leave out those that neither move "
                            "channel state nor reach bitcoind, which makes each restart faster)")


def check_report_paths(args: argparse.Namespace) -> None:
    """A report is written when every run is over: a path that cannot be written is named now,
    not after the session."""
    for option, path in (("--json", args.json_path), ("--junit", args.junit), ("--html", args.html)):
        if path and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"{option} {path}: the directory {Path(path).resolve().parent} does not exist; "
                             "create it or give another path")


def build_specs(args: argparse.Namespace) -> list:
    """The runs this invocation asks for, in the order they are reported."""
    check_report_paths(args)
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: give at least 1")
    if args.updates is not None and args.updates < 1:
        raise ValueError(f"--updates {args.updates}: give at least 1 (the crash window is commitment 1)")
    if args.signer is not None:
        signer = Path(args.signer)
        if not (signer.is_file() and signer.stat().st_mode & 0o111):
            raise ValueError(f"--signer {args.signer}: not an executable file; give the path of lightning_hsmd "
                             "or another hsmd-compatible signer")
        args.signer = str(signer.resolve())
    if args.signer is not None and args.signer_policy == WARN and not args.signer_validates:
        raise ValueError("--signer-policy warn sets our simulated signer's rule; an external --signer keeps its own")
    args.discipline = args.discipline or WAL
    seeds = parse_seeds(args.seeds) if args.seeds else None
    shard = parse_shard(args.shard) if args.shard else None
    if shard is not None and seeds is None:
        raise ValueError("--shard splits a seed range: give --seeds A..B too")
    common = dict(signer=args.signer, signer_validates=args.signer_validates if args.signer else None, timeout=args.timeout)
    if seeds is not None and not args.scenario:
        return [campaign_spec(seed, discipline=args.discipline, policy=args.signer_policy or ENFORCE,
                              updates=args.updates or CAMPAIGN_UPDATES, **common)
                for seed in shard_seeds(seeds, shard)]
    names = args.scenario or list(BUILTIN)
    story_seeds = shard_seeds(seeds, shard) if seeds is not None else [STORY_SEED]
    specs = []
    for name in names:
        scenario = BUILTIN[name]
        if args.signer_policy:
            policies = [args.signer_policy]
        elif scenario.attacker and args.signer is None:
            policies = [ENFORCE, WARN]  # the story needs both: the rule refuses, the "fix" loses funds
        else:
            policies = [None]
        for seed in story_seeds:
            for policy in policies:
                specs.append(scenario_spec(scenario, seed, policy=policy, updates=args.updates or STORY_UPDATES, **common))
    return specs


def run(args: argparse.Namespace) -> int:
    if is_sweep(args):
        return run_sweep(args)
    try:
        specs = build_specs(args)
    except ValueError as exc:
        print(f"hsmproxy chaos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    session = Session(specs, jobs=args.jobs, workdir=Path(args.workdir) if args.workdir else None, keep=args.keep,
                      live=not args.no_live and sys.stdout.isatty(), metrics_address=args.metrics,
                      meta={"command": "hsmproxy chaos " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["chaos"] else "hsmproxy chaos"},
                      windows=bool(args.html), fork_server=args.fork_server)
    results = trio.run(session.run)
    if session.start_failure:
        print(f"hsmproxy chaos: {session.start_failure}", file=sys.stderr)
        return EXIT_USAGE
    if session.interrupted:
        return _interrupted(session, args)
    session.print_final(results)
    if args.json_path:
        write_json(args.json_path, results, session.meta)
    if args.junit:
        write_junit(args.junit, results)
    if args.html:
        from chaos.html_report import write_session_html  # matplotlib: 0.9 s to import, for --html only
        write_session_html(args.html, results, session.meta)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _interrupted(session: Session, args: argparse.Namespace) -> int:
    """What a stopped session leaves: the runs that finished (as usual), and where the runs it
    stopped are, if anywhere. No report is written: it would look complete."""
    if session.finished:
        session.print_final(session.finished)
    print(f"hsmproxy chaos: interrupted ({session.interrupted}): {len(session.finished)} of "
          f"{len(session.specs)} run(s) finished", file=sys.stderr)
    for run in session.unfinished:
        if run.kept:
            print(f"hsmproxy chaos: {run.scenario} seed {run.seed} was stopped midway; its directory is kept "
                  f"(--keep all): {run.directory}", file=sys.stderr)
        else:
            print(f"hsmproxy chaos: {run.scenario} seed {run.seed} was stopped midway; its directory was removed "
                  f"(--keep all keeps it)", file=sys.stderr)
    if args.json_path or args.junit or args.html:
        print("hsmproxy chaos: no report written: the session did not finish", file=sys.stderr)
    return EXIT_INTERRUPTED


# ---- crash sweeps against real Core Lightning ----------------------------------------------------

# Options of the simulated sessions that mean nothing to a sweep (option -> how to tell it was given).
_NOT_FOR_SWEEPS = {
    "--scenario": lambda a: a.scenario, "--seeds": lambda a: a.seeds, "--shard": lambda a: a.shard,
    "--jobs": lambda a: a.jobs != 1, "--discipline": lambda a: a.discipline,
    "--signer-validates": lambda a: a.signer_validates, "--signer-policy": lambda a: a.signer_policy,
    "--updates": lambda a: a.updates is not None, "--metrics": lambda a: a.metrics,
}


def is_sweep(args: argparse.Namespace) -> bool:
    return args.lightningd is not None or bool(args.bitcoind) or bool(args.cycle)


def _fail_on(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip()) - {"none"}
    unknown = sorted(kinds - set(DIVERGENCE_KINDS))
    if unknown:
        raise ValueError(f"--fail-on: unknown divergence kind(s) {', '.join(unknown)}; choose from {', '.join(DIVERGENCE_KINDS)}")
    return kinds


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep this invocation asks for; ValueError / SweepSetupError say what is wrong."""
    check_report_paths(args)
    given = [option for option, was_given in _NOT_FOR_SWEEPS.items() if was_given(args)]
    if given:
        raise ValueError(f"{', '.join(given)} do not apply to a crash sweep against real Core Lightning "
                         "(--lightningd): its nodes are lightningd, its signer is lightning_hsmd or --signer PATH")
    for option, value in (("--timeout", args.timeout), ("--payment-timeout", args.payment_timeout)):
        if value <= 0:
            raise ValueError(f"{option} {value}: give a positive number of seconds")
    try:
        selectors = [parse_selector(text) for text in args.cycle or []]
    except CrashPointError as exc:
        raise ValueError(str(exc)) from None
    binaries = find_binaries(args.lightningd or None, args.bitcoind, args.signer)
    load_pyln()  # a missing pyln-testing is named now, before anything starts
    replay = ["--lightningd", str(binaries.lightningd), "--bitcoind", str(binaries.bitcoind)]
    if args.signer:
        replay += ["--signer", str(binaries.signer)]
    if args.all_plugins:
        replay.append("--all-plugins")
    return SweepConfig(binaries=binaries, control=ControlClient, selectors=selectors, timeout=args.timeout,
                       payment_timeout=args.payment_timeout,
                       workdir=Path(args.workdir) if args.workdir else None, keep=args.keep,
                       fail_on=_fail_on(args.fail_on), all_plugins=args.all_plugins, replay_argv=tuple(replay),
                       windows=bool(args.html))


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds through the sweep's cleanup: every node and bitcoind is stopped


def run_sweep(args: argparse.Namespace) -> int:
    try:
        config = sweep_config(args)
    except (ValueError, SweepSetupError) as exc:
        print(f"hsmproxy chaos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # A report read from a file or a CI log needs room for the table's columns.
    console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)

    def on_setup(what: str) -> None:
        print(f"hsmproxy chaos: {what}", file=sys.stderr, flush=True)

    def on_cycle(i: int, total: int, result) -> None:
        flagged = ", ".join(f"{d['kind']}({d['status']})" for d in result.divergences) or "nothing flagged"
        why = f" [{result.reasons[0]}]" if result.reasons and not result.ok else ""
        print(f"hsmproxy chaos: [{i + 1}/{total}] {result.spec}: {result.outcome}, {flagged} "
              f"({result.duration_s:.1f} s){why}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sweep = Sweep(config, on_cycle=on_cycle, on_setup=on_setup)
    try:
        report = sweep.run()
    except SweepSetupError as exc:
        print(f"hsmproxy chaos: the sweep could not start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM above: the nodes and bitcoind are stopped by now
        print(f"hsmproxy chaos: interrupted: {len(sweep.results)} of {sweep.total or '?'} crash cycle(s) finished; "
              + (f"the sweep's directory is kept (--keep all): {sweep.directory}" if sweep.directory
                 else "the sweep's directory was removed (--keep all keeps it)"), file=sys.stderr)
        if args.json_path or args.junit or args.html:
            print("hsmproxy chaos: no report written: the sweep did not finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print(sweep_final_view(report))
    for line in sweep_replay_lines(report.results):
        console.print(line, soft_wrap=True, highlight=False, markup=False, style="bold red")
    console.print(f"{len(report.results)} crash cycle(s) in {report.cycles_s:.1f} s after {report.setup_s:.1f} s of "
                  f"set-up: {report.cycles_per_s:.2f} crash cycles/s")
    if report.directory:
        console.print(f"nodes' logs, WALs and traces: {report.directory}", soft_wrap=True, highlight=False)
    meta = {"command": "hsmproxy chaos " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["chaos"] else "hsmproxy chaos"}
    if args.json_path:
        write_sweep_json(args.json_path, report, meta)
    if args.junit:
        write_sweep_junit(args.junit, report.results)
    if args.html:
        from chaos.html_report import write_sweep_html  # matplotlib: 0.9 s to import, for --html only
        write_sweep_html(args.html, report, meta)
    return EXIT_OK if all(r.ok for r in report.results) else EXIT_FAILED
