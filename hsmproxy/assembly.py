"""Options shared by `hsmproxy wrap` and `hsmproxy serve`, and the one place hooks are built.

Engineers adding a hook (shadow/WAL, faults, metrics): add your flags in ``add_relay_options``
and your hook in ``build_hooks``, in the documented order. The shells never import hooks.
"""

from __future__ import annotations

import argparse

from proxy.core.hooks import HookChain


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("relay")
    group.add_argument(
        "--trace", metavar="FILE", help="record every frame and event to FILE (msgpack, mode 0600; "
        "read it with `hsmproxy decode FILE`)"
    )
    group.add_argument(
        "--trace-secrets", action="store_true",
        help="keep secrets (revocation/per-commitment secrets, ECDH results, derived secrets, "
        "passphrases) in the trace instead of redacting them",
    )
    group.add_argument(
        "--no-parse", dest="parse", action="store_false",
        help="relay without decoding messages (hooks then see msg=None); for comparison benchmarks",
    )
    group.add_argument(
        "--wal-dir", metavar="DIR",
        help="keep the shadow channel state in a write-ahead log in DIR (created 0700, files 0600): "
        "each state-changing request is durable before the signer sees it, each answer before the "
        "node does; read it with `hsmproxy state --wal-dir DIR`. Without it the shadow is in memory only",
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
        "--channel-detail", type=int, default=0, metavar="N",
        help="export per-channel gauges for at most N channels (off by default: label cardinality)",
    )
    from hsmproxy.fault_options import add_fault_options

    add_fault_options(parser)


def build_hooks(args: argparse.Namespace) -> HookChain:
    """The hooks for this run, in order: shadow/WAL first, then faults, then metrics, then the
    trace (last, so it records the verdict the others decided)."""
    hooks: list = []
    metrics = _metrics(args)
    if getattr(args, "parse", True):
        from proxy.addons.shadow_hook import ShadowHook
        from proxy.core.wal_format import WalError

        try:
            hooks.append(ShadowHook.open(getattr(args, "wal_dir", None), guard=getattr(args, "guard", False),
                                         metrics=metrics))
        except (WalError, OSError) as exc:
            raise SystemExit(f"hsmproxy: --wal-dir {args.wal_dir}: {exc}") from None
    elif getattr(args, "guard", False) or getattr(args, "wal_dir", None):
        raise SystemExit("hsmproxy: --guard and --wal-dir need the parser; drop --no-parse")
    from hsmproxy.fault_setup import build_fault_hooks

    # Fault hooks; the control service (a hook that starts the control API server) takes other
    # routes too: add yours to ``control.routes`` (e.g. /metrics) before the run starts.
    fault_hooks, control = build_fault_hooks(args, hooks)
    hooks += fault_hooks
    if control is not None:
        hooks.append(control)
    runtime = next((h.runtime for h in [*fault_hooks, control] if getattr(h, "runtime", None) is not None), None)
    if metrics is not None:
        hooks += _metrics_hooks(args, metrics, runtime, control)
    if getattr(args, "trace", None):
        from proxy.addons.trace import TraceHook

        trace = TraceHook(args.trace, secrets=args.trace_secrets)
        hooks.append(trace)
        for hook in hooks:  # divergence events and injected faults go into the trace too
            if hasattr(hook, "listeners") and hasattr(hook, "shadow"):
                hook.listeners.append(trace.divergence)
        if runtime is not None:
            runtime.listeners.append(trace.fault)
    return HookChain(hooks)


def _metrics(args: argparse.Namespace):
    """A metrics registry when something will serve it (--metrics, or the control API)."""
    if not (getattr(args, "metrics", None) or getattr(args, "control", None)):
        return None
    from proxy.addons.metrics import Metrics

    return Metrics(channel_detail=getattr(args, "channel_detail", 0) or 0)


def _metrics_hooks(args: argparse.Namespace, metrics, runtime, control) -> list:
    """The metrics hook, and a server for /metrics unless the control API already serves it."""
    from proxy.trio.http_server import ControlAddressError, parse_address
    from hsmproxy.fault_setup import ControlService

    from proxy.addons.metrics_hook import MetricsHook, add_metrics_route

    if runtime is not None:
        runtime.attach_metrics(metrics)
    out = []
    if control is not None:
        add_metrics_route(control.routes, metrics)
    if args.metrics and (control is None or args.metrics != args.control):
        try:
            address = parse_address(args.metrics)
        except ControlAddressError as exc:
            raise SystemExit(f"hsmproxy: --metrics: {exc}") from None
        if not address.is_loopback:
            raise SystemExit(f"hsmproxy: --metrics {args.metrics}: serve metrics on a loopback address "
                             "(or put --control-allow-remote and a token on --control)")
        server = ControlService(address, None)
        add_metrics_route(server.routes, metrics)
        out.append(server)
    out.append(MetricsHook(metrics))  # last but the trace: its timings include the WAL and faults
    return out


def close_hooks(chain: HookChain) -> None:
    for hook in chain.hooks:
        close = getattr(hook, "close", None)
        if callable(close):
            close()
