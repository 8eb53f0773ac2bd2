"""``hsmproxy sim-signer``: the simulated validating signer as a process that lightningd (or our
simulated node) starts exactly like lightning_hsmd: fd 0 = status socket, fd 3 = master request
socket, working directory holding ``hsm_secret``. A thin trio shell around signer_core.

Exit codes follow hsmd: 0 after ``--version``; 2 when the master socket closes; 242 (0x80|0xF2)
after a status_fail for a bad master request.
"""

from __future__ import annotations

import argparse
import os
import sys

from .policy import PolicyFilter

VERSION = "hsmproxy-sim-signer-0.1"  # defined here so `--version` imports nothing heavy


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the simulated validating signer the way lightningd runs lightning_hsmd: requests on fd 3, "
        "status on fd 0, hsm_secret in the working directory (created if absent). It enforces VLS's "
        "commitment index rules and persists its state in ./sim-signer-state/ before every reply. "
        "Normally started by `hsmproxy sim-node`, not by hand.")
    parser.add_argument("--version", dest="print_version", action="store_true", help="print the signer version and exit")
    parser.add_argument("--policy-filter", action="append", default=[], metavar="TAG:ACTION",
                        help="turn a VLS policy tag into a warning or an error, e.g. policy-commitment-retry-same:warn; "
                             "a trailing * matches a prefix; repeatable, first match wins. VLS_PERMISSIVE=1 in the "
                             "environment makes every tag a warning. Also read from HSMPROXY_SIM_POLICY_FILTER "
                             "(comma separated), so a node can pass it through to a signer it execs.")
    parser.add_argument("--crash-at", metavar="MSG[:N]",
                        help="SIGKILL the signer after it persisted the state of the Nth request named MSG (e.g. "
                             "hsmd_sign_remote_commitment_tx:3) but before it replies: VLS's persist-then-reply window. "
                             "Also read from HSMPROXY_SIM_SIGNER_CRASH_AT")
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync when persisting state (benchmarks only; "
                        "a killed process still loses nothing, a power cut might)")
    parser.add_argument("--developer", action="store_true", help="accept hsmd_dev_preinit and hsmd_dev_memleak, as lightning_hsmd --developer")
    for flag in ("--log-io", "--log-trace", "--dev-debug-self"):
        parser.add_argument(flag, action="store_true", help=f"accepted for lightning_hsmd compatibility ({flag[2:]}); ignored")


def policy_filter_from(args_filters: list[str], environ=os.environ) -> PolicyFilter:
    if environ.get("VLS_PERMISSIVE") == "1":
        return PolicyFilter.permissive()
    specs = list(args_filters)
    extra = environ.get("HSMPROXY_SIM_POLICY_FILTER", "")
    specs += [s.strip() for s in extra.split(",") if s.strip()]
    return PolicyFilter.parse(specs)


def run(args: argparse.Namespace) -> int:
    if args.print_version:
        print(VERSION)
        return 0
    # Imported only now: lightningd runs `PATH --version` before every start, keep that fast.
    from pathlib import Path

    import trio

    import wire

    from .signer_core import LOG_UNUSUAL, SignerCore
    from .signer_keys import load_or_create_secret
    from .signer_server import (EXIT_STATUS_FAIL, FAIL_INTERNAL_ERROR, MASTER_FD, STATUS_FD, MasterFailure, SignerServer,
                                Status, leaves, serve_forever)
    from .signer_store import SignerStore

    try:
        policy_filter = policy_filter_from(args.policy_filter)
    except ValueError as exc:
        print(f"sim-signer: {exc}", file=sys.stderr)
        return 2
    for fd in (STATUS_FD, MASTER_FD):
        try:
            os.fstat(fd)
        except OSError:
            print(f"sim-signer: fd {fd} is not open; run me the way lightningd runs hsmd "
                  "(fd 0 = status socket, fd 3 = request socket), e.g. through `hsmproxy sim-node`", file=sys.stderr)
            return 2
    crash_spec = args.crash_at or os.environ.get("HSMPROXY_SIM_SIGNER_CRASH_AT")
    crash_at = None
    if crash_spec:
        name, _, n = crash_spec.partition(":")
        if name not in wire.SPECS_BY_NAME or (n and not n.isdigit()):
            print(f"sim-signer: --crash-at {crash_spec!r}: expected an hsmd message name and an optional count, "
                  "e.g. hsmd_sign_remote_commitment_tx:3", file=sys.stderr)
            return 2
        crash_at = (name, int(n) if n else 1)
    status = Status(STATUS_FD)
    status.send(wire.build("status_version", version=VERSION))
    workdir = Path.cwd()
    try:
        secret, created = load_or_create_secret(workdir)
        store = SignerStore(workdir, fsync=not args.no_fsync)
        store.lock()  # a previous signer of this directory may still be exiting
        core = SignerCore(secret, policy_filter, store.load_all(), developer=args.developer)
    except (OSError, ValueError) as exc:
        status.send(wire.build("status_fail", failreason=FAIL_INTERNAL_ERROR, desc=str(exc)))
        return EXIT_STATUS_FAIL
    if created:
        status.log(LOG_UNUSUAL, "HSM: created new hsm_secret file")
    try:
        trio.run(serve_forever, SignerServer(core, store, status, crash_at))
    except MasterFailure as exc:
        return exc.code
    except BaseExceptionGroup as group:  # trio wraps the failure of a task
        codes = [e.code for e in leaves(group) if isinstance(e, MasterFailure)]
        if codes:
            return codes[0]
        raise
    return 0


