"""`hsmproxy wrap`: a drop-in hsmd for `lightningd --subdaemon=hsmd:SCRIPT`.

SCRIPT is two lines (see examples/hsmd-wrapper.sh)::

    #!/bin/sh
    exec hsmproxy wrap --signer /usr/local/libexec/c-lightning/lightning_hsmd -- "$@"
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from hsmproxy.options import add_relay_options
from proxy.trio.subdaemon import run_version


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run SIGNER exactly as lightningd would run hsmd (fd 0 status socket, fd 3 request socket, "
        "same environment and working directory) and relay every message through hsmproxy. "
        "Use it from a script given to `lightningd --subdaemon=hsmd:SCRIPT`; arguments after `--` "
        "(lightningd's `--developer`, `--log-io`, `--version`, ...) go to the signer."
    )
    parser.add_argument("--signer", required=True, metavar="PATH",
                        help="the real signer: lightning_hsmd, VLS's remote_hsmd_socket, or `hsmproxy sim-signer`")
    add_relay_options(parser)
    parser.add_argument("signer_args", nargs=argparse.REMAINDER, metavar="-- SIGNER_ARGS",
                        help="passed to the signer unchanged")


def run(args: argparse.Namespace) -> int:
    signer_args = list(args.signer_args)
    if signer_args[:1] == ["--"]:
        signer_args = signer_args[1:]
    if not os.access(args.signer, os.X_OK):
        print(f"hsmproxy wrap: --signer {args.signer!r} is not an executable file; "
              "give the path of lightning_hsmd (or another signer)", file=sys.stderr)
        return 2
    if signer_args == ["--version"]:  # lightningd's start-up check: answer it without importing the relay
        return run_version(args.signer)
    # Imported here, after the --version answer: lightningd runs `wrap ... -- --version` on every
    # start, and that answer must not wait for trio, the relay and every hook to import.
    import trio

    from hsmproxy.assembly import build_hooks, close_hooks, relay_limits
    from proxy.trio.wrapper import WrapSetupError, run_wrapper, start_signer, take_node_sockets

    logging.basicConfig(level=logging.WARNING, format="hsmproxy: %(message)s", stream=sys.stderr)
    try:
        node_status, node_master = take_node_sockets()
    except WrapSetupError as exc:
        print(f"hsmproxy wrap: {exc}", file=sys.stderr)
        return 2
    limits = relay_limits(args)
    hooks = build_hooks(args)
    try:
        signer = start_signer([args.signer, *signer_args])  # before trio.run (it may fork)
        wrapper = functools.partial(run_wrapper, decode=args.parse, limits=limits)
        return trio.run(wrapper, signer, hooks, node_status, node_master)
    except WrapSetupError as exc:
        print(f"hsmproxy wrap: {exc}", file=sys.stderr)
        return 2
    finally:
        close_hooks(hooks)
