"""``hsmproxy sim-node``: run node A (with peer R in-process) through N commitment updates
against a signer started like lightning_hsmd, and print a summary."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from .node import CRASH_POINTS, DISCIPLINES, EXIT_CODES, EXIT_OK, EXIT_USAGE, NAIVE, Node, NodeConfig, NodeError, parse_crash_at
from .policy import PolicyFilter

DEFAULT_SIGNER = [sys.executable, "-m", "hsmproxy.cli", "sim-signer"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a simulated Core Lightning node (lightningd + channeld) with one channel to a simulated peer "
        "through N commitment updates, using a signer it starts exactly as lightningd starts lightning_hsmd "
        "(fd 0 status, fd 3 requests, data dir as working directory). State lives in DATA_DIR "
        "(node.sqlite, peer.sqlite, and the signer's files); run again on the same directory to resume "
        "after a crash. Exit codes: " + ", ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + ".")
    parser.add_argument("--signer", metavar="PATH",
                        help="signer executable (any hsmd-compatible binary, e.g. lightning_hsmd); "
                             "default: our simulated validating signer")
    parser.add_argument("--signer-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the signer (repeatable), e.g. --signer-arg=--policy-filter=policy-commitment-retry-same:warn")
    parser.add_argument("--policy-filter", action="append", default=[], metavar="TAG:ACTION",
                        help="passed to our simulated signer through HSMPROXY_SIM_POLICY_FILTER (repeatable)")
    parser.add_argument("--data-dir", required=True, type=Path, metavar="DIR", help="the node's data directory (created if absent)")
    parser.add_argument("--updates", type=int, required=True, metavar="N", help="run until N commitment updates are complete")
    parser.add_argument("--discipline", choices=DISCIPLINES, default=NAIVE,
                        help="naive: sign, then persist (Core Lightning today); wal: persist the intent to sign first "
                             "(the write-up's fix). Default: naive")
    parser.add_argument("--seed", type=int, default=1, help="seed of the update schedule and the peer's keys (default 1)")
    parser.add_argument("--crash-at", metavar="POINT[:N]",
                        help="SIGKILL this node at POINT of commitment N (any N if omitted); also read from "
                             f"HSMPROXY_SIM_CRASH_AT. Points: {', '.join(CRASH_POINTS)}")
    parser.add_argument("--attacker-peer", action="store_true", help="the peer keeps leaked signatures and reports what it could publish")
    parser.add_argument("--pretend-crash-at", type=int, metavar="N",
                        help="compromised node: at commitment N leak the signature to the (attacker) peer, pretend to "
                             "crash, and sign N again with the peer's new updates (the write-up's exploit)")
    parser.add_argument("--no-peer-adds-on-reconnect", action="store_true",
                        help="the peer only re-sends its unacknowledged updates after a reconnect, adding nothing new")
    parser.add_argument("--trace", type=Path, metavar="FILE", help="append every signer exchange as JSON lines (secrets redacted)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        crash_at = parse_crash_at(args.crash_at or os.environ.get("HSMPROXY_SIM_CRASH_AT", "")) \
            if (args.crash_at or os.environ.get("HSMPROXY_SIM_CRASH_AT")) else None
    except ValueError as exc:
        print(f"sim-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.updates < 0:
        print("sim-node: --updates must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.pretend_crash_at is not None and not args.attacker_peer:
        print("sim-node: --pretend-crash-at needs --attacker-peer (someone must receive the leaked signature)", file=sys.stderr)
        return EXIT_USAGE
    try:
        PolicyFilter.parse(args.policy_filter)
    except ValueError as exc:
        print(f"sim-node: --policy-filter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.signer:
        signer = Path(args.signer)
        if not signer.is_file() and os.sep not in args.signer and shutil.which(args.signer):
            signer = Path(shutil.which(args.signer))  # a bare name found on PATH
        if not (signer.is_file() and os.access(signer, os.X_OK)):
            print(f"sim-node: --signer {args.signer}: not an executable file; give the path of lightning_hsmd "
                  "or another hsmd-compatible signer", file=sys.stderr)
            return EXIT_USAGE
        argv = [str(signer.resolve())]
    else:
        argv = list(DEFAULT_SIGNER)
    argv += args.signer_arg
    env = dict(os.environ)
    env.pop("HSMPROXY_SIM_CRASH_AT", None)  # the crash point is the node's, not the signer's
    if args.policy_filter:
        env["HSMPROXY_SIM_POLICY_FILTER"] = ",".join(args.policy_filter)
    cfg = NodeConfig(datadir=args.data_dir.resolve(), signer_argv=argv, discipline=args.discipline, seed=args.seed,
                     crash_at=crash_at, attacker_peer=args.attacker_peer, pretend_crash_at=args.pretend_crash_at,
                     peer_adds_on_reconnect=not args.no_peer_adds_on_reconnect, signer_env=env, trace_path=args.trace)
    node = None
    try:
        node = Node(cfg)
        summary = node.run(args.updates)
        code = EXIT_OK
    except NodeError as exc:
        print(f"sim-node: {exc}", file=sys.stderr)
        summary = node.summary(0.0) if node is not None and node.db.channel(1) else None
        if summary is not None:
            summary["error"] = str(exc)
        code = exc.exit_code
    finally:
        if node is not None:
            node.stop()
    if summary is not None:
        _print_summary(summary, args.json)
    return code


def read_summary(text: str) -> dict | None:
    """The summary ``sim-node --json`` printed on stdout; None when there is none (the node was
    killed before it printed one, or failed before its channel existed)."""
    text = text.strip()
    if not text:
        return None
    try:
        summary = json.loads(text)
    except ValueError:
        return None  # cut short by a kill
    return summary if isinstance(summary, dict) else None


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sim-node", show_header=False)
    for key, value in summary.items():
        if key == "attacker_publishable":
            value = f"{len(value)} stale signed commitment(s)" + (f": {[v['commit_num'] for v in value]}" if value else "")
        table.add_row(key, shlex.quote(str(value)) if isinstance(value, str) and " " in str(value) else str(value))
    Console().print(table)
