"""The command-line options of `hsmproxy wrap` and `hsmproxy serve`: relay, shadow/WAL, metrics,
fault injection and the control API.

Only argparse here: `hsmproxy wrap --version` builds this command line on every lightningd start,
so importing it must not pull in trio, the relay or the plan parser. What the options mean is
decided in ``hsmproxy.assembly``, which builds a run's hooks from them.

Engineers adding a hook: add your flags here and your hook in ``hsmproxy.assembly.build_hooks``.
"""

from __future__ import annotations

import argparse


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("relay")
    group.add_argument(
        "--trace", metavar="FILE", help="record every frame and event to FILE (msgpack, mode 0600; "
        "read it with `hsmproxy decode FILE`); a frame is kept whole only when it decoded and holds "
        "no secret, else redacted, or its type and length when it did not decode"
    )
    group.add_argument(
        "--trace-secrets", action="store_true",
        help="keep every frame whole in the trace, secrets included (revocation/per-commitment "
        "secrets, ECDH results, derived secrets, passphrases) instead of redacting them",
    )
    group.add_argument(
        "--no-parse", dest="parse", action="store_false",
        help="relay without decoding messages (hooks then see msg=None); for comparison benchmarks. "
        "A --trace then keeps only each frame's type and length (unless --trace-secrets)",
    )
    group.add_argument(
        "--wal-dir", metavar="DIR",
        help="keep the shadow channel state in a write-ahead log in DIR (created 0700, files 0600): "
        "each state-changing request is durable before the signer sees it, each answer before the "
        "node does; read it with `hsmproxy state --wal-dir DIR`. Without it the shadow is in memory only",
    )
    group.add_argument(
        "--wal-repair", action="store_true",
        help="start even if the WAL is damaged (records that verify but cannot be replayed, not just "
        "a last write cut short by a crash, which is always cut): move each damaged log aside to "
        "NAME.damaged-TIME (kept, never deleted) and continue from the records before the damage. "
        "Without it the proxy refuses to start and says what is damaged; inspect it first with "
        "`hsmproxy state --wal-dir DIR`",
    )
    group.add_argument(
        "--guard", action="store_true",
        help="refuse (as hsmd refuses a bad client request) any request that would make the signer "
        "sign two different commitments at one index; trades liveness for safety, see docs/shadow.md",
    )
    group.add_argument(
        "--metrics", metavar="ADDR",
        help="serve Prometheus metrics at http://ADDR/metrics (HOST:PORT on loopback, or unix:PATH); "
        "with --control they are also served there",
    )
    group.add_argument(
        "--max-unanswered", type=int, metavar="N",
        help="at most N requests on one connection wait for the signer's answer (default 64); past "
        "that the proxy reads no more from the node until the signer answers one (backpressure: the "
        "node's writes wait, nothing is dropped; counted in hsmproxy_requests_paused_total)",
    )
    group.add_argument(
        "--channel-detail", type=int, default=0, metavar="N",
        help="export per-channel gauges for at most N channels (off by default: label cardinality)",
    )
    add_fault_options(parser)


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fault injection and control API (docs/faults.md)")
    group.add_argument("--enable-faults", action="store_true",
                       help="allow fault rules (from --faults and the control API); off by default "
                       "(in a --config file: enable-faults = true)")
    group.add_argument("--faults", metavar="PLAN",
                       help="fault rules: a TOML plan file, or the one-line form, e.g. '!hsmd_sign_remote_commitment_tx*2'")
    group.add_argument("--fault-seed", type=int, metavar="N",
                       help="seed for probabilities, jitter and bit positions (default: the plan's seed, else random; printed)")
    group.add_argument("--control", metavar="ADDR",
                       help="serve the control API (and /health, /metrics) on HOST:PORT (loopback) or unix:/path (0600)")
    group.add_argument("--control-token", metavar="TOKEN",
                       help="require 'Authorization: Bearer TOKEN' on every control request. Every user can "
                       "read a command line (ps, /proc/PID/cmdline): prefer --control-token-file or "
                       "$HSMPROXY_CONTROL_TOKEN")
    group.add_argument("--control-token-file", metavar="FILE",
                       help="read the control token from FILE (its only content; the file must not be "
                       "readable by group or others: chmod 600). Without either option, the token is "
                       "$HSMPROXY_CONTROL_TOKEN if set")
    group.add_argument("--control-allow-remote", action="store_true",
                       help="allow a non-loopback --control address (needs a control token)")
    group.add_argument("--node-pid", type=int, metavar="PID",
                       help="the process kill-node signals (wrapper mode: lightningd, the parent, by default)")
    group.add_argument("--signer-pid", type=int, metavar="PID",
                       help="the process kill-signer signals (wrapper mode: the signer we started, by default)")
