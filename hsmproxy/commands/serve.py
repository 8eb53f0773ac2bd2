"""`hsmproxy serve`: relay a signer that listens on a socket (VLS remote_hsmd_socket, sim-signer)."""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from hsmproxy.assembly import add_relay_options, build_hooks, close_hooks


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Listen on ADDR and relay every accepted connection to the signer at --connect, through "
        "hsmproxy (one upstream connection per downstream connection). ADDR is unix:PATH or tcp:HOST:PORT."
    )
    parser.add_argument("--listen", required=True, metavar="ADDR",
                        help="where the node connects (unix:PATH or tcp:HOST:PORT)")
    parser.add_argument("--connect", required=True, metavar="ADDR",
                        help="where the signer listens (unix:PATH or tcp:HOST:PORT)")
    add_relay_options(parser)


def run(args: argparse.Namespace) -> int:
    from proxy.trio.socket_mode import AddressError, open_listener, parse_address, serve

    logging.basicConfig(level=logging.WARNING, format="hsmproxy: %(message)s", stream=sys.stderr)
    try:
        listen_addr = parse_address(args.listen)
        upstream = parse_address(args.connect)
        listener = open_listener(listen_addr)
    except (AddressError, OSError) as exc:
        print(f"hsmproxy serve: {exc}", file=sys.stderr)
        return 2
    import trio

    hooks = build_hooks(args)
    try:
        trio.run(_main, functools.partial(serve, listener, upstream, hooks, decode=args.parse))
    except KeyboardInterrupt:
        return 0
    finally:
        close_hooks(hooks)
        if listen_addr.kind == "unix":
            import os

            try:
                os.unlink(listen_addr.path)
            except OSError:
                pass
    return 0


async def _main(serve_forever) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (the listening socket file is removed)."""
    import signal

    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_forever)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return
