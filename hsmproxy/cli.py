"""The ``hsmproxy`` command: one entry point, one module per subcommand.

Subcommand modules are imported only when chosen, so ``hsmproxy wrap`` (which lightningd
execs for every start) does not pay for the imports of ``chaos`` or ``top``.
Each module provides ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line summary). Keep in the order users meet them.
COMMANDS: dict[str, tuple[str, str]] = {
    "wrap": ("hsmproxy.commands.wrap", "run a signer behind hsmproxy, as lightningd's --subdaemon=hsmd:SCRIPT"),
    "serve": ("hsmproxy.commands.serve", "relay a signer that listens on a socket (unix:PATH or tcp:HOST:PORT)"),
    "decode": ("hsmproxy.commands.decode", "decode hsmd messages: hex, hex lines on stdin, captures or traces"),
    "state": ("hsmproxy.commands.state", "shadow channel state and divergence events from a WAL directory (live or dead proxy)"),
    "top": ("hsmproxy.commands.top", "live terminal view of a running proxy: traffic, latency, WAL, channels, divergences"),
    "faults": ("hsmproxy.commands.faults", "fault rules of a running proxy (control API client); check a fault plan"),
    "chaos": ("hsmproxy.commands.chaos", "chaos sessions: the write-up's three stories, and randomized campaigns with invariants"),
    "sim-node": ("sim.node_cmd", "run a simulated node + peer through N commitment updates against an hsmd-compatible signer"),
    "sim-signer": ("sim.signer_proc", "the simulated validating signer (VLS rules), started like lightning_hsmd"),
}

EXIT_USAGE = 2


# Commands whose every option can also come from a TOML file (see hsmproxy/config.py).
CONFIGURABLE = frozenset({"wrap", "serve", "chaos", "top", "sim-node", "sim-signer"})


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsmproxy",
        description="A man-in-the-middle for Core Lightning's hsmd signer protocol: "
        "relay, decode, shadow channel state, inject faults, export metrics.",
    )
    parser.add_argument("--version", action="store_true", help="print hsmproxy's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        cmd = sub.add_parser(name, help=summary, description=summary)
        if name == selected:
            importlib.import_module(module_name).configure(cmd)
            if name in CONFIGURABLE:
                cmd.add_argument(
                    "--config", metavar="FILE",
                    help="TOML file with defaults for any option above (flags override it)",
                )
            parser.selected_parser = cmd
    return parser


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hsmproxy")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(selected if selected in COMMANDS else None)
    command_parser = getattr(parser, "selected_parser", None)
    if selected in CONFIGURABLE and command_parser is not None:
        config_path = _config_path(argv)
        if config_path:
            from hsmproxy import config  # only with --config: tomllib would slow every `wrap --version`

            try:
                config.apply(command_parser, config.load(config_path, selected), config_path)
            except config.ConfigError as exc:
                print(f"hsmproxy {selected}: {exc}", file=sys.stderr)
                return EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command is None and args.version:
        print(f"hsmproxy {_version()}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
