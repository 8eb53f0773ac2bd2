"""`hsmproxy serve`: relay a signer that listens on a socket (VLS remote_hsmd_socket, sim-signer)."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys

import trio

from hsmproxy.assembly import build_hooks, close_hooks, relay_limits
from hsmproxy.options import add_relay_options
from proxy.addons.control_api import HttpServerHook
from proxy.core.hooks import HookChain
from proxy.trio.addresses import AddressError, open_listener, parse_address
from proxy.trio.socket_mode import check_listen_address, serve

EXIT_USAGE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Listen on ADDR and relay every accepted connection to the signer at --connect, through "
        "hsmproxy (one upstream connection per downstream connection). ADDR is unix:PATH or "
        "tcp:HOST:PORT (HOST:PORT and [IPv6]:PORT work too)."
    )
    parser.add_argument("--listen", required=True, metavar="ADDR",
                        help="where the node connects (unix:PATH or tcp:HOST:PORT on loopback: whoever "
                             "connects can have the signer sign anything)")
    parser.add_argument("--listen-allow-remote", action="store_true",
                        help="allow a --listen address other machines can reach (logged as a warning)")
    parser.add_argument("--connect", required=True, metavar="ADDR",
                        help="where the signer listens (unix:PATH or tcp:HOST:PORT)")
    add_relay_options(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="hsmproxy: %(message)s", stream=sys.stderr)
    try:
        listen_addr = parse_address(args.listen)
        check_listen_address(listen_addr, allow_remote=args.listen_allow_remote)
        upstream = parse_address(args.connect)
        listener = open_listener(listen_addr)
    except (AddressError, OSError) as exc:
        print(f"hsmproxy serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        limits = relay_limits(args)  # these two exit with a message naming a bad option
        hooks = build_hooks(args)
        try:
            failure = trio.run(_main, functools.partial(serve, listener.sock, upstream, hooks, decode=args.parse,
                                                        limits=limits), hooks)
        except KeyboardInterrupt:
            failure = None
        finally:
            close_hooks(hooks)
    finally:
        listener.close()  # and its socket file, while it is still ours
    if failure is not None:
        print(f"hsmproxy serve: {failure}", file=sys.stderr)
        return EXIT_USAGE
    return 0


async def _main(relay, hooks: HookChain) -> str | None:
    """Serve until SIGTERM or SIGINT, then stop cleanly; or say why serving could not start.

    The HTTP servers (control API, /metrics) start first: an address they cannot use is a
    start-up error, like a bad --listen, not a traceback once the relay runs.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                for hook in hooks.hooks:
                    if isinstance(hook, HttpServerHook):
                        await hook.start(nursery)
            except AddressError as exc:
                nursery.cancel_scope.cancel()
                return str(exc)
            nursery.start_soon(relay)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return None
