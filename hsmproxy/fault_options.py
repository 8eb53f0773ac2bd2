"""The fault-injection and control-API flags of `wrap` and `serve`.

Kept apart from ``hsmproxy.fault_setup`` so that building the command line (which `hsmproxy wrap
--version` does on every lightningd start) imports neither trio nor the plan parser.
"""

from __future__ import annotations

import argparse


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fault injection and control API (docs/faults.md)")
    group.add_argument("--enable-faults", action="store_true",
                       help="allow fault rules (from --faults and the control API); off by default")
    group.add_argument("--faults", metavar="PLAN",
                       help="fault rules: a TOML plan file, or the one-line form, e.g. '!hsmd_sign_remote_commitment_tx*2'")
    group.add_argument("--fault-seed", type=int, metavar="N",
                       help="seed for probabilities, jitter and bit positions (default: the plan's seed, else random; printed)")
    group.add_argument("--control", metavar="ADDR",
                       help="serve the control API (and /health, /metrics) on HOST:PORT (loopback) or unix:/path (0600)")
    group.add_argument("--control-token", metavar="TOKEN",
                       help="require 'Authorization: Bearer TOKEN' on every control request")
    group.add_argument("--control-allow-remote", action="store_true",
                       help="allow a non-loopback --control address (needs --control-token)")
    group.add_argument("--node-pid", type=int, metavar="PID",
                       help="the process kill-node signals (wrapper mode: lightningd, the parent, by default)")
    group.add_argument("--signer-pid", type=int, metavar="PID",
                       help="the process kill-signer signals (wrapper mode: the signer we started, by default)")
